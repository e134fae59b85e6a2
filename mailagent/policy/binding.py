"""What an approval is bound to: each file an operation touches, as its descriptor shows it.

In: the anchors of a decision (mailagent.policy.fsat), or an open descriptor. Out: a
`FileState` (identity, size, SHA-256 of the bytes) read from one descriptor opened through the
rule's root, and a `Binding`: the digest of an operation and the state of each of its files.
Side effects: reads the files (never changes one). It must never read a file by its name
again: the digest the owner approves and the check just before the approved call runs both
read through the anchor, and the file tools compare the descriptor they act on with the same
state (SECURITY.md A1, F1), so a file swapped in between is never the one changed.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from mailagent.errors import PolicyError
from mailagent.policy import fsat
from mailagent.policy.fsat import Anchor

READ_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FileState:
    """A regular file as one descriptor showed it."""

    identity: fsat.Identity
    size: int
    sha256: str

    def as_json(self) -> dict[str, Any]:
        return {"identity": list(self.identity), "size": self.size, "sha256": self.sha256}


def state_of(fd: int, info: os.stat_result) -> FileState:
    """The identity and content of the open regular file `fd` (read with pread: its offset
    does not move)."""
    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, READ_CHUNK_BYTES, offset):
        digest.update(chunk)
        offset += len(chunk)
    return FileState((info.st_dev, info.st_ino), offset, digest.hexdigest())


def state_at(anchor: Anchor) -> FileState | str | None:
    """What `anchor` names now: its state, None when nothing is there, or why it cannot be
    read (a symlink, a FIFO, a swapped folder: the reason, which no approval can match)."""
    try:
        with fsat.parent(anchor) as place:
            info = place.stat()
            if info is None:
                return None
            if not stat.S_ISREG(info.st_mode):
                return "not a regular file"
            fd, opened = place.open_file(for_change=False)
            try:
                with fsat.guarded(anchor.path):
                    return state_of(fd, opened)
            finally:
                os.close(fd)
    except PolicyError as error:
        return f"refused: {error}"


def state_json(state: FileState | str | None) -> Any:
    return state.as_json() if isinstance(state, FileState) else state


@dataclass(frozen=True)
class Binding:
    """An operation's digest, and the state of each file it touches (by its resolved path) that
    the digest covers: what an approved call may act on, and nothing else."""

    digest: str
    files: dict[str, FileState | str | None] = field(default_factory=dict)

    def refusal(self, path: str, fd: int | None, info: os.stat_result | None) -> str | None:
        """Why the file at `path` (open as `fd`, or absent when `fd` is None) is not the one
        the owner approved; None when it is."""
        if path not in self.files:
            return f"{path} is not the file the owner approved"
        expected = self.files[path]
        now = None if fd is None or info is None else state_of(fd, info)
        if now != expected:
            return (f"{path} changed after the owner approved (it is not the same file or not "
                    "the same bytes); nothing was done")
        return None
