"""File tools: what the model may do with files, each call judged again just before it acts.

In: tool inputs from the model, and `judge` / `judge_move` callables from the service (the policy
engine, never imported here). Out: text for the model, or ToolError with a reason it can act on;
a record of every change on disk (created, modified, moved, deleted, with the SHA-256 of what it
left at the path) for the completion mail and `undo`. Side effects: files inside what policy
allows; replaced and deleted files are first kept in the task's trash folder (SECURITY.md A2).
It must never touch a path the judge did not just allow, never reach a file by its name again:
each is opened through descriptors walked from the root of the rule that allowed it
(`Decision.anchor`, mailagent.policy.fsat), with no symlink followed, and judged by fstat (no FIFO,
device or protected file; no second hard link for a change). A folder swapped for a symlink
between the decision and the I/O makes the call fail with a ToolError, never land elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import regex

from mailagent.errors import PolicyError
from mailagent.policy import fsat
from mailagent.policy.binding import Binding, state_of
from mailagent.policy.fsat import Anchor
from mailagent.tools import ToolError, anchored
from mailagent.tools.cards import MAX_CARD_BYTES
from mailagent.tools.documents import document_text
from mailagent.tools.media import Media, MediaError, media_of

__all__ = ["Anchored", "FileTools", "Judged", "JudgedMove", "Media", "ToolError"]

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
CARD_SUFFIXES = (".ics", ".vcs", ".vcf", ".vcard")
CARD_TYPES = ("text/calendar", "application/ics", "text/vcard", "text/x-vcard", "text/directory")


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


class Anchored(Judged, Protocol):
    """A decision on a path, with how to reach it: its rule's root and the names below it."""

    @property
    def anchor(self) -> Anchor | None: ...


class JudgedMove(Anchored, Protocol):
    """A decision on a move: `anchor` is the destination's, `source_anchor` the source's."""

    @property
    def source_anchor(self) -> Anchor | None: ...


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """A refusal at use time (the file changed, is a FIFO, ...) as the ToolError the model reads."""
    try:
        yield
    except PolicyError as error:
        raise ToolError(str(error)) from None


@dataclass
class FileTools:
    workspace: Path
    judge: Callable[[str, str], Anchored]
    judge_move: Callable[[str, str], JudgedMove]
    trash: Path
    on_attach: Callable[[str], None]
    max_output_chars: int = 20_000
    changes: list[dict[str, Any]] = field(default_factory=list)
    # Set by the agent while it runs a call the owner approved: the file states the approval is
    # bound to. Each file such a call changes must be, through the descriptor it acts on, the
    # file the owner was asked about (same identity, same bytes).
    approved: Binding | None = None

    # ------------------------------------------------------------ checks at use time

    def _allowed(self, decision: Judged, anchor: Anchor | None) -> Anchor:
        if decision.verdict == "allow" or (decision.verdict == "ask"
                                           and self.approved is not None):
            if anchor is None:
                raise ToolError(decision.reason)
            return anchor
        if decision.verdict == "ask":
            raise ToolError(f"needs the owner's approval: {decision.reason}")
        raise ToolError(f"denied by {decision.rule}: {decision.reason}")

    def _anchor(self, action: str, path: str) -> Anchor:
        decision = self.judge(action, path)
        return self._allowed(decision, decision.anchor)

    def _cap(self, text: str) -> str:
        if len(text) <= self.max_output_chars:
            return text
        return text[: self.max_output_chars] + f"\n[... cut at {self.max_output_chars} characters]"

    def _bound(self, place: fsat.Parent, fd: int | None, info: os.stat_result | None) -> None:
        """In an approved call, ToolError unless the file here (open as `fd`; None: absent)
        is the one the approval is bound to."""
        if self.approved is not None:
            refusal = self.approved.refusal(str(place.path), fd, info)
            if refusal is not None:
                raise ToolError(refusal)

    def _keep(self, place: fsat.Parent) -> str:
        """Copy the file about to be replaced into the trash; return where. PolicyError unless
        it is still the file that was copied when this returns."""
        fd, info = place.open_file(for_change=True)
        try:
            self._bound(place, fd, info)
            kept = str(anchored.copy_into(fd, info, self.trash, place.name))
        finally:
            os.close(fd)
        place.same(info)
        return kept

    # ------------------------------------------------------------ the tools

    def list_files(self, path: str = ".") -> str:
        """List a folder: one line per entry with its type and size.

        Args:
            path: the folder, relative to the workspace, absolute, or starting with ~.
        """
        anchor = self._anchor("list", path)
        lines = []
        with _refusals(), fsat.folder(anchor) as fd:
            for entry in sorted(os.scandir(fd), key=lambda e: e.name)[:MAX_LIST_ENTRIES]:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:  # removed since the folder was read
                    continue
                kind = "dir " if stat.S_ISDIR(info.st_mode) else (
                    "link" if stat.S_ISLNK(info.st_mode) else "file")
                lines.append(f"{kind} {info.st_size:>10} {entry.name}")
        return self._cap("\n".join(lines) or "(empty folder)")

    def read_file(self, path: str, offset: int | None = None,
                  limit: int | None = None) -> str | Media:
        """Read a file. Text files, and the text of .docx, .xlsx, calendar (.ics) and contact
        (.vcf) files, come with lines numbered from 1. An image (JPEG, PNG, GIF, WebP, HEIC) or
        a PDF of up to 100 pages is shown to you as it is (images scaled to at most 1568 px);
        give offset or limit to get a PDF's text instead.

        Other binary files are not shown (attach them instead). Large files are cut: use offset and
        limit to read them in parts.

        Args:
            path: the file, relative to the workspace, absolute, or starting with ~.
            offset: the first line to return (1-based); default 1.
            limit: how many lines to return; default all that fit.
        """
        anchor = self._anchor("read", path)
        with _refusals():
            data = read_anchored(anchor, MAX_DOCUMENT_BYTES)
        note = ""
        if offset is None and limit is None:
            try:
                media = media_of(anchor.path.name, data)
            except MediaError as exc:
                if not anchor.path.name.lower().endswith(".pdf"):
                    raise
                note = f"[{exc}: its text follows]\n"
            else:
                if media is not None:
                    return media
        text = document_text(anchor.path.name, data)
        if text is None:
            data = data[:MAX_READ_BYTES]
            if b"\x00" in data[:8192]:
                raise ToolError(f"{path} is a binary file of {len(data)} bytes: attach it instead")
            text = data.decode("utf-8", errors="replace")
        lines = text.splitlines()
        start = max(1, offset or 1)
        chosen = lines[start - 1 : (start - 1 + limit) if limit else None]
        numbered = "\n".join(f"{start + i:>6}  {line}" for i, line in enumerate(chosen))
        return self._cap(note + (numbered or "(no lines there)"))

    def show_attachment(self, path: str, content_type: str) -> Media | str | None:
        """What the model is shown of an attachment saved in the workspace: its image or PDF
        blocks, the text of a calendar or contact card, or None (it is read with read_file).
        Not a tool: the agent calls it for the task's first message. ToolError when the file
        cannot be shown."""
        anchor = self._anchor("read", path)
        with _refusals():
            data = read_anchored(anchor, MAX_DOCUMENT_BYTES)
        name = anchor.path.name
        media = media_of(name, data, content_type)
        if media is not None:
            return media
        if name.lower().endswith(CARD_SUFFIXES) or content_type.lower() in CARD_TYPES:
            if len(data) > MAX_CARD_BYTES:
                return None
            card = name if name.lower().endswith(CARD_SUFFIXES) else (
                "card.ics" if "calendar" in content_type or "ics" in content_type else "card.vcf")
            return self._cap(document_text(card, data) or "")
        return None

    def write_file(self, path: str, content: str) -> str:
        """Create a file, or replace an existing one, with the given text.

        Missing folders are created. Replacing a file outside the workspace may need the
        owner's approval; the old version is kept so the owner can undo.

        Args:
            path: the file, relative to the workspace, absolute, or starting with ~.
            content: the whole new text of the file.
        """
        anchor = self._anchor("write", path)
        with _refusals(), fsat.parent(anchor, create=True) as place:
            existed = place.stat() is not None
            if not existed:
                self._bound(place, None, None)
            kept = self._keep(place) if existed else None
            anchored.replace_contents(place, content.encode("utf-8"))
        self.changes.append({"op": "modified" if existed else "created", "path": str(anchor.path),
                             "trash": kept, "sha256": _sha256(content.encode("utf-8"))})
        return f"{'replaced' if existed else 'created'} {anchor.path} ({len(content)} characters)"

    def edit_file(self, path: str, old_text: str, new_text: str) -> str:
        """Replace one exact piece of text in a file with another.

        old_text must occur exactly once in the file; include enough context to make it unique.

        Args:
            path: the file, relative to the workspace, absolute, or starting with ~.
            old_text: the exact text to replace.
            new_text: the text to put in its place.
        """
        anchor = self._anchor("write", path)
        with _refusals(), fsat.parent(anchor) as place:
            fd, info = place.open_file(for_change=True)
            try:
                self._bound(place, fd, info)
                text = _edited(fd, info, path, old_text, new_text)
                kept = str(anchored.copy_into(fd, info, self.trash, place.name))
            finally:
                os.close(fd)
            place.same(info)
            anchored.replace_contents(place, text.encode("utf-8"))
        self.changes.append({"op": "modified", "path": str(anchor.path), "trash": kept,
                             "sha256": _sha256(text.encode("utf-8"))})
        return f"edited {anchor.path}"

    def move_file(self, source: str, destination: str) -> str:
        """Move or rename a file. Moving a file out of its folder may need the owner's approval.

        Args:
            source: the file to move.
            destination: its new path (a file path, not a folder).
        """
        decision = self.judge_move(source, destination)
        to = self._allowed(decision, decision.anchor)
        origin = self._allowed(decision, decision.source_anchor)
        with (_refusals(), fsat.parent(origin) as here,
              fsat.parent(to, create=True) as there):
            fd, info = here.open_file(for_change=True)
            try:
                self._bound(here, fd, info)
                moved = state_of(fd, info).sha256
                if there.stat() is None:
                    self._bound(there, None, None)
                kept = self._keep(there) if there.stat() is not None else None
                if not anchored.rename(here, info, there):  # another file system: copy
                    anchored.replace_contents(there, fd, like=info)
                    anchored.unlink(here, info)
            finally:
                os.close(fd)
        self.changes.append({"op": "moved", "from": str(origin.path), "path": str(to.path),
                             "trash": kept, "sha256": moved})
        return f"moved {origin.path} to {to.path}"

    def delete_file(self, path: str) -> str:
        """Delete a file (it goes to the trash, so the owner can undo). Folders cannot be deleted.

        Args:
            path: the file to delete.
        """
        anchor = self._anchor("delete", path)
        with _refusals(), fsat.parent(anchor) as place:
            fd, info = place.open_file(for_change=True)
            try:
                self._bound(place, fd, info)
                kept = str(anchored.copy_into(fd, info, self.trash, place.name))
            finally:
                os.close(fd)
            anchored.unlink(place, info)
        self.changes.append({"op": "deleted", "path": str(anchor.path), "trash": kept,
                             "sha256": None})
        return f"deleted {anchor.path} (kept in the trash)"

    def search_files(self, pattern: str, path: str | None = None) -> str:
        """Search the text files under a folder for a regular expression (case-insensitive).

        Returns `file:line: text` for each match, and files whose name matches. Lines longer than
        1000 characters are searched in pieces. A search stops after about 5 seconds in all (a
        pattern that backtracks badly is cut off with an error).

        Args:
            pattern: a regular expression, or plain text.
            path: the folder to search; default the workspace.
        """
        anchor = self._anchor("list", path or ".")
        try:
            compiled = regex.compile(pattern, regex.IGNORECASE)
        except (regex.error, ValueError, OverflowError):
            compiled = regex.compile(regex.escape(pattern), regex.IGNORECASE)
        deadline = time.monotonic() + MAX_SEARCH_SECONDS
        results: list[str] = []
        try:
            with _refusals(), fsat.folder(anchor) as fd, \
                    contextlib.closing(_walk_files(fd, anchor.path)) as files:
                for count, file in enumerate(files):
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
        if decision.verdict != "allow" or decision.anchor is None:
            return []

        def search(text: str) -> bool:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            return compiled.search(text, timeout=left) is not None

        found = [f"{file}: (name matches)"] if search(file.name) else []
        try:
            data = read_anchored(decision.anchor, MAX_READ_BYTES)
        except PolicyError:
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
        anchor = self._anchor("read", path)
        with _refusals(), fsat.parent(anchor) as place:
            fd, _ = place.open_file(for_change=False)
            os.close(fd)
        self.on_attach(str(anchor.path))
        return f"{anchor.path} will be attached to the reply"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_anchored(anchor: Anchor, limit: int, *, whole: bool = False) -> bytes:
    """Up to `limit` bytes of the regular file `anchor` names, through descriptors from its
    rule's root (the file judged by fstat when opened); PolicyError if it cannot be read, and
    with `whole` if it is over `limit` bytes (an attachment goes whole or not at all)."""
    try:
        with fsat.parent(anchor) as place:
            fd, info = place.open_file(for_change=False)
            with os.fdopen(fd, "rb") as handle:
                if whole and info.st_size > limit:
                    raise PolicyError(f"{anchor.path} is over {limit} bytes: too large to attach")
                return handle.read(limit)
    except OSError as error:
        raise PolicyError(f"{anchor.path} cannot be read ({error.strerror})") from None


def _edited(fd: int, info: os.stat_result, path: str, old_text: str, new_text: str) -> str:
    """The text of the open file with `old_text` replaced once by `new_text`, or ToolError."""
    if info.st_size > MAX_READ_BYTES:
        raise ToolError(f"{path} is {info.st_size} bytes; edit_file works on files up to "
                        f"{MAX_READ_BYTES} bytes (write a new file instead)")
    data = b""
    while chunk := os.read(fd, MAX_READ_BYTES + 1 - len(data)):
        data += chunk
        if len(data) > MAX_READ_BYTES:
            raise ToolError(f"{path} grew past {MAX_READ_BYTES} bytes while being read")
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise ToolError(f"{path} is not UTF-8 text; edit_file changes text files only") from None
    count = text.count(old_text) if old_text else 0
    if count != 1:
        raise ToolError(f"old_text occurs {count} times in {path}; it must occur exactly once")
    return text.replace(old_text, new_text, 1)


def _walk_files(fd: int, base: Path) -> Generator[Path, None, None]:
    """Every file under the open folder, sorted, .git folders skipped; no symlink followed."""
    for folder_name, dirs, files, _ in os.fwalk(".", dir_fd=fd):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(files):
            yield base / folder_name / name
