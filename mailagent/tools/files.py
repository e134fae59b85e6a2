"""File tools: what the model may do with files, each call judged again just before it acts.

In: tool inputs from the model, and `judge` / `judge_move` callables from the service (the policy
engine, never imported here). Out: text for the model, or ToolError with a reason it can act on;
a record of every change on disk (created, modified, moved, deleted) for the completion mail and
`undo`. Side effects: files inside what policy allows; replaced and deleted files are first kept
in the task's trash folder (SECURITY.md A2).
It must never touch a path the judge did not just allow, never follow a symlink when opening,
and never read a FIFO or device.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import regex

from mailagent.tools import ToolError
from mailagent.tools.documents import document_text

__all__ = ["FileTools", "Judged", "ToolError"]

MAX_READ_BYTES = 2 * 1024 * 1024
MAX_DOCUMENT_BYTES = 20 * 1024 * 1024  # a PDF or office file is read whole or not at all
MAX_LIST_ENTRIES = 500
MAX_SEARCH_FILES = 5000
MAX_SEARCH_RESULTS = 200
# The model writes the pattern, and file contents are hostile: a pattern such as `(a+)+$` takes
# exponential time on some lines. `regex` matches without holding the GIL and stops at a timeout,
# so one search can neither freeze the service nor run much past this many seconds in all (the
# timeout is checked between steps of the matcher, whose length grows with the text: long lines
# are searched in pieces of MAX_SEARCH_LINE_CHARS).
MAX_SEARCH_SECONDS = 5.0
MAX_SEARCH_LINE_CHARS = 1000


class Judged(Protocol):
    """A policy decision, as the policy engine makes it (tools never import the engine)."""

    @property
    def verdict(self) -> str: ...
    @property
    def rule(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def path(self) -> Path | None: ...


@dataclass
class FileTools:
    workspace: Path
    judge: Callable[[str, str], Judged]
    judge_move: Callable[[str, str], Judged]
    trash: Path
    on_attach: Callable[[str], None]
    max_output_chars: int = 20_000
    changes: list[dict[str, Any]] = field(default_factory=list)
    approved: bool = False  # set by the agent while it runs a call the owner approved

    # ------------------------------------------------------------ checks at use time

    def _allowed(self, decision: Judged) -> Path:
        if decision.verdict == "allow" or (decision.verdict == "ask" and self.approved):
            if decision.path is None:
                raise ToolError(decision.reason)
            return decision.path
        if decision.verdict == "ask":
            raise ToolError(f"needs the owner's approval: {decision.reason}")
        raise ToolError(f"denied by {decision.rule}: {decision.reason}")

    def _path(self, action: str, path: str) -> Path:
        return self._allowed(self.judge(action, path))

    def _cap(self, text: str) -> str:
        if len(text) <= self.max_output_chars:
            return text
        return text[: self.max_output_chars] + f"\n[... cut at {self.max_output_chars} characters]"

    def _keep(self, path: Path) -> str:
        """Copy a file about to be replaced or deleted into the trash; return where."""
        self.trash.mkdir(parents=True, exist_ok=True)
        kept = self.trash / f"{len(list(self.trash.iterdir())) + 1}-{path.name}"
        shutil.copy2(path, kept, follow_symlinks=False)
        return str(kept)

    # ------------------------------------------------------------ the tools

    def list_files(self, path: str = ".") -> str:
        """List a folder: one line per entry with its type and size.

        Args:
            path: the folder, relative to the workspace, absolute, or starting with ~.
        """
        folder = self._path("list", path)
        if not folder.is_dir():
            raise ToolError(f"{path} is not a folder")
        lines = []
        for entry in sorted(os.scandir(folder), key=lambda e: e.name)[:MAX_LIST_ENTRIES]:
            info = entry.stat(follow_symlinks=False)
            kind = "dir " if stat.S_ISDIR(info.st_mode) else (
                "link" if stat.S_ISLNK(info.st_mode) else "file")
            lines.append(f"{kind} {info.st_size:>10} {entry.name}")
        return self._cap("\n".join(lines) or "(empty folder)")

    def read_file(self, path: str, offset: int | None = None, limit: int | None = None) -> str:
        """Read a text file, or the text of a .pdf, .docx or .xlsx; lines are numbered from 1.

        Other binary files are not shown (attach them instead). Large files are cut: use offset and
        limit to read them in parts.

        Args:
            path: the file, relative to the workspace, absolute, or starting with ~.
            offset: the first line to return (1-based); default 1.
            limit: how many lines to return; default all that fit.
        """
        target = self._path("read", path)
        data = self._read_bytes(target, MAX_DOCUMENT_BYTES)
        text = document_text(target.name, data)
        if text is None:
            data = data[:MAX_READ_BYTES]
            if b"\x00" in data[:8192]:
                raise ToolError(f"{path} is a binary file of {len(data)} bytes: attach it instead")
            text = data.decode("utf-8", errors="replace")
        lines = text.splitlines()
        start = max(1, offset or 1)
        chosen = lines[start - 1 : (start - 1 + limit) if limit else None]
        numbered = "\n".join(f"{start + i:>6}  {line}" for i, line in enumerate(chosen))
        return self._cap(numbered or "(no lines there)")

    def _read_bytes(self, path: Path, limit: int = MAX_READ_BYTES) -> bytes:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise ToolError(f"cannot open {path}: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ToolError(f"{path} is not a regular file")
            return handle.read(limit)

    def write_file(self, path: str, content: str) -> str:
        """Create a file, or replace an existing one, with the given text.

        Missing folders are created. Replacing a file outside the workspace may need the
        owner's approval; the old version is kept so the owner can undo.

        Args:
            path: the file, relative to the workspace, absolute, or starting with ~.
            content: the whole new text of the file.
        """
        target = self._path("write", path)
        existed = target.exists()
        kept = self._keep(target) if existed else None
        _write_atomically(target, content.encode("utf-8"))
        self.changes.append({"op": "modified" if existed else "created", "path": str(target),
                             "trash": kept})
        return f"{'replaced' if existed else 'created'} {target} ({len(content)} characters)"

    def edit_file(self, path: str, old_text: str, new_text: str) -> str:
        """Replace one exact piece of text in a file with another.

        old_text must occur exactly once in the file; include enough context to make it unique.

        Args:
            path: the file, relative to the workspace, absolute, or starting with ~.
            old_text: the exact text to replace.
            new_text: the text to put in its place.
        """
        target = self._path("write", path)
        text = self._read_bytes(target).decode("utf-8", errors="strict")
        count = text.count(old_text) if old_text else 0
        if count != 1:
            raise ToolError(f"old_text occurs {count} times in {path}; it must occur exactly once")
        kept = self._keep(target)
        _write_atomically(target, text.replace(old_text, new_text, 1).encode("utf-8"))
        self.changes.append({"op": "modified", "path": str(target), "trash": kept})
        return f"edited {target}"

    def move_file(self, source: str, destination: str) -> str:
        """Move or rename a file. Moving a file out of its folder may need the owner's approval.

        Args:
            source: the file to move.
            destination: its new path (a file path, not a folder).
        """
        target = self._allowed(self.judge_move(source, destination))
        origin = self._path("read", source)
        if not origin.is_file():
            raise ToolError(f"{source} is not a file")
        kept = self._keep(target) if target.exists() else None
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(origin, target)
        self.changes.append({"op": "moved", "from": str(origin), "path": str(target),
                             "trash": kept})
        return f"moved {origin} to {target}"

    def delete_file(self, path: str) -> str:
        """Delete a file (it goes to the trash, so the owner can undo). Folders cannot be deleted.

        Args:
            path: the file to delete.
        """
        target = self._path("delete", path)
        if not target.is_file():
            raise ToolError(f"{path} is not a file")
        kept = self._keep(target)
        target.unlink()
        self.changes.append({"op": "deleted", "path": str(target), "trash": kept})
        return f"deleted {target} (kept in the trash)"

    def search_files(self, pattern: str, path: str | None = None) -> str:
        """Search the text files under a folder for a regular expression (case-insensitive).

        Returns `file:line: text` for each match, and files whose name matches. Lines longer than
        1000 characters are searched in pieces. A search stops after about 5 seconds in all (a
        pattern that backtracks badly is cut off with an error).

        Args:
            pattern: a regular expression, or plain text.
            path: the folder to search; default the workspace.
        """
        root = self._path("list", path or ".")
        try:
            compiled = regex.compile(pattern, regex.IGNORECASE)
        except (regex.error, ValueError, OverflowError):
            compiled = regex.compile(regex.escape(pattern), regex.IGNORECASE)
        deadline = time.monotonic() + MAX_SEARCH_SECONDS
        results: list[str] = []
        try:
            for count, file in enumerate(_walk_files(root)):
                if count >= MAX_SEARCH_FILES or len(results) >= MAX_SEARCH_RESULTS:
                    results.append("[search stopped at its limit]")
                    break
                results.extend(self._search_one(file, compiled, deadline))
        except TimeoutError:
            raise ToolError(f"the search for {pattern[:100]!r} took longer than "
                            f"{MAX_SEARCH_SECONDS:g} s and was stopped; use a simpler pattern "
                            "or a smaller folder") from None
        return self._cap("\n".join(results[: MAX_SEARCH_RESULTS + 1]) or "no matches")

    def _search_one(self, file: Path, compiled: Any, deadline: float) -> list[str]:
        decision = self.judge("read", str(file))
        if decision.verdict != "allow" or decision.path is None:
            return []

        def search(text: str) -> bool:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            return compiled.search(text, timeout=left) is not None

        found = [f"{file}: (name matches)"] if search(file.name) else []
        try:
            data = self._read_bytes(decision.path)
        except ToolError:
            return found
        if b"\x00" in data[:8192]:
            return found
        step = MAX_SEARCH_LINE_CHARS
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
            if any(search(line[at:at + step]) for at in range(0, max(len(line), 1), step)):
                found.append(f"{file}:{number}: {line[:300]}")
        return found

    def attach_file(self, path: str) -> str:
        """Attach a file to the mail that reports this task's result.

        Args:
            path: the file to attach.
        """
        target = self._path("read", path)
        if not target.is_file():
            raise ToolError(f"{path} is not a file")
        self.on_attach(str(target))
        return f"{target} will be attached to the reply"


def _walk_files(root: Path) -> Any:
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(files):
            yield Path(folder) / name


def _write_atomically(target: Path, payload: bytes) -> None:
    """Write next to the target and rename over it: a symlink at the target is replaced, never
    followed, and a crash leaves the old file or the new one, not half of each."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".mailagent-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
