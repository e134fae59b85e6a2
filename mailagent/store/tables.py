"""Store tables: the SQLModel declarations and the forward-only named migrations.

Declarations only; every query lives in `mailagent.store`. A new column or table is a new
migration appended to MIGRATIONS, never an edit of an applied one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Column, Connection, LargeBinary, inspect, text
from sqlmodel import Field, SQLModel

log = logging.getLogger(__name__)

TASK_STATES = ("queued", "running", "waiting_approval", "done", "failed", "cancelled")
TASK_TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled"}),
    "running": frozenset({"queued", "waiting_approval", "done", "failed", "cancelled"}),
    "waiting_approval": frozenset({"queued", "running", "failed", "cancelled"}),
    "done": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


def utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- tables


class Migration(SQLModel, table=True):
    name: str = Field(primary_key=True)
    applied_at: datetime


class MailboxState(SQLModel, table=True):
    folder: str = Field(primary_key=True)
    uidvalidity: int
    last_uid: int = 0


class RawMessage(SQLModel, table=True):
    __tablename__ = "raw_message"
    raw_message_id: int | None = Field(default=None, primary_key=True)
    content_key: str = Field(unique=True, index=True)
    folder: str
    uidvalidity: int
    uid: int
    message_id: str | None = None
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    size: int
    truncated: bool = False
    received_at: datetime
    state: str = "received"  # received -> processed, or received -> held -> received
    outcome: str | None = None  # task | command | rejected
    reason: str | None = None
    attempts: int = 0
    flagged: bool = False


class Conversation(SQLModel, table=True):
    conversation_id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    created_at: datetime


class Task(SQLModel, table=True):
    task_id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(foreign_key="conversation.conversation_id", index=True)
    raw_message_id: int | None = Field(default=None, foreign_key="raw_message.raw_message_id")
    state: str = Field(default="queued", index=True)
    owner_address: str
    subject: str
    message_id: str | None = None
    references: str = ""
    instruction: str
    data_json: str = "{}"
    reason: str | None = None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None = None  # the mail's Date
    answers_us: bool = False  # it replies to our mail: the per-sender rate limit counts it
    not_before: datetime | None = None  # a task put back after overload waits until then
    turns: int = 0
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    result_text: str = ""
    attachments_json: str = "[]"  # paths given to attach_file, for the completion mail
    budget_steps: int = 0  # extra budgets granted by the owner's `continue`
    web_search_requests: int = 0  # the Messages API's server tools, from each response's usage
    web_fetch_requests: int = 0


class HistoryEntry(SQLModel, table=True):
    """One message of a conversation's history. Append-only: the prompt prefix stays stable.

    A `summary` entry stands for every entry of its conversation before it (compaction).
    """

    __tablename__ = "history"
    entry_id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(foreign_key="conversation.conversation_id", index=True)
    task_id: int | None = Field(default=None, foreign_key="task.task_id")
    role: str  # user | assistant
    kind: str = "message"  # message | summary
    content_json: str
    created_at: datetime


class ToolCallRow(SQLModel, table=True):
    """A tool call, its policy decision and its outcome: the audit trail and the resume point."""

    __tablename__ = "tool_call"
    tool_call_id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="task.task_id", index=True)
    tool_use_id: str = Field(index=True)  # unique within a task
    name: str
    input_json: str
    verdict: str  # allow | ask | deny
    rule: str
    reason: str
    state: str  # decided | started | done | failed | denied | waiting
    result_json: str = ""
    change_json: str = ""  # what it changed on disk, for the manifest and undo
    created_at: datetime
    finished_at: datetime | None = None


class MemoryNote(SQLModel, table=True):
    __tablename__ = "memory"
    memory_id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(foreign_key="conversation.conversation_id", index=True)
    note: str
    created_at: datetime
    deleted_at: datetime | None = None


class Command(SQLModel, table=True):
    command_id: int | None = Field(default=None, primary_key=True)
    raw_message_id: int | None = Field(default=None, foreign_key="raw_message.raw_message_id")
    conversation_id: int | None = Field(default=None, foreign_key="conversation.conversation_id")
    task_id: int | None = Field(default=None, foreign_key="task.task_id")
    name: str
    argument: str = ""
    owner_address: str
    subject: str
    message_id: str | None = None
    references: str = ""
    state: str = Field(default="pending", index=True)  # pending -> done
    created_at: datetime
    sent_at: datetime | None = None  # the mail's Date, as for a task
    answers_us: bool = False  # as for a task


class ThreadRef(SQLModel, table=True):
    __tablename__ = "thread_ref"
    message_id: str = Field(primary_key=True)
    conversation_id: int = Field(foreign_key="conversation.conversation_id")
    task_id: int | None = Field(default=None, foreign_key="task.task_id")
    direction: str  # in | out


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_event"
    audit_id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(index=True)
    kind: str = Field(index=True)
    raw_message_id: int | None = None
    task_id: int | None = None
    reason: str = ""
    detail_json: str = "{}"


class OutboxRow(SQLModel, table=True):
    """A mail to send. Written, with its Message-ID, before any attempt (SECURITY.md L2)."""

    __tablename__ = "outbox"
    outbox_id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(unique=True)
    kind: str  # completion | failure | command | approval | notice
    task_id: int | None = Field(default=None, foreign_key="task.task_id")
    recipient: str
    subject: str
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    state: str = Field(default="queued", index=True)  # queued sending sent failed unknown
    attempts: int = 0
    next_attempt_at: datetime
    last_error: str = ""
    created_at: datetime
    sent_at: datetime | None = None
    # Set only for a draft the owner approved: the one kind of row that may go to anyone but
    # the owner, and only while it is that draft's exact bytes (mailagent.mail.drafts).
    draft_id: int | None = None


class Approval(SQLModel, table=True):
    """A pending `ask`: bound to a digest of the exact operation and to a random token that
    travels in the Message-ID of the approval mail, so the owner's reply carries it back."""

    approval_id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="task.task_id", index=True)
    tool_use_id: str
    token: str = Field(unique=True)
    digest: str
    operation: str
    state: str = Field(default="pending", index=True)  # pending approved denied expired
    message_id: str = ""
    created_at: datetime
    expires_at: datetime
    settled_at: datetime | None = None
    # Set when what waits is a schedule the model made, not a tool call of the task: approved,
    # the schedule becomes active; otherwise it is cancelled. The task never waits for it.
    schedule_id: int | None = None
    # Set when what waits is a mail the model drafted (draft_mail): approved, that exact mail
    # goes out; otherwise it is dropped. The task never waits for it either.
    draft_id: int | None = None


class Draft(SQLModel, table=True):
    """A mail to someone other than the owner, composed whole when the model drafted it (its
    Message-ID and Date included) and held until the owner approves it as shown. `digest` binds
    the recipients, the exact bytes and each attachment's source file (path, size, SHA-256)."""

    draft_id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="task.task_id", index=True)
    conversation_id: int = Field(foreign_key="conversation.conversation_id", index=True)
    message_id: str = Field(unique=True)
    recipients_json: str  # the envelope: to and cc, plain lower-cased addresses
    subject: str
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    raw_sha256: str
    attachments_json: str = "[]"  # [{path, name, size, sha256}]
    digest: str
    # awaiting_approval -> approved | denied | expired | void (an attachment changed, say)
    state: str = Field(default="awaiting_approval", index=True)
    reason: str = ""
    created_at: datetime
    settled_at: datetime | None = None


class Schedule(SQLModel, table=True):
    """A recurring or one-off task. The number shown to the owner is `schedule_id`; runs reply
    in the thread of the mail that made it (`message_id`, `references`), or, for schedules
    from schedules.toml, in the thread of their first run's reply (`message_id` once known)."""

    schedule_id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(foreign_key="conversation.conversation_id", index=True)
    origin_task_id: int | None = Field(default=None, foreign_key="task.task_id")
    source: str = "mail"  # mail | file
    file_key: str | None = Field(default=None, index=True)  # identity of a schedules.toml entry
    owner_address: str
    subject: str
    message_id: str | None = None
    references: str = ""
    when_text: str
    rule_json: str
    timezone: str
    task_text: str
    # active paused cancelled finished, or awaiting_approval: made by the model, not by the
    # owner's own words, it never runs until the owner approves it (SECURITY.md S5)
    state: str = Field(default="active", index=True)
    reason: str = ""
    next_run_at: datetime | None = None  # UTC
    last_run_at: datetime | None = None  # UTC
    consecutive_failures: int = 0
    created_at: datetime
    updated_at: datetime


class HeldMail(SQLModel, table=True):
    """Owner mail kept back by the per-sender rate limit (SECURITY.md S4, L6): its raw message
    stays stored, and it runs by itself as the limit allows, or when the owner says `release`."""

    __tablename__ = "held_mail"
    raw_message_id: int = Field(primary_key=True, foreign_key="raw_message.raw_message_id")
    owner_address: str = Field(index=True)
    reason: str
    held_at: datetime
    runs_by_itself: bool = True  # False: it may be part of a loop, so only `release` runs it
    release_requested_at: datetime | None = None


class Halt(SQLModel, table=True):
    """Tools stopped because the service cannot go on with them (an integrity check failed): in
    force from `halted_at` until the owner's `mailagent resume` sets `resumed_at`, across
    restarts. Owner mail that comes meanwhile is held; the owner is told of it once
    (`kept_notice_at`)."""

    halt_id: int | None = Field(default=None, primary_key=True)
    reason: str
    detail_json: str = "{}"
    halted_at: datetime = Field(index=True)
    resumed_at: datetime | None = None
    kept_notice_at: datetime | None = None


class InstanceClaim(SQLModel, table=True):
    """Who runs the service of a mailbox (SECURITY.md L5, across machines): the holder of
    PostgreSQL's advisory lock, or of the lease elsewhere; one row per mailbox."""

    __tablename__ = "instance_claim"
    mailbox: str = Field(primary_key=True)  # imap host, user and folder
    token: str  # this holder's, made at start
    host: str
    pid: int
    data_dir: str
    since: datetime
    renewed_at: datetime  # the lease lapses LEASE_SECONDS after it


def _initial(connection: Connection) -> None:
    tables = [
        SQLModel.metadata.tables[name]
        for name in (
            "mailboxstate",
            "raw_message",
            "conversation",
            "task",
            "command",
            "thread_ref",
            "audit_event",
        )
    ]
    SQLModel.metadata.create_all(connection, tables=tables)


class Probe(SQLModel, table=True):
    """A liveness probe mailed to ourselves; `returned_at` is set once, when it comes back."""

    probe_id: int | None = Field(default=None, primary_key=True)
    nonce: str = Field(unique=True, index=True)
    message_id: str = Field(unique=True)
    queued_at: datetime = Field(index=True)
    returned_at: datetime | None = None
    raw_message_id: int | None = None


def _add_columns(connection: Connection, table: str, columns: dict[str, str]) -> None:
    existing = {c["name"] for c in inspect(connection).get_columns(table)}
    for name, ddl in columns.items():
        if name not in existing:
            connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}"))


def _agent(connection: Connection) -> None:
    _add_columns(connection, "task", {
        "not_before": "TIMESTAMP", "turns": "INTEGER NOT NULL DEFAULT 0",
        "tool_calls": "INTEGER NOT NULL DEFAULT 0",
        "input_tokens": "INTEGER NOT NULL DEFAULT 0", "output_tokens": "INTEGER NOT NULL DEFAULT 0",
        "cache_read_tokens": "INTEGER NOT NULL DEFAULT 0",
        "cache_write_tokens": "INTEGER NOT NULL DEFAULT 0",
        "cost_usd": "FLOAT NOT NULL DEFAULT 0", "result_text": "TEXT NOT NULL DEFAULT ''",
        "attachments_json": "TEXT NOT NULL DEFAULT '[]'",
    })
    tables = [SQLModel.metadata.tables[n] for n in ("history", "tool_call", "memory")]
    SQLModel.metadata.create_all(connection, tables=tables)


# Forward-only: append new migrations, never edit or reorder applied ones. The first one creates
# tables as they are declared now, so later ones check before they add a column.
def _outbox(connection: Connection) -> None:
    SQLModel.metadata.create_all(connection, tables=[SQLModel.metadata.tables["outbox"]])


def _approvals(connection: Connection) -> None:
    SQLModel.metadata.create_all(connection, tables=[SQLModel.metadata.tables["approval"]])


def _budget_steps(connection: Connection) -> None:
    _add_columns(connection, "task", {"budget_steps": "INTEGER NOT NULL DEFAULT 0"})


def _schedules(connection: Connection) -> None:
    SQLModel.metadata.create_all(connection, tables=[SQLModel.metadata.tables["schedule"]])


def _probes(connection: Connection) -> None:
    SQLModel.metadata.create_all(connection, tables=[SQLModel.metadata.tables["probe"]])


def _sent_at(connection: Connection) -> None:
    for table in ("task", "command"):
        _add_columns(connection, table, {"sent_at": "TIMESTAMP"})


def _repair_histories(connection: Connection) -> None:
    # Imported here: the repair builds on these tables, and this module declares them.
    from mailagent.store.repair import repair_histories

    repair_histories(connection)


def _held(connection: Connection) -> None:
    for table in ("task", "command"):
        _add_columns(connection, table, {"answers_us": "BOOLEAN NOT NULL DEFAULT FALSE"})
    SQLModel.metadata.create_all(connection, tables=[SQLModel.metadata.tables["held_mail"]])


def _schedule_approvals(connection: Connection) -> None:
    _add_columns(connection, "approval", {"schedule_id": "INTEGER"})


def _halts(connection: Connection) -> None:
    SQLModel.metadata.create_all(connection, tables=[SQLModel.metadata.tables["halt"]])


def _drafts(connection: Connection) -> None:
    SQLModel.metadata.create_all(connection, tables=[SQLModel.metadata.tables["draft"]])
    _add_columns(connection, "approval", {"draft_id": "INTEGER"})
    _add_columns(connection, "outbox", {"draft_id": "INTEGER"})


def _web_requests(connection: Connection) -> None:
    _add_columns(connection, "task", {"web_search_requests": "INTEGER NOT NULL DEFAULT 0",
                                      "web_fetch_requests": "INTEGER NOT NULL DEFAULT 0"})


def _instance_claims(connection: Connection) -> None:
    SQLModel.metadata.create_all(connection, tables=[SQLModel.metadata.tables["instance_claim"]])


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("0001_initial", _initial),
    ("0002_agent", _agent),
    ("0003_outbox", _outbox),
    ("0004_approvals", _approvals),
    ("0005_budget_steps", _budget_steps),
    ("0006_schedules", _schedules),
    ("0007_probes", _probes),
    ("0008_sent_at", _sent_at),
    ("0009_answer_open_tool_calls", _repair_histories),
    ("0010_held_mail", _held),
    ("0011_schedule_approvals", _schedule_approvals),
    ("0012_halts", _halts),
    ("0013_drafts", _drafts),
    ("0014_web_requests", _web_requests),
    ("0015_instance_claims", _instance_claims),
]

