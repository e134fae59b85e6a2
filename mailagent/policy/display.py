"""Display: a task's virtual X display, inside the same bubblewrap sandbox as its commands.

In: the sandbox, the task's `View` (only the policy's folders and the workspace, protected paths
covered) and `Limits`; then requests to run a program on the display to its end (xdotool, xwd)
or to start an application there. Out: the programs' exit codes and output bytes. Side effects:
one sandbox per task holding Xvfb, the keeper (mailagent/policy/display_inside.py, run from its
source) and the applications; killed with everything in it by `kill()`.
The sandbox has its own network namespace whatever `[commands] network` says: a shared one
would reach the owner's X server and session bus through their abstract sockets. It has a
private /tmp (no /tmp/.X11-unix of the host), a cleared environment (no DISPLAY,
WAYLAND_DISPLAY, XAUTHORITY or DBUS_SESSION_BUS_ADDRESS of the service) and no /run.
It must never start without bubblewrap, and never outlive its task.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailagent.policy.limits import prlimit_argv
from mailagent.policy.sandbox import (
    Limits,
    SandboxInfo,
    View,
    bwrap_argv,
    sandbox_env,
)

log = logging.getLogger(__name__)

WIDTH_PX, HEIGHT_PX = 1024, 768  # XGA: the size the computer-use page recommends
DISPLAY_NUMBER = 1  # inside the sandbox's own /tmp: no other X server is there
START_SECONDS = 20.0
KEEPER = Path(__file__).with_name("display_inside.py")


class DisplayError(RuntimeError):
    """The display did not start, ended, or did not answer; the message says which."""


@dataclass
class Display:
    sandbox: SandboxInfo
    view: View
    limits: Limits
    width_px: int = WIDTH_PX
    height_px: int = HEIGHT_PX
    number: int = DISPLAY_NUMBER
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _answers: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one request
    # Held only to start or to kill: a kill at the very moment of the start still kills it.
    _spawning: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _killed: bool = field(default=False, repr=False)
    # What bubblewrap says when it cannot make the sandbox (a folder gone): read if it fails.
    _errors: Any = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        """The sandbox's process, while the display runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start(self) -> None:
        """Start the sandbox, Xvfb in it, and wait until it listens (DisplayError if not)."""
        if not self.sandbox.available:
            raise DisplayError(f"there is no sandbox to hold the display: {self.sandbox.detail}")
        config = json.dumps({"display": self.number, "width": self.width_px,
                             "height": self.height_px, "env": sandbox_env(self.view)})
        keeper = [sys.executable, "-I", "-c", KEEPER.read_text(), config]
        # Its own network namespace always (see the module's docstring), and no host list.
        limits = dataclasses.replace(self.limits, network=False, hosts=())
        self.view.home.mkdir(parents=True, exist_ok=True)
        command = [*prlimit_argv(limits), *bwrap_argv(self.sandbox.program, self.view, limits,
                                                  keeper, self.view.workspace)]
        with self._spawning:
            if self._killed:
                raise DisplayError("the task was cancelled; the display was not started")
            self._errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by kill()
            self._process = subprocess.Popen(
                command, cwd=self.view.workspace, env=sandbox_env(self.view),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errors,
                start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        try:
            ready = self._answer(START_SECONDS)
        except DisplayError:
            self._errors.seek(0)
            said = self._errors.read(500).decode(errors="replace").strip()
            self.kill()
            raise DisplayError(f"the virtual display did not start: {said or 'no reason given'}"
                               ) from None
        if not ready.get("ready"):
            self.kill()
            raise DisplayError(f"the virtual display did not start: {ready.get('error')}")
        log.info("virtual display started pid=%s", self._process.pid)

    def run(self, argv: list[str], timeout_seconds: float = 10.0) -> tuple[int, bytes, str]:
        """Run one program on the display to its end: its exit code, stdout and stderr."""
        answer = self._request({"run": argv, "timeout": timeout_seconds}, timeout_seconds + 5)
        if "error" in answer:
            raise DisplayError(str(answer["error"]))
        return (int(answer["exit_code"]), base64.b64decode(answer.get("stdout", "")),
                str(answer.get("stderr", "")))

    def spawn(self, argv: list[str], cwd: Path, settle_seconds: float = 1.0) -> int | None:
        """Start an application on the display; its exit code if it ended already, else None."""
        answer = self._request({"spawn": argv, "cwd": str(cwd), "settle": settle_seconds},
                               settle_seconds + 10)
        if "error" in answer:
            raise DisplayError(str(answer["error"]))
        code = answer.get("exit_code")
        return None if code is None else int(code)

    def _request(self, message: dict[str, Any], timeout_seconds: float) -> dict[str, Any]:
        process = self._process
        if process is None or process.stdin is None or process.poll() is not None:
            raise DisplayError("the virtual display has ended")
        with self._lock:
            try:
                process.stdin.write((json.dumps(message) + "\n").encode())
                process.stdin.flush()
            except OSError as exc:
                raise DisplayError(f"the virtual display has ended: {exc}") from None
            return self._answer(timeout_seconds)

    def _answer(self, timeout_seconds: float) -> dict[str, Any]:
        try:
            answer = self._answers.get(timeout=timeout_seconds)
        except queue.Empty:
            raise DisplayError(f"the virtual display did not answer in {timeout_seconds:g} s") \
                from None
        if answer is None:
            raise DisplayError("the virtual display has ended")
        return answer

    def _read(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        for line in process.stdout:
            try:
                answer = json.loads(line)
            except ValueError:
                continue  # not the keeper's: whatever it is, it is not an answer
            if isinstance(answer, dict):
                self._answers.put(answer)
        self._answers.put(None)

    def kill(self) -> None:
        """End the display, its applications and the sandbox at once; thread-safe, idempotent."""
        with self._spawning:
            self._killed = True
            process = self._process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # bubblewrap: its pid namespace goes too
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("the display's sandbox %d did not end after SIGKILL", process.pid)
        self._errors.close()

