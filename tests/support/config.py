"""Settings and config files for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailagent.config import (
    ImapSettings,
    LimitSettings,
    ModelSettings,
    OwnerSettings,
    Settings,
    SmtpSettings,
)
from tests.support.mail import AGENT, MX, OWNER


def settings_for_tests(tmp_path: Path, **changes: Any) -> Settings:
    """Settings for in-process tests; nothing here connects anywhere until run."""
    values: dict[str, Any] = {
        "config_path": tmp_path / "mailagent.toml",
        "data_dir": tmp_path / "data",
        "policies_dir": tmp_path / "policies",
        "database_url": f"sqlite:///{tmp_path / 'data' / 'mailagent.db'}",
        "imap": ImapSettings("127.0.0.1", 1, "none", AGENT, "x"),
        "smtp": SmtpSettings("127.0.0.1", 1, "none", f"Agent <{AGENT}>"),
        "owner": OwnerSettings((OWNER,), "authentication-results", (MX,)),
        "model": ModelSettings(),
        "limits": LimitSettings(),
    }
    values.update(changes)
    return Settings(**values)


def write_config(tmp_path: Path, imap_port: int, smtp_port: int, *, extra: str = "",
                 imap_extra: str = "", imap_host: str = "127.0.0.1",
                 model_url: str = "http://127.0.0.1:9", model_extra: str = "",
                 database_url: str | None = None) -> Path:
    """A config file for the service under test; the IMAP password comes from the environment
    variable TEST_IMAP_PASSWORD, as a user's `password_env` would. `database_url` is written
    when given (SQLite in the data folder otherwise, the default). An empty policies folder
    beside it denies every file, as `mailagent init` would leave it without a folder rule."""
    (tmp_path / "policies").mkdir(exist_ok=True)
    path = tmp_path / "mailagent.toml"
    database = f'database_url = "{database_url}"' if database_url else ""
    path.write_text(f"""
data_dir = "{tmp_path / 'data'}"
{database}
{extra}

[imap]
host = "{imap_host}"
port = {imap_port}
security = "none"
username = "{AGENT}"
password_env = "TEST_IMAP_PASSWORD"
idle_renew_seconds = 30
poll_seconds = 600
reconnect_max_seconds = 2
timeout_seconds = 5
{imap_extra}

[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
username = "{AGENT}"
password = "agent-secret"
from = "Mail Agent <{AGENT}>"

[owner]
addresses = ["{OWNER}"]
verification = "authentication-results"
trusted_authserv_ids = ["{MX}"]

[model]
name = "claude-test-model"
base_url = "{model_url}"
api_key = "test"
max_retries = 0
{model_extra}
""", encoding="utf-8")
    return path
