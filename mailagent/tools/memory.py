"""The memory tool: lasting notes of one conversation, which the owner can read and edit by mail."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailagent.tools.files import ToolError

MAX_NOTE_CHARS = 500


@dataclass
class MemoryTools:
    save: Callable[[str], int]
    notes: Callable[[], list[tuple[int, str]]]  # the conversation's notes now
    max_notes: int = 50
    max_chars: int = 10_000

    def remember(self, note: str) -> str:
        """Keep a short note in this conversation's long-term memory.

        Use it for lasting facts or preferences the owner states, not for task progress.
        The owner can list and delete notes by mail. Memory holds a limited number of notes;
        when it is full the note is refused and nothing is saved.

        Args:
            note: one fact, at most 500 characters.
        """
        note = " ".join(note.split())
        if not note or len(note) > MAX_NOTE_CHARS:
            raise ToolError(f"a note must have 1 to {MAX_NOTE_CHARS} characters")
        kept = self.notes()
        used = sum(len(text) for _, text in kept)
        if len(kept) >= self.max_notes or used + len(note) > self.max_chars:
            raise ToolError(f"memory is full ({len(kept)} notes, {used} characters; the limits "
                            f"are {self.max_notes} notes and {self.max_chars} characters): "
                            "nothing was saved. Tell the owner, who can reply `memory` to list "
                            "the notes and `forget N` to drop one")
        return f"remembered as note {self.save(note)}"
