"""Keep the computer awake while tasks run, and only then (`[service] keep_awake`).

In: `set_busy(True)` when the first task starts and `set_busy(False)` when the last one ends.
Out: an inhibitor held in between. Side effects: one helper process on Linux (`systemd-inhibit`)
and macOS (`caffeinate`), or the thread execution state on Windows. A computer that sleeps in the
middle of a task stops it for hours; one kept awake while idle wastes its battery, hence both ends.

The helper programs are external and may be missing (a container, a minimal install): that is
logged once, and mailagent goes on without keeping anything awake.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import subprocess
import sys
import time

log = logging.getLogger(__name__)

WHY = "mailagent is working on a task"
ES_CONTINUOUS = 0x80000000
ES_SYSTEM_REQUIRED = 0x00000001
STOP_SECONDS = 5.0
LINGER_SECONDS = 5.0  # tasks that follow each other closely keep one hold
FAILED_RETRY_SECONDS = 3600.0  # a tool that failed is tried again after this


def inhibitor_command(platform: str, pid: int) -> list[str] | None:
    """The program that holds the machine awake until its stdin closes; None where there is none.

    Both programs hold the lock while their child runs: `cat` reading our pipe exits when we
    close it, or when mailagent dies, so a crash never leaves the machine awake for good.
    """
    if platform.startswith("linux"):
        tool = shutil.which("systemd-inhibit")
        cat = shutil.which("cat") or "cat"
        return None if tool is None else [
            tool, "--what=sleep:idle", "--who=mailagent", f"--why={WHY}", "--mode=block", cat]
    if platform == "darwin":
        tool = shutil.which("caffeinate")
        # -i: no idle sleep; -w: let go when mailagent exits, even if it is killed
        return None if tool is None else [tool, "-i", "-w", str(pid)]
    return None


class KeepAwake:
    """Holds one inhibitor while busy; a missing tool or a failure is logged once."""

    def __init__(self, enabled: bool, platform: str = sys.platform) -> None:
        self.enabled, self.platform = enabled, platform
        self.process: subprocess.Popen[bytes] | None = None
        self.windows_held = False
        self.warned = False
        self.tool = ""
        self.linger: asyncio.TimerHandle | None = None
        self.retry_at = 0.0  # time.monotonic() before which a failed tool is not started again

    def set_busy(self, busy: bool) -> None:
        """The first task started (True), the last one ended (False). On the event loop, the
        hold outlives the last task by LINGER_SECONDS, so a queue of tasks holds it once."""
        if not self.enabled:
            return
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None
        if busy:
            self._hold()
            return
        try:
            self.linger = asyncio.get_running_loop().call_later(LINGER_SECONDS, self.release)
        except RuntimeError:  # no event loop: let go now
            self.release()

    def _warn_once(self, message: str, *args: object) -> None:
        if not self.warned:
            self.warned = True
            log.warning("keep_awake: " + message + "; the computer may sleep during tasks", *args)

    def _hold(self) -> None:
        if self.platform == "win32":
            self._windows(ES_CONTINUOUS | ES_SYSTEM_REQUIRED)
            return
        if self.process is not None:
            if self.process.poll() is None:
                return  # held still
            self.release()  # it ended by itself: it failed, or held nothing
        if time.monotonic() < self.retry_at:
            return  # it failed a short while ago
        command = inhibitor_command(self.platform, os.getpid())
        if command is None:
            tool = "caffeinate" if self.platform == "darwin" else "systemd-inhibit"
            self._warn_once("%s is not installed", tool)
            return
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as exc:
            self._warn_once("cannot start %s: %s", command[0], exc)
            return
        self.tool = os.path.basename(command[0])
        log.info("keep_awake: holding the machine awake (%s)", self.tool)

    def release(self) -> None:
        """Let the machine sleep again; safe to call when nothing is held."""
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None
        if self.windows_held:
            self._windows(ES_CONTINUOUS)
        process, self.process = self.process, None
        if process is None:
            return
        code = process.poll()  # already gone: it failed, or it never held anything
        if process.stdin is not None:  # systemd-inhibit's `cat` reads end of input, and it ends
            with contextlib.suppress(OSError):
                process.stdin.close()
        if code is None and self.platform == "darwin":
            process.terminate()  # caffeinate reads no input
        try:
            waited = process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            waited = process.wait()
        if code is None and self.platform != "darwin":
            code = waited
        if code not in (None, 0):  # e.g. systemd-inhibit without a system bus: not tried again
            self._warn_once("%s exited with code %s", self.tool, code)  # for a while
            self.retry_at = time.monotonic() + FAILED_RETRY_SECONDS
            return
        log.info("keep_awake: released")

    def _windows(self, flags: int) -> None:
        """SetThreadExecutionState: ES_CONTINUOUS alone clears what an earlier call set."""
        try:
            kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
            ok = kernel32.SetThreadExecutionState(ctypes.c_uint(flags))
        except (AttributeError, OSError) as exc:
            self._warn_once("SetThreadExecutionState is unavailable: %s", exc)
            return
        if not ok:
            self._warn_once("SetThreadExecutionState failed")
            return
        self.windows_held = flags != ES_CONTINUOUS
