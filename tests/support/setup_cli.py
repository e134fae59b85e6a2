"""Running `mailagent` commands with a private, file-backed keyring, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PASSWORD = "agent-secret"


def keyring_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A private, file-backed keyring for this test, chosen the way a user would choose one."""
    env = {**os.environ, "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring",
           "XDG_DATA_HOME": str(tmp_path / "keyring"), "ANTHROPIC_API_KEY": "test",
           "TEST_AGENT_PASSWORD": PASSWORD, **extra}
    env.pop("MAILAGENT_CONFIG", None)
    return env


def run(env: dict[str, str], *args: str, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailagent", *args], capture_output=True,
                          text=True, env=env, input=stdin, timeout=120)


def keyring_get(env: dict[str, str], service: str, user: str) -> str:
    result = subprocess.run([sys.executable, "-m", "keyring", "get", service, user],
                            capture_output=True, text=True, env=env, timeout=60)
    return result.stdout.strip()


FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "{log}"
if [ "$2" = "is-active" ]; then echo active; fi
"""


def fake_home(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose HOME and XDG dirs are temporary, with a recording systemctl."""
    bin_dir, log = tmp_path / "bin", tmp_path / "systemctl.log"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL.format(log=log))
    (bin_dir / "systemctl").chmod(0o755)
    env = {**os.environ, "HOME": str(tmp_path / "home"), "TEST_IMAP_PASSWORD": "x",
           "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MAILAGENT_CONFIG", None)
    return env, log
