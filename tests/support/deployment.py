"""Several agents in one deployment: a config folder per agent, and `mailagent run --configs`
as a real subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.mail import AGENT, MX, OWNER
from tests.support.service import ServiceProcess

# The second agent of the tests: its own mailbox on the test Dovecot, its own owner.
AGENT_B = "bob-agent@example.com"
OWNER_B = "bob@example.com"
USERS = {AGENT: "agent-secret", OWNER: "owner-secret", AGENT_B: "bob-agent-secret"}


def write_agent_config(folder: Path, *, imap_port: int, smtp_port: int, model_url: str,
                       agent: str, owner: str, password: str, extra: str = "") -> Path:
    """`folder/mailagent.toml` for one agent, with its data and an empty policies folder in
    `folder` (as `mailagent init` leaves them); SMTP logs in as the test server's one user."""
    (folder / "policies").mkdir(parents=True, exist_ok=True)
    path = folder / "mailagent.toml"
    path.write_text(f"""
data_dir = "{folder / 'data'}"
{extra}

[imap]
host = "127.0.0.1"
port = {imap_port}
security = "none"
username = "{agent}"
password = "{password}"
idle_renew_seconds = 30
poll_seconds = 600
reconnect_max_seconds = 2
timeout_seconds = 5

[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
username = "{AGENT}"
password = "agent-secret"
from = "Agent <{agent}>"

[owner]
addresses = ["{owner}"]
verification = "authentication-results"
trusted_authserv_ids = ["{MX}"]

[canary]
interval_minutes = 0

[model]
name = "claude-test-model"
base_url = "{model_url}"
api_key = "test"
max_retries = 0
""", encoding="utf-8")
    return path


def addressed_to(raw: bytes, address: str) -> bytes:
    """A test mail (tests/support/mail.py writes To: the first agent) addressed to `address`."""
    return raw.replace(f"To: {AGENT}\r\n".encode(), f"To: {address}\r\n".encode(), 1)


def run_configs(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`mailagent run --configs folder` to its end (for the runs that refuse to start)."""
    return subprocess.run([sys.executable, "-m", "mailagent", "run", "--configs", str(folder),
                           *args], capture_output=True, text=True, timeout=60)


class DeploymentProcess(ServiceProcess):
    """`mailagent run --configs DIR`: the supervisor and one process per agent, every log
    line in one file."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder / "unused.toml")
        self.folder = folder
        self.log_path = folder / "deployment.log"

    def start(self, failpoint: str | None = None) -> DeploymentProcess:
        assert failpoint is None, "a failpoint is per agent: set it in one agent's process"
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mailagent", "run", "--configs", str(self.folder)],
                stdout=log, stderr=log, env=self.env, start_new_session=True)
        return self

    def kill(self) -> None:
        """Kill the supervisor and every agent process it started (its own session)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):  # agents outlive a supervisor gone first
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
