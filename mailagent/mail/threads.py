"""Threads: an inbound message -> the conversation and task it belongs to, or a command.

In: an `Inbound` and what the store knows of the thread it replies to (`ThreadMatch`).
Out: `TaskRoute` or `CommandRoute`. Pure. Rules of SPEC.md: a reply in a known thread continues
that thread's conversation; otherwise a `[name]` subject tag names the conversation; otherwise
`main`. A first typed line that is exactly a command is a command, answered without the model;
so is a subject (after tag and `Re:`) that is exactly one, but only when the owner typed nothing
else and the mail forwards nothing (SECURITY.md S5): the subject of a forward is a stranger's
text, and "Fwd: forget 1" above a question is the question. Quoted and forwarded text never
makes a command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailagent.mail.intake import Inbound
from mailagent.store import ThreadMatch

DEFAULT_CONVERSATION = "main"

# Commands that are the whole subject or first line, with their argument pattern (or None).
COMMANDS: dict[str, re.Pattern[str] | None] = {
    "status": None,
    "help": None,
    "memory": None,
    "schedules": None,
    "undo": None,
    "release": None,
    "show": re.compile(r"\d{1,9}"),
    "cancel": re.compile(r"\d{1,9}"),
    "forget": re.compile(r"\d{1,9}"),
    "pause": re.compile(r"\d{1,9}"),
    "resume": re.compile(r"\d{1,9}"),
    "run": re.compile(r"(\d{1,9} )?now"),
}
# Commands that need no argument to be recognised (the others require theirs); a bare `pause`
# or `resume` acts on the schedule of the thread it is sent in.
_BARE = frozenset({"status", "help", "memory", "schedules", "undo", "release", "cancel", "pause",
                   "resume", "show"})
# Replies in a task's thread whose first word settles something.
THREAD_WORDS = frozenset({"approve", "deny", "continue"})

_PREFIX = re.compile(r"^\s*((re|fwd?|aw|sv|wg|tr|rv)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
# A command is never written with a colon, so a forward prefix anywhere in a subject whose rest
# is a command is among its prefixes.
_FORWARD_PREFIX = re.compile(r"(^|[\s:\]])(fwd?|wg|tr|rv)\s*(\[\d+\])?\s*:", re.IGNORECASE)
# What a phone adds below an empty body: not typed text.
_DEVICE_LINE = re.compile(r"^(sent from my \w[\w ]{0,30}|get outlook for \w+|sent from \w+ "
                          r"mail for \w+|envoyé de mon \w+|von meinem \w+ gesendet)\.?$",
                          re.IGNORECASE)
_TAG = re.compile(r"^\s*\[([A-Za-z0-9][A-Za-z0-9_.-]{0,63})\]\s*")


@dataclass(frozen=True)
class TaskRoute:
    conversation_name: str
    continues_task_id: int | None  # the task whose thread this mail replies to, if any


@dataclass(frozen=True)
class CommandRoute:
    name: str
    argument: str
    conversation_name: str | None
    task_id: int | None


Route = TaskRoute | CommandRoute


def strip_prefixes(subject: str) -> str:
    return _PREFIX.sub("", subject).strip()


def subject_tag(subject: str) -> tuple[str | None, str]:
    """The `[name]` tag of a subject (lower-cased) and the rest, after any `Re:` prefixes."""
    rest = strip_prefixes(subject)
    match = _TAG.match(rest)
    if not match:
        return None, rest
    return match.group(1).lower(), strip_prefixes(rest[match.end():])


def parse_command(text: str) -> tuple[str, str] | None:
    """(name, argument) if `text` is exactly a command, else None."""
    words = " ".join(text.strip().lower().rstrip(".!").split())
    name, _, argument = words.partition(" ")
    if name not in COMMANDS:
        return None
    pattern = COMMANDS[name]
    if not argument:
        return (name, "") if name in _BARE else None
    if pattern is not None and pattern.fullmatch(argument):
        return name, argument
    return None


def first_line(text: str) -> str:
    for line in text.split("\n"):
        if line.strip():
            return line.strip()
    return ""


def subject_may_command(inbound: Inbound) -> bool:
    """Whether the subject speaks for the owner: no forward prefix in it, nothing forwarded,
    and nothing typed but what a phone adds."""
    if inbound.forwarded or _FORWARD_PREFIX.search(inbound.subject):
        return False
    return is_typed_nothing(inbound.typed_text)


def is_typed_nothing(typed_text: str) -> bool:
    """Whether the owner typed nothing but what a phone adds below an empty body."""
    return all(_DEVICE_LINE.match(line.strip()) for line in typed_text.split("\n")
               if line.strip())


def route(inbound: Inbound, thread: ThreadMatch | None) -> Route:
    """Where this message goes: a command, or a task in which conversation."""
    tag, bare_subject = subject_tag(inbound.subject)
    conversation = thread.conversation_name if thread else (tag or DEFAULT_CONVERSATION)
    task_id = thread.task_id if thread else None
    line = first_line(inbound.typed_text)
    first, _, rest = line.partition(" ")
    word = first.lower().rstrip(".,!:;")
    if thread is not None and word in THREAD_WORDS:
        return CommandRoute(word, rest.strip(), conversation, task_id)
    command = parse_command(line) or (
        parse_command(bare_subject) if subject_may_command(inbound) else None)
    if command is not None:
        return CommandRoute(command[0], command[1], conversation, task_id)
    return TaskRoute(conversation, task_id)
