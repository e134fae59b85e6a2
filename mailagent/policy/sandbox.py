"""Sandbox: run one program inside an operating-system sandbox whose view is exactly the policy.

In: an argv already checked against the policy's program list, a `View` (the folders to mount
read-only and writable, the protected paths to hide, the workspace) and `Limits`. Out: a
`CommandResult` (exit code, capped output, whether it was killed). Side effects: only what the
program does inside its view; a pids cgroup of its own while it runs, where one can be made.
On Linux the sandbox is bubblewrap: new user, mount, pid, network, IPC and UTS namespaces, no
capabilities, an empty root with only the system's programs and libraries, the Python that runs
mailagent, the policy's folders and the workspace mounted in; a cleared environment; killed with
its whole process tree on timeout or `kill()`. When the policy lists hosts, the same bubblewrap
runs inside Anthropic's sandbox-runtime (mailagent.policy.srt), whose network namespace reaches
only its filtering proxy. On macOS srt alone is the sandbox (its Seatbelt backend), with the same
view written as srt's settings.
It must never pass the service's environment on, never run a program without the sandbox
unless the policy's loudly named `unsafe_no_sandbox` switch says so, and never run a command
with a host list anywhere but inside srt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mailagent.policy.limits import (
    Cgroup,
    Limits,
    gone,
    launcher_argv,
    prlimit_argv,
    process_limit_kind,
)
from mailagent.policy.srt import (
    UNSET_INSIDE,
    SrtInfo,
    alone_settings,
    find_srt,
    settings_for,
    srt_argv,
    srt_env,
    write_settings,
)

__all__ = ["CommandResult", "Limits", "NoHostFilterError", "Runner", "SandboxInfo", "View",
           "bwrap_argv", "exposed_missing", "find_bubblewrap", "find_sandbox",
           "process_limit_kind", "program_path", "runtime_paths", "sandbox_env"]

log = logging.getLogger(__name__)

# What every program needs to start: the system's programs and libraries, nothing of /etc but the
# linker's cache and a few harmless files (no /etc/shadow, no host keys, no user list).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives",
              "/etc/localtime", "/etc/mime.types", "/etc/fonts")
NETWORK_ETC = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf",
               "/etc/ssl", "/etc/ca-certificates", "/etc/pki")
# On macOS, what srt alone lets every program read: the system (its libraries are in the dyld
# cache under /System), /bin/sh's choice of shell, the developer tools behind /usr/bin's
# shims, Homebrew, and the few files of /etc that programs read.
MACOS_SYSTEM = ("/usr", "/bin", "/sbin", "/System", "/private/var/select",
                "/Library/Developer/CommandLineTools", "/Applications/Xcode.app/Contents/Developer",
                "/opt/homebrew", "/private/etc/localtime", "/private/var/db/timezone",
                "/private/etc/ssl", "/private/etc/hosts", "/private/etc/services")
# macOS: Homebrew's programs too (Apple silicon's /opt/homebrew; Intel's are in /usr/local).
SANDBOX_PATH = (*(("/opt/homebrew/bin",) if sys.platform == "darwin" else ()),
                "/usr/local/bin", "/usr/bin", "/bin")
PROBE_ENV = {"PATH": ":".join(SANDBOX_PATH), "LANG": "C.UTF-8"}
PROBE_TIMEOUT_SECONDS = 10.0
KILL_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class SandboxInfo:
    kind: str  # bubblewrap | srt (srt alone: macOS's Seatbelt) | none
    program: str = ""  # the sandbox program, absolute
    detail: str = ""  # its version, or why there is none and how to get one
    srt: SrtInfo = field(default_factory=SrtInfo)  # filters hosts, for a policy's host list
    proxy: str | None = None  # where srt's proxy sends what it lets through; None: straight out

    @property
    def available(self) -> bool:
        return self.kind != "none"


@dataclass(frozen=True)
class View:
    """What the program sees of the file system."""

    read: tuple[Path, ...]  # mounted read-only
    write: tuple[Path, ...]  # mounted writable
    hidden: tuple[Path, ...]  # protected paths: never visible, even inside a mounted folder
    workspace: Path  # writable, the default working folder
    home: Path  # the program's HOME: a folder of the workspace, never the owner's home
    skills: tuple[Path, ...] = ()  # the allowed skills' folders: read-only, over any cover


class NoHostFilterError(RuntimeError):
    """A run with a host list asked for, and srt is not there to filter it."""


@dataclass(frozen=True)
class CommandResult:
    exit_code: int | None  # None when the program was killed before it exited
    output: str  # stdout and stderr interleaved, cut at the output cap
    seconds: float
    timed_out: bool = False
    cancelled: bool = False
    output_cut: bool = False


def find_sandbox(srt: Path | None = None, proxy: str | None = None) -> SandboxInfo:
    """The sandbox this machine offers, after proving that it starts a program: bubblewrap, with
    srt (as configured, else on PATH) to filter hosts if it works here; on macOS srt alone."""
    if sys.platform == "darwin":
        return find_srt_alone(srt, proxy)
    found = find_bubblewrap()
    if not found.available:
        return found
    return dataclasses.replace(found, srt=find_srt(srt, proxy), proxy=proxy)


def find_srt_alone(srt: Path | None = None, proxy: str | None = None) -> SandboxInfo:
    """srt as the whole sandbox, after proving that it starts the launcher and a shell in the
    narrowest view a command gets: what macOS runs (on Linux only tests ask for it)."""
    def probe_view(folder: Path) -> dict[str, object]:
        return alone_settings((), proxy, read=(*alone_system(()), *runtime_paths()), write=(),
                              workspace=folder, hidden=())
    found = find_srt(srt, proxy, alone=probe_view,
                     probe=(*launcher_argv(Limits()), "/bin/sh", "-c", "true"))
    if not found.available:
        return SandboxInfo("none", detail=found.detail)
    return SandboxInfo("srt", found.program, f"srt alone ({found.detail})", srt=found,
                       proxy=proxy)


def alone_system(hosts: tuple[str, ...]) -> tuple[Path, ...]:
    """What srt alone lets every program read of the system; the certificates too for hosts."""
    if sys.platform == "darwin":
        names: tuple[str, ...] = MACOS_SYSTEM
    else:
        names = (*SYSTEM_DIRS, *SYSTEM_ETC, *(NETWORK_ETC if hosts else ()))
    return tuple(Path(n) for n in names if os.path.exists(n))


def find_bubblewrap() -> SandboxInfo:
    if sys.platform != "linux":
        return SandboxInfo("none", detail=(
            f"no sandbox support on {sys.platform} yet (Linux with bubblewrap only)"))
    program = shutil.which("bwrap")
    if program is None:
        return SandboxInfo("none", detail=(
            "bubblewrap is not installed: install it (Debian/Ubuntu: apt install bubblewrap; "
            "Fedora: dnf install bubblewrap) to offer run_command"))
    probe = [program, *_namespaces(network=False), "--ro-bind", "/", "/", "true"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=PROBE_TIMEOUT_SECONDS,
                              env=PROBE_ENV, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return SandboxInfo("none", detail=f"bubblewrap at {program} did not start: {exc}")
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace").strip()[:300]
        return SandboxInfo("none", detail=(
            f"bubblewrap at {program} cannot make a sandbox here ({error}); user namespaces may "
            "be switched off (sysctl kernel.unprivileged_userns_clone=1, or the AppArmor "
            "restriction on unprivileged user namespaces)"))
    version = subprocess.run([program, "--version"], capture_output=True, text=True,
                             check=False).stdout.strip()
    return SandboxInfo("bubblewrap", program, version or "bubblewrap")


# ---------------------------------------------------------------------------------------------
# Building the command line


def _namespaces(*, network: bool) -> list[str]:
    flags = ["--unshare-all", "--unshare-user", "--cap-drop", "ALL", "--die-with-parent",
             "--new-session"]
    if network:
        flags.append("--share-net")
    return flags


def program_path() -> tuple[str, ...]:
    """The PATH inside the sandbox: the Python that runs mailagent first, then the system's."""
    return (str(Path(sys.prefix) / "bin"), *SANDBOX_PATH)


def runtime_paths() -> tuple[Path, ...]:
    """Read-only folders every program needs, beyond the system: the Python running mailagent."""
    prefixes = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix),
                Path(sys.base_exec_prefix)}
    return tuple(sorted(p.resolve() for p in prefixes if not _under(p.resolve(), Path("/usr"))))


def sandbox_env(view: View) -> dict[str, str]:
    return {
        "PATH": ":".join(program_path()), "HOME": str(view.home), "LANG": "C.UTF-8",
        "TMPDIR": "/tmp", "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(view.home / ".matplotlib"),
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
    }


def bwrap_argv(bwrap: str, view: View, limits: Limits, argv: list[str], cwd: Path) -> list[str]:
    """The bubblewrap command line that runs `argv` in `cwd` with exactly `view` mounted.
    With a host list it runs inside srt: it shares srt's network namespace (only srt's proxy is
    there), keeps srt's proxy variables and nothing else srt passes, and shows srt's /proc (a
    fresh one cannot be mounted inside srt's sandbox, whose /proc is partly covered)."""
    filtered = bool(limits.hosts)
    args = [bwrap, *_namespaces(network=limits.network or filtered)]
    if filtered:
        args += [a for name in UNSET_INSIDE for a in ("--unsetenv", name)]
        args += ["--ro-bind", "/proc", "/proc"]
    else:
        args += ["--clearenv", "--proc", "/proc"]
    args += ["--dev", "/dev", "--tmpfs", "/tmp"]
    for name in SYSTEM_DIRS:
        args += _mount_system(Path(name))
    for name in (*SYSTEM_ETC, *(NETWORK_ETC if limits.network or filtered else ())):
        args += ["--ro-bind-try", name, name]
    mounts = [(p, "--ro-bind") for p in (*runtime_paths(), *view.read)]
    mounts += [(p, "--bind") for p in view.write]
    for path, flag in sorted(mounts, key=lambda m: len(m[0].parts)):  # parents before children
        args += [flag, str(path), str(path)]
    args += _pin_ancestors(view)
    covers, read_only = _hide(view, [p for p, _ in mounts])
    # The workspace lies inside the hidden data folder: mount it after the cover, and only
    # then make the cover read-only (bubblewrap makes the mount point inside the cover). The
    # allowed skills lie inside the hidden skills folder: likewise, read-only.
    skills = [arg for path in view.skills for arg in ("--ro-bind", str(path), str(path))]
    args += [*covers, "--bind", str(view.workspace), str(view.workspace), *skills, *read_only]
    for key, value in sandbox_env(view).items():
        args += ["--setenv", key, value]
    return [*args, "--chdir", str(cwd), "--", *argv]


def _mount_system(path: Path) -> list[str]:
    if path.is_symlink():  # merged /usr: /bin -> usr/bin
        return ["--symlink", os.readlink(path), str(path)]
    if path.is_dir():
        return ["--ro-bind", str(path), str(path)]
    return []


def _pin_ancestors(view: View) -> list[str]:
    """Each folder between a writable mount and a protected path inside it, mounted onto
    itself: a mount point cannot be renamed (EBUSY), so a command cannot move a protected
    path's parent, and with it the cover, out of the way (SECURITY.md F3)."""
    pins: set[Path] = set()
    for path in view.hidden:
        for root in view.write:
            if root in path.parents:
                pins |= {a for a in path.parents if root in a.parents and a.is_dir()
                         and not a.is_symlink()}
    args: list[str] = []
    for folder in sorted(pins, key=lambda p: len(p.parts)):
        args += ["--bind", str(folder), str(folder)]
    return args


def _hide(view: View, mounted: list[Path]) -> tuple[list[str], list[str]]:
    """Cover every existing protected path that a mounted folder would show (SECURITY.md F3):
    the covering mounts, and the remounts that make the covers read-only."""
    covers: list[str] = []
    read_only: list[str] = []
    shown = [p for p in view.hidden
             if any(_under(p, root) for root in mounted) and os.path.lexists(p)]
    folders = [p for p in shown if p.is_dir() and not p.is_symlink()]
    # Parents first, and nothing under a covered folder: its empty cover hides it already, and
    # a mount made there first would be buried by the parent's cover (`~/.config/mailagent`
    # holds the policies folder and the config in the default layout).
    for path in sorted(shown, key=lambda p: len(p.parts)):
        if any(folder != path and _under(path, folder) for folder in folders):
            continue
        if path.is_dir() and not path.is_symlink():
            covers += ["--tmpfs", str(path)]
            read_only += ["--remount-ro", str(path)]
        else:
            covers += ["--ro-bind", "/dev/null", str(path)]
    return covers, read_only


def exposed_missing(view: View) -> list[Path]:
    """Protected paths that do not exist yet inside a writable folder: a program could create
    them, so the caller removes whatever appears there after the run."""
    return [p for p in view.hidden
            if any(_under(p, root) for root in view.write) and not os.path.lexists(p)]


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class Runner:
    """Runs programs in the sandbox (or, with `sandbox=None`, bare) and can kill the one running."""

    sandbox: SandboxInfo | None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _cancelled: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # What else dies with the task's commands: its virtual display (mailagent.policy.display).
    on_kill: list[Callable[[], object]] = field(default_factory=list, repr=False)

    def run(self, argv: list[str], cwd: Path, view: View, limits: Limits) -> CommandResult:
        """Run `argv`; a host list runs only inside srt (NoHostFilterError where there is none:
        never with the whole network instead)."""
        sandbox = self.sandbox if self.sandbox is not None and self.sandbox.available else None
        if limits.hosts and (sandbox is None or not sandbox.srt.available):
            why = sandbox.srt.detail if sandbox is not None else "there is no sandbox"
            raise NoHostFilterError(f"the policy lets commands reach only {', '.join(limits.hosts)}"
                                    f", and nothing here can filter hosts: {why}")
        if sandbox is not None and sandbox.kind == "srt":
            return self._run_alone(sandbox, argv, cwd, view, limits)
        view.home.mkdir(parents=True, exist_ok=True)
        cgroup = Cgroup.make(limits.max_processes)
        inner = argv if sandbox is None else bwrap_argv(sandbox.program, view, limits, argv, cwd)
        # The limits hold for the command, not for srt's own node (its address space is larger).
        command = [*prlimit_argv(limits), *inner]
        env = sandbox_env(view)
        started = time.monotonic()
        filtered = bool(limits.hosts) and sandbox is not None  # srt's settings need a folder
        with (tempfile.TemporaryDirectory(prefix="mailagent-srt-") if filtered
              else contextlib.nullcontext("")) as folder:
            if filtered:
                assert sandbox is not None
                settings = write_settings(Path(folder), settings_for(
                    limits.hosts, sandbox.proxy, (*view.write, view.workspace), view.hidden))
                command = srt_argv(sandbox.srt.program, settings, command)
                env = srt_env(sandbox.srt.program, env)
            try:
                return self._supervise([*cgroup.enter(), *command], cwd, env, limits, started,
                                       cgroup)
            finally:
                cgroup.remove()

    def _run_alone(self, sandbox: SandboxInfo, argv: list[str], cwd: Path, view: View,
                   limits: Limits) -> CommandResult:
        """srt alone: its settings are the whole view; the launcher sets the limits inside, for
        the command and not for srt's node; TMPDIR is the command's own (no private /tmp)."""
        if limits.network:
            raise NoHostFilterError(
                "the policy gives commands the whole network, which srt alone (the sandbox "
                "here) does not give: list the hosts in [commands] network instead")
        view.home.mkdir(parents=True, exist_ok=True)
        (view.home / "tmp").mkdir(exist_ok=True)
        cgroup = Cgroup.make(limits.max_processes)
        with tempfile.TemporaryDirectory(prefix="mailagent-srt-") as folder:
            # srt's own TMPDIR, readable inside: its proxy's sockets are made there (Linux)
            env = srt_env(sandbox.program, {**sandbox_env(view), "TMPDIR": folder})
            settings = write_settings(Path(folder), alone_settings(
                limits.hosts, sandbox.proxy, workspace=view.workspace, hidden=view.hidden,
                read=(*alone_system(limits.hosts), *runtime_paths(), Path(folder).resolve(),
                      *view.read, *view.skills), write=view.write))
            command = srt_argv(sandbox.program, settings,
                               [*launcher_argv(limits, UNSET_INSIDE,
                                               {"TMPDIR": str(view.home / "tmp")}), *argv])
            try:
                return self._supervise([*cgroup.enter(), *command], cwd, env, limits,
                                       time.monotonic(), cgroup)
            finally:
                cgroup.remove()

    def _supervise(self, command: list[str], cwd: Path, env: dict[str, str], limits: Limits,
                   started: float, cgroup: Cgroup) -> CommandResult:
        with self._lock:
            if self._cancelled:
                return CommandResult(None, "", 0.0, cancelled=True)
            process = subprocess.Popen(
                command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            self._process = process
        reader = _Reader(process, limits.max_output_bytes)
        timed_out = False
        try:
            process.wait(timeout=limits.timeout_seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
        self._kill(process, cgroup)
        reader.join()
        with self._lock:
            self._process = None
            cancelled = self._cancelled
        exit_code = None if (timed_out or cancelled) else process.returncode
        return CommandResult(exit_code, reader.text(), time.monotonic() - started,
                             timed_out=timed_out, cancelled=cancelled, output_cut=reader.cut)

    def _kill(self, process: subprocess.Popen[bytes], cgroup: Cgroup) -> None:
        """Kill the whole tree: the process group, and with it bubblewrap's pid namespace."""
        with gone():
            os.killpg(process.pid, signal.SIGKILL)
        cgroup.kill_all()
        try:
            process.wait(timeout=KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            log.error("process %d did not end after SIGKILL", process.pid)

    @property
    def cancelled(self) -> bool:
        with self._lock:
            return self._cancelled

    def kill(self) -> None:
        """Stop the running program and everything it started (SECURITY.md A3); thread-safe."""
        with self._lock:
            self._cancelled = True
            process = self._process
        if process is not None:
            with gone():
                os.killpg(process.pid, signal.SIGKILL)
        for hook in list(self.on_kill):
            hook()


class _Reader(threading.Thread):
    """Reads the program's output up to the cap, then drains the rest so it never blocks."""

    def __init__(self, process: subprocess.Popen[bytes], cap: int) -> None:
        super().__init__(daemon=True)
        self.stream = process.stdout
        self.cap = cap
        self.chunks: list[bytes] = []
        self.size = 0
        self.cut = False
        self.start()

    def run(self) -> None:
        assert self.stream is not None
        while chunk := os.read(self.stream.fileno(), 65536):
            if self.size < self.cap:
                self.chunks.append(chunk[: self.cap - self.size])
            if self.size + len(chunk) > self.cap:
                self.cut = True
            self.size += len(chunk)
        self.stream.close()

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace")

    def join(self, timeout: float | None = KILL_GRACE_SECONDS) -> None:
        super().join(timeout)
