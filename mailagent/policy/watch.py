"""Watching policies: the policy in force, reloaded when the policies folder changes.

In: the policies folder. Out: the current `Policy`. Side effects: stats the folder's files on
each call, reads them when they changed, logs a broken edit once. A broken edit keeps the last
good policy (or the empty one, which denies everything), never a more permissive one.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from mailagent.errors import PolicyError
from mailagent.policy.load import is_policy_name, load_policy
from mailagent.policy.rules import Policy

logger = logging.getLogger(__name__)


class PolicyWatcher:
    """Hands out the policy in force, reloading when the policies folder changes (no restart).

    A broken edit keeps the last good policy (or the empty one: deny everything) and is reported
    through `on_error` once per distinct message.
    """

    def __init__(
        self,
        policies_dir: Path,
        on_error: Callable[[PolicyError], None],
        *,
        home: Path | None = None,
    ) -> None:
        self._policies_dir = policies_dir
        self._on_error = on_error
        self._home = home
        self._lock = threading.Lock()
        self._policy = Policy()
        self._stamp: object = None
        self._reported: str | None = None

    def current(self) -> Policy:
        with self._lock:
            error = self._refresh()
            policy = self._policy
        if error is not None:  # outside the lock: on_error may well ask for the policy again
            self._on_error(error)
        return policy

    def _refresh(self) -> PolicyError | None:
        stamp = _fingerprint(self._policies_dir)
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            self._policy = load_policy(self._policies_dir, home=self._home)
        except PolicyError as error:
            if str(error) == self._reported:
                return None
            self._reported = str(error)
            logger.error("policy not loaded, the last good policy stays in force: %s", error)
            return error
        self._reported = None
        logger.info(
            "policy loaded from %s: %d folder rules, commands %s",
            ", ".join(self._policy.files) or "no files",
            len(self._policy.folders),
            "offered" if self._policy.commands else "not offered",
        )
        return None


def _fingerprint(policies_dir: Path) -> object:
    """Names, sizes and times of the folder and its policy files: any edit changes it."""
    try:
        folder = os.stat(policies_dir)
        names = sorted(name for name in os.listdir(policies_dir) if is_policy_name(name))
    except OSError as error:
        return ("unreadable", error.errno)
    files: list[tuple[object, ...]] = []
    for name in names:
        try:
            info = os.stat(policies_dir / name)
        except OSError as error:
            files.append((name, "error", error.errno))
            continue
        # ctime too: it changes on every write and cannot be set back the way mtime can.
        files.append((name, info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino))
    return (folder.st_mtime_ns, folder.st_ino, tuple(files))
