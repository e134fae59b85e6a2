"""Settings: the frozen shapes of the configuration, one dataclass per section of the TOML file.

In: nothing (definitions only; mailagent/config.py reads the file and builds them). Out:
`Settings`, whose sections each stage receives on its own. Pure: no I/O, no environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SECURITY_MODES = ("ssl", "starttls", "none")


VERIFICATION_MODES = ("authentication-results", "dkim", "none")


@dataclass(frozen=True)
class OAuthSettings:
    """XOAUTH2 for IMAP and SMTP: a refresh token traded for short-lived access tokens."""

    token_url: str
    client_id: str
    refresh_token: str
    refresh_token_ref: str | None = None  # keyring:... where a rotated refresh token goes
    client_secret: str | None = None
    scope: str = ""
    refresh_margin_seconds: float = 300.0  # an access token this close to expiry is renewed
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class ImapSettings:
    host: str
    port: int
    security: str
    username: str
    password: str
    folder: str = "INBOX"
    timeout_seconds: float = 30.0
    idle_renew_seconds: float = 300.0
    poll_seconds: float = 60.0
    reconnect_max_seconds: float = 300.0
    done_keyword: str = "$MailagentDone"
    ca_file: str | None = None
    sent_folder: str | None = None
    oauth: OAuthSettings | None = None  # log in with XOAUTH2 instead of the password


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    security: str
    from_address: str
    username: str | None = None
    password: str | None = None
    timeout_seconds: float = 30.0
    ca_file: str | None = None
    max_attachment_bytes: int = 15 * 1024 * 1024
    save_copy: bool = False  # append each sent mail to imap.sent_folder
    send_receipts: bool = False  # a short "got it" reply when a task is queued
    oauth: OAuthSettings | None = None  # log in with XOAUTH2 instead of the password


@dataclass(frozen=True)
class OwnerSettings:
    addresses: tuple[str, ...]
    verification: str
    trusted_authserv_ids: tuple[str, ...] = ()
    timezone: str = "UTC"  # IANA name; schedules are computed in this zone


# The Messages API compacts server-side at 50,000 input tokens at the earliest
# (https://docs.claude.com/en/docs/build-with-claude/compaction). Where the endpoint compacts,
# the client side compacts only as a backstop, at this share of model.max_context_tokens.
COMPACTION_MIN_TRIGGER_TOKENS = 50_000


SERVER_COMPACTION_BACKSTOP = 0.9


def is_server_compaction_possible(max_context_tokens: int) -> bool:
    """Whether the endpoint's earliest trigger comes before the client side's backstop."""
    return max_context_tokens * SERVER_COMPACTION_BACKSTOP > COMPACTION_MIN_TRIGGER_TOKENS


@dataclass(frozen=True)
class ModelSettings:
    name: str = "claude-sonnet-4-6"
    base_url: str | None = None
    api_key: str | None = None
    max_context_tokens: int = 100_000
    max_output_tokens: int = 8192
    timeout_seconds: float = 600.0
    max_retries: int = 2
    stream: bool = False
    compaction: str = "auto"  # auto | server | client
    # Prices in US dollars per million tokens, None: from mailagent's table for the model
    # (prices.py); cache writes and reads are priced from input.
    input_usd_per_mtok: float | None = None
    output_usd_per_mtok: float | None = None


@dataclass(frozen=True)
class AgentSettings:
    """Concurrency and the budgets of one task (SECURITY.md R1)."""

    max_concurrent_tasks: int = 8
    max_turns: int = 40
    max_tool_calls: int = 100
    max_identical_calls: int = 3
    max_task_seconds: float = 1800.0
    max_task_tokens: int = 2_000_000
    max_task_cost_usd: float = 2.0
    daily_cost_usd: float = 20.0
    max_tool_output_chars: int = 20_000
    retry_after_seconds: float = 60.0
    account_retry_seconds: float = 3600.0  # after a spend-limit or credit error
    approval_hours: float = 24.0
    # What the model can make persist is bounded (SECURITY.md R2): memory notes sit in every
    # system prompt of their conversation.
    max_memory_notes: int = 50
    max_memory_chars: int = 10_000


@dataclass(frozen=True)
class ScheduleSettings:
    """Recurring tasks: missed runs, failures, and what a hijacked model can create."""

    catch_up: str = "once"  # once | skip: what a run missed while the machine slept becomes
    pause_after_failures: int = 3  # consecutive failed runs that pause a schedule
    max_active_per_conversation: int = 20
    min_interval_minutes: int = 1
    late_grace_seconds: float = 60.0  # a run later than this counts as missed (sleep, off)
    file: Path | None = None  # schedules.toml beside the config, for schedules kept in a file


@dataclass(frozen=True)
class ServiceSettings:
    """How the service treats the computer it runs on."""

    keep_awake: bool = True  # hold off sleep while a task runs (systemd-inhibit, caffeinate...)
    log_file: Path | None = None  # also log to this file, rotated (stderr always)


@dataclass(frozen=True)
class CommandSettings:
    """Where the programs that sandbox run_command are: srt filters a policy's host list."""

    srt: Path | None = None  # Anthropic's sandbox-runtime; None: looked up on PATH
    upstream_proxy: str | None = None  # the proxy srt sends allowed connections through


@dataclass(frozen=True)
class CanarySettings:
    """The liveness probe of the inbound path: a signed mail to ourselves, expected back."""

    interval_minutes: float = 60.0  # 0 switches the probe off
    timeout_minutes: float = 15.0  # a probe not back this long after it was sent: inbound broken
    address: str | None = None  # where probes go; default the address in smtp.from


@dataclass(frozen=True)
class LimitSettings:
    """Resource limits on incoming mail (SECURITY.md R1) and the replay window (S2)."""

    max_message_bytes: int = 25 * 1024 * 1024
    max_header_bytes: int = 256 * 1024
    max_mime_depth: int = 20
    max_mime_parts: int = 200
    max_attachments: int = 20
    max_attachment_bytes: int = 20 * 1024 * 1024
    max_age_days: float = 14.0
    max_future_minutes: float = 60.0
    max_mails_per_hour: int = 60  # replies to our mail per owner address; more are held (S4)


@dataclass(frozen=True)
class Settings:
    config_path: Path
    data_dir: Path
    policies_dir: Path
    database_url: str
    imap: ImapSettings
    smtp: SmtpSettings
    owner: OwnerSettings
    model: ModelSettings
    limits: LimitSettings
    agent: AgentSettings = AgentSettings()
    schedules: ScheduleSettings = ScheduleSettings()
    failpoint: str | None = None
    service: ServiceSettings = ServiceSettings()
    provider: str | None = None  # a key of providers.PROVIDERS: check's hints speak of it
    canary: CanarySettings = CanarySettings()
    commands: CommandSettings = CommandSettings()
    # The owner's Agent Skills (policy/skills.py); config.py sets it: `skills_dir`, default
    # skills/ beside the policies folder. None: no skills at all.
    skills_dir: Path | None = None
    # What the other agents of a deployment own (`run --configs DIR`, deployment.py): their
    # configs, policies, skills and data directories, protected here as this agent's own are.
    others_protected: tuple[Path, ...] = ()

    @property
    def workspaces_dir(self) -> Path:
        return self.data_dir / "workspaces"
