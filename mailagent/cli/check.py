"""`mailagent check`: one line per check of the config, the policies and what they allow
(commands, web tools, skills, connectors), the templates and schedules, the store, the keyring,
IMAP, SMTP and the model endpoint; a hint for each failure a person can fix.

The checks of one config share what they look at through `Loaded`: the policy files are parsed
once and the store opened once, however many checks read them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from mailagent.agent.prices import WEB_SEARCH_USD
from mailagent.cli import doctor
from mailagent.config import Settings, find_config_path, load_settings
from mailagent.errors import ConfigError, MailagentError, PolicyError, WhenError
from mailagent.mail.mailbox import Mailbox
from mailagent.mail.notify import check_smtp
from mailagent.mail.render import check_templates
from mailagent.policy import (
    CommandsRule,
    FolderRule,
    Policy,
    explain_internet,
    load_policy,
)
from mailagent.policy.desktop import app_name, find_app, missing_programs
from mailagent.policy.sandbox import (
    SandboxInfo,
    find_bubblewrap,
    find_sandbox,
    process_limit_kind,
)
from mailagent.policy.skills import describe_catalogue, read_skills
from mailagent.store import Store, mailbox_of
from mailagent.store.halts import active_halt
from mailagent.tasks.when import read_schedules_file


class Loaded:
    """What the checks of one config share, each loaded at most once: the policy (or the
    PolicyError it raised) and the store (or the error that kept it shut); close() closes the
    store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._policy: Policy | PolicyError | None = None
        self._store: Store | MailagentError | None = None

    def policy(self) -> Policy:
        """The policy; when it does not load, the same PolicyError at every call."""
        if self._policy is None:
            try:
                self._policy = load_policy(self.settings.policies_dir)
            except PolicyError as exc:
                self._policy = exc
        if isinstance(self._policy, PolicyError):
            raise self._policy
        return self._policy

    def policy_if_valid(self) -> Policy | None:
        """The policy, or None when it does not load (the policy check has said why)."""
        try:
            return self.policy()
        except PolicyError:
            return None

    def store(self) -> Store:
        """The store, opened and migrated; when it does not open, the same error every time."""
        if self._store is None:
            try:
                self._store = Store.open(self.settings.database_url)
            except MailagentError as exc:
                self._store = exc
        if isinstance(self._store, MailagentError):
            raise self._store
        return self._store

    def close(self) -> None:
        if isinstance(self._store, Store):
            self._store.close()


def _check_imap(settings: Settings) -> str:
    mailbox = Mailbox(settings.imap)
    mailbox.connect()
    idle = "IDLE" if mailbox.can_idle else "polling (no IDLE)"
    mailbox.close()
    return f"IMAP login as {settings.imap.username} on {settings.imap.host}, folder " \
           f"{settings.imap.folder!r}, {idle}"


def _check_smtp(settings: Settings) -> str:
    asyncio.run(check_smtp(settings.smtp))
    who = settings.smtp.username or "no AUTH"
    return f"SMTP {settings.smtp.host}:{settings.smtp.port} ({who})"


def _check_model(settings: Settings) -> str:
    from mailagent.agent.api import check_model  # the SDK takes seconds to import: only when needed

    return asyncio.run(check_model(settings.model))


def _check_policies(loaded: Loaded) -> str:
    """The policy loads, its folder exists, and every [[folders]] path exists: `run` denies all
    without the folder and keeps a rule for a path that may appear later, but here both are
    most likely a mistake."""
    settings = loaded.settings
    folder = settings.policies_dir
    if not folder.exists():
        raise MailagentError(
            f"no policies folder at {folder}, so every file is denied: create it (and a "
            f"*.toml file in it, see README.md), set policies_dir in {settings.config_path}, "
            "or run `mailagent init`")
    policy = loaded.policy()
    missing = [_missing_folder(folder, rule) for rule in policy.folders if not rule.path.exists()]
    if missing:
        raise MailagentError("\nerror: ".join(missing))
    return (f"policies in {folder}: {len(policy.folders)} folder rule(s) "
            f"from {len(policy.files)} file(s)")


def _missing_folder(policies_dir: Path, rule: FolderRule) -> str:
    name, _, line = rule.source.rpartition(":")
    return (f"{policies_dir / name} line {line}: the [[folders]] path {rule.path} does not "
            "exist: create it, or fix the path in that file")


def _check_commands(loaded: Loaded) -> str:
    """Whether run_command is offered, in which sandbox, and if not, why and how to fix it."""
    policy = loaded.policy_if_valid()
    if policy is None:
        return "run_command: decided once the policy error above is fixed"
    rule = policy.commands
    if rule is None:
        return "run_command: not offered (no [commands] table in the policies)"
    commands = loaded.settings.commands
    return commands_line(rule, find_sandbox(commands.srt, commands.upstream_proxy))


def commands_line(rule: CommandsRule, sandbox: SandboxInfo) -> str:
    """The line on run_command for a policy's [commands] rule, in the sandbox found here."""
    limit = {"cgroup": "a pids cgroup", "rlimit": "RLIMIT_NPROC",
             "none": "nothing (running as root without a writable pids cgroup)"}
    if sandbox.kind == "srt":
        if rule.network:
            raise MailagentError(
                f"run_command is refused at every call: {rule.source} gives commands the whole "
                f"network, which srt alone (the sandbox on {sys.platform}, where there is no "
                "bubblewrap) does not give: list the hosts they need in [commands] network")
        network = f"network only to {', '.join(rule.hosts)}, filtered by srt's proxy" \
            f"{_upstream(sandbox.proxy)}" if rule.hosts else "no network"
        return (f"run_command: {', '.join(rule.allow)} in {sandbox.detail}, because there is no "
                f"bubblewrap on {sys.platform} ({network}; process count bounded by "
                f"{limit[process_limit_kind()]})")
    if sandbox.available and rule.hosts:
        if not sandbox.srt.available:
            raise MailagentError(
                f"run_command is refused at every call: {rule.source} lets commands reach only "
                f"{', '.join(rule.hosts)}, and bubblewrap alone cannot filter hosts: "
                f"{sandbox.srt.detail}")
        return (f"run_command: {', '.join(rule.allow)} in {sandbox.detail} inside "
                f"{sandbox.srt.detail} (network only to {', '.join(rule.hosts)}, filtered by "
                f"srt's proxy{_upstream(sandbox.proxy)}, because {rule.source} lists hosts; "
                f"process count bounded by {limit[process_limit_kind()]})")
    if sandbox.available:
        network = "the whole network" if rule.network else "no network"
        return (f"run_command: {', '.join(rule.allow)} in {sandbox.detail} alone ({network}, "
                f"so no host filter is needed; process count bounded by "
                f"{limit[process_limit_kind()]})")
    if rule.unsafe_no_sandbox and rule.hosts:
        raise MailagentError(f"run_command is refused at every call: {rule.source} lists hosts "
                             "and there is no sandbox to filter them; unsafe_no_sandbox never "
                             f"widens a host list to the whole network. {sandbox.detail}")
    if rule.unsafe_no_sandbox:
        return ("run_command: offered without a sandbox\nwarning: run_command runs WITHOUT A "
                f"SANDBOX (unsafe_no_sandbox = true in {rule.source}): a fooled model can read "
                f"and change anything you can. {sandbox.detail}")
    raise MailagentError(f"run_command is NOT offered although {rule.source} has [commands]: "
                         f"{sandbox.detail}")


def _upstream(proxy: str | None) -> str:
    shown = proxy.split("://", 1)[-1].rpartition("@")[2] if proxy else ""  # no password shown
    return f", then through the proxy {shown}" if proxy else ""


def _check_internet(loaded: Loaded) -> str:
    """Whether the API's web tools are offered, where, and how often per task."""
    policy = loaded.policy_if_valid()
    if policy is None:
        return "web tools: decided once the policy error above is fixed"
    rule = policy.internet
    offered = [name for name, on in (("web_search", rule and rule.web_search),
                                     ("web_fetch", rule and rule.web_fetch)) if on]
    if rule is None or not offered:
        why = "no [internet] table" if rule is None else f"{rule.source} turns none on"
        return f"web tools: not offered ({why} in the policies)"
    price = f"; a search costs ${WEB_SEARCH_USD:g} on top of tokens" if rule.web_search else ""
    return f"web tools: {'; '.join(explain_internet(policy, name)[1] for name in offered)}{price}"


def _check_desktop(loaded: Loaded) -> str:
    """Whether the computer-use tool is offered: Linux only, in bubblewrap, with its programs."""
    policy = loaded.policy_if_valid()
    if policy is None:
        return "desktop: decided once the policy error above is fixed"
    rule = policy.desktop
    if rule is None:
        return "desktop: not offered (no [desktop] table in the policies)"
    if sys.platform != "linux":
        raise MailagentError(f"desktop: NOT offered although {rule.source} has [desktop]: the "
                             f"virtual display is Linux only (this is {sys.platform}); remove "
                             "the [desktop] table there")
    sandbox = find_bubblewrap()
    missing = missing_programs()
    if not sandbox.available or missing:
        why = sandbox.detail if not sandbox.available else (
            f"{', '.join(missing)} not installed (Debian/Ubuntu: apt install xvfb xdotool "
            "x11-apps)")
        raise MailagentError(f"desktop: NOT offered although {rule.source} has [desktop]: {why}")
    apps = [f"{app_name(a)} ({'found' if find_app(a) else 'NOT FOUND'})" for a in rule.apps]
    return (f"desktop: {', '.join(apps)} on a virtual display in {sandbox.detail}, no network, "
            f"at most {rule.max_actions} actions per task ({rule.source})")


def _check_connectors(loaded: Loaded) -> str:
    """Each MCP server of the policy: started once, its tools listed with their decisions."""
    policy = loaded.policy_if_valid()
    if policy is None:
        return "MCP servers: checked once the policy error above is fixed"
    rules = policy.mcp
    if not rules:
        return "MCP servers: none (no [mcp.<server>] table in the policies)"
    from mailagent.tools.mcp_servers import check_servers  # the MCP SDK takes seconds to import

    lines, errors = check_servers(rules)
    if errors:
        raise _PartlyFailedError("\nerror: ".join(errors), lines)
    return "\n".join(lines)


def _check_skills(loaded: Loaded) -> str:
    """The skills folder: each valid skill and which policy file allows it; an error for each
    invalid one (it is not listed to the model)."""
    if loaded.settings.skills_dir is None:
        return "skills: none (no skills folder)"
    catalogue = read_skills(loaded.settings.skills_dir)
    lines, errors = describe_catalogue(loaded.policy_if_valid(), catalogue, Path.home())
    if errors:
        raise _PartlyFailedError("\nerror: ".join(errors), lines)
    return "\n".join(lines)


def _check_templates(settings: Settings) -> str:
    return f"templates: {', '.join(check_templates())}"


def _check_schedules(settings: Settings) -> str:
    path, zone = settings.schedules.file, settings.owner.timezone
    if path is None or not path.exists():
        return f"schedules in time zone {zone} (no schedules file)"
    try:
        entries = read_schedules_file(path, settings.schedules.min_interval_minutes)
    except WhenError as exc:
        raise ConfigError(str(exc)) from None
    return f"schedules in time zone {zone}; {len(entries)} in {path}"


def _check_store(loaded: Loaded) -> str:
    """The database, migrated, and whether its claim on the mailbox is free (SECURITY.md L5)."""
    imap = loaded.settings.imap
    mailbox = mailbox_of(imap)
    store = loaded.store()
    holder = store.mailbox_holder(mailbox)
    database = store.describe()
    if holder is None:
        return f"database {database}; the mailbox {mailbox} is free"
    return (f"database {database}; the mailbox {mailbox} is held by a running service "
            f"({holder.line()}): `mailagent run` starts only where that one has stopped")


def _check_tools(loaded: Loaded) -> str:
    """Whether tools are stopped after a failed integrity check (they stay so until resume)."""
    halt = active_halt(loaded.store())
    if halt is None:
        return "tools: not stopped"
    raise MailagentError(
        f"tools are stopped since {halt.halted_at:%Y-%m-%d %H:%M} UTC: {halt.reason}; look at "
        f"what changed, then run `mailagent resume --config {loaded.settings.config_path}`")


class _PartlyFailedError(MailagentError):
    """A check of several things where some passed: `passed` are their lines, as a check
    returns them."""

    def __init__(self, message: str, passed: list[str]) -> None:
        super().__init__(message)
        self.passed = passed


def _of_settings(check: Callable[[Settings], str]) -> Callable[[Loaded], str]:
    """A check that needs the settings alone, as one of CHECKS."""
    return lambda loaded: check(loaded.settings)


CHECKS: tuple[Callable[[Loaded], str], ...] = (
    _check_policies, _check_commands, _check_internet, _check_desktop, _check_skills,
    *map(_of_settings, (_check_templates, _check_schedules)),
    _check_store, _check_tools, _check_connectors,
    *map(_of_settings, (doctor.check_keyring, doctor.check_oauth, _check_imap, _check_smtp,
                        _check_model, doctor.check_service)))


def cmd_check(args: argparse.Namespace) -> int:
    """`check --config PATH`: the config loaded, then checked (check_settings)."""
    return check_settings(load_settings(find_config_path(args.config)))


def check_settings(settings: Settings) -> int:
    """One line per check on stdout (`ok:`, `error:`, `hint:`, `warning:`, indented details);
    whatever else would reach stdout meanwhile (a library's log handler, a stray print) goes
    to stderr, so the lines can be read by a script. 0 when every check passes."""
    out = sys.stdout
    print(f"ok: config {settings.config_path}", file=out)
    failures = 0
    with contextlib.closing(Loaded(settings)) as loaded, contextlib.redirect_stdout(sys.stderr):
        for check in CHECKS:
            failures += not _report(check, loaded, out)
    if settings.owner.verification == "none":
        print('warning: owner.verification = "none" trusts the From header alone', file=out)
    return 1 if failures else 0


def _report(check: Callable[[Loaded], str], loaded: Loaded, out: TextIO) -> bool:
    """Run one check and print its lines to `out`: the first as `ok:`, the rest (indented
    details, `warning:` lines) as they are. Whether it passed."""
    settings = loaded.settings
    try:
        lines = check(loaded).splitlines()
    except MailagentError as exc:
        for line in exc.passed if isinstance(exc, _PartlyFailedError) else []:
            print(line if line.startswith(" ") else f"ok: {line}", file=out)
        print(f"error: {exc}", file=out)
        for hint in doctor.hints(settings, exc):
            print(f"hint: {hint}", file=out)
        return False
    first = lines[0]  # a check may pass with a warning (a keyring that is a plain file)
    print(first if first.startswith(doctor.WARNING) else f"ok: {first}", file=out)
    for line in lines[1:]:
        print(line, file=out)
    return True
