"""Commands: the mail commands answered without the model.

In: a pending `CommandWork` (recognised by threads from the owner's own subject or first line),
the store, and the worker's `cancel`. Out: the Markdown text of the reply. Side effects: only
what the command says (a cancelled task, a forgotten note, files restored by `undo`, held mail
marked to run by `release`).
It must never act on anything but the authenticated owner's command and the task of the thread
it was sent in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from mailagent.mail.canary import status_lines as canary_lines
from mailagent.settings import Settings
from mailagent.store import CommandWork, Store
from mailagent.tasks.progress import day_lines, day_report, progress_lines, running_progress
from mailagent.tasks.record import record_lines, task_record
from mailagent.tasks.scheduler import Scheduler
from mailagent.tasks.undo import revert_changes
from mailagent.tools.files import Anchored

log = logging.getLogger(__name__)

HELP = """Mail a task to this address and I work on it and reply in the same thread.

- Start the subject with `[name]` to keep a separate conversation called *name*.
- Reply in a thread to continue its conversation.

Commands (the whole subject, or the first line of your mail):

- `status`: conversations, what running tasks are doing, today's tasks and their cost,
  mail trouble
- `show N`: what task N did: your words, each step and its decision, files, mails, cost
  (in a task's thread, `show` alone)
- `memory`: what I remember in this conversation; `forget N` removes note N
- `cancel`: in a task's thread, stops that task
- `undo`: in a task's thread, reverts that task's file changes
- `release`: runs now all your mail held by the hourly limit on replies to my mail
- `schedules`: scheduled tasks, numbered; `pause N`, `resume N`, `cancel N`, `run N now`
  change schedule N (in a schedule's thread, `pause`, `resume` and `run now` need no number).
  Ask me in a mail for something recurring, e.g. "every weekday at 08:00, summarise the new
  files in ~/Reports"
- `help`: this text"""


def answer(command: CommandWork, store: Store, cancel: Callable[[int], str],
           settle: Callable[[CommandWork], str],
           judge_write: Callable[[int, str], Anchored],
           schedules: Scheduler | None = None, settings: Settings | None = None) -> str:
    """The reply text for one command."""
    if command.name in SCHEDULE_COMMANDS and (command.argument or command.name != "cancel"):
        return schedule_command(command, schedules)
    handlers: dict[str, Callable[[], str]] = {
        "help": lambda: HELP,
        "status": lambda: status_text(store, settings),
        "show": lambda: show_text(store, command, settings),
        "release": lambda: release_text(store, command),
        "memory": lambda: memory_text(store, command),
        "forget": lambda: forget_text(store, command),
        "cancel": lambda: cancel(command.task_id) if command.task_id else NOT_IN_THREAD,
        "undo": lambda: (undo(store, command.task_id, judge_write) if command.task_id
                         else NOT_IN_THREAD),
        "approve": lambda: settle(command),
        "deny": lambda: settle(command),
        "continue": lambda: settle(command),
    }
    handler = handlers.get(command.name)
    if handler is None:
        return (f"`{command.name}` is not something I can do by mail yet. Nothing was changed. "
                "Reply `help` for the commands.")
    return handler()


SCHEDULE_COMMANDS = frozenset({"schedules", "pause", "resume", "cancel", "run"})


def schedule_command(command: CommandWork, schedules: Scheduler | None) -> str:
    """`schedules`, and `pause N`, `resume N`, `cancel N`, `run N now` from anywhere."""
    if schedules is None:
        return "There are no scheduled tasks."
    if command.name == "schedules":
        return schedules.listing()
    first = command.argument.split()[0] if command.argument else ""
    number = int(first) if first.isdigit() else schedules.schedule_of_thread(command.task_id)
    if number is None:
        example = "run 2 now" if command.name == "run" else f"{command.name} 2"
        return (f"`{command.name}` without a number works as a reply in a schedule's thread. "
                f"Nothing was changed; write e.g. `{example}`, or reply `schedules` for "
                "the numbers.")
    actions: dict[str, Callable[[int], str]] = {
        "pause": schedules.pause, "resume": schedules.resume, "cancel": schedules.cancel,
        "run": schedules.run_now}
    return actions[command.name](number)


NOT_IN_THREAD = ("This command works as a reply in the thread of a task. Nothing was changed; "
                 "reply `status` to see the tasks.")


def status_text(store: Store, settings: Settings | None = None) -> str:
    now = datetime.now(UTC)
    lines = ["**Conversations**"]
    for conversation in store.conversations():
        counts = ", ".join(f"{n} {state}" for state, n in sorted(conversation.task_counts.items()))
        lines.append(f"- {conversation.name}: {counts or 'no tasks'}")
    active = store.tasks(["running", "queued", "waiting_approval"])
    lines += ["", "**Tasks in progress**" if active else "No task is in progress."]
    for progress in running_progress(store):
        first, *rest = progress_lines(progress, now)
        lines += [f"- {first}  ", *[f"  {line.strip()}  " for line in rest]]
    lines += [f"- #{t.task_id} [{t.conversation_name}] {t.state}: {t.subject}" for t in active
              if t.state == "queued"]
    if settings is not None:
        day = day_report(store, now, settings.owner.timezone, settings.agent.daily_cost_usd)
        *tasks, total = day_lines(day, now)
        lines += ["", "**Today**", *[f"- {line}" for line in tasks], "", total[0].upper()
                  + total[1:]]
    live = store.schedules()
    if live:
        on = sum(1 for v in live if v.state == "active")
        waiting = sum(1 for v in live if v.state == "awaiting_approval")
        lines += ["", f"**Schedules**: {on} active, {len(live) - on - waiting} paused"
                      f"{f', {waiting} awaiting your approval' if waiting else ''}; reply "
                      "`schedules` for the list."]
    held = store.held()
    if held:
        lines += ["", f"**Held mail**: {len(held)}, kept back by the hourly limit on replies to "
                      "my mail; it runs by itself as the limit allows. Reply `release` to run "
                      "it now."]
    lines += ["", *canary_lines(store)]
    trouble = store.outbox(["failed", "unknown"])
    if trouble:
        lines += ["", "**Mail that could not be sent**"]
        lines += [f"- {m.subject} to {m.recipient}: {m.state}, {m.last_error}" for m in trouble]
    return "\n".join(lines)


def show_text(store: Store, command: CommandWork, settings: Settings | None) -> str:
    """`show N`: task N's record; `show` alone, in a task's thread, that task's."""
    task_id = int(command.argument) if command.argument else command.task_id
    if task_id is None:
        return ("`show` without a number works as a reply in the thread of a task. Write e.g. "
                "`show 3`, or reply `status` to see the tasks.")
    record = task_record(store, task_id, datetime.now(UTC),
                         settings.data_dir if settings is not None else None)
    if record is None:
        return f"There is no task #{task_id}; reply `status` to see the tasks."
    return "\n".join(line + "  " if line else line for line in record_lines(record))


def release_text(store: Store, command: CommandWork) -> str:
    """`release`: every held mail of the owner who asks runs now, oldest first."""
    count = store.request_release(command.reply.recipient)
    if count == 0:
        return "No mail from you is held; there is nothing to release."
    return (f"{count} held mail{'s' if count != 1 else ''} from you now "
            f"run{'' if count != 1 else 's'}, oldest first; each is answered in its own thread.")


def _conversation_id(store: Store, command: CommandWork) -> int | None:
    if command.conversation_id is not None:
        return command.conversation_id
    names = {c.name: c.conversation_id for c in store.conversations()}
    return names.get("main")


def memory_text(store: Store, command: CommandWork) -> str:
    conversation_id = _conversation_id(store, command)
    notes = store.memory(conversation_id) if conversation_id is not None else []
    name = command.conversation_name or "main"
    if not notes:
        return f"I remember nothing in the conversation {name}."
    lines = [f"What I remember in the conversation {name}:", ""]
    lines += [f"{number}. {note}" for number, note in notes]
    lines += ["", "Reply `forget N` to remove note N."]
    return "\n".join(lines)


def forget_text(store: Store, command: CommandWork) -> str:
    conversation_id = _conversation_id(store, command)
    number = int(command.argument)
    if conversation_id is not None and store.forget(conversation_id, number):
        return f"Note {number} is forgotten."
    return f"There is no note {number} in this conversation; reply `memory` to see them."


def undo(store: Store, task_id: int, judge: Callable[[int, str], Anchored]) -> str:
    """Revert a task's file changes, newest first, from the copies kept in its trash; only where
    policy still allows writing now, each through its rule's anchor (tasks/undo.py)."""
    changes = store.changes(task_id)
    if not changes:
        return f"Task #{task_id} changed no files; there is nothing to undo."
    done, failed = revert_changes(changes, lambda path: judge(task_id, path))
    store.audit("task.undo", f"{len(done)} change(s) reverted, {len(failed)} failed",
                task_id=task_id, detail={"reverted": done, "failed": failed})
    lines = [f"Undid the file changes of task #{task_id}:", *[f"- {d}" for d in done]]
    if failed:
        lines += ["", "Could not undo:", *[f"- {f}" for f in failed]]
    return "\n".join(lines)
