"""Command line: `mailagent init | run | check | status | policy explain | service | demo`.

Commands only: each turns expected failures (MailagentError) into one readable line on stderr
and a non-zero exit code, never a traceback. The only module that configures logging handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mailagent import __version__, doctor, init_finish, init_wizard, install, status_view
from mailagent.config import Settings, find_config_path, load_settings
from mailagent.demo import add_demo_parser
from mailagent.errors import ConfigError, MailagentError, PolicyError
from mailagent.install import add_service_parser
from mailagent.mailbox import Mailbox
from mailagent.notify import check_smtp
from mailagent.policy import Policy, Scope, explain, load_policy, protected_paths
from mailagent.render import render_sample, template_names
from mailagent.sandbox import find_sandbox, process_limit_kind
from mailagent.store import Store
from mailagent.when import WhenError, read_schedules_file
from mailagent.workspace import workspace_dir

log = logging.getLogger("mailagent")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(find_config_path(args.config))


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from mailagent.service import run_service  # imports the SDK, which takes seconds

    run_service(settings)
    return 0


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
    from mailagent.agent import check_model  # the SDK takes seconds to import: only when needed

    return asyncio.run(check_model(settings.model))


def _check_policies(settings: Settings) -> str:
    policy = load_policy(settings.policies_dir)
    return (f"policies in {settings.policies_dir}: {len(policy.folders)} folder rule(s) "
            f"from {len(policy.files)} file(s)")


def _policy_if_valid(settings: Settings) -> Policy | None:
    """The policy, or None when it does not load (the policy check has said why)."""
    try:
        return load_policy(settings.policies_dir)
    except PolicyError:
        return None


def _check_commands(settings: Settings) -> str:
    """Whether run_command is offered, in which sandbox, and if not, why and how to fix it."""
    policy = _policy_if_valid(settings)
    if policy is None:
        return "run_command: decided once the policy error above is fixed"
    rule = policy.commands
    if rule is None:
        return "run_command: not offered (no [commands] table in the policies)"
    sandbox = find_sandbox()
    limit = {"cgroup": "a pids cgroup", "rlimit": "RLIMIT_NPROC",
             "none": "nothing (running as root without a writable pids cgroup)"}
    if sandbox.available:
        network = "network allowed" if rule.network else "no network"
        return (f"run_command: {', '.join(rule.allow)} in {sandbox.detail} ({network}; "
                f"process count bounded by {limit[process_limit_kind()]})")
    if rule.unsafe_no_sandbox:
        print(f"WARNING: run_command runs WITHOUT A SANDBOX (unsafe_no_sandbox = true in "
              f"{rule.source}): a fooled model can read and change anything you can. "
              f"{sandbox.detail}")
        return "run_command: offered without a sandbox"
    raise MailagentError(f"run_command is NOT offered although {rule.source} has [commands]: "
                         f"{sandbox.detail}")


def _check_connectors(settings: Settings) -> str:
    """Each MCP server of the policy: started once, its tools listed with their decisions."""
    policy = _policy_if_valid(settings)
    if policy is None:
        return "MCP servers: checked once the policy error above is fixed"
    rules = policy.mcp
    if not rules:
        return "MCP servers: none (no [mcp.<server>] table in the policies)"
    from mailagent.connectors import check_servers  # the MCP SDK takes seconds to import

    lines, errors = check_servers(rules)
    if errors:
        for line in lines:
            print(f"ok: {line}" if not line.startswith(" ") else line)
        raise MailagentError("\nerror: ".join(errors))
    return "\n".join(lines)


def _check_templates(settings: Settings) -> str:
    names = [n for n in template_names() if n.endswith(".j2")]
    for name in names:
        render_sample(name)
    return f"templates: {', '.join(names)}"


def _check_schedules(settings: Settings) -> str:
    path, zone = settings.schedules.file, settings.owner.timezone
    if path is None or not path.exists():
        return f"schedules in time zone {zone} (no schedules file)"
    try:
        entries = read_schedules_file(path, settings.schedules.min_interval_minutes)
    except WhenError as exc:
        raise ConfigError(str(exc)) from None
    return f"schedules in time zone {zone}; {len(entries)} in {path}"


def _check_store(settings: Settings) -> str:
    store = Store.open(settings.database_url)
    store.close()
    return f"database {settings.database_url}"


def cmd_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(f"ok: config {settings.config_path}")
    checks: list[Callable[[Settings], str]] = [
        _check_policies, _check_commands, _check_templates, _check_schedules, _check_store,
        _check_connectors, doctor.check_keyring, doctor.check_oauth, _check_imap, _check_smtp,
        _check_model, doctor.check_service]
    failures = 0
    for check in checks:
        try:
            line = check(settings)
            print(line if line.startswith(doctor.WARNING) else f"ok: {line}")
        except MailagentError as exc:
            failures += 1
            print(f"error: {exc}")
            for hint in doctor.hints(settings, exc):
                print(f"hint: {hint}")
    if settings.owner.verification == "none":
        print('warning: owner.verification = "none" trusts the From header alone')
    return 1 if failures else 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    store = Store.open(settings.database_url)
    try:
        snapshot = status_view.take_snapshot(store)
    finally:
        store.close()
    if args.json:
        status_view.print_json(snapshot)
    elif args.plain or not sys.stdout.isatty():
        print("\n".join(status_view.plain_lines(snapshot)))
    else:
        status_view.print_rich(snapshot)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Ask (trying each secret as it comes), write the config and the starter policy, run
    `check` on the result, say what to send, and, when asked, wait for the first answer."""
    if not args.verbose:  # a person answers questions here: libraries' INFO lines are noise
        logging.getLogger().setLevel(logging.WARNING)
    answers = init_wizard.run_init(args)
    path = answers.config_path
    if args.no_check:
        print(f"\nNot checked: run `mailagent check --config {path}` before starting it.")
    else:
        print(f"\nChecking {path}:")
        if cmd_check(argparse.Namespace(config=str(path))) != 0:
            print(f"\nFix what failed above (see the hints), then run "
                  f"`mailagent check --config {path}` again.")
            return 1
    installed = not args.no_check and _wants_service(args)
    if installed:
        print()
        install.install_for(path, print)
    print("\n".join(init_finish.phone_lines(answers, installed)))
    if not args.wait_for_first_task:
        return 0
    return init_finish.wait_for_first_task(load_settings(path), args.wait_timeout_seconds)


def _wants_service(args: argparse.Namespace) -> bool:
    if args.install_service or args.non_interactive:
        return bool(args.install_service)
    return init_wizard.Asker(True).yes("\nInstall mailagent as a service of this computer now?",
                                       False)


def cmd_policy_explain(args: argparse.Namespace) -> int:
    settings = _settings(args)
    home = Path.home()
    workspace = workspace_dir(settings.workspaces_dir, args.conversation)
    scope = Scope(workspace=workspace, home=home, protected=protected_paths(
        config_path=settings.config_path, policies_dir=settings.policies_dir,
        data_dir=settings.data_dir, home=home))
    print(explain(load_policy(settings.policies_dir), args.action, args.path, scope))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailagent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mailagent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("run", cmd_run, "run the service in the foreground until SIGINT/SIGTERM"),
        ("check", cmd_check, "validate the config and log in to IMAP and SMTP"),
        ("status", cmd_status, "print conversations, tasks and refusals"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("--config", help="config file (default: $MAILAGENT_CONFIG, "
                             "then the user config dir)")
        command.set_defaults(func=func)
        if name == "status":
            command.add_argument("--json", action="store_true", help="JSON with stable keys")
            command.add_argument("--plain", action="store_true", help="lines, not tables")
    init = sub.add_parser("init", help="connect a mailbox: write a config and a starter policy")
    init_wizard.add_arguments(init)
    init.set_defaults(func=cmd_init)
    policy = sub.add_parser("policy", help="inspect the policy files")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    explain_parser = policy_sub.add_parser(
        "explain", help="say allow/ask/deny for ACTION on PATH and which rule decided")
    explain_parser.add_argument("--config", help="config file")
    explain_parser.add_argument("--conversation", default="main",
                                help="whose workspace relative paths resolve in (default main)")
    explain_parser.add_argument("action", choices=["list", "read", "write", "delete"])
    explain_parser.add_argument("path")
    explain_parser.set_defaults(func=cmd_policy_explain)
    add_service_parser(sub)
    add_demo_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("imapclient").setLevel(logging.WARNING)
    try:
        result: int = args.func(args)
        return result
    except MailagentError as exc:
        print(f"mailagent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
