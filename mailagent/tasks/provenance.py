"""Provenance: whether a schedule the model makes now has the owner's authority (SECURITY.md S5).

In: what the model of a conversation has been shown (`SeenContext`, read from the store) and the
task that calls `schedule_task`. Out: "" when nothing but the owner's own typed words (and
mailagent's own answers about the model's own calls) can have led to the schedule; otherwise
the reason it is the model's, in words for the owner. Pure: no I/O. The model is assumed to be
hijackable by anything it reads, so nothing it says or wrote counts here.

The rule: a schedule is the owner's when
- the task that makes it was started by an authenticated owner mail (not a scheduled run)
  with typed text of its own (a phone's "Sent from my ..." line alone is none), and
- nothing the conversation's model has been shown came from anyone else: no mail of the
  conversation forwarded a message, carried attachments, or quoted mail that mailagent did not
  send; no task of it is a scheduled run; no tool brought content in from outside (anything
  but the write, edit, move, delete, attach, remember and schedule tools, whose results are
  mailagent's words about the model's own input); no web or document block is in its history.
The whole conversation counts, not only the calling task: its history goes with every request,
so a forward read last week steers the model as well as one read now, and a rule for the task
alone would let a forward plant a schedule at the owner's next "thanks". The price is one
`approve` for a schedule asked for in a conversation that has read files; a new `[name]`
conversation asks nothing.
"""

from __future__ import annotations

from mailagent.mail.threads import is_typed_nothing
from mailagent.store import SeenContext, SeenTask

# Tools whose results are mailagent's own words about the model's own input (a path, a note,
# a schedule): they bring nothing from outside before the model.
QUIET_TOOLS = frozenset({"write_file", "edit_file", "move_file", "delete_file", "attach_file",
                         "remember", "schedule_task", "draft_mail"})
# Content blocks the model's turns and mailagent's messages are made of; any other kind (web
# search or fetch results, documents, images) is content from outside.
OWN_BLOCKS = frozenset({"text", "tool_use", "tool_result", "thinking", "redacted_thinking",
                        "compaction"})


def outside_content(task: SeenTask) -> str:
    """What of this task came before the model from someone other than the owner, or ''."""
    number = f"task #{task.task_id}"
    if not task.from_mail:
        return f"{number} is a scheduled run, whose task text the model wrote"
    if task.data.get("forwarded"):
        return f"the mail of {number} forwards a message"
    if task.data.get("attachments"):
        return f"the mail of {number} has attachments"
    if task.data.get("quoted_text") and not task.answers_us:
        return f"the mail of {number} quotes a mail that mailagent did not send"
    brought = sorted(set(task.tools_run) - QUIET_TOOLS)
    if brought:
        return f"{number} took in content from outside ({', '.join(brought)})"
    return ""


def why_the_models(seen: SeenContext, task_id: int) -> str:
    """'' if a schedule made now by task `task_id` is the owner's; else why it is the model's."""
    current = next((t for t in seen.tasks if t.task_id == task_id), None)
    if current is None or not current.from_mail:
        return "it was made during a scheduled run, not by a mail of yours"
    if is_typed_nothing(current.instruction):
        return "your mail had no typed text of its own"
    for task in sorted(seen.tasks, key=lambda t: t.task_id != task_id):  # this task first
        reason = outside_content(task)
        if reason:
            return f"in this conversation, {reason}"
    foreign = sorted(seen.block_types - OWN_BLOCKS)
    if foreign:
        return f"this conversation holds content from outside ({', '.join(foreign)})"
    return ""
