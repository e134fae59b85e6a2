"""The end of `mailagent init`: what to send from your phone, and waiting for the first answer.

In: the `Answers` and the settings of the written config. Out: lines for the owner; with
`--wait-for-first-task`, the time from the first task's mail reaching mailagent to its answer
being sent. It reads the service's store, never the mailbox (the service owns that), and asks
the data directory's lock whether a service runs. It must never print a secret.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from mailagent.cli.init_config import Answers
from mailagent.config import Settings
from mailagent.instance import is_service_running
from mailagent.store import Store
from mailagent.store.progress import first_answered_after, last_task_id, mailed_tasks_after

Say = Callable[[str], None]
POLL_SECONDS = 1.0
HOW_CHECKED = {"authentication-results": "its provider's Authentication-Results",
               "dkim": "its DKIM signature", "none": "nothing but the From line"}


def example_task(answers: Answers) -> tuple[str, str]:
    """A first task that works with the starter policy: (subject, body)."""
    if answers.policy_folder:
        return (f"What is in {Path(answers.policy_folder).name}?",
                f"List the files in {answers.policy_folder} and tell me in two lines what "
                "they are about.")
    return ("A first test", "Write a three-line poem about mail and attach it as poem.txt.")


def start_lines(config: Path) -> list[str]:
    return ["mailagent answers only while it runs: start it in the background with",
            f"  mailagent service install --config {config}",
            "or in this terminal with", f"  mailagent run --config {config}"]


def phone_lines(answers: Answers, service_installed: bool) -> list[str]:
    """Exactly what to send, from where to where, and how to start the service if needed."""
    subject, body = example_task(answers)
    owner, others = answers.owners[0], answers.owners[1:]
    lines = ["", "Now send it a task, from your phone or any mail client:",
             f"  from:    {owner}" + (f" (or {', '.join(others)})" if others else ""),
             f"  to:      {answers.email}",
             f"  subject: {subject}",
             f"  body:    {body}",
             f"Send it from that account itself: mailagent checks "
             f"{HOW_CHECKED.get(answers.verification, answers.verification)} and ignores mail "
             "from anyone else. The answer comes back in the same thread."]
    return lines if service_installed else [*lines, "", *start_lines(answers.config_path)]


def say_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} seconds"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def say_now(line: str) -> None:
    """Print at once, even into a pipe or a log file: the wait can last hours."""
    print(line, flush=True)


def wait_for_first_task(settings: Settings, timeout_seconds: float | None,
                        say: Say = say_now) -> int:
    """Watch the store until a task mailed in from now on is answered; 0 when one is (or the
    owner stops waiting with Ctrl-C), 1 after the timeout."""
    store = Store.open(settings.database_url)
    try:
        return _watch(store, settings, timeout_seconds, say)
    except KeyboardInterrupt:
        say(f"\nStopped waiting. `mailagent status --config {settings.config_path}` shows the "
            "tasks later; a running service goes on.")
        return 0
    finally:
        store.close()


def _watch(store: Store, settings: Settings, timeout_seconds: float | None, say: Say) -> int:
    baseline = last_task_id(store)
    limit = f", at most {say_duration(timeout_seconds)}" if timeout_seconds else ""
    say(f"\nWaiting for the first task to be answered (Ctrl-C stops waiting{limit})...")
    deadline = time.monotonic() + timeout_seconds if timeout_seconds else None
    states: dict[int, str] = {}
    running: bool | None = None
    while True:
        running = _say_service(settings, running, say)
        for task_id, subject, state in mailed_tasks_after(store, baseline):
            if states.get(task_id) != state:
                say(f"  task #{task_id} {subject!r}: {state}")
                states[task_id] = state
        answered = first_answered_after(store, baseline)
        if answered is not None:
            say(f"First task answered: #{answered.task_id} {answered.subject!r} took "
                f"{say_duration(answered.seconds)} from its mail's arrival to the reply "
                "being sent.")
            return 0
        if deadline is not None and time.monotonic() > deadline:
            say(f"No task was answered within {say_duration(timeout_seconds or 0)}: see "
                f"`mailagent status --config {settings.config_path}`, and check the service's "
                "log.")
            return 1
        time.sleep(POLL_SECONDS)


def _say_service(settings: Settings, was_running: bool | None, say: Say) -> bool:
    """Whether a service runs on this data directory; said when that changes."""
    running = is_service_running(settings.data_dir)
    if running != was_running:
        if running:
            say("  A mailagent service is running: waiting for your mail.")
        else:
            say(f"  No mailagent service is running on {settings.data_dir}, so nothing is "
                "answered yet; still waiting.")
            for line in start_lines(settings.config_path):
                say(f"  {line}")
    return running
