"""Hostile inputs made at test time, and measures of what they cost the service.

Zip bombs, nested archives, MIME nested thousands deep, megabyte headers and thousands of parts,
all as raw mail an owner (or a stranger) could send; plus the peak memory of a process and the
size of a folder, so tests can say that limits keep both bounded.
"""

from __future__ import annotations

import io
import os
import zipfile
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid
from pathlib import Path

from tests.support.mail import AGENT, OWNER, PASS_RESULTS, owner_mail

MiB = 1024 * 1024


def head(subject: str, *, auth: bool = True, extra: str = "") -> str:
    """The header block of an owner's mail (a stranger's without the provider's results)."""
    lines = [f"Authentication-Results: {PASS_RESULTS}"] if auth else []
    lines += [f"From: Owner <{OWNER}>", f"To: {AGENT}", f"Subject: {subject}",
              f"Date: {format_datetime(datetime.now(UTC))}",
              f"Message-ID: {make_msgid(domain='example.com')}", "MIME-Version: 1.0"]
    return "\r\n".join(lines) + "\r\n" + extra


def nested_mime(depth: int, subject: str = "deep") -> bytes:
    """multipart/mixed inside multipart/mixed, `depth` times, around one text part."""
    body = "Content-Type: text/plain\r\n\r\nhello"
    for level in range(depth):
        body = (f'Content-Type: multipart/mixed; boundary="b{level}"\r\n\r\n--b{level}\r\n'
                f"{body}\r\n--b{level}--")
    return (head(subject) + body).encode()


def many_parts(count: int, subject: str = "many parts") -> bytes:
    """One multipart/mixed with `count` small text parts."""
    parts = "".join(f"--sep\r\nContent-Type: text/plain\r\n\r\npart {n}\r\n" for n in range(count))
    return (head(subject) + 'Content-Type: multipart/mixed; boundary="sep"\r\n\r\n' + parts
            + "--sep--\r\n").encode()


def huge_header(megabytes: float, subject: str = "huge header", auth: bool = True) -> bytes:
    """An owner's mail whose header block is `megabytes` long (folded lines of 998 bytes)."""
    pad = "".join(f"X-Pad-{n}: {'h' * 980}\r\n" for n in range(int(megabytes * MiB / 1000)))
    return (head(subject, auth=auth, extra=pad) + "Content-Type: text/plain\r\n\r\nhi\r\n").encode()


def zip_bomb(unpacked_bytes: int = 200 * MiB, name: str = "word/document.xml") -> bytes:
    """A small zip that unpacks to `unpacked_bytes` of zeros (ratio about 1000:1)."""
    buffer = io.BytesIO()
    chunk = b"\0" * MiB
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open(name, "w", force_zip64=True) as member:
        for _ in range(unpacked_bytes // MiB):
            member.write(chunk)
    return buffer.getvalue()


def nested_zip(levels: int = 20) -> bytes:
    """A zip of a zip of a zip ..., `levels` deep, around a small bomb."""
    data = zip_bomb(16 * MiB, "inner.bin")
    for level in range(levels):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"level{level}.zip", data)
        data = buffer.getvalue()
    return data


def archives_mail(subject: str = "[archives] Read these") -> bytes:
    """An owner's task mail carrying a zip bomb dressed as a .docx and nested archives."""
    return owner_mail(subject, "Please read the attached files.", attachments=[
        ("report.docx", "application/vnd.openxmlformats-officedocument."
                        "wordprocessingml.document", zip_bomb()),
        ("nested.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
         nested_zip()),
        ("bomb.zip", "application/zip", zip_bomb()),
    ])


def peak_rss_bytes(pid: int) -> int:
    """The highest resident memory the process has had (VmHWM of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under `folder`, symlinks not followed."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_size
    return total
