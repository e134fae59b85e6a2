"""Store queries of what a task did: usage and cost, attachments, the conversation's history,
tool calls and their changes, and the conversation's memory notes.

In: calls from the agent loop, the tools and the worker. Out: frozen `HistoryItem`s,
`ToolCallView`s and plain values. Side effects: the `history`, `tool_call`, `memory_note` and
task usage columns. Each step of the loop is recorded as it ends, so a crash resumes after it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import col, select

from mailagent.store.db import MailStore, _audit, _id, _task
from mailagent.store.tables import HistoryEntry, MemoryNote, Task, ToolCallRow, utcnow
from mailagent.store.views import HistoryItem, ToolCallView, Usage


class HistoryStore(MailStore):
    """What tasks did: usage, attachments, history, tool calls and memory notes."""

    def add_usage(self, task_id: int, usage: Usage, tool_calls: int = 0) -> None:
        with self.session() as s:
            task = _task(s, task_id)
            task.turns += 1 if usage.input_tokens or usage.output_tokens else 0
            task.tool_calls += tool_calls
            task.input_tokens += usage.input_tokens
            task.output_tokens += usage.output_tokens
            task.cache_read_tokens += usage.cache_read_tokens
            task.cache_write_tokens += usage.cache_write_tokens
            task.cost_usd += usage.cost_usd
            task.web_search_requests += usage.web_search_requests
            task.web_fetch_requests += usage.web_fetch_requests
            s.add(task)

    def cost_since(self, since: datetime) -> float:
        with self.session() as s:
            total = s.exec(select(func.sum(Task.cost_usd)).where(Task.updated_at >= since)).one()
            return float(total or 0.0)

    def add_attachment(self, task_id: int, path: str) -> None:
        with self.session() as s:
            task = _task(s, task_id)
            paths = json.loads(task.attachments_json)
            if path not in paths:
                task.attachments_json = json.dumps([*paths, path])
                s.add(task)

    def attachments(self, task_id: int) -> list[str]:
        with self.session() as s:
            task = s.get(Task, task_id)
            return json.loads(task.attachments_json) if task else []

    def history(self, conversation_id: int) -> list[HistoryItem]:
        """The conversation as the model sees it: the latest summary and everything after it."""
        with self.session() as s:
            last_summary = s.exec(select(func.max(HistoryEntry.entry_id)).where(
                HistoryEntry.conversation_id == conversation_id,
                HistoryEntry.kind == "summary")).one()
            # Plain rows, not ORM objects: this runs before every model turn.
            query = sa_select(col(HistoryEntry.entry_id), col(HistoryEntry.task_id),
                              col(HistoryEntry.role), col(HistoryEntry.kind),
                              col(HistoryEntry.content_json)).where(
                col(HistoryEntry.conversation_id) == conversation_id)
            if last_summary is not None:
                query = query.where(col(HistoryEntry.entry_id) >= last_summary)
            rows = s.execute(query.order_by(col(HistoryEntry.entry_id))).all()
            return [HistoryItem(_id(entry_id), task_id, role, kind, json.loads(content))
                    for entry_id, task_id, role, kind, content in rows]

    def append_history(self, conversation_id: int, task_id: int | None, role: str, content: Any,
                       kind: str = "message") -> int:
        with self.session() as s:
            entry = HistoryEntry(conversation_id=conversation_id, task_id=task_id, role=role,
                                 kind=kind, content_json=json.dumps(content), created_at=utcnow())
            s.add(entry)
            s.flush()
            return _id(entry.entry_id)

    def insert_summary(self, conversation_id: int, summary: str, keep_from_entry_id: int) -> None:
        """Compaction: a summary standing for every entry before `keep_from_entry_id`.

        The kept entries are copied after the summary, so the history stays append-only.
        """
        with self.session() as s:
            kept = list(s.exec(select(HistoryEntry).where(
                HistoryEntry.conversation_id == conversation_id,
                col(HistoryEntry.entry_id) >= keep_from_entry_id).order_by(
                col(HistoryEntry.entry_id))))
            s.add(HistoryEntry(conversation_id=conversation_id, task_id=None, role="user",
                               kind="summary", content_json=json.dumps(summary),
                               created_at=utcnow()))
            for entry in kept:
                s.add(HistoryEntry(conversation_id=conversation_id, task_id=entry.task_id,
                                   role=entry.role, kind=entry.kind,
                                   content_json=entry.content_json, created_at=entry.created_at))

    def tool_call(self, task_id: int, tool_use_id: str) -> ToolCallView | None:
        with self.session() as s:
            row = s.exec(select(ToolCallRow).where(ToolCallRow.task_id == task_id,
                                                   ToolCallRow.tool_use_id == tool_use_id)).first()
            if row is None:
                return None
            return ToolCallView(row.tool_use_id, row.name, json.loads(row.input_json), row.verdict,
                                row.state, json.loads(row.result_json) if row.result_json else None,
                                json.loads(row.change_json) if row.change_json else None)

    def record_tool_decision(self, task_id: int, tool_use_id: str, name: str,
                             tool_input: dict[str, Any], verdict: str, rule: str,
                             reason: str) -> None:
        state = {"allow": "decided", "ask": "waiting", "deny": "denied"}[verdict]
        with self.session() as s:
            s.add(ToolCallRow(task_id=task_id, tool_use_id=tool_use_id, name=name,
                              input_json=json.dumps(tool_input), verdict=verdict, rule=rule,
                              reason=reason, state=state, created_at=utcnow()))
            _audit(s, f"policy.{verdict}", reason, None, task_id,
                   {"tool": name, "rule": rule, "tool_use_id": tool_use_id})

    def set_tool_call(self, task_id: int, tool_use_id: str, state: str, result: Any = None,
                      change: dict[str, Any] | None = None) -> None:
        with self.session() as s:
            row = s.exec(select(ToolCallRow).where(ToolCallRow.task_id == task_id,
                                                   ToolCallRow.tool_use_id == tool_use_id)).one()
            row.state = state
            if result is not None:
                row.result_json = json.dumps(result)
            if change is not None:
                row.change_json = json.dumps(change)
            if state in ("done", "failed"):
                row.finished_at = utcnow()
            s.add(row)

    def count_identical_calls(self, task_id: int, name: str, tool_input: dict[str, Any]) -> int:
        with self.session() as s:
            return int(s.exec(select(func.count()).select_from(ToolCallRow).where(
                ToolCallRow.task_id == task_id, ToolCallRow.name == name,
                ToolCallRow.input_json == json.dumps(tool_input))).one())

    def count_calls(self, task_id: int, names: tuple[str, ...]) -> int:
        """How many calls of these tools the task has made (recorded ones, denied included)."""
        with self.session() as s:
            return int(s.exec(select(func.count()).select_from(ToolCallRow).where(
                ToolCallRow.task_id == task_id, col(ToolCallRow.name).in_(names))).one())

    def changes(self, task_id: int) -> list[dict[str, Any]]:
        """What a task's tool calls changed on disk, in order."""
        with self.session() as s:
            rows = s.exec(select(ToolCallRow.change_json).where(
                ToolCallRow.task_id == task_id, ToolCallRow.change_json != "").order_by(
                col(ToolCallRow.tool_call_id)))
            return [json.loads(r) for r in rows]

    def memory(self, conversation_id: int) -> list[tuple[int, str]]:
        with self.session() as s:
            rows = s.exec(select(MemoryNote).where(
                MemoryNote.conversation_id == conversation_id,
                col(MemoryNote.deleted_at).is_(None)).order_by(col(MemoryNote.memory_id)))
            return [(_id(r.memory_id), r.note) for r in rows]

    def remember(self, conversation_id: int, note: str) -> int:
        with self.session() as s:
            row = MemoryNote(conversation_id=conversation_id, note=note, created_at=utcnow())
            s.add(row)
            s.flush()
            return _id(row.memory_id)

    def forget(self, conversation_id: int, memory_id: int) -> bool:
        with self.session() as s:
            row = s.get(MemoryNote, memory_id)
            if row is None or row.conversation_id != conversation_id or row.deleted_at:
                return False
            row.deleted_at = utcnow()
            s.add(row)
            return True
