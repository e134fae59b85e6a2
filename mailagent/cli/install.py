"""`mailagent service install | uninstall | status`: mailagent as a service of the user's OS.

In: the config path and the platform. Out: a systemd user unit (Linux), a launchd agent (macOS) or
a scheduled task (Windows) rendered from deploy/, written where that OS looks for it, and the
commands that enable it, each printed before it runs. The unit runs this very Python with
`-m mailagent run --config PATH`, both absolute, so it keeps working whatever PATH, virtual
environment or working directory the service manager starts it with.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from mailagent.errors import MailagentError
from mailagent.mail.render import render_deploy

NAME = "mailagent"
LABEL = "org.mailagent.agent"  # launchd label
PLATFORMS = ("linux", "darwin", "windows")


@dataclass(frozen=True)
class Unit:
    """One service definition: its text, where it goes, and how it is switched on and off."""

    platform: str
    path: Path
    text: str
    enable: tuple[tuple[str, ...], ...]
    disable: tuple[tuple[str, ...], ...]
    encoding: str = "utf-8"


def current_platform(name: str = sys.platform) -> str:
    if name.startswith("linux"):
        return "linux"
    if name in ("darwin", "win32"):
        return "darwin" if name == "darwin" else "windows"
    raise MailagentError(f"no service support on {name}: run `mailagent run` from your own "
                         "start-up mechanism")


def service_command(config_path: Path, python: str = sys.executable) -> list[str]:
    """The service's command line: absolute interpreter, `-m mailagent`, absolute config."""
    return [str(Path(python).absolute()), "-m", "mailagent", "run", "--config",
            str(config_path.expanduser().absolute())]


def systemd_quote(arguments: Sequence[str]) -> str:
    """An ExecStart= line: each word double-quoted, with systemd's `%` and `$` expansions off."""
    def one(word: str) -> str:
        word = word.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + word.replace("%", "%%").replace("$", "$$") + '"'
    return " ".join(one(word) for word in arguments)


def windows_arguments(arguments: Sequence[str]) -> str:
    """The Arguments of a scheduled task, quoted as the C runtime splits them."""
    return subprocess.list2cmdline(list(arguments))


def systemd_unit(command: list[str], config_path: Path) -> Unit:
    directory = Path(platformdirs.user_config_dir("systemd")) / "user"
    text = render_deploy("mailagent.service.j2", exec_start=systemd_quote(command),
                         env_file=str(config_path.parent / "mailagent.env"))
    ctl = ("systemctl", "--user")
    return Unit("linux", directory / f"{NAME}.service", text,
                enable=((*ctl, "daemon-reload"), (*ctl, "enable", "--now", f"{NAME}.service")),
                disable=((*ctl, "disable", "--now", f"{NAME}.service"),
                         (*ctl, "daemon-reload")))


def launchd_log_file() -> Path:
    """Where the launchd agent's stdout and stderr go (the plist names it)."""
    return Path.home() / "Library" / "Logs" / f"{NAME}.log"


def launchd_unit(command: list[str], uid: int) -> Unit:
    path = Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    text = render_deploy("mailagent.plist.j2", label=LABEL, arguments=command,
                         log_file=str(launchd_log_file()))
    domain = f"gui/{uid}"
    return Unit("darwin", path, text,
                enable=(("launchctl", "bootstrap", domain, str(path)),),
                disable=(("launchctl", "bootout", f"{domain}/{LABEL}"),))


def windows_unit(command: list[str]) -> Unit:
    path = Path(platformdirs.user_data_dir(NAME, appauthor=False)) / "mailagent-task.xml"
    text = render_deploy("mailagent-task.xml.j2", task_name=NAME, command=command[0],
                         arguments=windows_arguments(command[1:]))
    return Unit("windows", path, text, encoding="utf-16",
                enable=(("schtasks", "/Create", "/TN", NAME, "/XML", str(path), "/F"),
                        ("schtasks", "/Run", "/TN", NAME)),
                disable=(("schtasks", "/End", "/TN", NAME),
                         ("schtasks", "/Delete", "/TN", NAME, "/F")))


def unit_for(platform: str, config_path: Path, python: str = sys.executable) -> Unit:
    command = service_command(config_path, python)
    if platform == "linux":
        return systemd_unit(command, config_path.expanduser().absolute())
    if platform == "darwin":
        return launchd_unit(command, os.getuid() if hasattr(os, "getuid") else 0)
    return windows_unit(command)


Printer = Callable[[str], None]


def run_steps(steps: Sequence[Sequence[str]], say: Printer, check: bool = True) -> None:
    """Run each command, printed first; a failure (when `check`) stops with what failed."""
    for step in steps:
        say("$ " + subprocess.list2cmdline(list(step)))
        try:
            result = subprocess.run(list(step), check=False)
        except OSError as exc:
            raise MailagentError(f"cannot run {step[0]}: {exc}") from exc
        if result.returncode != 0 and check:
            raise MailagentError(f"`{' '.join(step)}` failed with exit code {result.returncode}")


def install(unit: Unit, say: Printer) -> None:
    unit.path.parent.mkdir(parents=True, exist_ok=True)
    unit.path.write_text(unit.text, encoding=unit.encoding)
    say(f"wrote {unit.path}")
    run_steps(unit.enable, say)
    say(f"installed: mailagent runs as a {describe(unit.platform)}")


def uninstall(unit: Unit, say: Printer) -> None:
    """Stop and remove; a service that is already stopped or gone is not an error."""
    run_steps(unit.disable, say, check=False)
    if unit.path.exists():
        unit.path.unlink()
        say(f"removed {unit.path}")
    else:
        say(f"nothing at {unit.path}")


def describe(platform: str) -> str:
    return {"linux": "systemd user service (logs: journalctl --user -u mailagent)",
            "darwin": f"launchd agent {LABEL} (logs: ~/Library/Logs/mailagent.log)",
            "windows": "scheduled task at logon (Task Scheduler: mailagent)"}[platform]


def is_running(unit: Unit) -> bool:
    """Whether the service manager says the service runs now."""
    if unit.platform == "linux":
        probe = ["systemctl", "--user", "is-active", f"{NAME}.service"]
    elif unit.platform == "darwin":
        probe = ["launchctl", "print", f"{unit.enable[0][2]}/{LABEL}"]
    else:
        probe = ["schtasks", "/Query", "/TN", NAME, "/FO", "LIST"]
    try:
        result = subprocess.run(probe, capture_output=True, text=True, check=False)
    except OSError:
        return False
    out = result.stdout
    if unit.platform == "linux":
        return out.strip() == "active"
    if unit.platform == "darwin":
        return result.returncode == 0 and "state = running" in out
    return result.returncode == 0 and "Running" in out


def status_lines(unit: Unit) -> list[str]:
    installed = unit.path.exists()
    lines = [f"installed: {'yes' if installed else 'no'} ({unit.path})"]
    lines.append(f"running: {'yes' if is_running(unit) else 'no'}")
    return lines


# ---------------------------------------------------------------- the command line


def add_service_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    service = sub.add_parser("service", help="run mailagent as a service of this OS")
    actions = service.add_subparsers(dest="service_command", required=True)
    for name, text in (("install", "write the service definition and start it"),
                       ("uninstall", "stop the service and remove its definition"),
                       ("status", "say whether the service is installed and running")):
        action = actions.add_parser(name, help=text)
        action.add_argument("--config", help="config file the service runs with (default: "
                            "$MAILAGENT_CONFIG, then the user config dir)")
        action.add_argument("--platform", choices=PLATFORMS,
                            help="whose service definition (default: this computer's; "
                                 "another one only with --dry-run)")
        if name == "install":
            action.add_argument("--dry-run", action="store_true",
                                help="print the service definition and the steps; change nothing")
        action.set_defaults(func=cmd_service)


def cmd_service(args: argparse.Namespace) -> int:
    from mailagent.config import find_config_path

    dry_run = getattr(args, "dry_run", False)
    here = current_platform()
    platform = args.platform or here
    if platform != here and not dry_run:
        raise MailagentError(f"this computer is {here}: a {platform} service can only be "
                             "shown with --dry-run")
    config_path = find_config_path(args.config).expanduser().absolute()
    unit = unit_for(platform, config_path)
    if args.service_command == "status":
        print("\n".join(status_lines(unit)))
        return 0
    if args.service_command == "uninstall":
        uninstall(unit, print)
        return 0
    if dry_run:
        # Only the file goes to stdout, so `--dry-run > file` gives the file itself.
        print(f"# would write {unit.path}:", file=sys.stderr)
        print(unit.text, end="" if unit.text.endswith("\n") else "\n")
        for step in unit.enable:
            print("# then: " + subprocess.list2cmdline(list(step)), file=sys.stderr)
        return 0
    install_for(config_path, print)
    return 0


def install_for(config_path: Path, say: Printer) -> None:
    """Install the service for this computer; a config that cannot start is not installed."""
    from mailagent.config import load_settings

    config_path = config_path.expanduser().absolute()
    load_settings(config_path)
    install(unit_for(current_platform(), config_path), say)
