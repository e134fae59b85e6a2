"""Limits on a command: time, memory, processes, file size and output, and how they are held.

In: a `Limits` from the policy's [commands] table. Out: the command-line prefix that sets the
resource limits (util-linux's prlimit, or the small launcher below where there is none), and a
pids cgroup that bounds the process count when mailagent runs as root (RLIMIT_NPROC does not
hold for root). Side effects: a cgroup folder of its own while a command runs.
It must never let a limit the policy set go unset where the system can hold it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Sets the limits given on its command line, drops what srt sets that means nothing inside the
# sandbox, sets what the command's environment needs that srt's own must not have (TMPDIR),
# then becomes the command: for sandboxes with no prlimit (macOS), or where the limits must hold
# for the command and not for the sandbox's own program (srt's node).
LAUNCHER = """\
import json, os, resource, sys
for name, value in zip(("RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_FSIZE", "RLIMIT_CORE",
                        "RLIMIT_NOFILE"), sys.argv[1:6]):
    limit = getattr(resource, name, None)
    if limit is None:
        continue
    hard = resource.getrlimit(limit)[1]
    value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
    try:
        resource.setrlimit(limit, (value, value))
    except (ValueError, OSError) as error:
        print(f"mailagent: {name} not set here: {error}", file=sys.stderr)
env = {k: v for k, v in os.environ.items() if k not in sys.argv[6].split(",")}
env.update(json.loads(sys.argv[7]))
os.execve(sys.argv[8], sys.argv[8:], env)
"""


@dataclass(frozen=True)
class Limits:
    timeout_seconds: float = 60.0
    memory_bytes: int = 2 * 1024**3
    max_processes: int = 256
    max_file_bytes: int = 1024**3
    max_output_bytes: int = 64 * 1024
    network: bool = False  # the whole network (bubblewrap shares the host's)
    hosts: tuple[str, ...] = ()  # only these, through srt's filtering proxy



def process_limit_kind() -> str:
    """How the process count is bounded here: by a pids cgroup, or by RLIMIT_NPROC."""
    if os.geteuid() != 0:
        return "rlimit"  # RLIMIT_NPROC holds for every user but root
    return "cgroup" if cgroup_base() is not None else "none"



def prlimit_argv(limits: Limits) -> list[str]:
    program = shutil.which("prlimit")
    if program is None:
        return []
    return [program, f"--as={limits.memory_bytes}", f"--nproc={_nproc(limits)}",
            f"--fsize={limits.max_file_bytes}", "--core=0", "--nofile=1024", "--"]


def _nproc(limits: Limits) -> int:
    """RLIMIT_NPROC counts every process of the user, not only the command's: room is left for
    the ones already running, or a busy desktop session could not start the sandbox at all."""
    return limits.max_processes + (processes_of(os.getuid()) if os.geteuid() != 0 else 0)


def launcher_argv(limits: Limits, unset: tuple[str, ...] = (),
                  setting: dict[str, str] | None = None) -> list[str]:
    """The prefix that runs a command under `limits` with the Python running mailagent (every
    sandbox shows it), dropping the variables named in `unset` and setting those of `setting`."""
    return [sys.executable, "-I", "-S", "-c", LAUNCHER, str(limits.memory_bytes),
            str(_nproc(limits)), str(limits.max_file_bytes), "0", "1024", ",".join(unset),
            json.dumps(setting or {})]


def gone() -> contextlib.suppress:
    """For kills: the process may have ended, or be another user's after pid reuse."""
    return contextlib.suppress(ProcessLookupError, PermissionError)


def processes_of(uid: int) -> int:
    """How many processes (threads count too, as for RLIMIT_NPROC on Linux) this user runs now."""
    if not Path("/proc/self").exists():  # macOS: no /proc; its maxproc counts processes
        listed = subprocess.run(["ps", "-A", "-o", "uid="], capture_output=True, text=True,
                                check=False).stdout.split()
        return sum(1 for owner in listed if owner == str(uid))
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                count += len(os.listdir(entry / "task"))
        except OSError:
            continue
    return count


def cgroup_base() -> Path | None:
    """A cgroup folder where this (root) process may make a child that limits pids."""
    v2 = Path("/sys/fs/cgroup")
    controllers = v2 / "cgroup.subtree_control"
    if controllers.exists() and "pids" in controllers.read_text().split() \
            and os.access(v2, os.W_OK):
        return v2
    v1 = v2 / "pids"
    if (v1 / "cgroup.procs").exists() and os.access(v1, os.W_OK):
        return v1
    return None


@dataclass
class Cgroup:
    path: Path | None = None

    @classmethod
    def make(cls, max_processes: int) -> Cgroup:
        if os.geteuid() != 0 or (base := cgroup_base()) is None:
            return cls()
        path = base / f"mailagent-{uuid.uuid4().hex[:12]}"
        try:
            path.mkdir()
            (path / "pids.max").write_text(str(max_processes))
        except OSError as exc:
            log.warning("cannot make a pids cgroup at %s: %s", path, exc)
            return cls()
        return cls(path)

    def enter(self) -> list[str]:
        """A prefix that moves the program into this cgroup before it starts anything."""
        if self.path is None:
            return []
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs")]

    def kill_all(self) -> None:
        if self.path is None:
            return
        kill_file = self.path / "cgroup.kill"
        if kill_file.exists():
            kill_file.write_text("1")
            return
        for _ in range(50):  # v1 has no cgroup.kill: kill what is listed until nothing is
            pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
            if not pids:
                return
            for pid in pids:
                with gone():
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)

    def remove(self) -> None:
        if self.path is None:
            return
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except OSError:
                self.kill_all()
                time.sleep(0.05)
        log.warning("could not remove the cgroup %s", self.path)
