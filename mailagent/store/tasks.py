"""Store queries of tasks and mail commands: the queue, claiming, states, and what status reads.

In: calls from the worker, the service and the CLI. Out: frozen `TaskWork`, `TaskView`,
`CommandWork` and the like. Side effects: the `task`, `command` and `conversation` tables and the
audit rows of each change. Claiming a task and moving it between states are one transaction each,
along the transitions of `TASK_TRANSITIONS`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import func
from sqlmodel import col, select

from mailagent.errors import StoreError
from mailagent.store.db import MailStore, _audit, _aware, _enqueue, _id, _move, _task, _work
from mailagent.store.tables import TASK_STATES, Approval, Command, Conversation, Task, utcnow
from mailagent.store.views import (
    CommandView,
    CommandWork,
    ConversationView,
    Outbound,
    ReplyTarget,
    TaskView,
    TaskWork,
)


class TaskStore(MailStore):
    """Tasks and mail commands: the queue, claiming, states, and what status lists."""

    def set_task_state(self, task_id: int, state: str, reason: str | None = None) -> None:
        """Move a task along the state machine; an illegal transition raises StoreError."""
        with self.session() as s:
            _move(s, task_id, state, reason)

    def tasks(self, states: Sequence[str] = TASK_STATES) -> list[TaskView]:
        with self.session() as s:
            rows = s.exec(select(Task, Conversation.name).join(Conversation).where(
                col(Task.state).in_(list(states))).order_by(col(Task.task_id)))
            return [
                TaskView(_id(t.task_id), name, t.state, t.subject, t.owner_address,
                         t.instruction, json.loads(t.data_json), t.created_at, t.reason)
                for t, name in rows
            ]

    def commands(self) -> list[CommandView]:
        with self.session() as s:
            rows = s.exec(select(Command, Conversation.name).join(
                Conversation, isouter=True).order_by(col(Command.command_id)))
            return [
                CommandView(_id(c.command_id), c.name, c.argument, name, c.task_id, c.state,
                            c.created_at)
                for c, name in rows
            ]

    def conversations(self) -> list[ConversationView]:
        with self.session() as s:
            counts: dict[int, dict[str, int]] = {}
            for conversation_id, state, n in s.exec(
                select(Task.conversation_id, Task.state, func.count()).group_by(
                    col(Task.conversation_id), col(Task.state))
            ):
                counts.setdefault(conversation_id, {})[state] = n
            rows = s.exec(select(Conversation).order_by(col(Conversation.conversation_id)))
            return [
                ConversationView(_id(c.conversation_id), c.name,
                                 counts.get(_id(c.conversation_id), {}))
                for c in rows
            ]

    def requeue_interrupted(self, keep: Iterable[int] = ()) -> list[int]:
        """Tasks left running by a crash go back to the queue; they resume from their history.
        `keep`: tasks that do run now in this process (the others were left by a step that
        could not be recorded)."""
        kept = set(keep)
        with self.session() as s:
            rows = [t for t in s.exec(select(Task).where(Task.state == "running"))
                    if t.task_id not in kept]
            for task in rows:
                task.state, task.updated_at = "queued", utcnow()
                s.add(task)
                _audit(s, "task.resumed", "interrupted by a restart; resuming after its last step",
                       task.raw_message_id, task.task_id, {})
            return [_id(t.task_id) for t in rows]

    def claim_tasks(self, busy: set[int], limit: int, now: datetime) -> list[TaskWork]:
        """Mark as running the oldest queued task of each idle conversation, up to `limit`."""
        if limit <= 0:
            return []
        with self.session() as s:
            blocking = select(Task.conversation_id).where(
                col(Task.state).in_(["running", "waiting_approval"]))
            blocked = set(s.exec(blocking)) | busy
            # Only the oldest queued task of each conversation can start: a backlog of one
            # conversation must not be read whole at every claim.
            oldest = select(func.min(Task.task_id)).where(Task.state == "queued").group_by(
                col(Task.conversation_id))
            rows = s.exec(select(Task, Conversation.name).join(Conversation).where(
                col(Task.task_id).in_(oldest)).order_by(col(Task.task_id)))
            claimed: list[TaskWork] = []
            for task, name in rows:
                if task.conversation_id in blocked:
                    continue
                blocked.add(task.conversation_id)  # only the oldest of each conversation
                if task.not_before is not None and _aware(task.not_before) > now:
                    continue
                task.state, task.updated_at = "running", utcnow()
                s.add(task)
                _audit(s, "task.running", "", task.raw_message_id, task.task_id, {})
                claimed.append(_work(task, name))
                if len(claimed) >= limit:
                    break
            return claimed

    def task_work(self, task_id: int) -> TaskWork:
        with self.session() as s:
            task = _task(s, task_id)
            conversation = s.get(Conversation, task.conversation_id)
            assert conversation is not None
            return _work(task, conversation.name)

    def task_state(self, task_id: int) -> str:
        with self.session() as s:
            task = _task(s, task_id)
            return task.state

    def finish_task(self, task_id: int, state: str, reason: str, result_text: str = "",
                    mail: Outbound | None = None) -> None:
        """End a task and queue its mail in one transaction: never one without the other."""
        with self.session() as s:
            task = _move(s, task_id, state, reason)
            task.result_text = result_text
            s.add(task)
            if mail is not None:
                _enqueue(s, mail)

    def reply_target(self, task_id: int) -> ReplyTarget:
        with self.session() as s:
            task = _task(s, task_id)
            conversation = s.get(Conversation, task.conversation_id)
            assert conversation is not None
            return ReplyTarget(task.owner_address, task.subject, task.message_id,
                               tuple(task.references.split()), task.conversation_id,
                               conversation.name, task_id)

    def next_task_event_at(self) -> datetime | None:
        """The earliest moment the worker has something to do that no one tells it about: a
        deferred task may run, or a pending approval expires."""
        with self.session() as s:
            deferred = s.exec(select(func.min(Task.not_before)).where(
                Task.state == "queued", col(Task.not_before).is_not(None))).one()
            expiry = s.exec(select(func.min(Approval.expires_at))
                            .where(Approval.state == "pending")).one()
        times = [_aware(t) for t in (deferred, expiry) if t is not None]
        return min(times) if times else None

    def pending_commands(self) -> list[CommandWork]:
        with self.session() as s:
            rows = s.exec(select(Command, Conversation.name).join(Conversation, isouter=True)
                          .where(Command.state == "pending").order_by(col(Command.command_id)))
            return [CommandWork(
                _id(c.command_id), c.name, c.argument, c.conversation_id, name, c.task_id,
                ReplyTarget(c.owner_address, c.subject, c.message_id,
                            tuple(c.references.split()), c.conversation_id, name, c.task_id))
                for c, name in rows]

    def finish_command(self, command_id: int, mail: Outbound | None, reason: str) -> None:
        with self.session() as s:
            command = s.get(Command, command_id)
            if command is None:
                raise StoreError(f"no command {command_id}")
            command.state = "done"
            s.add(command)
            _audit(s, "command.done", reason, command.raw_message_id, command.task_id,
                   {"command": command.name})
            if mail is not None:
                _enqueue(s, mail)

    def defer_task(self, task_id: int, not_before: datetime, reason: str) -> bool:
        """Put a running task back in the queue until `not_before` (overload, rate limit);
        True the first time this task is deferred."""
        with self.session() as s:
            task = _move(s, task_id, "queued", reason)
            first = task.not_before is None
            task.not_before = not_before
            s.add(task)
            return first
