"""A conversation's history kept valid for the Messages API, however a task ends.

In: history content (API-shaped blocks) and, at the end of a task, its tool call rows. Out:
messages in which every `tool_use` is answered by a `tool_result` at the start of the next user
message, and no text block is empty; at a task's end, the results of its unanswered calls
appended to the history, saying what did and did not run. It must never drop a result that was
recorded, nor claim that a call ran when it did not.
https://docs.claude.com/en/docs/agents-and-tools/tool-use/implement-tool-use
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, text
from sqlmodel import Session, col, select

from mailagent.store.tables import Approval, HistoryEntry, Task, ToolCallRow, utcnow

LOST = "not run: the task ended before this call ran, or its result was lost"
INTERRUPTED = ("interrupted: the task ended while this call ran; it may have partly happened, "
               "so check the state before retrying")


def is_empty_text(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") == "text" \
        and not str(block.get("text", "")).strip()


def without_empty_text(content: Sequence[Any]) -> list[Any]:
    return [block for block in content if not is_empty_text(block)]


def tool_use_ids(content: Sequence[Any]) -> list[str]:
    return [str(b["id"]) for b in content if isinstance(b, dict) and b.get("type") == "tool_use"]


def _is_result(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") == "tool_result"


def error_result(tool_use_id: str, why: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_use_id, "content": why, "is_error": True}


def answered(content: Sequence[Any], calls: Sequence[str]) -> list[Any]:
    """`content` of the user message after a turn with `calls`: their results first (an error
    result where none exists), results of other calls dropped, the rest after them."""
    results = {str(b.get("tool_use_id")): b for b in content if _is_result(b)}
    leading = [results.get(call) or error_result(call, LOST) for call in calls]
    return [*leading, *[b for b in content if not _is_result(b)]]


def valid_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages the API accepts, whatever the stored history holds: the one gate before every
    request."""
    valid: list[dict[str, Any]] = []
    for message in messages:
        content = without_empty_text(message["content"])
        if message["role"] == "user":
            before = valid[-1]["content"] if valid and valid[-1]["role"] == "assistant" else []
            content = answered(content, tool_use_ids(before))
        valid.append({**message, "content": content or [{"type": "text", "text": "(empty)"}]})
    if valid and valid[-1]["role"] == "assistant" and tool_use_ids(valid[-1]["content"]):
        valid.append({"role": "user", "content": answered([], tool_use_ids(valid[-1]["content"]))})
    return valid


def open_calls(entries: Sequence[tuple[str, list[Any]]]) -> list[str]:
    """The ids of the last assistant turn's calls that no later entry answers."""
    for index in range(len(entries) - 1, -1, -1):
        role, content = entries[index]
        if role == "assistant":
            later = {str(b.get("tool_use_id")) for _, c in entries[index + 1:] for b in c
                     if _is_result(b)}
            return [call for call in tool_use_ids(content) if call not in later]
    return []


# ---------------------------------------------------------------- at the end of a task


def why_not_run(s: Session, task: Task, row: ToolCallRow | None) -> dict[str, Any] | str:
    """The recorded result of a call, or why it has none, from its row and the task's end."""
    if row is not None and row.result_json and row.state in ("done", "failed", "denied"):
        result: dict[str, Any] = json.loads(row.result_json)
        return result
    if row is not None and row.state == "started":
        return INTERRUPTED
    if row is not None and row.state == "refused":
        approval = s.exec(select(Approval).where(Approval.task_id == task.task_id,
                                                 Approval.tool_use_id == row.tool_use_id)
                          .order_by(col(Approval.approval_id).desc())).first()
        if approval is not None and approval.state == "expired":
            return "not run: the owner's approval did not come in time"
        return "not run: the owner denied it"
    if task.state == "cancelled":
        return "not run: the task was cancelled"
    reason = task.reason or ""
    if reason.startswith("budget"):
        return f"not run: the task stopped at its budget ({reason.removeprefix('budget: ')})"
    return f"not run: the task ended ({reason or task.state})"


def close_open_calls(s: Session, task: Task) -> None:
    """At a task's end: a result for every call of its last turn that has none, so the next
    request of the conversation is valid and the model knows what did and did not run."""
    rows = s.exec(select(HistoryEntry).where(HistoryEntry.task_id == task.task_id)
                  .order_by(col(HistoryEntry.entry_id))).all()
    calls = open_calls([(row.role, json.loads(row.content_json)) for row in rows
                        if row.kind == "message"])
    if not calls:
        return
    results = []
    for call in calls:
        row = s.exec(select(ToolCallRow).where(ToolCallRow.task_id == task.task_id,
                                               ToolCallRow.tool_use_id == call)).first()
        why = why_not_run(s, task, row)
        results.append(why if isinstance(why, dict) else error_result(call, why))
    s.add(HistoryEntry(conversation_id=task.conversation_id, task_id=task.task_id, role="user",
                       kind="message", content_json=json.dumps(results), created_at=utcnow()))


# ---------------------------------------------------------------- the migration


def repair_histories(connection: Connection) -> None:
    """Histories written before this repair: empty text dropped, and every unanswered call
    answered in the next user entry (or a new one), as not run."""
    rows = connection.execute(text(
        "SELECT entry_id, conversation_id, task_id, role, kind, content_json FROM history "
        "ORDER BY conversation_id, entry_id")).all()
    pending: list[str] = []
    last: Any = None
    for entry_id, conversation_id, task_id, role, kind, content_json in rows:
        if last is not None and conversation_id != last[1]:
            _answer_at_end(connection, last, pending)
            pending = []
        content = json.loads(content_json)
        if kind == "message" and isinstance(content, list):
            fixed = without_empty_text(content)
            if role == "user":
                fixed, pending = answered(fixed, pending) if pending else fixed, []
            elif role == "assistant":
                pending = tool_use_ids(fixed) or pending
            if fixed != content:
                connection.execute(text("UPDATE history SET content_json = :c "
                                        "WHERE entry_id = :e"),
                                   {"c": json.dumps(fixed or [{"type": "text", "text": "(empty)"}]),
                                    "e": entry_id})
        last = (entry_id, conversation_id, task_id)
    if last is not None:
        _answer_at_end(connection, last, pending)


def _answer_at_end(connection: Connection, last: Any, pending: list[str]) -> None:
    """Calls the last entry of a conversation left open, unless its task may still run them."""
    if not pending:
        return
    state = connection.execute(text("SELECT state FROM task WHERE task_id = :t"),
                               {"t": last[2]}).scalar()
    if state not in ("done", "failed", "cancelled"):
        return  # it resumes, and answers them itself
    connection.execute(text(
        "INSERT INTO history (conversation_id, task_id, role, kind, content_json, "
        "created_at) VALUES (:c, :t, 'user', 'message', :j, :at)"),
        {"c": last[1], "t": last[2], "j": json.dumps([error_result(i, LOST) for i in pending]),
         "at": utcnow()})
