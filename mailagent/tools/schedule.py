"""The schedule tool: the model asks for a recurring or one-off run of a task.

In: `when` and `task` from the model, and `make`, a callable from the worker that parses `when`,
stores the schedule in the calling task's own conversation and thread, and returns the
confirmation (or raises ValueError with what to write instead). Out: that confirmation, or
ToolError. It never chooses a conversation, a thread or a recipient: `make` is bound to the task.
Whether a schedule runs at once or waits for the owner's approval is decided by `make`, from
provenance (`mailagent.tasks.provenance`), never from anything the model says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailagent.tools.files import ToolError

MAX_TASK_CHARS = 2000


@dataclass
class ScheduleTools:
    make: Callable[[str, str], str]

    def schedule_task(self, when: str, task: str) -> str:
        """Schedule a task to run later, once or repeatedly; each run answers in this thread.

        Use it only when the owner asks for something recurring ("every morning ...") or for
        something at a later time. Do not do the task now as well unless the owner asks.
        Each run is an ordinary task with the same permissions as this one.

        The schedule is active at once only when the owner's own typed words are all that can
        have led to it: this task came from the owner's mail with typed text, and nothing in
        this conversation came from anyone else (no forwarded mail, attachments, or quoted
        mail not sent by mailagent; no scheduled run; no output of reading, listing or
        searching files, of commands or of connectors). Otherwise it is stored inactive and
        the owner is mailed a question: it runs only once the owner approves it by reply, and
        is dropped on deny or when no answer comes. The result says which; do not make the
        same schedule again while it waits.

        Args:
            when: a plain English schedule in the owner's time zone, in one of these forms:
                "every 10 minutes", "every hour", "every 2 hours", "every day at 08:00",
                "every weekday at 07:45" (Monday to Friday), "every monday at 09:30",
                "at 2026-12-24 18:00" (once). Other forms are refused with the list of forms.
            task: the instruction each run is given, written so that it stands on its own,
                at most 2000 characters.
        """
        task = task.strip()
        if not task or len(task) > MAX_TASK_CHARS:
            raise ToolError(f"task must have 1 to {MAX_TASK_CHARS} characters")
        try:
            return self.make(when, task)
        except ValueError as exc:
            raise ToolError(str(exc)) from None
