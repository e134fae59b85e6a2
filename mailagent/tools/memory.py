"""The memory tool: lasting notes of one conversation, which the owner can read and edit by mail."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailagent.tools.files import ToolError

MAX_NOTE_CHARS = 500


@dataclass
class MemoryTools:
    save: Callable[[str], int]

    def remember(self, note: str) -> str:
        """Keep a short note in this conversation's long-term memory.

        Use it for lasting facts or preferences the owner states, not for task progress.
        The owner can list and delete notes by mail.

        Args:
            note: one fact, at most 500 characters.
        """
        note = " ".join(note.split())
        if not note or len(note) > MAX_NOTE_CHARS:
            raise ToolError(f"a note must have 1 to {MAX_NOTE_CHARS} characters")
        return f"remembered as note {self.save(note)}"
