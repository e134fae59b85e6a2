"""Attachments land under generated names inside the conversation's workspace (F4)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailagent.mail.intake import Attachment
from mailagent.tasks.workspace import save_attachments, workspace_dir


def attachment(index: int, name: str, payload: bytes = b"data",
               content_type: str = "application/octet-stream") -> Attachment:
    return Attachment(index=index, original_name=name, content_type=content_type, payload=payload)


def test_hostile_names_never_become_paths(tmp_path: Path) -> None:
    names = ["../../.bashrc", "/etc/passwd", "..", "con.txt\u202egpj.exe", "a\x00b.pdf", ""]
    saved = save_attachments(tmp_path / "main", 7, [attachment(i, n) for i, n in enumerate(names)])
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert files == sorted(Path("main") / s["path"] for s in saved)
    assert all(f.parts[:3] == ("main", "attachments", "mail-7") for f in files)
    assert [Path(s["path"]).name for s in saved][:3] == ["a1.bashrc", "a2.bin", "a3.bin"]
    assert saved[0]["original_name"] == "../../.bashrc"


def test_a_symlinked_attachment_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "main" / "attachments").mkdir(parents=True)
    os.symlink(outside, tmp_path / "main" / "attachments" / "mail-1")
    with pytest.raises(OSError):
        save_attachments(tmp_path / "main", 1, [attachment(0, "x.txt")])
    assert list(outside.iterdir()) == []


def test_conversation_names_must_be_plain(tmp_path: Path) -> None:
    assert workspace_dir(tmp_path, "taxes") == tmp_path / "taxes"
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ValueError):
            workspace_dir(tmp_path, bad)
