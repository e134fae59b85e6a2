"""Undo: a task's file changes reverted, newest first, from the copies kept in its trash.

In: the change records of one task (what the file tools did: created, modified, moved, deleted)
and `judge`, the policy's write decision for a path now. Out: a line for each change reverted
and each that could not be. Side effects: files put back, removed or moved back, each through
descriptors walked from the root of the rule that allows writing there (mailagent.policy.fsat),
as the file tools do; the trash is read through a descriptor of its own copy.
It must never reach a file by its name again after the judgement: a folder swapped for a
symlink after the check makes the change fail, never land (or remove a file) elsewhere (F1);
and never undo over a file someone changed after the task: each change records the SHA-256 of
what it left, and a file that is not so any more is left as it is.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailagent.errors import PolicyError
from mailagent.policy import fsat
from mailagent.policy.binding import state_of
from mailagent.policy.fsat import Anchor
from mailagent.tools import anchored
from mailagent.tools.files import Anchored

_READ_KEPT = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

Judge = Callable[[str], Anchored]


def revert_changes(changes: list[dict[str, Any]], judge: Judge) -> tuple[list[str], list[str]]:
    """Each change reverted, newest first: (what was done, what could not be and why)."""
    done, failed = [], []
    for change in reversed(changes):
        try:
            done.append(revert(change, judge))
        except PolicyError as error:
            failed.append(f"{change['op']} {change['path']}: {error}")
        except OSError as error:
            failed.append(f"{change['op']} {change['path']}: {error.strerror or error}")
    return done, failed


def revert(change: dict[str, Any], judge: Judge) -> str:
    """One change undone; PolicyError when policy no longer allows it or a file changed."""
    path, kept, op = change["path"], change.get("trash"), change["op"]
    if op == "created":
        with fsat.parent(_writable(judge, path)) as place:
            if place.stat() is None:
                return f"removed {path} (it was gone already)"
            info = _as_left(place, change, for_change=True)
            if info is not None:
                anchored.unlink(place, info)
        return f"removed {path}"
    if op in ("modified", "deleted"):
        if not kept:
            raise PolicyError(f"no saved copy of {path}")
        with fsat.parent(_writable(judge, path), create=True) as place:
            _as_left(place, change)
            _restore(Path(kept), place)
        return f"restored {path}"
    if op == "moved":
        _move_back(judge, change, kept)
        return f"moved {path} back to {change['from']}"
    raise PolicyError(f"unknown change {op}")


def _writable(judge: Judge, path: str) -> Anchor:
    decision = judge(path)
    if decision.verdict == "deny":
        raise PolicyError("policy no longer allows writing it")
    if decision.anchor is None:
        raise PolicyError(decision.reason)
    return decision.anchor


def _move_back(judge: Judge, change: dict[str, Any], kept: str | None) -> None:
    """The file a move left at its `path` moved back to where it came `from`, and what it
    replaced at `path` restored."""
    with (fsat.parent(_writable(judge, change["path"])) as here,
          fsat.parent(_writable(judge, change["from"]), create=True) as there):
        _may_replace(there)
        if "sha256" in change:  # then it came from there: nothing is there now but a newcomer
            _as_left(there, {**change, "sha256": None})
        _as_left(here, change)
        fd, info = here.open_file(for_change=True)
        try:
            if not anchored.rename(here, info, there):  # another file system: copy
                anchored.replace_contents(there, fd, like=info)
                anchored.unlink(here, info)
        finally:
            os.close(fd)
        if kept:
            _restore(Path(kept), here)


def _restore(kept: Path, place: fsat.Parent) -> None:
    """The trash's copy `kept` (a folder of the service's own) put at `place`, atomically, with
    its mode and times."""
    _may_replace(place)
    with fsat.guarded(kept):
        fd = os.open(kept, _READ_KEPT)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PolicyError(f"the saved copy {kept} is not a regular file")
        anchored.replace_contents(place, fd, like=info)
    finally:
        os.close(fd)


def _as_left(place: fsat.Parent, change: dict[str, Any], *, for_change: bool = False
             ) -> os.stat_result | None:
    """PolicyError unless what `place` names is as the change left it (its `sha256`, or
    nothing when that is None): a file that someone changed since the task is left alone.
    Returns the file there now (judged on its descriptor: a plain file, not protected), or
    None; records older than the hash are judged but not compared."""
    info = place.stat()
    expected = change.get("sha256", "")
    if expected is None and info is not None:
        raise PolicyError(f"{place.path} was made again after the task; it is left as it is")
    if info is None:
        if expected:
            raise PolicyError(f"{place.path} is gone since the task; nothing to undo there")
        return None
    fd, opened = place.open_file(for_change=for_change)
    try:
        if expected and state_of(fd, opened).sha256 != expected:
            raise PolicyError(f"{place.path} changed after the task; it is left as it is (the "
                              "task's saved copy stays in the trash)")
    finally:
        os.close(fd)
    return opened


def _may_replace(place: fsat.Parent) -> None:
    """PolicyError unless what `place` names is absent or a plain file that may be replaced
    (never a folder, a symlink, a FIFO or device, or a protected file)."""
    info = place.stat()
    if info is not None:
        fsat.judge_file(info, place.path, place.protected, for_change=False)
