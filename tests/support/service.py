"""Running `mailagent run` as a real subprocess, as a user (or systemd) would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mailagent.config import load_settings
from mailagent.store import Store

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class ServiceProcess:
    """One `mailagent run --config PATH` process with its stderr in a log file."""

    def __init__(self, config_path: Path, password: str = "agent-secret") -> None:
        self.config_path = config_path
        self.env = {**os.environ, "TEST_IMAP_PASSWORD": password}
        self.env.pop("MAILAGENT_FAILPOINT", None)
        self.log_path = config_path.parent / "service.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._stores: list[Store] = []  # closed by kill(), at teardown: PostgreSQL's
        # connections warn when they are collected open

    def start(self, failpoint: str | None = None) -> ServiceProcess:
        env = dict(self.env)
        if failpoint:
            env["MAILAGENT_FAILPOINT"] = failpoint
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailagent", "run", "--config", str(self.config_path)],
            stdout=log, stderr=log, env=env,
        )
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[self._log_offset:]

    def wait_for_log(self, text: str, timeout: float = 30.0, count: int = 1) -> None:
        def seen() -> bool:
            if self.process is not None and self.process.poll() is not None and \
                    self.log().count(text) < count:
                raise AssertionError(f"service exited early:\n{self.log()}")
            return self.log().count(text) >= count
        wait_until(seen, timeout, f"{text!r} in the service log:\n{self.log()}")

    def wait_connected(self, count: int = 1) -> None:
        self.wait_for_log("IMAP connected", count=count)

    def stop(self, timeout: float = 15.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        while self._stores:
            self._stores.pop().close()

    def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def store(self) -> Store:
        store = Store.open(load_settings(self.config_path, self.env).database_url)
        self._stores.append(store)
        return store
