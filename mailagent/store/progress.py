"""Store queries of a task's way through: when its mail came in and when its answer went out.

In: calls from `mailagent init --wait-for-first-task`. Out: `Answered` and task numbers. Side
effects: none (reads only). As everywhere in the store, it decides nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import col, func, select

from mailagent.store.db import MailStore, _aware
from mailagent.store.tables import OutboxRow, RawMessage, Task

ANSWER_KINDS = ("completion", "failure")  # the mails that end a task


@dataclass(frozen=True)
class Answered:
    task_id: int
    subject: str
    received_at: datetime  # when mailagent took the mail from the mailbox (UTC)
    replied_at: datetime  # when SMTP accepted the answer (UTC)

    @property
    def seconds(self) -> float:
        return (self.replied_at - self.received_at).total_seconds()


def last_task_id(store: MailStore) -> int:
    """The highest task number so far (0 when there is none)."""
    with store.session() as s:
        return int(s.exec(select(func.max(Task.task_id))).one() or 0)


def mailed_tasks_after(store: MailStore, task_id: int) -> list[tuple[int, str, str]]:
    """(task_id, subject, state) of the tasks mailed in after `task_id`, oldest first."""
    with store.session() as s:
        rows = s.exec(select(Task).where(col(Task.task_id) > task_id,
                                         col(Task.raw_message_id).is_not(None))
                      .order_by(col(Task.task_id)))
        return [(r.task_id or 0, r.subject, r.state) for r in rows]


def first_answered_after(store: MailStore, task_id: int) -> Answered | None:
    """The first task mailed in after `task_id` whose answer has been sent, if any."""
    with store.session() as s:
        row = s.exec(
            select(Task, OutboxRow, RawMessage)
            .where(col(Task.task_id) > task_id, OutboxRow.task_id == Task.task_id,
                   RawMessage.raw_message_id == Task.raw_message_id,
                   col(OutboxRow.kind).in_(ANSWER_KINDS), OutboxRow.state == "sent",
                   col(OutboxRow.sent_at).is_not(None))
            .order_by(col(OutboxRow.sent_at))).first()
        if row is None:
            return None
        task, mail, raw = row
        assert mail.sent_at is not None
        return Answered(task.task_id or 0, task.subject, _aware(raw.received_at),
                        _aware(mail.sent_at))
