"""Progress: what each running task is doing now, and what today's tasks came to.

In: the store, the clock, the owner's time zone and `agent.daily_cost_usd`. Out: `Progress` and
`Day`, with their lines (Markdown for the `status` mail, plain for `mailagent status`) and their
JSON form. Side effects: none. Only answers when asked: nothing here mails anything (the quiet
contract). Never shows file contents or mail bodies: a tool call is named by its tool and its
path (or command), never by what it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from mailagent.store import Store
from mailagent.store.records import TaskSummary, ToolStep, task_summaries, tool_steps

RUNNING_NOW = ("running", "waiting_approval")
# The input keys that say what a call is about, in the order they are shown.
TARGET_KEYS = ("path", "source", "destination", "command", "pattern", "cwd", "to", "when",
               "url", "query")
TARGET_CHARS = 80
SHOWN_STEPS = 10  # the latest tools and files in a line; the JSON form has them all
SHOWN_TASKS = 20  # the latest of today's tasks in lines; the JSON form has them all


@dataclass(frozen=True)
class Progress:
    task: TaskSummary
    turn: int  # the model turn under way (or the one whose tool calls run)
    doing: str  # "waiting for the model", "running write_file notes.txt", ...
    tools: tuple[ToolStep, ...]
    changes: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Day:
    since: datetime  # midnight in the owner's zone, in UTC
    tasks: tuple[TaskSummary, ...]
    cost_usd: float  # what today's tasks cost
    last_24h_usd: float  # what the daily cap counts: the cost of the last 24 hours
    daily_cost_usd: float  # agent.daily_cost_usd


def target(name: str, tool_input: dict[str, Any]) -> str:
    """What a call is about, in a few words: its path, its command, its recipients."""
    parts = []
    for key in TARGET_KEYS:
        value = tool_input.get(key)
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        if isinstance(value, str | int) and str(value):
            parts.append(str(value))
    text = " -> ".join(parts[:2]) if name == "move_file" else (parts[0] if parts else "")
    text = " ".join(text.split())
    return text if len(text) <= TARGET_CHARS else text[:TARGET_CHARS - 1] + "…"


def doing(task: TaskSummary, steps: list[ToolStep]) -> tuple[int, str]:
    """The turn under way and what the task is doing in it."""
    if task.state == "waiting_approval":
        return task.turns, "waiting for your approval"
    open_calls = [step for step in steps if step.state in ("decided", "started", "approved")]
    if open_calls:
        step = open_calls[-1]
        return task.turns, f"running {step.name} {target(step.name, step.input)}".rstrip()
    return task.turns + 1, "waiting for the model"


def running_progress(store: Store) -> list[Progress]:
    """Each task running (or waiting for an approval) now, oldest first."""
    tasks = sorted(task_summaries(store, states=RUNNING_NOW), key=lambda t: t.task_id)
    steps = tool_steps(store, [t.task_id for t in tasks])
    found = []
    for task in tasks:
        calls = steps[task.task_id]
        turn, now_doing = doing(task, calls)
        changes = tuple(c.change for c in calls if c.change)
        found.append(Progress(task, turn, now_doing, tuple(calls), changes))
    return found


def day_report(store: Store, now: datetime, timezone: str, daily_cost_usd: float) -> Day:
    """Today's tasks (those that changed since midnight in the owner's zone), oldest first."""
    local = now.astimezone(ZoneInfo(timezone))
    since = local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(now.tzinfo)
    tasks = tuple(sorted(task_summaries(store, updated_since=since), key=lambda t: t.task_id))
    last_24h = store.cost_since(now - timedelta(days=1))
    return Day(since, tasks, sum(t.cost_usd for t in tasks), last_24h, daily_cost_usd)


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "not started"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def usd(amount: float) -> str:
    return f"${amount:.4f}" if amount < 1 else f"${amount:.2f}"


def change_text(change: dict[str, Any]) -> str:
    moved = f" (from {change['from']})" if "from" in change else ""
    return f"{change.get('op', 'changed')} {change.get('path', '?')}{moved}"


def tool_text(step: ToolStep) -> str:
    what = target(step.name, step.input)
    return f"{step.name} {what} ({step.state})" if what else f"{step.name} ({step.state})"


def progress_lines(p: Progress, now: datetime) -> list[str]:
    """A running task in a few lines: its step, its tools, its files, its time and cost."""
    t = p.task
    lines = [f"#{t.task_id} [{t.conversation_name}] {t.subject[:60]}",
             f"  turn {p.turn}: {p.doing}",
             f"  running for {seconds_text(t.seconds(now))}, cost so far {usd(t.cost_usd)}, "
             f"{t.tokens} tokens"]
    if p.tools:
        lines.append("  tools so far: " + latest([tool_text(s) for s in p.tools]))
    if p.changes:
        lines.append("  files changed: " + latest([change_text(c) for c in p.changes]))
    return lines


def latest(items: list[str]) -> str:
    """The last SHOWN_STEPS items, after how many came before them."""
    earlier = len(items) - SHOWN_STEPS
    shown = "; ".join(items[-SHOWN_STEPS:])
    return f"{earlier} earlier, then {shown}" if earlier > 0 else shown


def day_lines(day: Day, now: datetime) -> list[str]:
    """Today's latest tasks, one a line, then the day's total against the cap (last)."""
    earlier = len(day.tasks) - SHOWN_TASKS
    lines = [f"{earlier} earlier task(s) today: `mailagent history` lists them"] \
        if earlier > 0 else []
    lines += [f"#{t.task_id} [{t.conversation_name}] {t.state}, "
              f"{seconds_text(t.seconds(now))}, {usd(t.cost_usd)}: {t.subject[:60]}"
              for t in day.tasks[-SHOWN_TASKS:]]
    lines.append(f"today: {len(day.tasks)} task(s), {usd(day.cost_usd)}; last 24 hours "
                 f"{usd(day.last_24h_usd)} of the daily limit {usd(day.daily_cost_usd)} "
                 "(agent.daily_cost_usd)")
    return lines


def iso(at: datetime | None) -> str | None:
    """A moment in the JSON forms (here, `show` and `history`, `status`): ISO 8601, or null."""
    return at.isoformat() if at is not None else None


def progress_json(p: Progress, now: datetime) -> dict[str, Any]:
    t = p.task
    return {"task_id": t.task_id, "conversation": t.conversation_name, "state": t.state,
            "subject": t.subject, "started_at": iso(t.started_at),
            "elapsed_seconds": rounded_seconds(t.seconds(now)), "turn": p.turn, "doing": p.doing,
            "tools": [{"name": s.name, "target": target(s.name, s.input), "verdict": s.verdict,
                       "state": s.state} for s in p.tools],
            "files_changed": [{"op": c.get("op"), "path": c.get("path")} for c in p.changes],
            "tokens": t.tokens, "cost_usd": round(t.cost_usd, 6)}


def day_json(day: Day, now: datetime) -> dict[str, Any]:
    return {"since": iso(day.since),
            "tasks": [{"task_id": t.task_id, "conversation": t.conversation_name,
                       "state": t.state, "subject": t.subject, "started_at": iso(t.started_at),
                       "ended_at": iso(t.ended_at),
                       "duration_seconds": rounded_seconds(t.seconds(now)),
                       "cost_usd": round(t.cost_usd, 6)} for t in day.tasks],
            "cost_usd": round(day.cost_usd, 6), "last_24h_usd": round(day.last_24h_usd, 6),
            "daily_cost_usd": day.daily_cost_usd}


def rounded_seconds(seconds: float | None) -> float | None:
    """A duration in the JSON forms: seconds to a tenth, or null."""
    return None if seconds is None else round(seconds, 1)
