"""Integrity: the files that govern mailagent, known by identity, checked after every command.

In: `Settings` (the config file, the policies folder, the data directory) and the database's
file. Out: a `Record` taken when the service starts (each path with its (st_dev, st_ino), and a
SHA-256 of the config's and of each policy file's bytes), and after each `run_command`, however
it ended, the list of what is no longer where and what it was. A `Guard` runs that check around
every command and hands a failure (a `Breach`) to the service. Side effects: none but reading
(stat, and the bytes of the config and the policy files).

Defence in depth behind the sandbox (SECURITY.md F3): the sandbox hides these paths and pins
their parents so that a command cannot move them, and this notices if that protection failed.
A path names the same thing only if it still exists and stat gives the same device and inode: a
file replaced by a copy with the same bytes has another inode, and a folder moved away and
replaced by a look-alike is another folder.

What is compared with what:
- The config file, the policies folder, the data directory and the database are compared with
  the record taken at start (or at `mailagent resume`). The config is read once, at start, so
  any change to it while the service runs, its bytes or its identity, counts: edit it with the
  service stopped (a start takes a new record).
- Policy files are compared with their state just before the command: the owner may edit,
  add or remove them while the service runs (the policy is reloaded live, and editors often
  save by writing a new file), so a change between commands is the owner's and is accepted.
  A change of any policy file (added, removed, replaced, or its bytes) while a command runs
  counts as a failure, even if the owner made it: a command cannot be told apart from the
  owner, and the check errs on the side of stopping.
It must never raise: what cannot be read counts as a change. A path that did not exist at
start (a policies folder not made yet) is not in the record: there is nothing to compare with.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mailagent.config import Settings
from mailagent.policy.load import is_policy_name  # the names the policy engine loads

log = logging.getLogger(__name__)

MAX_DIGEST_BYTES = 16 * 1024**2  # a config or policy file is a few kilobytes


@dataclass(frozen=True)
class Mark:
    """What one path names: its identity, and for a file whose bytes count, their digest."""

    what: str  # for the owner: "the config file", "the policy file main.toml", ...
    path: Path
    identity: tuple[int, int] | None  # (st_dev, st_ino); None when it cannot be stat'ed
    digest: str | None = None  # SHA-256 of the bytes, for the config and policy files
    error: str = ""  # why it could not be stat'ed or read


@dataclass(frozen=True)
class Record:
    """The identities taken at start (or resume), and the policy files as they were then."""

    fixed: tuple[Mark, ...]  # config, policies folder, data directory, database
    policies: tuple[Mark, ...]  # each policy file, for the log and `status`

    def lines(self) -> list[str]:
        return [f"{m.what} {m.path} ({_identity(m)})" for m in (*self.fixed, *self.policies)]


@dataclass(frozen=True)
class Breach:
    """A failed check: what changed, and the command after which it was seen."""

    problems: tuple[str, ...]
    task_id: int | None
    conversation: str
    command: str

    @property
    def reason(self) -> str:
        """One line for logs, `status` and `check`."""
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        where = f"task #{self.task_id} in conversation {self.conversation}" \
            if self.task_id is not None else f"conversation {self.conversation}"
        return f"after a command of {where}: {self.problems[0]}{more}"


def take_mark(what: str, path: Path, with_digest: bool = False) -> Mark:
    try:
        info = os.stat(path)
    except OSError as exc:
        return Mark(what, path, None, error=exc.strerror or str(exc))
    digest = None
    if with_digest:
        try:
            with open(path, "rb") as file:
                digest = hashlib.sha256(file.read(MAX_DIGEST_BYTES)).hexdigest()
        except OSError as exc:
            return Mark(what, path, (info.st_dev, info.st_ino), error=exc.strerror or str(exc))
    return Mark(what, path, (info.st_dev, info.st_ino), digest)


def policy_marks(policies_dir: Path) -> tuple[Mark, ...]:
    """Every policy file as it is now, by name (the names the policy engine loads: *.toml)."""
    try:
        names = sorted(n for n in os.listdir(policies_dir) if is_policy_name(n))
    except OSError:
        return ()
    return tuple(take_mark(f"the policy file {name}", policies_dir / name, with_digest=True)
                 for name in names)


def take_record(settings: Settings, database: Path | None) -> Record:
    fixed = [take_mark("the config file", settings.config_path, with_digest=True),
             take_mark("the policies folder", settings.policies_dir),
             take_mark("the data directory", settings.data_dir)]
    if database is not None:
        fixed.append(take_mark("the database", database))
    return Record(tuple(m for m in fixed if m.identity is not None),
                  policy_marks(settings.policies_dir))


def compare(before: Mark, after: Mark, since: str) -> str | None:
    """What changed between two marks of one path, in words; None if nothing did."""
    where = f"{before.what} {before.path}"
    if after.identity is None:
        return f"{where} is gone ({after.error}) {since}"
    if after.identity != before.identity:
        return (f"{where} was replaced or moved {since}: the path names another file or "
                f"folder now (device:inode {_identity(before)}, now {_identity(after)})")
    if after.error:
        return f"{where} cannot be read any more ({after.error})"
    if after.digest != before.digest:
        return f"the content of {where} changed {since}"
    return None


def compare_policies(before: tuple[Mark, ...], after: tuple[Mark, ...]) -> list[str]:
    """What changed among the policy files while a command ran."""
    since = "while the command ran"
    old = {m.path: m for m in before}
    new = {m.path: m for m in after}
    problems = [f"{m.what} {m.path} appeared {since}" for p, m in new.items() if p not in old]
    for path, mark in old.items():
        problem = compare(mark, new.get(path) or Mark(mark.what, path, None, error="removed"),
                          since)
        if problem is not None:
            problems.append(problem)
    return problems


class Guard:
    """Takes the record, and checks it around every command; thread-safe (commands of several
    conversations run at once, each in a thread of its own)."""

    def __init__(self, settings: Settings, database: Path | None,
                 on_breach: Callable[[Breach], None]) -> None:
        self.settings, self.database, self.on_breach = settings, database, on_breach
        self._lock = threading.Lock()
        self.record = take_record(settings, database)
        log.info("integrity record: %s", "; ".join(self.record.lines()))

    def rebase(self) -> None:
        """Take the record anew: what is there now is what the owner has looked at."""
        record = take_record(self.settings, self.database)
        with self._lock:
            self.record = record
        log.info("integrity record taken again: %s", "; ".join(record.lines()))

    def problems(self, policies_before: tuple[Mark, ...]) -> list[str]:
        """What is no longer where and what it was: the fixed paths since the record, the
        policy files since `policies_before`."""
        with self._lock:
            fixed = self.record.fixed
        since = "since the service started or was last resumed"
        found = []
        for mark in fixed:
            now = take_mark(mark.what, mark.path, with_digest=mark.digest is not None)
            problem = compare(mark, now, since)
            if problem is not None:
                found.append(problem)
        after = policy_marks(self.settings.policies_dir)
        return found + compare_policies(policies_before, after)

    @contextmanager
    def watching(self, task_id: int | None, conversation: str,
                 command: str) -> Iterator[list[str]]:
        """Around one command: yields a list that holds, once the block has ended in any way
        (an exception, a kill, a time-out), what the check found; a failure goes to
        `on_breach` before the block's exception, if any, goes on."""
        before = policy_marks(self.settings.policies_dir)
        found: list[str] = []
        try:
            yield found
        finally:
            found += self.problems(before)
            if found:
                breach = Breach(tuple(found), task_id, conversation, command)
                log.error("integrity check FAILED %s", breach.reason)
                self.on_breach(breach)


def _identity(mark: Mark) -> str:
    return f"{mark.identity[0]}:{mark.identity[1]}" if mark.identity else "missing"
