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

from mailagent.errors import PolicyError
from mailagent.mail.intake import Attachment
from mailagent.policy import fsat
from mailagent.policy.fsat import Anchor
from mailagent.tools import anchored

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


def save_attachments(
    workspace: Path, raw_message_id: int, attachments: Sequence[Attachment]
) -> list[dict[str, Any]]:
    """Write attachments into a folder of their own; return their metadata (idempotent).

    Each is written through descriptors walked from the workspace with no symlink followed
    (mailagent.policy.fsat), and replaces its name atomically: a folder of the workspace that a
    command swapped for a symlink makes the save fail (OSError), never land elsewhere."""
    if not attachments:
        return []
    workspace.mkdir(parents=True, exist_ok=True)
    root = Path(os.path.realpath(workspace))
    saved = []
    for attachment in attachments:
        name = safe_name(attachment)
        anchor = Anchor(root, ("attachments", f"mail-{raw_message_id}", name))
        try:
            with fsat.parent(anchor, create=True) as place:
                anchored.replace_contents(place, attachment.payload)
        except PolicyError as error:
            raise OSError(f"the attachment {name} was not saved: {error}") from None
        saved.append({
            "path": str(Path("attachments") / f"mail-{raw_message_id}" / name),
            "original_name": attachment.original_name.encode("unicode_escape").decode("ascii"),
            "content_type": attachment.content_type,
            "size": len(attachment.payload),
            "sha256": hashlib.sha256(attachment.payload).hexdigest(),
        })
    return saved
