"""Real races for the file tools: folders swapped for symlinks by another process, and a thread
in which the kernel refuses openat2(2) the way an older seccomp profile does.

`Swapper` runs a separate Python process that keeps exchanging two names (renameat2 with
RENAME_EXCHANGE, as a sandboxed command could) or renaming them in turn (so that the name is
missing now and then). `without_openat2` runs a function in a thread under a seccomp filter that
answers openat2 with ENOSYS, so that the name-by-name walk is what runs there.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

RENAMEAT2 = {"x86_64": 316, "aarch64": 276}
RENAME_EXCHANGE = 2
AT_FDCWD = -100
SYS_OPENAT2 = 437

_SWAPPER = r"""
import ctypes, os, signal, sys
mode, first, second, number = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
libc = ctypes.CDLL(None, use_errno=True)
swaps = 0
def stop(*_):
    print(swaps, flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
a, b = os.fsencode(first), os.fsencode(second)
hold = second + ".hold"
while True:
    if mode == "exchange":
        if libc.syscall(number, -100, a, -100, b, 2) == 0:
            swaps += 1
        continue
    for old, new in ((first, hold), (second, first), (first, second), (hold, first)):
        try:
            os.rename(old, new)
            swaps += 1
        except OSError:
            pass
    if os.path.isdir(hold):  # a tool made the missing folder anew and wrote in it: set it aside
        for old, new in ((first, first + ".made" + str(swaps)), (hold, first)):
            try:
                os.rename(old, new)
            except OSError:
                pass
"""


def exchange(first: Path, second: Path) -> None:
    """Swap two names at once (renameat2 RENAME_EXCHANGE), as a sandboxed command could."""
    number = RENAMEAT2[platform.machine()]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second),
                    RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(first))


class Swapper:
    """A process that swaps `first` (a folder) and `second` (a symlink) until stopped."""

    def __init__(self, mode: str, first: Path, second: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SWAPPER, mode, str(first), str(second),
             str(RENAMEAT2[platform.machine()])],
            stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"

    def stop(self) -> int:
        """Stop the process (ours, by its pid); how many swaps it made."""
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=10)
        return int(out.strip() or 0)


# seccomp: one filter for the calling thread only, answering openat2 with ENOSYS.
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000


class _Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_Filter))]


def _refuse_openat2_in_this_thread() -> None:
    program = (_Filter * 4)(
        _Filter(0x20, 0, 0, 0),  # load seccomp_data.nr
        _Filter(0x15, 0, 1, SYS_OPENAT2),  # openat2? next : skip one
        _Filter(0x06, 0, 0, _RET_ERRNO | errno.ENOSYS),
        _Filter(0x06, 0, 0, _RET_ALLOW),
    )
    fprog = _Program(4, program)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.prctl(
            _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"seccomp filter refused: {os.strerror(code)}")


def without_openat2(function: Callable[[], T]) -> T:
    """`function()` run in a thread where openat2(2) fails with ENOSYS; its result or its
    exception. The filter ends with the thread."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            _refuse_openat2_in_this_thread()
            outcome.append(function())
        except BaseException as error:  # handed to the caller's thread
            failure.append(error)

    thread = threading.Thread(target=run, name="no-openat2")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def walks(mode: str, function: Callable[[], T]) -> T:
    """`function()` with openat2 available ("openat2") or refused by the kernel ("fallback")."""
    return function() if mode == "openat2" else without_openat2(function)
