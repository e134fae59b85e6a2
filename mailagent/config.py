"""Configuration: one TOML file (plus `*_env` secrets) -> frozen settings.

In: the path of the config file and the process environment. Out: `Settings`, a tree of frozen
dataclasses, each stage receiving only its own section. This is the only module that reads
`os.environ`. It never logs a secret, and every error names the file, the key and what to do.
"""

from __future__ import annotations

import os
import re
import tomllib
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import platformdirs

from mailagent import keystore
from mailagent.addresses import plain_address
from mailagent.errors import ConfigError, SecretStoreError, nearest
from mailagent.providers import PROVIDERS
from mailagent.settings import (
    COMPACTION_MIN_TRIGGER_TOKENS,
    SECURITY_MODES,
    SERVER_COMPACTION_BACKSTOP,
    VERIFICATION_MODES,
    AgentSettings,
    CanarySettings,
    CommandSettings,
    ImapSettings,
    LimitSettings,
    ModelSettings,
    OAuthSettings,
    OwnerSettings,
    ScheduleSettings,
    ServiceSettings,
    Settings,
    SmtpSettings,
    is_server_compaction_possible,
)

# The settings are defined in mailagent/settings.py; they are read and built here.
__all__ = [
    "COMPACTION_MIN_TRIGGER_TOKENS",
    "CONFIG_ENV",
    "FAILPOINT_ENV",
    "SECURITY_MODES",
    "SERVER_COMPACTION_BACKSTOP",
    "VERIFICATION_MODES",
    "AgentSettings",
    "CanarySettings",
    "ImapSettings",
    "LimitSettings",
    "ModelSettings",
    "OAuthSettings",
    "OwnerSettings",
    "ScheduleSettings",
    "ServiceSettings",
    "Settings",
    "SmtpSettings",
    "env_value",
    "environment",
    "find_config_path",
    "is_server_compaction_possible",
    "load_settings",
]

CONFIG_ENV = "MAILAGENT_CONFIG"


FAILPOINT_ENV = "MAILAGENT_FAILPOINT"


class _Section:
    """Typed access to one TOML table, with errors that name file and key."""

    def __init__(self, data: Mapping[str, Any], path: Path, prefix: str,
                 secrets: bool = True) -> None:
        self.data, self.path, self.prefix = data, path, prefix
        self.secrets = secrets  # False: secrets are not read (an empty string stands in)
        self.known: set[str] = set()  # every key the loader asked for: the rest are unknown
        self.tables: list[_Section] = []

    def _fail(self, key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{self.prefix}{key} {problem} in {self.path}: {fix}")

    def unknown(self, key: str, close: str | None) -> ConfigError:
        what = "table" if isinstance(self.data[key], dict) else "key"
        if close is not None:
            return ConfigError(f"{self.prefix}{key}: unknown {what} in {self.path}; did you "
                               f"mean {self.prefix}{close}?")
        where = f"[{self.prefix[:-1]}]" if self.prefix else "the top level"
        return ConfigError(f"{self.prefix}{key}: unknown {what} in {self.path}: remove it or fix "
                           f"its name; {where} knows {', '.join(sorted(self.known))}")

    def refuse_unknown(self) -> None:
        """Raise for the first key no part of the loader read, here or in a table below."""
        for key in self.data:
            if key not in self.known:
                raise self.unknown(key, nearest(key, self.known))
        for table in self.tables:
            table.refuse_unknown()

    def has(self, key: str) -> bool:
        """Whether `key` is given; it is a known key either way."""
        self.known.add(key)
        return key in self.data

    def get(self, key: str, kind: type, default: Any = ...) -> Any:
        self.known.add(key)
        if key not in self.data:
            if default is ...:
                raise self._fail(key, "is missing", "set it")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self._fail(key, f"must be a {kind.__name__}, not {value!r}", "fix its value")
        return value

    def positive(self, key: str, kind: type, default: Any) -> Any:
        value = self.get(key, kind, default)
        if value <= 0:
            raise self._fail(key, f"must be greater than zero, not {value!r}", "fix its value")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = ...) -> str:
        value: str = self.get(key, str, default)
        if value not in choices:
            raise self._fail(key, f"is {value!r}", f"use one of {', '.join(choices)}")
        return value

    def strings(self, key: str, default: Any = ...) -> tuple[str, ...]:
        values = self.get(key, list, default)
        if not all(isinstance(v, str) and v.strip() for v in values):
            raise self._fail(key, "must be a list of non-empty strings", "fix its value")
        return tuple(values)

    def secret(self, key: str, environ: Mapping[str, str], required: bool = True) -> str | None:
        """A secret given inline as `key` (or as a `keyring:` reference there) or through the
        variable named by `key_env`."""
        env_key = f"{key}_env"
        self.known |= {key, env_key}
        if not self.secrets and (key in self.data or env_key in self.data):
            self.get(env_key if env_key in self.data else key, str)  # still of the right type
            return ""
        if key in self.data:
            return self.resolve(key, str(self.get(key, str)))
        if env_key in self.data:
            name = self.get(env_key, str)
            if environ.get(name):
                return environ[name]
            if not required:
                return None
            raise ConfigError(
                f"{self.prefix}{env_key} names the environment variable {name}, which is not "
                f"set (config {self.path}): export {name}, or give {self.prefix}{key} inline"
            )
        if required:
            raise self._fail(key, "is missing", f"set {self.prefix}{key} or {self.prefix}{env_key}")
        return None

    def resolve(self, key: str, value: str) -> str:
        """The secret itself when `value` is a `keyring:SERVICE/USER` reference."""
        if not keystore.is_reference(value):
            return value
        if not self.secrets:
            return ""
        try:
            return keystore.read_secret(value)
        except SecretStoreError as exc:
            raise ConfigError(f"{self.prefix}{key} in {self.path}: {exc}") from None

    def section(self, key: str, required: bool = True) -> _Section:
        self.known.add(key)
        value = self.data.get(key)
        if value is None:
            if required:
                raise self._fail(key, "section is missing", f"add a [{key}] table")
            value = {}
        if not isinstance(value, dict):
            raise self._fail(key, "must be a table", f"write it as [{key}]")
        table = _Section(value, self.path, f"{self.prefix}{key}.", self.secrets)
        self.tables.append(table)
        return table


def _default_port(security: str, ssl: int, starttls: int, plain: int) -> int:
    return {"ssl": ssl, "starttls": starttls, "none": plain}[security]


def _oauth(s: _Section | None, environ: Mapping[str, str]) -> OAuthSettings | None:
    if s is None:
        return None
    ref = s.get("refresh_token", str, None)
    return OAuthSettings(
        token_url=s.get("token_url", str),
        client_id=s.get("client_id", str),
        refresh_token=s.secret("refresh_token", environ) or "",
        refresh_token_ref=ref if ref and keystore.is_reference(ref) else None,
        client_secret=s.secret("client_secret", environ, required=False),
        scope=s.get("scope", str, ""),
        refresh_margin_seconds=s.positive("refresh_margin_seconds", float, 300.0),
        timeout_seconds=s.positive("timeout_seconds", float, 30.0),
    )


def _imap(s: _Section, environ: Mapping[str, str],
          oauth: OAuthSettings | None = None) -> ImapSettings:
    security = s.choice("security", SECURITY_MODES, "ssl")
    return ImapSettings(
        host=s.get("host", str),
        port=s.get("port", int, _default_port(security, 993, 143, 143)),
        security=security,
        username=s.get("username", str),
        password=s.secret("password", environ, required=oauth is None) or "",
        folder=s.get("folder", str, "INBOX"),
        timeout_seconds=s.positive("timeout_seconds", float, 30.0),
        idle_renew_seconds=s.positive("idle_renew_seconds", float, 300.0),
        poll_seconds=s.positive("poll_seconds", float, 60.0),
        reconnect_max_seconds=s.positive("reconnect_max_seconds", float, 300.0),
        done_keyword=s.get("done_keyword", str, "$MailagentDone"),
        ca_file=s.get("ca_file", str, None),
        sent_folder=s.get("sent_folder", str, None),
        oauth=oauth,
    )


def _smtp(s: _Section, environ: Mapping[str, str],
          oauth: OAuthSettings | None = None) -> SmtpSettings:
    security = s.choice("security", SECURITY_MODES, "ssl")
    username = s.get("username", str, None)
    return SmtpSettings(
        host=s.get("host", str),
        port=s.get("port", int, _default_port(security, 465, 587, 25)),
        security=security,
        from_address=s.get("from", str),
        username=username,
        password=s.secret("password", environ,
                          required=username is not None and oauth is None),
        timeout_seconds=s.positive("timeout_seconds", float, 30.0),
        ca_file=s.get("ca_file", str, None),
        max_attachment_bytes=s.positive("max_attachment_bytes", int, 15 * 1024 * 1024),
        save_copy=s.get("save_copy", bool, False),
        send_receipts=s.get("send_receipts", bool, False),
        oauth=oauth if username is not None else None,
    )


def _owner_addresses(s: _Section) -> tuple[str, ...]:
    """Each one address, as intake reads a From header; "Me <me@example.com>" is me@example.com."""
    addresses = []
    for value in s.strings("addresses"):
        address, why = plain_address(value)
        if address is None:
            raise ConfigError(f"owner.addresses holds {value!r}, which {why} in {s.path}: write "
                              'each owner address as one plain address, e.g. "me@example.com"')
        addresses.append(address)
    if not addresses:
        raise ConfigError(f"owner.addresses is empty in {s.path}: list your own address")
    return tuple(addresses)


def _owner(s: _Section, environ: Mapping[str, str]) -> OwnerSettings:
    addresses = _owner_addresses(s)
    verification = s.choice("verification", VERIFICATION_MODES, "authentication-results")
    trusted = tuple(t.lower() for t in s.strings("trusted_authserv_ids", []))
    if verification == "authentication-results" and not trusted:
        raise ConfigError(
            f"owner.trusted_authserv_ids is empty in {s.path}: list the authserv-id your "
            "provider writes in Authentication-Results (e.g. mx.google.com), or choose "
            'owner.verification = "dkim"'
        )
    zone = s.get("timezone", str, None) or _local_zone(environ)
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"owner.timezone {zone!r} is not a known time zone in {s.path}: use an "
                          'IANA name such as "Europe/Paris" or "America/New_York"') from None
    return OwnerSettings(addresses, verification, trusted, zone)


def _local_zone(environ: Mapping[str, str]) -> str:
    """The machine's IANA zone name: $TZ, else where /etc/localtime points, else UTC."""
    candidates = [environ.get("TZ", "").lstrip(":")]
    localtime = Path("/etc/localtime")
    if localtime.is_symlink():
        target = str(localtime.resolve())
        candidates.append(target.partition("zoneinfo/")[2])
    timezone_file = Path("/etc/timezone")
    if timezone_file.is_file():
        candidates.append(timezone_file.read_text(encoding="utf-8", errors="replace").strip())
    for name in candidates:
        try:
            if name:
                zoneinfo.ZoneInfo(name)
                return name
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            continue
    return "UTC"


def _schedules(s: _Section, base: Path) -> ScheduleSettings:
    d = ScheduleSettings()
    return ScheduleSettings(
        catch_up=s.choice("catch_up", ("once", "skip"), d.catch_up),
        pause_after_failures=s.positive("pause_after_failures", int, d.pause_after_failures),
        max_active_per_conversation=s.positive("max_active_per_conversation", int,
                                               d.max_active_per_conversation),
        min_interval_minutes=s.positive("min_interval_minutes", int, d.min_interval_minutes),
        late_grace_seconds=s.positive("late_grace_seconds", float, d.late_grace_seconds),
        file=_path(s.get("file", str, "schedules.toml"), base).resolve(),
    )


def _canary(s: _Section) -> CanarySettings:
    d = CanarySettings()
    interval = s.get("interval_minutes", float, d.interval_minutes)
    if interval < 0:
        raise s._fail("interval_minutes", f"must be 0 (off) or more, not {interval!r}",
                      "fix its value")
    return CanarySettings(interval_minutes=interval,
                          timeout_minutes=s.positive("timeout_minutes", float, d.timeout_minutes),
                          address=s.get("address", str, None))


def _price(s: _Section, key: str) -> float | None:
    if not s.has(key):
        return None
    value = float(s.get(key, float))
    if value < 0:
        raise ConfigError(f"model.{key} is {value} in {s.path}: a price cannot be negative")
    return value


def _model(s: _Section, environ: Mapping[str, str]) -> ModelSettings:
    key_env = s.get("api_key_env", str, "ANTHROPIC_API_KEY")
    api_key = s.get("api_key", str, None)
    api_key = (s.resolve("api_key", api_key) if api_key else None) or environ.get(key_env) or None
    d = ModelSettings()
    settings = ModelSettings(
        name=s.get("name", str, d.name),
        base_url=s.get("base_url", str, None) or environ.get("ANTHROPIC_BASE_URL") or None,
        api_key=api_key,
        max_context_tokens=s.positive("max_context_tokens", int, d.max_context_tokens),
        max_output_tokens=s.positive("max_output_tokens", int, d.max_output_tokens),
        timeout_seconds=s.positive("timeout_seconds", float, d.timeout_seconds),
        max_retries=s.get("max_retries", int, d.max_retries),
        stream=s.get("stream", bool, d.stream),
        compaction=s.choice("compaction", ("auto", "server", "client"), d.compaction),
        input_usd_per_mtok=_price(s, "input_usd_per_mtok"),
        output_usd_per_mtok=_price(s, "output_usd_per_mtok"),
    )
    if settings.compaction == "server" and not is_server_compaction_possible(
            settings.max_context_tokens):
        least = int(COMPACTION_MIN_TRIGGER_TOKENS / SERVER_COMPACTION_BACKSTOP) + 1
        raise ConfigError(
            f'model.compaction = "server" needs model.max_context_tokens of at least {least} '
            f"in {s.path} (it is {settings.max_context_tokens}; the API compacts at "
            f"{COMPACTION_MIN_TRIGGER_TOKENS} input tokens at the earliest): raise it, or set "
            'compaction = "auto"')
    return settings


def _commands(s: _Section, base: Path) -> CommandSettings:
    srt = s.get("srt", str, None)
    proxy = s.get("upstream_proxy", str, None)
    if proxy is not None and not re.match(r"^https?://[^\s/]+/?$", proxy):
        raise ConfigError(f"commands.upstream_proxy {proxy!r} in {s.path}: write it as "
                          'http://host:port, e.g. "http://proxy.example.org:3128"')
    return CommandSettings(srt=_path(srt, base) if srt else None, upstream_proxy=proxy)


def _service(s: _Section, base: Path) -> ServiceSettings:
    log_file = s.get("log_file", str, None)
    if log_file is not None and not log_file.strip():
        raise ConfigError(f'service.log_file is empty in {s.path}: give a file path, e.g. '
                          '"~/.local/state/mailagent/mailagent.log", or remove the key')
    return ServiceSettings(keep_awake=s.get("keep_awake", bool, ServiceSettings.keep_awake),
                           log_file=None if log_file is None else _path(log_file, base).absolute())


def _positives(s: _Section, defaults: Any) -> dict[str, Any]:
    return {
        name: s.positive(name, type(getattr(defaults, name)), getattr(defaults, name))
        for name in type(defaults).__dataclass_fields__
    }


def _limits(s: _Section) -> LimitSettings:
    return LimitSettings(**_positives(s, LimitSettings()))


def _agent(s: _Section) -> AgentSettings:
    return AgentSettings(**_positives(s, AgentSettings()))


def _path(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def env_value(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """One environment variable (e.g. the one `mailagent init --password-env` names)."""
    environ = os.environ if environ is None else environ
    return environ.get(name) or None


def environment() -> Mapping[str, str]:
    """mailagent's own environment, where secrets given by reference (`env:NAME`) are read."""
    return os.environ


def find_config_path(given: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The config path from the command line, else $MAILAGENT_CONFIG, else the user's config dir."""
    environ = os.environ if environ is None else environ
    if given:
        return Path(given).expanduser()
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV]).expanduser()
    return Path(platformdirs.user_config_dir("mailagent")) / "mailagent.toml"


def load_settings(path: Path, environ: Mapping[str, str] | None = None,
                  secrets: bool = True) -> Settings:
    """Read and validate the config file at `path`; raise ConfigError naming what to fix.
    With `secrets=False` (commands that log in nowhere: `status`, `policy explain`) no secret
    is read from the environment or the keyring, and each stands as an empty string.

    A key the loader never reads is an error too, named with the known key it is closest to:
    a misspelt optional key would otherwise be ignored and its default used in silence."""
    environ = os.environ if environ is None else environ
    root = _Section(_read_toml(path), path, "", secrets)
    settings = _settings(root, path, environ)
    root.refuse_unknown()
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"no config file at {path}: write one with `mailagent init`, or pass --config PATH"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def _settings(root: _Section, path: Path, environ: Mapping[str, str]) -> Settings:
    base = path.resolve().parent
    data_dir = _path(
        root.get("data_dir", str, platformdirs.user_data_dir("mailagent")), base
    ).resolve()
    database_url = root.get("database_url", str, f"sqlite:///{data_dir / 'mailagent.db'}")
    oauth = _oauth(root.section("oauth") if root.has("oauth") else None, environ)
    policies_dir = _path(root.get("policies_dir", str, "policies"), base).resolve()
    return Settings(
        config_path=path.resolve(),
        data_dir=data_dir,
        policies_dir=policies_dir,
        skills_dir=_path(root.get("skills_dir", str, str(policies_dir.parent / "skills")),
                         base).resolve(),
        database_url=database_url,
        imap=_imap(root.section("imap"), environ, oauth),
        smtp=_smtp(root.section("smtp"), environ, oauth),
        owner=_owner(root.section("owner"), environ),
        model=_model(root.section("model", required=False), environ),
        limits=_limits(root.section("limits", required=False)),
        agent=_agent(root.section("agent", required=False)),
        schedules=_schedules(root.section("schedules", required=False), base),
        failpoint=environ.get(FAILPOINT_ENV) or None,
        service=_service(root.section("service", required=False), base),
        provider=root.choice("provider", tuple(PROVIDERS), None) if root.has("provider") else None,
        canary=_canary(root.section("canary", required=False)),
        commands=_commands(root.section("commands", required=False), base),
    )
