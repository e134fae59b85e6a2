"""A task's record, for `show N` (by mail and `mailagent show N`) and `mailagent history`.

In: the store, a task number, and the fence ids to keep out of sight. Out: the record as a JSON
object with stable keys (`task_id`, `conversation`, `state`, `subject`, `reason`, `owner`,
`created_at`, `started_at`, `ended_at`, `duration_seconds`, `instruction`, `turns`,
`files_changed`, `mails`, `usage`) and as lines of text. Side effects: none (reads only).
It must never show a secret: the fence id that keeps data apart from instructions is cut out of
everything shown, long tool inputs are shown by their length, and image and PDF blocks (base64)
by what they are and their size, never their data.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

from mailagent.store import Store
from mailagent.store.records import (
    MailSent,
    TaskSummary,
    ToolStep,
    TurnEntry,
    task_entries,
    task_mails,
    task_summaries,
    tool_steps,
)
from mailagent.tasks.progress import (
    change_text,
    iso,
    rounded_seconds,
    seconds_text,
    target,
    usd,
)
from mailagent.tasks.toolbox import FENCE_KEY, conversation_nonce

RESULT_CHARS = 300  # of a tool's output, in a record
INPUT_CHARS = 120  # an input string longer than this is shown by its length
TEXT_CHARS = 4000  # of a model turn's text
_FENCE_TAG = re.compile(r'</?data\b[^>]*\bid="[^"]*"[^>]*>')


def hide(text: str, secrets: tuple[str, ...]) -> str:
    """`text` without fence tags and without any of `secrets`."""
    text = _FENCE_TAG.sub("", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[hidden]")
    return text


def clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:chars - 1] + "…"


def block_text(block: Any, secrets: tuple[str, ...]) -> str:
    """A content block as a person reads it; media as a short description, never its data."""
    if isinstance(block, str):
        return hide(block, secrets)
    if not isinstance(block, dict):
        return ""
    kind = block.get("type")
    if kind == "text":
        return hide(str(block.get("text", "")), secrets)
    if kind in ("image", "document"):
        source = block.get("source") or {}
        media_type = source.get("media_type") or source.get("type") or "unknown"
        data = source.get("data")
        size = f", {len(data) * 3 // 4} bytes" if isinstance(data, str) else ""
        return f"[{kind}: {media_type}{size}]"
    if kind == "tool_result":
        content = block.get("content")
        parts = content if isinstance(content, list) else [content]
        return " ".join(block_text(p, secrets).strip() for p in parts if p)
    return f"[{kind}]"


def result_text(result: Any, secrets: tuple[str, ...]) -> str:
    if result is None:
        return ""
    return clip(" ".join(block_text(result, secrets).split()), RESULT_CHARS)


def shown_input(tool_input: dict[str, Any], secrets: tuple[str, ...]) -> dict[str, Any]:
    """The call's input with long strings (a file's content, a mail's body) as their length."""
    shown: dict[str, Any] = {}
    for key, value in tool_input.items():
        if isinstance(value, str):
            value = hide(value, secrets)
            shown[key] = value if len(value) <= INPUT_CHARS else f"<{len(value)} characters>"
        elif isinstance(value, int | float | bool) or value is None:
            shown[key] = value
        else:
            shown[key] = clip(hide(str(value), secrets), INPUT_CHARS)
    return shown


OPEN_STATES = ("decided", "started", "approved")  # a call on its way, while its task runs


def step_json(step: ToolStep, secrets: tuple[str, ...], ended: bool = False) -> dict[str, Any]:
    """One call; on its way when its task ended (cancelled, stopped), it is `unfinished`."""
    state = "unfinished" if ended and step.state in OPEN_STATES else step.state
    return {"tool_use_id": step.tool_use_id, "name": step.name,
            "target": hide(target(step.name, step.input), secrets),
            "input": shown_input(step.input, secrets), "verdict": step.verdict,
            "rule": step.rule, "reason": hide(step.reason, secrets), "state": state,
            "result": result_text(step.result, secrets),
            "change": None if step.change is None else
            {k: v for k, v in step.change.items() if k in ("op", "path", "from")}}


def turns_json(entries: list[TurnEntry], steps: list[ToolStep], secrets: tuple[str, ...],
               ended: bool) -> list[dict[str, Any]]:
    """Each model turn: its text and its tool calls, each with the policy's decision."""
    by_id = {step.tool_use_id: step for step in steps}
    turns: list[dict[str, Any]] = []
    for entry in entries:
        if entry.role != "assistant":
            continue
        blocks = entry.content if isinstance(entry.content, list) else [entry.content]
        text = "\n".join(block_text(b, secrets) for b in blocks
                         if not (isinstance(b, dict) and b.get("type") == "tool_use"))
        calls = [by_id.pop(str(b.get("id"))) for b in blocks if isinstance(b, dict)
                 and b.get("type") == "tool_use" and b.get("id") in by_id]
        turns.append({"turn": len(turns) + 1, "at": iso(entry.created_at),
                      "text": clip(text.strip(), TEXT_CHARS),
                      "tool_calls": [step_json(c, secrets, ended) for c in calls]})
    if by_id:  # calls whose turn is no longer stored (it was compacted away)
        turns.append({"turn": None, "at": None, "text": "",
                      "tool_calls": [step_json(c, secrets, ended) for c in by_id.values()]})
    return turns


def summary_json(t: TaskSummary, now: datetime) -> dict[str, Any]:
    """A task in `history`: number, conversation, state, subject, when, duration and cost."""
    seconds = t.seconds(now)
    return {"task_id": t.task_id, "conversation": t.conversation_name, "state": t.state,
            "subject": t.subject, "created_at": iso(t.created_at),
            "started_at": iso(t.started_at), "ended_at": iso(t.ended_at),
            "duration_seconds": rounded_seconds(seconds),
            "turns": t.turns, "tool_calls": t.tool_calls, "cost_usd": round(t.cost_usd, 6)}


def mail_json(mail: MailSent) -> dict[str, Any]:
    return {"kind": mail.kind, "recipient": mail.recipient, "subject": mail.subject,
            "state": mail.state, "created_at": iso(mail.created_at),
            "sent_at": iso(mail.sent_at)}


def fence_ids(data_dir: Path | None, conversation_id: int) -> tuple[str, ...]:
    """The conversation's fence id, to cut out of what is shown (none before its first task)."""
    if data_dir is None or not (data_dir / FENCE_KEY).exists():
        return ()
    return (conversation_nonce(data_dir, conversation_id),)


def task_record(store: Store, task_id: int, now: datetime,
                data_dir: Path | None = None) -> dict[str, Any] | None:
    """Task `task_id` whole, or None when there is no such task."""
    found = task_summaries(store, task_ids=[task_id])
    if not found:
        return None
    t = found[0]
    secrets = fence_ids(data_dir, t.conversation_id)
    steps = tool_steps(store, [task_id])[task_id]
    record = summary_json(t, now)
    record.update({
        "reason": hide(t.reason or "", secrets) or None, "owner": t.owner_address,
        "instruction": hide(t.instruction, secrets),
        "turns": turns_json(task_entries(store, task_id), steps, secrets,
                            ended=t.ended_at is not None),
        "files_changed": [{k: v for k, v in s.change.items() if k in ("op", "path", "from")}
                          for s in steps if s.change],
        "mails": [mail_json(m) for m in task_mails(store, task_id)],
        "usage": {"turns": t.turns, "tool_calls": t.tool_calls,
                  "input_tokens": t.input_tokens, "output_tokens": t.output_tokens,
                  "cache_read_tokens": t.cache_read_tokens,
                  "cache_write_tokens": t.cache_write_tokens, "cost_usd": round(t.cost_usd, 6)}})
    return record


def record_lines(record: dict[str, Any]) -> list[str]:
    """The record as text: plain lines that read as Markdown in a mail."""
    usage = record["usage"]
    lines = [f"Task #{record['task_id']} [{record['conversation']}]: {record['state']}"
             + (f" ({record['reason']})" if record["reason"] else ""),
             f"Subject: {record['subject']}",
             f"Received {record['created_at'][:19]} UTC; ran "
             f"{seconds_text(record['duration_seconds'])}", "", "Your words:"]
    lines += [f"> {line}" for line in record["instruction"].splitlines() or [""]]
    for turn in record["turns"]:
        lines += ["", f"Turn {turn['turn'] or '(compacted)'}:"]
        lines += [f"  {line}" for line in turn["text"].splitlines() if line.strip()]
        for call in turn["tool_calls"]:
            lines.append(f"  - {call['name']} {call['target']}".rstrip()
                         + f": {call['verdict']} by {call['rule']}, {call['state']}")
            if call["result"]:
                lines.append(f"    {call['result']}")
    lines += ["", "Files changed:" if record["files_changed"] else "Files changed: none"]
    lines += [f"- {change_text(c)}" for c in record["files_changed"]]
    lines += ["", "Mails:" if record["mails"] else "Mails: none"]
    lines += [f"- {m['kind']} to {m['recipient']}: {m['state']}"
              + (f" at {m['sent_at'][:19]} UTC" if m["sent_at"] else "") for m in record["mails"]]
    lines += ["", f"Tokens: {usage['input_tokens']} in, {usage['output_tokens']} out, "
                  f"{usage['cache_read_tokens']} read from the cache, "
                  f"{usage['cache_write_tokens']} written to it; {usage['turns']} model "
                  f"turn(s), {usage['tool_calls']} tool call(s); cost {usd(usage['cost_usd'])}"]
    return lines


def history(store: Store, limit: int) -> list[TaskSummary]:
    return task_summaries(store, limit=limit)


def history_lines(tasks: list[TaskSummary], now: datetime) -> list[str]:
    if not tasks:
        return ["No tasks yet."]
    return [f"#{t.task_id} [{t.conversation_name}] {t.state}, {t.created_at:%Y-%m-%d %H:%M} "
            f"UTC, {seconds_text(t.seconds(now))}, {usd(t.cost_usd)}: {t.subject[:60]}"
            for t in tasks]
