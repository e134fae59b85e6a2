"""`mailagent status` in three forms: rich tables on a terminal, plain lines, and JSON.

In: an open `Store`. Out: text on stdout. The JSON keys are a stable interface for scripts:
`conversations`, `tasks`, `schedules`, `approvals`, `outbox`, `commands`, `connectors`,
`refusals`, `held` (owner mail kept back by the rate limit), `duplicates` (mail seen before, not
acted on again), `gave_up` (mail whose processing failed every time), each a list of objects,
`inbound`, what the liveness probe last said, `halt`, why tools are stopped (null when they
are not), `running` (what each running task is doing: its turn and step, its tools so far, the
files it changed, elapsed seconds and cost so far), `today` (today's tasks with their outcome,
duration and cost, today's total, the last 24 hours' and `agent.daily_cost_usd`) and `service`
(whether a service holds the data directory's lock); times in ISO 8601 UTC. Plain lines (the
form when stdout is not a terminal) keep the wording scripts already grep for. Reads only; never
shows a mail body or a secret.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mailagent.instance import is_service_running
from mailagent.mail.canary import status_lines as canary_lines
from mailagent.settings import Settings
from mailagent.store import Holder, Store, mailbox_of
from mailagent.store.halts import HaltView, active_halt
from mailagent.store.views import (
    ApprovalView,
    AuditView,
    CommandView,
    ConversationView,
    HeldView,
    OutboxView,
    ScheduleView,
    TaskView,
)
from mailagent.tasks.progress import (
    Day,
    Progress,
    change_text,
    day_json,
    day_lines,
    day_report,
    iso,
    progress_json,
    progress_lines,
    running_progress,
    seconds_text,
    tool_text,
    usd,
)
from mailagent.tasks.scheduler import schedule_line, schedule_state

if TYPE_CHECKING:  # rich is imported only to print for a person at a terminal
    from rich.console import Console
    from rich.table import Table

OUTBOX_STATES = ["queued", "sending", "failed", "unknown"]
RECENT = 5  # duplicates and give-ups shown, newest first


@dataclass(frozen=True)
class Snapshot:
    conversations: list[ConversationView]
    tasks: list[TaskView]
    schedules: list[tuple[ScheduleView, str]]
    approvals: list[ApprovalView]
    outbox: list[OutboxView]
    commands: list[CommandView]
    connectors: list[AuditView]  # the latest event of each MCP server
    refusals: list[AuditView]
    inbound: list[str]  # the liveness probe's verdict
    held: list[HeldView]  # owner mail kept back by the per-sender rate limit
    halt: HaltView | None = None  # why tools are stopped, until `mailagent resume`
    duplicates: list[AuditView] | None = None  # the latest mail seen before, not acted on
    gave_up: list[AuditView] | None = None  # the latest mail that failed every attempt
    running: list[Progress] | None = None  # what each running task is doing now
    day: Day | None = None  # today's tasks and what they cost (with the settings only)
    service_running: bool | None = None  # whether a service holds the lock (None: not asked)
    holder: Holder | None = None  # the service, of any computer, that holds the mailbox now
    at: datetime | None = None  # when the snapshot was taken


def take_snapshot(store: Store, settings: Settings | None = None) -> Snapshot:
    now = datetime.now(UTC)
    day = None if settings is None else day_report(
        store, now, settings.owner.timezone, settings.agent.daily_cost_usd)
    return Snapshot(
        conversations=store.conversations() or [], tasks=store.tasks(),
        schedules=[(view, schedule_line(view)) for view in store.schedules()],
        approvals=store.approvals(), outbox=store.outbox(OUTBOX_STATES),
        commands=[c for c in store.commands() if c.state == "pending"],
        connectors=_latest_per_server(store.audit_events("mcp.server", limit=200)),
        refusals=[e for e in store.audit_events("intake.", limit=10)
                  if e.kind not in ("intake.duplicate", "intake.held", "intake.gave_up")],
        inbound=canary_lines(store), held=store.held(), halt=active_halt(store),
        duplicates=store.audit_events("intake.duplicate", limit=RECENT),
        gave_up=store.audit_events("intake.gave_up", limit=RECENT),
        running=running_progress(store), day=day, at=now,
        service_running=None if settings is None else is_service_running(settings.data_dir),
        holder=None if settings is None else store.mailbox_holder(mailbox_of(settings.imap)))


def snapshot_of(settings: Settings) -> Snapshot:
    """The snapshot of the agent of `settings`, from its own store."""
    with contextlib.closing(Store.open(settings.database_url)) as store:
        return take_snapshot(store, settings)


def halt_lines(halt: HaltView | None) -> list[str]:
    """Why tools are stopped and what to do; nothing when they are not."""
    if halt is None:
        return []
    return [f"Tools: STOPPED since {halt.halted_at:%Y-%m-%d %H:%M} UTC: {halt.reason}",
            *[f"  - {problem}" for problem in halt.detail.get("problems", [])],
            "  Look at what changed, then run `mailagent resume`; mail is kept meanwhile."]


def _latest_per_server(events: list[AuditView]) -> list[AuditView]:
    latest: dict[str, AuditView] = {}
    for event in events:  # newest first
        latest.setdefault(str(event.detail.get("server")), event)
    return [latest[name] for name in sorted(latest)]


def as_json(snap: Snapshot) -> dict[str, Any]:
    """The stable JSON form (see the module docstring)."""
    return {
        "conversations": [{"name": c.name, "task_counts": dict(sorted(c.task_counts.items()))}
                          for c in snap.conversations],
        "tasks": [{"task_id": t.task_id, "conversation": t.conversation_name, "state": t.state,
                   "subject": t.subject, "owner": t.owner_address,
                   "created_at": iso(t.created_at), "reason": t.reason} for t in snap.tasks],
        "schedules": [{"schedule_id": s.schedule_id, "conversation": s.conversation_name,
                       "when": s.when_text, "timezone": s.timezone, "state": s.state,
                       "reason": s.reason, "next_run_at": iso(s.next_run_at),
                       "task": s.task_text, "text": line} for s, line in snap.schedules],
        "approvals": [{"task_id": a.task_id, "operation": a.operation,
                       "expires_at": iso(a.expires_at)} for a in snap.approvals],
        "outbox": [{"state": m.state, "kind": m.kind, "recipient": m.recipient,
                    "subject": m.subject, "attempts": m.attempts, "last_error": m.last_error}
                   for m in snap.outbox],
        "commands": [{"command_id": c.command_id, "name": c.name, "argument": c.argument,
                      "conversation": c.conversation_name} for c in snap.commands],
        "connectors": [{"server": e.detail.get("server"), "at": iso(e.at), "state": e.reason}
                       for e in snap.connectors],
        "refusals": [{"at": iso(e.at), "kind": e.kind, "reason": e.reason}
                     for e in snap.refusals],
        "inbound": " ".join(snap.inbound),
        "held": [{"raw_message_id": h.raw_message_id, "owner": h.owner_address,
                  "reason": h.reason, "held_at": iso(h.held_at),
                  "runs_by_itself": h.runs_by_itself, "release_requested": h.release_requested}
                 for h in snap.held],
        "duplicates": [{"at": iso(e.at), "raw_message_id": e.raw_message_id,
                        "uid": e.detail.get("uid"), "reason": e.reason}
                       for e in snap.duplicates or []],
        "gave_up": [{"at": iso(e.at), "raw_message_id": e.raw_message_id, "reason": e.reason}
                    for e in snap.gave_up or []],
        "halt": None if snap.halt is None else {
            "halted_at": iso(snap.halt.halted_at), "reason": snap.halt.reason,
            "problems": snap.halt.detail.get("problems", []),
            "task_id": snap.halt.detail.get("task_id"),
            "conversation": snap.halt.detail.get("conversation")},
        "running": [progress_json(p, _now(snap)) for p in snap.running or []],
        "today": None if snap.day is None else day_json(snap.day, _now(snap)),
        "service": {"running": snap.service_running, "holder": None if snap.holder is None else {
            "host": snap.holder.host, "pid": snap.holder.pid, "data_dir": snap.holder.data_dir,
            "since": iso(snap.holder.since)}},
    }


def _now(snap: Snapshot) -> datetime:
    return snap.at or datetime.now(UTC)


def service_line(snap: Snapshot) -> list[str]:
    if snap.service_running is None:
        return []
    if snap.service_running:
        return ["Service: running (it holds the data directory's lock)"]
    if snap.holder is not None:  # another computer's, on the same database
        return [f"Service: not running here; the mailbox is watched by a service on "
                f"{snap.holder.line()}"]
    return ["Service: not running (start it with `mailagent run`, or `mailagent service "
            "install`); mail waits in the mailbox meanwhile"]


def progress_section(snap: Snapshot) -> list[str]:
    """What running tasks are doing, then today's tasks and their total."""
    lines = ["Running now:"]
    for progress in snap.running or []:
        lines += [f"  {line}" for line in progress_lines(progress, _now(snap))]
    if snap.day is not None:
        lines.append("Today:")
        lines += [f"  {line}" for line in day_lines(snap.day, _now(snap))]
    return lines


def print_json(snap: Snapshot) -> None:
    print(json.dumps(as_json(snap), indent=2, ensure_ascii=False))


def plain_lines(snap: Snapshot) -> list[str]:
    """One fact per line, under a heading per kind."""
    lines = [*halt_lines(snap.halt), *service_line(snap), *progress_section(snap),
             "Conversations:"]
    for c in snap.conversations:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(c.task_counts.items()))
        lines.append(f"  {c.name}: {counts or 'no tasks'}")
    lines.append("Tasks:")
    lines += [f"  #{t.task_id} [{t.conversation_name}] {t.state}: {t.subject[:60]}"
              f" (from {t.owner_address}, {t.created_at:%Y-%m-%d %H:%M})" for t in snap.tasks]
    lines.append("Schedules:")
    lines += [f"  {line}" for _, line in snap.schedules]
    lines.append("Waiting for your approval:")
    lines += [f"  task #{a.task_id}: {a.operation} (until {a.expires_at:%Y-%m-%d %H:%M} UTC)"
              for a in snap.approvals]
    lines.append("Outbox:")
    for m in snap.outbox:
        error = f": {m.last_error}" if m.last_error else ""
        lines.append(f"  {m.state} {m.kind} to {m.recipient}: {m.subject[:50]}{error}")
    lines.append("Commands waiting:")
    lines += [f"  #{c.command_id} {c.name} {c.argument}".rstrip() for c in snap.commands]
    lines.append("Connectors (MCP):")
    lines += [f"  {e.reason} ({e.at:%Y-%m-%d %H:%M} UTC)" for e in snap.connectors]
    lines += snap.inbound
    lines.append(f"Held mail: {len(snap.held)} (reply `release` by mail to run it now)")
    lines += [f"  {h.held_at:%Y-%m-%d %H:%M} from {h.owner_address}: {h.reason}"
              for h in snap.held]
    lines.append("Recent refusals:")
    lines += [f"  {e.at:%Y-%m-%d %H:%M} {e.kind}: {e.reason}" for e in snap.refusals]
    lines += not_acted_on_lines(snap)
    return lines


def not_acted_on_lines(snap: Snapshot) -> list[str]:
    """Mail taken in but not acted on: seen before, or failing every time (kept, with its
    number, for `mailagent status` and a bug report)."""
    lines = ["Duplicates (seen before, not acted on again):"]
    lines += [f"  {e.at:%Y-%m-%d %H:%M} raw #{e.raw_message_id} uid {e.detail.get('uid')}"
              for e in snap.duplicates or []]
    lines.append("Gave up (kept in the store, not acted on):")
    lines += [f"  {e.at:%Y-%m-%d %H:%M} raw #{e.raw_message_id}: {e.reason}"
              for e in snap.gave_up or []]
    return lines


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", expand=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # Text: mail subjects are not markup
    if not rows:
        table.add_row(*(["(none)"] + [""] * (len(columns) - 1)))
    return table


def print_rich(snap: Snapshot, console: Console | None = None) -> None:
    """Tables for a person at a terminal."""
    from rich.console import Console
    from rich.text import Text

    console = console or Console()
    for line in halt_lines(snap.halt):
        console.print(Text(line, style="bold red"))
    for line in service_line(snap):
        console.print(Text(line, style="bold" if snap.service_running else "bold yellow"))
    now = _now(snap)
    console.print(_table("Running now", ["#", "conversation", "step", "tools so far",
                                         "files changed", "elapsed", "cost"], [
        [str(p.task.task_id), p.task.conversation_name, f"turn {p.turn}: {p.doing}",
         "\n".join(tool_text(s) for s in p.tools), "\n".join(change_text(c) for c in p.changes),
         seconds_text(p.task.seconds(now)), usd(p.task.cost_usd)] for p in snap.running or []]))
    if snap.day is not None:
        *_, total = day_lines(snap.day, now)
        console.print(_table(f"Today ({total.removeprefix('today: ')})",
                             ["#", "conversation", "outcome", "duration", "cost", "subject"], [
            [str(t.task_id), t.conversation_name, t.state, seconds_text(t.seconds(now)),
             usd(t.cost_usd), t.subject[:60]] for t in snap.day.tasks]))
    console.print(_table("Conversations", ["conversation", "tasks"], [
        [c.name, ", ".join(f"{n} {s}" for s, n in sorted(c.task_counts.items())) or "no tasks"]
        for c in snap.conversations]))
    console.print(_table("Tasks", ["#", "conversation", "state", "subject", "from", "created"], [
        [str(t.task_id), t.conversation_name, t.state, t.subject[:60], t.owner_address,
         f"{t.created_at:%Y-%m-%d %H:%M}"] for t in snap.tasks]))
    console.print(_table("Schedules", ["#", "conversation", "when", "state", "task"], [
        [str(s.schedule_id), s.conversation_name, f"{s.when_text} ({s.timezone})",
         schedule_state(s), s.task_text] for s, _ in snap.schedules]))
    console.print(_table("Waiting for your approval", ["task", "operation", "until (UTC)"], [
        [f"#{a.task_id}", a.operation, f"{a.expires_at:%Y-%m-%d %H:%M}"]
        for a in snap.approvals]))
    console.print(_table("Outbox", ["state", "kind", "to", "subject", "error"], [
        [m.state, m.kind, m.recipient, m.subject[:50], m.last_error] for m in snap.outbox]))
    console.print(_table("Commands waiting", ["#", "command", "argument"], [
        [str(c.command_id), c.name, c.argument] for c in snap.commands]))
    console.print(_table("Connectors (MCP)", ["server", "state", "since (UTC)"], [
        [str(e.detail.get("server")), e.reason, f"{e.at:%Y-%m-%d %H:%M}"]
        for e in snap.connectors]))
    for line in snap.inbound:
        console.print(Text(line))
    console.print(_table(f"Held mail: {len(snap.held)} (reply `release` by mail to run it now)",
                         ["held (UTC)", "from", "reason"], [
        [f"{h.held_at:%Y-%m-%d %H:%M}", h.owner_address, h.reason] for h in snap.held]))
    console.print(_table("Recent refusals", ["when", "kind", "reason"], [
        [f"{e.at:%Y-%m-%d %H:%M}", e.kind, e.reason] for e in snap.refusals]))
    console.print(_table("Duplicates (seen before, not acted on again)", ["when", "raw", "uid"], [
        [f"{e.at:%Y-%m-%d %H:%M}", f"#{e.raw_message_id}", str(e.detail.get("uid"))]
        for e in snap.duplicates or []]))
    console.print(_table("Gave up (kept in the store, not acted on)", ["when", "raw", "reason"], [
        [f"{e.at:%Y-%m-%d %H:%M}", f"#{e.raw_message_id}", e.reason]
        for e in snap.gave_up or []]))


# ------------------------------------------------------------ several agents (`--configs DIR`)


def agents_json(statuses: Mapping[str, Snapshot | str]) -> dict[str, Any]:
    """`{"agents": {name: the agent's status object}}`; an agent that could not be read has
    `{"error": why}` instead."""
    return {"agents": {name: as_json(status) if isinstance(status, Snapshot)
                       else {"error": status} for name, status in statuses.items()}}


def print_agents_json(statuses: Mapping[str, Snapshot | str]) -> None:
    print(json.dumps(agents_json(statuses), indent=2, ensure_ascii=False))


def agents_plain_lines(statuses: Mapping[str, Snapshot | str]) -> list[str]:
    """Each agent's lines under `agent NAME:` (as `check --configs` heads them), a blank line
    between agents; `error: why` for one that could not be read."""
    lines: list[str] = []
    for name, status in statuses.items():
        lines += [*([""] if lines else []), f"agent {name}:"]
        lines += plain_lines(status) if isinstance(status, Snapshot) else [f"error: {status}"]
    return lines


def print_rich_agents(statuses: Mapping[str, Snapshot | str],
                      console: Console | None = None) -> None:
    """Each agent's tables under a rule with its name."""
    from rich.console import Console
    from rich.text import Text

    console = console or Console()
    for name, status in statuses.items():
        console.rule(Text(f"agent {name}", style="bold"))
        if isinstance(status, Snapshot):
            print_rich(status, console)
        else:
            console.print(Text(f"error: {status}", style="bold red"))
