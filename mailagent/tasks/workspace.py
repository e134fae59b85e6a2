"""Workspaces: each conversation's own folder under the data directory, and attachments in it.

In: a conversation name (already restricted to [a-z0-9_.-] by threads) and attachments from
intake. Out: files under `<data_dir>/workspaces/<name>/attachments/mail-<id>/` with generated
names, and metadata that keeps the sender's file name only as escaped text (SECURITY.md F4).
It must never use a name from the mail as a path, nor write through a symlink. Also the data
directory's secret keys (fence ids, probe signatures), each made once and readable by the owner
alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mailagent.mail.intake import Attachment

_EXTENSION = re.compile(r"\.([A-Za-z0-9]{1,10})$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def data_key(data_dir: Path, name: str) -> bytes:
    """The secret in `<data_dir>/<name>`, made on first use with mode 0600."""
    path = data_dir / name
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process made it first
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
    return path.read_bytes().strip()


def workspace_dir(workspaces_dir: Path, conversation_name: str) -> Path:
    if not _NAME.match(conversation_name) or ".." in conversation_name:
        raise ValueError(f"not a valid conversation name: {conversation_name!r}")
    return workspaces_dir / conversation_name


def safe_name(attachment: Attachment) -> str:
    """`a<N>.<ext>`: the extension from the original name if it is plain, else from the type."""
    match = _EXTENSION.search(attachment.original_name)
    extension = match.group(1).lower() if match else None
    if extension is None:
        guessed = mimetypes.guess_extension(attachment.content_type) or ".bin"
        extension = guessed.lstrip(".")
    return f"a{attachment.index + 1}.{extension}"


def _make_real_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or not path.is_dir():
        raise OSError(f"{path} is not a plain directory")


def _write_new(path: Path, payload: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(payload)


def save_attachments(
    workspace: Path, raw_message_id: int, attachments: Sequence[Attachment]
) -> list[dict[str, Any]]:
    """Write attachments into a folder of their own; return their metadata (idempotent)."""
    if not attachments:
        return []
    folder = workspace / "attachments" / f"mail-{raw_message_id}"
    _make_real_dir(folder)
    saved = []
    for attachment in attachments:
        name = safe_name(attachment)
        _write_new(folder / name, attachment.payload)
        saved.append({
            "path": str(Path("attachments") / f"mail-{raw_message_id}" / name),
            "original_name": attachment.original_name.encode("unicode_escape").decode("ascii"),
            "content_type": attachment.content_type,
            "size": len(attachment.payload),
            "sha256": hashlib.sha256(attachment.payload).hexdigest(),
        })
    return saved
