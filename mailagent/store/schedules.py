"""Store queries of schedules: recording them, their state, and enqueueing their runs.

In: calls from the scheduler, the worker and the CLI. Out: frozen `ScheduleView`s. Side effects:
the `schedule` table and the tasks of scheduled runs. As everywhere in the store, it decides
nothing: it records, each change in one transaction. Enqueueing a run and advancing the
schedule's next run time are one transaction, guarded by the due time the caller saw, so a
crash or a second caller can neither run a slot twice nor lose it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlmodel import Session, col, func, select

from mailagent.store.db import MailStore, _audit, _conversation, _enqueue, _id, _utc
from mailagent.store.tables import (
    Approval,
    Conversation,
    HistoryEntry,
    Schedule,
    Task,
    ToolCallRow,
    utcnow,
)
from mailagent.store.views import (
    NewSchedule,
    ScheduledRun,
    ScheduleQuestion,
    ScheduleView,
    SeenContext,
    SeenTask,
)

# Listed, and counted against the per-conversation limit: one awaiting approval too, so that
# content cannot have the owner asked without end.
LIVE_STATES = ("active", "paused", "awaiting_approval")
RUNNABLE_STATES = ("active", "paused", "finished")  # what `run N now` may run


def _view(row: Schedule, conversation_name: str) -> ScheduleView:
    return ScheduleView(
        _id(row.schedule_id), row.conversation_id, conversation_name, row.origin_task_id,
        row.source, row.file_key, row.when_text, row.rule_json, row.timezone, row.task_text,
        row.state, row.reason, _utc(row.next_run_at), _utc(row.last_run_at),
        row.consecutive_failures, row.message_id,
    )


def _name(s: Session, conversation_id: int) -> str:
    conversation = s.get(Conversation, conversation_id)
    assert conversation is not None
    return conversation.name


def _run_task(s: Session, row: Schedule, run: ScheduledRun, now: datetime) -> int:
    """Queue one run of a schedule as an ordinary task that replies in the schedule's thread."""
    schedule_id = _id(row.schedule_id)
    task = Task(
        conversation_id=row.conversation_id, raw_message_id=None,
        owner_address=row.owner_address, subject=row.subject, message_id=row.message_id,
        references=row.references, instruction=run.instruction,
        data_json=json.dumps({**run.data, "schedule_id": schedule_id}),
        created_at=now, updated_at=now,
    )
    s.add(task)
    s.flush()
    task_id = _id(task.task_id)
    row.last_run_at, row.updated_at = now, now
    s.add(row)
    _audit(s, "task.queued", f"scheduled run of #{schedule_id}", None, task_id,
           {"schedule": schedule_id, **run.data})
    return task_id


def _ask(s: Session, view: ScheduleView, task_id: int, question: ScheduleQuestion) -> None:
    s.add(Approval(task_id=task_id, tool_use_id="", token=question.token,
                   digest=question.digest, operation=question.operation,
                   message_id=question.mail.message_id, created_at=utcnow(),
                   expires_at=question.expires_at, schedule_id=view.schedule_id))
    _audit(s, "approval.requested", question.operation, None, task_id,
           {"schedule": view.schedule_id, "digest": question.digest})
    _enqueue(s, question.mail)


def _tools_run(s: Session, task_ids: list[int]) -> dict[int, tuple[str, ...]]:
    """The tools each task called that ran: decided allow or ask, and then started."""
    rows = s.exec(select(ToolCallRow.task_id, ToolCallRow.name).where(
        col(ToolCallRow.task_id).in_(task_ids), col(ToolCallRow.verdict).in_(["allow", "ask"]),
        col(ToolCallRow.state).in_(["started", "done", "failed"])))
    found: dict[int, list[str]] = {}
    for task_id, name in rows:
        found.setdefault(task_id, []).append(name)
    return {task_id: tuple(names) for task_id, names in found.items()}


def _block_types(contents: Sequence[str]) -> frozenset[str]:
    types: set[str] = set()
    for content in contents:
        blocks = json.loads(content)
        if isinstance(blocks, list):  # a summary's content is its text
            types.update(str(b.get("type")) for b in blocks if isinstance(b, dict))
    return frozenset(types)


class ScheduleStore(MailStore):
    """The schedule table's reads and writes."""

    def add_schedule(self, new: NewSchedule, max_live: int,
                     question: Callable[[ScheduleView], ScheduleQuestion] | None = None
                     ) -> ScheduleView | None:
        """Record a schedule; None if its conversation has `max_live` live ones. With
        `question`, the approval it waits for and its mail are recorded in the same commit."""
        with self.session() as s:
            conversation = _conversation(s, new.conversation_name)
            conversation_id = _id(conversation.conversation_id)
            live = s.exec(select(func.count()).select_from(Schedule).where(
                Schedule.conversation_id == conversation_id,
                col(Schedule.state).in_(LIVE_STATES))).one()
            if live >= max_live:
                return None
            now = utcnow()
            row = Schedule(
                conversation_id=conversation_id, origin_task_id=new.origin_task_id,
                source=new.source, file_key=new.file_key, owner_address=new.owner_address,
                subject=new.subject, message_id=new.message_id,
                references=" ".join(new.references), when_text=new.when_text,
                rule_json=new.rule_json, timezone=new.timezone, task_text=new.task_text,
                next_run_at=new.next_run_at, state=new.state, reason=new.reason,
                created_at=now, updated_at=now,
            )
            s.add(row)
            s.flush()
            _audit(s, "schedule.created", new.when_text, None, new.origin_task_id,
                   {"schedule": row.schedule_id, "source": new.source, "task": new.task_text,
                    "state": new.state})
            view = _view(row, conversation.name)
            if question is not None and new.origin_task_id is not None:
                _ask(s, view, new.origin_task_id, question(view))
            return view

    def schedules(self, states: Sequence[str] = LIVE_STATES) -> list[ScheduleView]:
        with self.session() as s:
            rows = s.exec(select(Schedule, Conversation.name).join(Conversation).where(
                col(Schedule.state).in_(list(states))).order_by(col(Schedule.schedule_id)))
            return [_view(row, name) for row, name in rows]

    def schedule(self, schedule_id: int) -> ScheduleView | None:
        with self.session() as s:
            row = s.get(Schedule, schedule_id)
            return _view(row, _name(s, row.conversation_id)) if row else None

    def schedules_made_by(self, task_id: int) -> list[ScheduleView]:
        with self.session() as s:
            rows = s.exec(select(Schedule, Conversation.name).join(Conversation).where(
                Schedule.origin_task_id == task_id).order_by(col(Schedule.schedule_id)))
            return [_view(row, name) for row, name in rows]

    def set_schedule(self, schedule_id: int, state: str, reason: str,
                     next_run_at: datetime | None, reset_failures: bool = False) -> None:
        with self.session() as s:
            row = s.get(Schedule, schedule_id)
            if row is None:
                return
            row.state, row.reason, row.next_run_at = state, reason, next_run_at
            row.updated_at = utcnow()
            if reset_failures:
                row.consecutive_failures = 0
            s.add(row)
            _audit(s, f"schedule.{state}", reason, None, None, {"schedule": schedule_id})

    def advance_schedule(self, schedule_id: int, due_at: datetime, next_run_at: datetime | None,
                         run: ScheduledRun | None) -> int | None:
        """If the schedule is still active and due at `due_at`: queue `run` (None: skip it) and
        move on to `next_run_at` (None: a one-off that is finished), in one transaction.
        Returns the queued task's id, 0 for a skipped slot, None if someone else was first."""
        with self.session() as s:
            row = s.get(Schedule, schedule_id)
            if row is None or row.state != "active" or _utc(row.next_run_at) != due_at:
                return None
            now = utcnow()
            task_id = _run_task(s, row, run, now) if run is not None else 0
            if run is None:
                _audit(s, "schedule.skipped", "missed while the machine was asleep or off",
                       None, None, {"schedule": schedule_id, "due_at": due_at.isoformat()})
            row.next_run_at, row.updated_at = next_run_at, now
            if next_run_at is None:
                row.state, row.reason = "finished", "its one run is done"
            s.add(row)
            return task_id

    def run_schedule_now(self, schedule_id: int, run: ScheduledRun) -> int | None:
        """An extra run now, outside the schedule's times; None if it is cancelled or gone."""
        with self.session() as s:
            row = s.get(Schedule, schedule_id)
            if row is None or row.state not in RUNNABLE_STATES:
                return None
            return _run_task(s, row, run, utcnow())

    def schedule_run_finished(self, task_id: int, succeeded: bool,
                              reply_message_id: str | None) -> ScheduleView | None:
        """Count a finished run (a success resets the count of failures in a row); a schedule
        without a thread yet threads its later runs under this run's reply."""
        with self.session() as s:
            task = s.get(Task, task_id)
            schedule_id = json.loads(task.data_json).get("schedule_id") if task else None
            row = s.get(Schedule, schedule_id) if schedule_id else None
            if row is None:
                return None
            row.consecutive_failures = 0 if succeeded else row.consecutive_failures + 1
            if row.message_id is None and reply_message_id:
                row.message_id = reply_message_id
            s.add(row)
            return _view(row, _name(s, row.conversation_id))

    def seen_by_model(self, task_id: int) -> SeenContext:
        """What the model of this task's conversation has been shown: every task with words in
        its history (compacted ones too: a summary carries what it summarised), and this one."""
        with self.session() as s:
            task = s.get(Task, task_id)
            if task is None:
                return SeenContext((), frozenset())
            contents = list(s.exec(select(HistoryEntry.content_json).where(
                HistoryEntry.conversation_id == task.conversation_id)))
            seen = set(s.exec(select(HistoryEntry.task_id).where(
                HistoryEntry.conversation_id == task.conversation_id,
                col(HistoryEntry.task_id).is_not(None)).distinct()))
            ids = sorted({task_id, *(i for i in seen if i is not None)})
            tools = _tools_run(s, ids)
            tasks = s.exec(select(Task).where(col(Task.task_id).in_(ids))
                           .order_by(col(Task.task_id)))
            return SeenContext(tuple(
                SeenTask(_id(t.task_id), t.raw_message_id is not None, t.answers_us,
                         t.instruction, json.loads(t.data_json), tools.get(_id(t.task_id), ()))
                for t in tasks), _block_types(contents))

    def settle_schedule_approval(self, approval_id: int, state: str, reason: str,
                                 schedule_state: str, next_run_at: datetime | None) -> bool:
        """pending -> approved | denied | expired, once, and the schedule that waits for it
        moves to `schedule_state` in the same commit; False if the approval was settled
        already or its schedule no longer waits (the approval is settled all the same)."""
        with self.session() as s:
            approval = s.get(Approval, approval_id)
            if approval is None or approval.state != "pending" or approval.schedule_id is None:
                return False
            approval.state, approval.settled_at = state, utcnow()
            s.add(approval)
            _audit(s, f"approval.{state}", reason, None, approval.task_id,
                   {"operation": approval.operation, "digest": approval.digest,
                    "schedule": approval.schedule_id})
            row = s.get(Schedule, approval.schedule_id)
            if row is None or row.state != "awaiting_approval":
                return False
            row.state, row.reason, row.next_run_at = schedule_state, reason, next_run_at
            row.updated_at = utcnow()
            s.add(row)
            _audit(s, f"schedule.{schedule_state}", reason, None, None,
                   {"schedule": approval.schedule_id})
            return True
