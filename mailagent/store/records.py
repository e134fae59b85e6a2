"""Store queries of what tasks are doing and did: their summaries (when each started and ended,
what it cost), their tool calls with the policy's decision, their model turns and the mails sent
for them.

In: calls from the `status` and `show N` mail commands and from `mailagent status`, `show` and
`history`. Out: frozen `TaskSummary`, `ToolStep`, `TurnEntry` and `MailSent`. Side effects:
none (reads only). As everywhere in the store, it decides nothing: what a step means is the
caller's to say (tasks/progress.py, tasks/record.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from mailagent.store.db import MailStore, _aware, _id, _utc
from mailagent.store.tables import (
    AuditEvent,
    Conversation,
    HistoryEntry,
    OutboxRow,
    Task,
    ToolCallRow,
)

ENDED = ("done", "failed", "cancelled")


@dataclass(frozen=True)
class TaskSummary:
    task_id: int
    conversation_id: int
    conversation_name: str
    state: str
    subject: str
    owner_address: str
    instruction: str  # the owner's own typed words
    reason: str | None
    created_at: datetime
    started_at: datetime | None  # first claimed by the worker (None: never ran)
    ended_at: datetime | None  # reached done, failed or cancelled
    turns: int
    tool_calls: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float

    @property
    def tokens(self) -> int:
        """Every token counted, as the task's budget counts them (cache reads and writes too)."""
        return (self.input_tokens + self.output_tokens + self.cache_read_tokens
                + self.cache_write_tokens)

    def seconds(self, now: datetime) -> float | None:
        """How long it ran: from its start to its end, or to `now` while it is not over."""
        if self.started_at is None:
            return None
        return max(0.0, ((self.ended_at or now) - self.started_at).total_seconds())


@dataclass(frozen=True)
class ToolStep:
    """One tool call of a task: what was asked, what the policy decided, what came of it."""

    tool_use_id: str
    name: str
    input: dict[str, Any]
    verdict: str  # allow | ask | deny
    rule: str
    reason: str
    state: str  # decided | started | done | failed | denied | waiting | approved
    result: Any
    change: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class TurnEntry:
    """One message of a task's part of the conversation, as stored."""

    role: str
    kind: str
    content: Any
    created_at: datetime


@dataclass(frozen=True)
class MailSent:
    kind: str
    recipient: str
    subject: str
    state: str
    created_at: datetime
    sent_at: datetime | None


def task_summaries(store: MailStore, *, states: Sequence[str] | None = None,
                   updated_since: datetime | None = None, task_ids: Sequence[int] | None = None,
                   limit: int | None = None) -> list[TaskSummary]:
    """Tasks, newest first, filtered by state, by the last change, or by number."""
    with store.session() as s:
        query = select(Task, Conversation.name).join(Conversation)
        if states is not None:
            query = query.where(col(Task.state).in_(list(states)))
        if updated_since is not None:
            query = query.where(Task.updated_at >= updated_since)
        if task_ids is not None:
            query = query.where(col(Task.task_id).in_(list(task_ids)))
        query = query.order_by(col(Task.task_id).desc())
        rows = list(s.exec(query.limit(limit) if limit is not None else query))
        ids = [_id(task.task_id) for task, _ in rows]
        starts = dict(s.exec(
            select(AuditEvent.task_id, func.min(AuditEvent.at))
            .where(AuditEvent.kind == "task.running", col(AuditEvent.task_id).in_(ids))
            .group_by(col(AuditEvent.task_id))).all()) if ids else {}
        return [_summary(task, name, starts.get(task.task_id)) for task, name in rows]


def _summary(task: Task, conversation_name: str, started_at: datetime | None) -> TaskSummary:
    return TaskSummary(
        task_id=_id(task.task_id), conversation_id=task.conversation_id,
        conversation_name=conversation_name, state=task.state, subject=task.subject,
        owner_address=task.owner_address, instruction=task.instruction, reason=task.reason,
        created_at=_aware(task.created_at), started_at=_utc(started_at),
        ended_at=_aware(task.updated_at) if task.state in ENDED else None,
        turns=task.turns, tool_calls=task.tool_calls, input_tokens=task.input_tokens,
        output_tokens=task.output_tokens, cache_read_tokens=task.cache_read_tokens,
        cache_write_tokens=task.cache_write_tokens, cost_usd=task.cost_usd)


def tool_steps(store: MailStore, task_ids: Sequence[int]) -> dict[int, list[ToolStep]]:
    """The tool calls of each task, in the order they were decided."""
    steps: dict[int, list[ToolStep]] = {task_id: [] for task_id in task_ids}
    if not steps:
        return steps
    with store.session() as s:
        rows = s.exec(select(ToolCallRow).where(col(ToolCallRow.task_id).in_(list(steps)))
                      .order_by(col(ToolCallRow.tool_call_id)))
        for row in rows:
            steps[row.task_id].append(ToolStep(
                row.tool_use_id, row.name, json.loads(row.input_json), row.verdict, row.rule,
                row.reason, row.state, json.loads(row.result_json) if row.result_json else None,
                json.loads(row.change_json) if row.change_json else None,
                _aware(row.created_at), _utc(row.finished_at)))
    return steps


def task_entries(store: MailStore, task_id: int) -> list[TurnEntry]:
    """The task's messages in its conversation, oldest first. A compaction copies the entries
    it keeps after its summary; each copy is shown once."""
    with store.session() as s:
        rows = s.exec(select(HistoryEntry).where(HistoryEntry.task_id == task_id)
                      .order_by(col(HistoryEntry.entry_id)))
        seen: set[tuple[str, str, datetime]] = set()
        entries = []
        for row in rows:
            key = (row.role, row.content_json, row.created_at)
            if key in seen:
                continue
            seen.add(key)
            entries.append(TurnEntry(row.role, row.kind, json.loads(row.content_json),
                                     _aware(row.created_at)))
        return entries


def task_mails(store: MailStore, task_id: int) -> list[MailSent]:
    """The mails written for a task, in order (whether or not they have gone out yet)."""
    with store.session() as s:
        rows = s.exec(select(OutboxRow).where(OutboxRow.task_id == task_id)
                      .order_by(col(OutboxRow.outbox_id)))
        return [MailSent(r.kind, r.recipient, r.subject, r.state, _aware(r.created_at),
                         _utc(r.sent_at)) for r in rows]
