"""`mailagent show N`, `mailagent history` and `mailagent logs`: what a task did, which tasks
ran, and what the service wrote to its log.

In: the config (read without secrets; with `--configs DIR --agent NAME` that agent's, see
agents.py) and the store, or the service's log wherever the installed service writes it:
`[service] log_file` when set, else journald for the systemd user unit that `service install`
writes, else launchd's log file on macOS (an agent of a deployment has only its log_file).
Out: text (or JSON with stable keys) on stdout. Side effects: none; `logs` only reads
(journalctl is run for it). Never prints a secret: records go through tasks/record.py, and the
log holds none.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mailagent.cli.agents import add_agent_arguments, config_path, is_deployment
from mailagent.cli.install import NAME, current_platform, launchd_log_file
from mailagent.config import Settings, load_settings
from mailagent.errors import MailagentError
from mailagent.store import Store
from mailagent.tasks.record import history, history_lines, record_lines, summary_json, task_record

FOLLOW_POLL_SECONDS = 0.5


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(config_path(args), secrets=False)


def cmd_show(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with contextlib.closing(Store.open(settings.database_url)) as store:
        record = task_record(store, args.task_id, datetime.now(UTC), settings.data_dir)
    if record is None:
        raise MailagentError(f"there is no task #{args.task_id} in {settings.database_url}: "
                             "`mailagent history` lists the tasks")
    if args.json:
        print(json.dumps(record, indent=2, ensure_ascii=False))
    else:
        print("\n".join(record_lines(record)))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with contextlib.closing(Store.open(settings.database_url)) as store:
        tasks = history(store, args.limit)
    now = datetime.now(UTC)
    if args.json:
        print(json.dumps([summary_json(t, now) for t in tasks], indent=2, ensure_ascii=False))
    else:
        print("\n".join(history_lines(tasks, now)))
    return 0


@dataclass(frozen=True)
class LogSource:
    """Where the service's log is: a file to read, or a command that prints it."""

    what: str  # said to the user on stderr
    path: Path | None = None
    command: tuple[str, ...] = ()


def log_source(settings: Settings | None, platform: str, lines: int, follow: bool) -> LogSource:
    """The log of the service as installed here: the configured file first, then what the
    platform's service manager keeps."""
    if settings is not None and settings.service.log_file is not None:
        return LogSource(f"{settings.service.log_file} ([service] log_file)",
                         path=settings.service.log_file)
    if platform == "linux":
        command = ("journalctl", "--user", "-u", f"{NAME}.service", "-n", str(lines),
                   "--no-pager", "-o", "short-iso", *(("-f",) if follow else ()))
        return LogSource(f"the journal of the systemd user unit {NAME}.service",
                         command=command)
    if platform == "darwin":
        path = launchd_log_file()
        return LogSource(f"{path} (the launchd agent's log)", path=path)
    raise MailagentError("the Windows scheduled task keeps no log: set [service] log_file = "
                         '"..." in the config, restart the service, then run `mailagent logs`')


def tail(path: Path, lines: int) -> tuple[list[str], int]:
    """The last `lines` lines of `path`, and the offset where they end (to follow from)."""
    with path.open("rb") as handle:
        last = deque(handle, maxlen=lines) if lines > 0 else deque(handle, maxlen=1)
        end = handle.tell()
    text = [line.decode("utf-8", errors="replace") for line in last] if lines > 0 else []
    return text, end


def follow_file(path: Path, write: Callable[[str], None], start_at: int = 0,
                keep_going: Callable[[], bool] = lambda: True) -> None:
    """Print what is added to `path` after the byte offset `start_at`, reopening the file
    when it is rotated (replaced or cut)."""
    handle = path.open("rb")
    handle.seek(start_at)
    try:
        while keep_going():
            line = handle.readline()
            if line.endswith(b"\n"):
                write(line.decode("utf-8", errors="replace"))
                continue
            handle.seek(-len(line), os.SEEK_CUR)  # a line being written: wait for its end
            time.sleep(FOLLOW_POLL_SECONDS)
            with contextlib.suppress(FileNotFoundError):
                current = path.stat()
                if current.st_ino != os.fstat(handle.fileno()).st_ino or \
                        current.st_size < handle.tell():
                    for rest in handle.readlines():  # what the old file got before it went
                        write(rest.decode("utf-8", errors="replace"))
                    handle.close()
                    handle = path.open("rb")
    finally:
        handle.close()


def cmd_logs(args: argparse.Namespace) -> int:
    path = config_path(args)
    settings = load_settings(path, secrets=False) if path.exists() else None
    if is_deployment(args) and (settings is None or settings.service.log_file is None):
        raise MailagentError(f"agent {args.agent} keeps no log of its own: the supervisor of "
                             "--configs writes every agent's lines (each naming its agent) to "
                             f'its stderr; set [service] log_file = "..." in {path} to keep one')
    source = log_source(settings, current_platform(), args.lines, args.follow)
    print(f"# {source.what}", file=sys.stderr)
    if source.command:
        try:
            return subprocess.run(list(source.command), check=False).returncode
        except FileNotFoundError:
            raise MailagentError(f"{source.command[0]} is not installed here: set [service] "
                                 'log_file = "..." in the config and restart the service') from None
    assert source.path is not None
    if not source.path.exists():
        raise MailagentError(f"no log at {source.path} yet: is the service installed and "
                             "started (`mailagent service status`)?")
    last, end = tail(source.path, args.lines)
    print_now("".join(last))
    if args.follow:
        follow_file(source.path, print_now, start_at=end)
    return 0


def print_now(line: str) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()


def count(text: str) -> int:
    """A whole number from 0 to a billion, for argparse (a clear usage error otherwise)."""
    if not text.isdigit() or int(text) > 10**9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0 to 1000000000")
    return int(text)


def add_report_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    show = sub.add_parser("show", help="print what task N did: your words, each step and its "
                          "decision, files changed, mails, tokens and cost")
    show.add_argument("task_id", type=count, metavar="N", help="the task's number")
    history_parser = sub.add_parser("history", help="list recent tasks with their cost")
    history_parser.add_argument("--limit", type=count, default=20, metavar="K",
                                help="how many (default 20), newest first")
    logs = sub.add_parser("logs", help="print the service's log")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--lines", type=count, default=50, metavar="N",
                      help="how many lines from the end (default 50)")
    for command, description, example in (
            (show, "What task N did, from the store: your words, each model turn and tool call "
             "with the policy's decision, the files it changed, the mails sent for it, tokens "
             "and cost. The same record comes back by mail when you send `show N`.",
             "mailagent show 12 --json"),
            (history_parser, "The latest tasks, newest first: number, conversation, state, "
             "subject, when, how long and what it cost.", "mailagent history --limit 50"),
            (logs, "The service's log: [service] log_file when it is set, otherwise the journal "
             "of the systemd user unit (Linux) or the launchd agent's log file (macOS).",
             "mailagent logs -f --lines 100")):
        command.description = textwrap.fill(description, 88)
        command.epilog = f"example:\n  {example}"
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    for command, func in ((show, cmd_show), (history_parser, cmd_history), (logs, cmd_logs)):
        add_agent_arguments(command)
        if command is not logs:
            command.add_argument("--json", action="store_true", help="JSON with stable keys")
        command.set_defaults(func=func)
