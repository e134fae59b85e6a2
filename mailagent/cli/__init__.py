"""Command line: `mailagent init | run | check | status | show | history | logs | resume |
policy explain | service | demo`.

Commands only: each turns expected failures (MailagentError) into one readable line on stderr
and a non-zero exit code, never a traceback. The only module that configures logging handlers.
`--help` speaks to a user: what each command does for them, with an example (USAGE).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from mailagent import __version__
from mailagent.cli import init_config, init_finish, init_wizard, install
from mailagent.cli.agents import (
    add_agent_arguments,
    cmd_status,
    config_path,
    deployment_folder,
)
from mailagent.cli.check import check_settings, cmd_check
from mailagent.cli.demo import add_demo_parser
from mailagent.cli.install import add_service_parser
from mailagent.cli.reports import add_report_parsers
from mailagent.config import Settings, find_config_path, load_settings
from mailagent.deployment import CONFIG_NAME, agent_named, load_agent, load_deployment, supervise
from mailagent.errors import ConfigError, MailagentError
from mailagent.mail.render import shipped_text
from mailagent.policy import (
    Scope,
    explain,
    explain_desktop,
    explain_internet,
    explain_recipient,
    load_policy,
    protected_paths,
)
from mailagent.policy.skills import explain_skill, read_skills
from mailagent.store import Store
from mailagent.store.halts import resume
from mailagent.tasks.workspace import workspace_dir

log = logging.getLogger("mailagent")


def _settings(args: argparse.Namespace, secrets: bool = True) -> Settings:
    return load_settings(find_config_path(args.config), secrets=secrets)


LOG_FILE_BYTES = 5 * 1024 * 1024  # [service] log_file is rotated at this size
LOG_FILE_BACKUPS = 3  # and this many old files are kept beside it
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def cmd_run(args: argparse.Namespace) -> int:
    if args.configs is not None:
        return run_deployment(args)
    settings = _settings(args)
    if settings.service.log_file is not None:
        log_to_file(settings.service.log_file)
    from mailagent.service import run_service  # imports the SDK, which takes seconds

    run_service(settings)
    return 0


def run_deployment(args: argparse.Namespace) -> int:
    """`run --configs DIR`: every agent's config is loaded and the agents checked to share
    nothing, then one process runs per agent (`--agent NAME`, what the supervisor starts),
    which reads its own secrets alone."""
    folder = deployment_folder(args)
    if args.agent is None:
        agents = load_deployment(folder)
        log.info("deployment %s: agents %s", folder, ", ".join(agents))
        return supervise(folder, list(agents), args.verbose)
    settings = load_agent(folder, args.agent)  # the others' secrets are not its business
    name_log_lines(args.agent)
    if settings.service.log_file is not None:
        log_to_file(settings.service.log_file, log_format(args.agent))
    from mailagent.service import run_service  # imports the SDK, which takes seconds

    run_service(settings)
    return 0


def check_command(args: argparse.Namespace) -> int:
    """`check`, or with `--configs DIR` the deployment's: that no two agents share what must
    be their own, then each agent's checks under its name; 0 only if every agent passes."""
    if args.configs is None:
        return cmd_check(args)
    folder = deployment_folder(args)
    agents = load_deployment(folder)
    print(f"ok: {len(agents)} agents in {folder} share no data directory, database, mailbox "
          "or policies folder")
    failures = 0
    for name, settings in agents.items():  # each loaded once, for both kinds of check
        print(f"\nagent {name}:")
        failures += check_settings(settings) != 0
    return 1 if failures else 0


def log_format(agent: str | None) -> str:
    """The log line's format; with several agents, each line names its agent."""
    if agent is None:
        return LOG_FORMAT
    return LOG_FORMAT.replace("%(name)s", f"[{agent.replace('%', '%%')}] %(name)s")


def name_log_lines(agent: str) -> None:
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(log_format(agent)))


def log_to_file(path: Path, line_format: str = LOG_FORMAT) -> None:
    """Log to `path` as well as stderr, rotated so that it never fills the disk."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"service.log_file {path} cannot be written: {exc.strerror or exc}; "
                          "fix the path or its folder's permissions") from exc
    handler.setFormatter(logging.Formatter(line_format))
    logging.getLogger().addHandler(handler)


def cmd_resume(args: argparse.Namespace) -> int:
    """End a halt: say what had stopped the tools, and let them run again (the running service
    notices within seconds; a stopped one at its next start)."""
    settings = load_settings(config_path(args), secrets=False)
    with contextlib.closing(Store.open(settings.database_url)) as store:
        ended = resume(store)
    if ended is None:
        print("Tools are not stopped; there is nothing to resume.")
        return 0
    halt, kept = ended
    print(f"Tools were stopped since {halt.halted_at:%Y-%m-%d %H:%M} UTC: {halt.reason}")
    for problem in halt.detail.get("problems", []):
        print(f"  - {problem}")
    print(f"Resumed: tools run again, from the files as they are now; {kept} kept mail(s) "
          "run now. The running service takes this up within seconds (a stopped one at its "
          "next start).")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Ask (trying each secret as it comes), write the config and the starter policy, run
    `check` on the result, say what to send, and, when asked, wait for the first answer."""
    if not args.verbose:  # a person answers questions here: log lines are noise
        logging.getLogger("mailagent").setLevel(logging.WARNING)
    answers = init_wizard.run_init(args)
    path = answers.config_path
    _make_policies_dir(path.parent / "policies")
    for skill in init_config.copy_example_skills(path.parent / "skills"):
        print(f"made {skill}: an example skill, listed to the agent only once a policy file "
              f'says skills = ["{skill.name}"]')
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


def _make_policies_dir(folder: Path) -> None:
    """The folder init's config points to (by default), empty when no folder was given: every
    file is denied until a rule is added, and `check` finds the folder it expects."""
    if not folder.exists():
        folder.mkdir(parents=True)
        print(f"made {folder}: empty, so the agent may touch no file outside its workspace "
              "until you add a [[folders]] rule there (`mailagent example policy` shows how)")


def _wants_service(args: argparse.Namespace) -> bool:
    if args.install_service or args.non_interactive:
        return bool(args.install_service)
    return init_wizard.Asker(True).yes("\nInstall mailagent as a service of this computer now?",
                                       False)


def explained_agent(args: argparse.Namespace) -> Settings:
    """The agent `policy explain` speaks for: `--config PATH`, or `--agent NAME` of the
    deployment `--configs DIR` (which also shuts it out of the other agents' files)."""
    if args.configs is None:
        return _settings(args, secrets=False)
    folder = deployment_folder(args)
    return agent_named(folder, load_deployment(folder, secrets=False), args.agent)


def cmd_policy_explain(args: argparse.Namespace) -> int:
    settings = explained_agent(args)
    if args.action == "mail":  # PATH is an address: whom draft_mail may write to
        print(explain_recipient(load_policy(settings.policies_dir), args.path))
        return 0
    if args.action == "internet":  # PATH is the tool: web_search or web_fetch
        if args.path not in ("web_search", "web_fetch"):
            print(f"error: {args.path!r} is not a web tool: write web_search or web_fetch",
                  file=sys.stderr)
            return 2
        verdict, why = explain_internet(load_policy(settings.policies_dir), args.path)
        print(f"{verdict}: {why}")
        return 0
    if args.action == "desktop":  # PATH is an application's name
        verdict, why = explain_desktop(load_policy(settings.policies_dir), args.path)
        print(f"{verdict}: {why}")
        return 0
    home = Path.home()
    skills_dir = Path(os.path.realpath(settings.skills_dir)) if settings.skills_dir else None
    if args.action == "skill":  # PATH is a skill's name
        catalogue = read_skills(skills_dir or settings.policies_dir.parent / "skills")
        print(explain_skill(load_policy(settings.policies_dir), catalogue, args.path, home))
        return 0
    workspace = workspace_dir(settings.workspaces_dir, args.conversation)
    scope = Scope(workspace=workspace, home=home, protected=protected_paths(
        config_path=settings.config_path, policies_dir=settings.policies_dir,
        data_dir=settings.data_dir, home=home, skills_dir=skills_dir,
        others=settings.others_protected), skills_dir=skills_dir)
    print(explain(load_policy(settings.policies_dir), args.action, args.path, scope))
    return 0


ABOUT = """\
Delegate work to Claude on this computer by email. You mail a task from any phone or mail
client to the agent's address; mailagent does it here, with tools that can touch only the
folders your policy files allow (the web, mail to others and desktop apps only where a policy
turns them on), and replies in the same thread with the files attached."""
START = """\
start here:
  mailagent demo --base-url URL     the whole loop on this machine, no mail account needed
                                    (or set ANTHROPIC_API_KEY and leave out --base-url)
  mailagent init                    connect your own mailbox, step by step
  mailagent check                   test the config, the policies and every login
  mailagent run                     run the service (or: mailagent service install)

what it is doing and did:
  mailagent status                  running tasks step by step, today's tasks and their cost
  mailagent show N | history | logs -f   one task's record, the latest tasks, the log

when a mail says that tools are stopped (a file that governs mailagent changed):
  mailagent resume                  once you have looked at what changed

`mailagent COMMAND --help` says more about each command."""
# What each command does for its user, and an example of it.
USAGE: dict[str, tuple[str, str]] = {
    "run": ("Run the service in the foreground: watch the mailbox, work on each task and reply. "
            "Stops cleanly on Ctrl-C or SIGTERM; logs go to stderr.",
            "mailagent run --config ~/.config/mailagent/mailagent.toml"),
    "check": ("Check everything the service needs before you rely on it: the config, the "
              "policies, the templates, the database, the IMAP and SMTP logins and the model. "
              "One line per check; exit 0 only if all pass, with a hint for each failure.",
              "mailagent check --config ~/.config/mailagent/mailagent.toml"),
    "status": ("Show what the service is doing and did: whether it runs, what each running task "
               "is doing (step, tools, files, time and cost so far), today's tasks and their "
               "cost, conversations, tasks, schedules, approvals waiting for you, the outbox "
               "and recent refusals, and whether tools are stopped.",
               "mailagent status --plain\n  mailagent status --configs ~/agents --agent alice"),
    "resume": ("Let tools run again after they were stopped because the config, a policy file "
               "or the data directory changed under a command (you had a mail saying what "
               "changed). Look at that first; then this ends the stop, takes the files as they "
               "are now as the new reference, and runs the mail kept meanwhile.",
               "mailagent resume --config ~/.config/mailagent/mailagent.toml"),
    "init": ("Connect your mailbox: asks for the agent's address, provider, password (kept in "
             "the OS keyring), your own addresses and a folder the agent may use, then writes "
             "the config and a starter policy and checks them.",
             "mailagent init\n  mailagent init --non-interactive --provider gmail --email "
             "agent@gmail.com --owner me@example.com --password-env APP_PASSWORD "
             "--policy-folder ~/Documents/reports"),
    "policy": ("Ask the policy what the agent may do with a path, and which rule decides.",
               "mailagent policy explain write ~/Documents/reports/summary.md\n"
               "  mailagent policy explain skill expenses"),
    "service": ("Run mailagent in the background as a service of this computer (systemd, "
                "launchd or the Windows task scheduler), started at login and restarted on "
                "failure.",
                "mailagent service install --dry-run\n  mailagent service status"),
    "example": ("Print a complete example config, or a policy file that shows every key, to "
                "start your own from.",
                "mailagent example policy > ~/.config/mailagent/policies/reports.toml"),
    "demo": ("See the whole loop work on this machine with no mail account: an embedded mail "
             "server on loopback, the service, and a sample task whose reply is printed. Exits "
             "0 when the task completed, 1 with what to do when it did not.",
             "ANTHROPIC_API_KEY=sk-ant-... mailagent demo\n  mailagent demo --base-url "
             "http://127.0.0.1:8080"),
}


def describe_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, (description, example) in USAGE.items():
        command = sub.choices[name]
        command.description = textwrap.fill(description, 88)
        command.epilog = f"example:\n  {example}"
        command.formatter_class = argparse.RawDescriptionHelpFormatter


EXAMPLES = {"config": "examples/mailagent.toml", "policy": "examples/policy.toml"}


def cmd_example(args: argparse.Namespace) -> int:
    print(shipped_text(EXAMPLES[args.what]), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailagent", description=ABOUT, epilog=START,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mailagent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("run", cmd_run, "run the service in the foreground until SIGINT/SIGTERM"),
        ("check", check_command, "validate the config and log in to IMAP and SMTP"),
        ("status", cmd_status, "print conversations, tasks and refusals"),
        ("resume", cmd_resume, "let tools run again after an integrity check stopped them"),
    ):
        command = sub.add_parser(name, help=text)
        command.set_defaults(func=func)
        if name == "status":
            add_agent_arguments(command, every=True)
            command.add_argument("--json", action="store_true", help="JSON with stable keys")
            command.add_argument("--plain", action="store_true", help="lines, not tables")
            continue
        if name == "resume":  # one agent's tools: of --config, or --agent of --configs
            add_agent_arguments(command)
            continue
        command.add_argument("--config", help="config file (default: $MAILAGENT_CONFIG, "
                             "then the user config dir)")
        if name in ("run", "check"):
            command.add_argument("--configs", metavar="DIR", help="several agents: one "
                                 f"subfolder of DIR per agent, each with its {CONFIG_NAME}")
        if name == "run":
            command.add_argument("--agent", metavar="NAME", help=argparse.SUPPRESS)
    init = sub.add_parser("init", help="connect a mailbox: write a config and a starter policy")
    init_wizard.add_arguments(init)
    init.set_defaults(func=cmd_init)
    policy = sub.add_parser("policy", help="inspect the policy files")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    explain_parser = policy_sub.add_parser(
        "explain", help="say allow/ask/deny for ACTION on PATH and which rule decided")
    explain_parser.add_argument("--config", help="config file")
    explain_parser.add_argument("--configs", metavar="DIR",
                                help="several agents: the deployment's folder (with --agent)")
    explain_parser.add_argument("--agent", metavar="NAME", help="which agent of --configs")
    explain_parser.add_argument("--conversation", default="main",
                                help="whose workspace relative paths resolve in (default main)")
    explain_parser.add_argument("action",
                                choices=["list", "read", "write", "delete", "mail", "internet",
                                         "skill", "desktop"],
                                help="mail: whether draft_mail may write to the address PATH; "
                                "internet: whether the web tool PATH is offered; "
                                "skill: whether the skill named PATH is listed to the model; "
                                "desktop: whether the app PATH may start on the virtual display")
    explain_parser.add_argument("path", help="a path; for mail an address; for internet "
                                "web_search or web_fetch; for skill or desktop a name")
    explain_parser.set_defaults(func=cmd_policy_explain)
    example = sub.add_parser("example", help="print an example config or policy file")
    example.add_argument("what", choices=list(EXAMPLES))
    example.set_defaults(func=cmd_example)
    add_service_parser(sub)
    add_report_parsers(sub)
    add_demo_parser(sub)
    describe_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # mailagent's own INFO lines; libraries (the SDK's retries, httpx's every request) only
    # from WARNING up, unless --verbose.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
        format=LOG_FORMAT,
    )
    if not args.verbose:
        logging.getLogger("mailagent").setLevel(logging.INFO)
    try:
        result: int = args.func(args)
        return result
    except MailagentError as exc:
        print(f"mailagent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # the reader has gone (`mailagent status | head`): nothing to say
        # Python's own recipe (the signal module's "Note on SIGPIPE"): no second error as the
        # interpreter flushes stdout on its way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
