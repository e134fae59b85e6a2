"""Frozen views of stored rows, handed to the other stages (never live ORM objects)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class SavedRaw:
    raw_message_id: int
    is_new: bool


@dataclass(frozen=True)
class ThreadMatch:
    conversation_id: int
    conversation_name: str
    task_id: int | None


@dataclass(frozen=True)
class TaskView:
    task_id: int
    conversation_name: str
    state: str
    subject: str
    owner_address: str
    instruction: str
    data: dict[str, Any]
    created_at: datetime
    reason: str | None


@dataclass(frozen=True)
class CommandView:
    command_id: int
    name: str
    argument: str
    conversation_name: str | None
    task_id: int | None
    state: str
    created_at: datetime


@dataclass(frozen=True)
class AuditView:
    audit_id: int
    at: datetime
    kind: str
    reason: str
    raw_message_id: int | None
    task_id: int | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class ConversationView:
    conversation_id: int
    name: str
    task_counts: dict[str, int]


@dataclass(frozen=True)
class NewTask:
    """A task to record for an inbound message (built by the service from intake and threads)."""

    conversation_name: str
    owner_address: str
    subject: str
    message_id: str | None
    references: tuple[str, ...]
    instruction: str
    data: dict[str, Any]
    sent_at: datetime | None = None  # the mail's Date header
    answers_us: bool = False  # it replies to our mail (counted by the rate limit)


@dataclass(frozen=True)
class NewCommand:
    name: str
    argument: str
    conversation_name: str | None
    task_id: int | None
    owner_address: str
    subject: str
    message_id: str | None
    references: tuple[str, ...]
    sent_at: datetime | None = None  # the mail's Date header
    answers_us: bool = False  # it replies to our mail (counted by the rate limit)


@dataclass(frozen=True)
class HeldView:
    """A held mail: its raw message, whose it is, why it waits and how it may run."""

    raw_message_id: int
    owner_address: str
    reason: str
    held_at: datetime
    runs_by_itself: bool
    release_requested: bool


@dataclass(frozen=True)
class TaskWork:
    """What the agent needs to know of a task it works on."""

    task_id: int
    conversation_id: int
    conversation_name: str
    subject: str
    owner_address: str
    instruction: str
    data: dict[str, Any]
    turns: int
    tool_calls: int
    tokens: int
    cost_usd: float
    budget_steps: int = 0
    web_searches: int = 0  # the API's web searches and fetches for this task, from its usage
    web_fetches: int = 0


@dataclass(frozen=True)
class HistoryItem:
    entry_id: int
    task_id: int | None
    role: str
    kind: str
    content: Any


@dataclass(frozen=True)
class ToolCallView:
    tool_use_id: str
    name: str
    input: dict[str, Any]
    verdict: str
    state: str
    result: Any
    change: dict[str, Any] | None


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0  # tokens and searches together
    web_search_requests: int = 0  # usage.server_tool_use of the response
    web_fetch_requests: int = 0


@dataclass(frozen=True)
class ReplyTarget:
    """The mail a reply answers: who wrote it, its subject and its thread."""

    recipient: str
    subject: str
    message_id: str | None
    references: tuple[str, ...]
    conversation_id: int | None
    conversation_name: str | None
    task_id: int | None


@dataclass(frozen=True)
class Outbound:
    """A composed mail, ready for the outbox."""

    message_id: str
    kind: str
    recipient: str
    subject: str
    raw: bytes
    task_id: int | None = None
    conversation_id: int | None = None
    draft_id: int | None = None  # an approved draft: the one mail that may go to others


@dataclass(frozen=True)
class OutboxView:
    outbox_id: int
    message_id: str
    kind: str
    recipient: str
    subject: str
    raw: bytes
    state: str
    attempts: int
    last_error: str
    task_id: int | None
    draft_id: int | None = None


@dataclass(frozen=True)
class CommandWork:
    command_id: int
    name: str
    argument: str
    conversation_id: int | None
    conversation_name: str | None
    task_id: int | None
    reply: ReplyTarget


@dataclass(frozen=True)
class ApprovalView:
    approval_id: int
    task_id: int
    tool_use_id: str
    token: str
    digest: str
    operation: str
    state: str
    message_id: str
    expires_at: datetime
    schedule_id: int | None = None  # a schedule waiting, rather than a call of the task
    draft_id: int | None = None  # a drafted mail waiting, likewise


@dataclass(frozen=True)
class NewDraft:
    """A composed draft to hold: its exact bytes, envelope and what its digest binds."""

    task_id: int
    conversation_id: int
    message_id: str
    recipients: tuple[str, ...]
    subject: str
    raw: bytes
    raw_sha256: str
    attachments: tuple[dict[str, Any], ...]  # {path, name, size, sha256}
    digest: str


@dataclass(frozen=True)
class DraftView:
    draft_id: int
    task_id: int
    conversation_id: int
    message_id: str
    recipients: tuple[str, ...]
    subject: str
    raw: bytes
    raw_sha256: str
    attachments: tuple[dict[str, Any], ...]
    digest: str
    state: str
    approved_digest: str  # the digest of its approval once approved, else ""


@dataclass(frozen=True)
class DraftQuestion:
    """The approval a draft waits for, asked in the commit that holds the draft."""

    token: str
    operation: str
    expires_at: datetime
    mail: Outbound


@dataclass(frozen=True)
class NewSchedule:
    """A schedule to record; its thread and conversation come from the task that made it (or,
    for schedules.toml, from the file) and never from the model."""

    conversation_name: str
    origin_task_id: int | None
    source: str  # mail | file
    file_key: str | None
    owner_address: str
    subject: str
    message_id: str | None
    references: tuple[str, ...]
    when_text: str
    rule_json: str
    timezone: str
    task_text: str
    next_run_at: datetime | None
    state: str = "active"  # or awaiting_approval
    reason: str = ""


@dataclass(frozen=True)
class ScheduleQuestion:
    """The approval a schedule waits for, asked in the commit that records the schedule: the
    question mail (whose Message-ID carries the token) and the digest of what would run."""

    token: str
    digest: str
    operation: str
    expires_at: datetime
    mail: Outbound


@dataclass(frozen=True)
class ScheduleView:
    schedule_id: int
    conversation_id: int
    conversation_name: str
    origin_task_id: int | None
    source: str
    file_key: str | None
    when_text: str
    rule_json: str
    timezone: str
    task_text: str
    state: str
    reason: str
    next_run_at: datetime | None
    last_run_at: datetime | None
    consecutive_failures: int
    message_id: str | None


@dataclass(frozen=True)
class SeenTask:
    """A task whose words are in a conversation's history: where it came from and which
    tools it ran, so that what it brought before the model can be judged."""

    task_id: int
    from_mail: bool  # started by an owner's mail (not a scheduled run)
    answers_us: bool  # that mail replies to mail mailagent sent
    instruction: str
    data: dict[str, Any]
    tools_run: tuple[str, ...]  # the tools it called that ran (refused calls left out)


@dataclass(frozen=True)
class SeenContext:
    """Everything a conversation's model has been shown, by task, and the kinds of content
    blocks its history holds."""

    tasks: tuple[SeenTask, ...]
    block_types: frozenset[str]


@dataclass(frozen=True)
class ScheduledRun:
    """One run to enqueue: the instruction and data of its task."""

    instruction: str
    data: dict[str, Any]
