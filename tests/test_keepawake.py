"""Keep-awake: an inhibitor held while a task runs and gone once it ends.

The inhibitor is an external program, so the tests put a fake `systemd-inhibit` first on PATH
that records when it starts and stops; everything else is the real service.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

from mailagent.tasks.keepawake import KeepAwake
from tests.support.config import write_config
from tests.support.dovecot import Dovecot
from tests.support.mail import owner_mail
from tests.support.model_server import ModelServer, RecordedRequest, Reply, hang, text
from tests.support.service import ServiceProcess, wait_until

FAKE_INHIBIT = """#!/bin/sh
# Records its start and stop, then runs its last argument as systemd-inhibit runs its command.
echo "start $*" >> "{log}"
for last; do :; done
"$last"
echo "stop" >> "{log}"
"""

FAILING_INHIBIT = """#!/bin/sh
echo "start" >> "{log}"
echo "Failed to connect to bus" >&2
exit 1
"""


def fake_inhibitor(tmp_path: Path, script: str) -> tuple[Path, Path]:
    """A bin folder with a fake systemd-inhibit, and the file where it records what it did."""
    bin_dir, log = tmp_path / "bin", tmp_path / "inhibit.log"
    bin_dir.mkdir()
    tool = bin_dir / "systemd-inhibit"
    tool.write_text(script.format(log=log))
    tool.chmod(0o755)
    return bin_dir, log


def records(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def service_with(tmp_path: Path, dovecot: Dovecot, model: ModelServer, bin_dir: Path,
                 extra: str = "") -> ServiceProcess:
    service = ServiceProcess(write_config(tmp_path, dovecot.imap_port, 1,
                                          model_url=model.base_url, extra=extra))
    service.env["PATH"] = f"{bin_dir}{os.pathsep}{service.env['PATH']}"
    return service


def test_the_inhibitor_runs_while_a_task_runs_and_is_gone_afterwards(
        tmp_path: Path, dovecot: Dovecot, model_server: ModelServer) -> None:
    bin_dir, log = fake_inhibitor(tmp_path, FAKE_INHIBIT)
    service = service_with(tmp_path, dovecot, model_server, bin_dir)
    thinking, answer = threading.Event(), threading.Event()

    def slow_model(request: RecordedRequest) -> Reply:
        thinking.set()
        answer.wait(60)  # the task runs until the test lets the model answer
        return text("Done after a while.")

    model_server.script(slow_model)
    service.start()
    try:
        service.wait_connected()
        assert records(log) == []  # idle: nothing held
        dovecot.append(owner_mail("A slow task", "Take your time."))
        wait_until(thinking.is_set, 30, "the task to reach the model")
        [started] = wait_until(lambda: records(log), 10, "the inhibitor to start")
        assert started.startswith("start --what=sleep:idle --who=mailagent")
        assert "--mode=block" in started
        time.sleep(1)
        assert records(log) == [started]  # still held while the model is thinking
        answer.set()
        service.wait_for_log("task done", timeout=30)
        wait_until(lambda: records(log)[-1:] == ["stop"], 10, "the inhibitor to stop")
        assert len(records(log)) == 2
        assert service.stop() == 0
    finally:
        service.kill()
    assert records(log) == [started, "stop"]


def test_keep_awake_false_never_starts_the_inhibitor(
        tmp_path: Path, dovecot: Dovecot, model_server: ModelServer) -> None:
    bin_dir, log = fake_inhibitor(tmp_path, FAKE_INHIBIT)
    service = service_with(tmp_path, dovecot, model_server, bin_dir,
                           extra="[service]\nkeep_awake = false")
    service.start()
    try:
        dovecot.append(owner_mail("A task", "Answer briefly."))
        service.wait_for_log("task done", timeout=30)
        assert service.stop() == 0
    finally:
        service.kill()
    assert records(log) == []
    assert "keep_awake:" not in service.log()


def test_an_inhibitor_that_fails_is_reported_once(
        tmp_path: Path, dovecot: Dovecot, model_server: ModelServer) -> None:
    bin_dir, log = fake_inhibitor(tmp_path, FAILING_INHIBIT)
    service = service_with(tmp_path, dovecot, model_server, bin_dir)
    model_server.script(hang(1), text("first"), hang(1), text("second"))
    service.start()
    try:
        dovecot.append(owner_mail("[one] First task", "One."))
        service.wait_for_log("task done", timeout=30)
        dovecot.append(owner_mail("[two] Second task", "Two."))
        service.wait_for_log("task done", timeout=30, count=2)
        assert service.stop() == 0
    finally:
        service.kill()
    assert len(records(log)) == 1  # tried at the first task, not again at the next...
    warnings = [line for line in service.log().splitlines() if "WARNING" in line
                and "keep_awake" in line]
    assert len(warnings) == 1, service.log()  # ...but said so once
    assert "systemd-inhibit exited with code 1" in warnings[0]


def test_a_missing_tool_is_logged_once_and_nothing_is_held(
        caplog: pytest.LogCaptureFixture) -> None:
    # caffeinate exists only on macOS: on this Linux machine it is missing, as in a container.
    keep = KeepAwake(True, platform="darwin")
    with caplog.at_level(logging.INFO, logger="mailagent.tasks.keepawake"):
        for _ in range(3):
            keep.set_busy(True)
            assert keep.process is None
            keep.set_busy(False)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["keep_awake: caffeinate is not installed; the computer may sleep "
                        "during tasks"]
