"""The store: SQLModel tables, forward-only named migrations, and the queries of every stage.

In: calls from the service and the CLI. Out: frozen dataclasses (never live ORM objects).
Side effects: the database only (SQLite in WAL mode by default, any SQLAlchemy URL otherwise).
It must never decide anything: it records what the stages decided, each change in one transaction,
so that a crash between two calls leaves a state the service can resume from.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, text
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, SQLModel, col, create_engine, select

from mailagent.errors import StoreError, StoreFullError
from mailagent.store.repair import close_open_calls
from mailagent.store.tables import (
    MIGRATIONS,
    TASK_STATES,
    TASK_TRANSITIONS,
    Approval,
    AuditEvent,
    Command,
    Conversation,
    HeldMail,
    HistoryEntry,
    MailboxState,
    MemoryNote,
    OutboxRow,
    RawMessage,
    Task,
    ThreadRef,
    ToolCallRow,
    utcnow,
)
from mailagent.store.views import (
    ApprovalView,
    AuditView,
    CommandView,
    CommandWork,
    ConversationView,
    HeldView,
    HistoryItem,
    NewCommand,
    NewSchedule,
    NewTask,
    Outbound,
    OutboxView,
    ReplyTarget,
    SavedRaw,
    ScheduledRun,
    ScheduleQuestion,
    ScheduleView,
    SeenContext,
    SeenTask,
    TaskView,
    TaskWork,
    ThreadMatch,
    ToolCallView,
    Usage,
)

__all__ = [
    "MIGRATIONS",
    "TASK_STATES",
    "TASK_TRANSITIONS",
    "ApprovalView",
    "AuditView",
    "CommandView",
    "CommandWork",
    "ConversationView",
    "HeldView",
    "HistoryItem",
    "NewCommand",
    "NewSchedule",
    "NewTask",
    "Outbound",
    "OutboxView",
    "ReplyTarget",
    "SavedRaw",
    "ScheduleQuestion",
    "ScheduleView",
    "ScheduledRun",
    "SeenContext",
    "SeenTask",
    "Store",
    "Task",
    "TaskView",
    "TaskWork",
    "ThreadMatch",
    "ToolCallView",
    "Usage",
    "create_store_engine",
]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- the store


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def create_store_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get their folder created and WAL switched on."""
    try:
        if url.startswith("sqlite"):
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return create_engine(url, pool_pre_ping=True)
    except (SQLAlchemyError, OSError, ValueError) as exc:
        raise StoreError(f"cannot open the database {url!r}: {exc}") from exc


SQLITE_FULL = 13  # "database or disk is full"
POSTGRES_DISK_FULL = "53100"


def _is_full(exc: SQLAlchemyError) -> bool:
    """Whether the database said that it has no room left (the disk, a quota, or its limit)."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF == SQLITE_FULL:
        return True
    return getattr(orig, "pgcode", None) == POSTGRES_DISK_FULL or \
        "database or disk is full" in str(orig)


class MailStore:
    """Mail-side reads and writes: raw messages, outcomes, audit. Safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Told of every StoreFullError as it is raised, from whichever thread: the service
        # tells the owner once, whichever stage ran out of room.
        self.on_full: Callable[[StoreFullError], None] = lambda _error: None

    @classmethod
    def open(cls, url: str, migrate: bool = True) -> Store:
        """The store at `url`, migrated unless a reader beside the service asks not to."""
        store = Store(create_store_engine(url))
        if migrate:
            store.migrate()
        return store

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            if _is_full(exc):
                said = f"{self.engine.url.get_backend_name()} said: {getattr(exc, 'orig', exc)}"
                full = StoreFullError(f"the database or the disk is full ({said})")
                self.on_full(full)
                raise full from exc
            raise StoreError(f"database error: {exc}") from exc

    def file_path(self) -> Path | None:
        """The database's file, for SQLite on disk; None for a server or in memory."""
        url = self.engine.url
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        return Path(url.database)

    def migrate(self) -> list[str]:
        """Apply the migrations not applied yet, in order; return their names. Another process
        (`status`, the demo) may open the database while the service migrates it: a migration
        that fails because that process applied it meanwhile counts as done."""
        applied: list[str] = []
        try:
            with self.engine.begin() as connection:
                SQLModel.metadata.create_all(
                    connection, tables=[SQLModel.metadata.tables["migration"]]
                )
            for name, migration in MIGRATIONS:
                if self._is_applied(name):
                    continue
                try:
                    with self.engine.begin() as connection:
                        migration(connection)
                        connection.execute(
                            text("INSERT INTO migration (name, applied_at) VALUES (:n, :t)"),
                            {"n": name, "t": utcnow()},
                        )
                except SQLAlchemyError:
                    if self._is_applied(name):
                        continue
                    raise
                applied.append(name)
                log.info("applied migration %s", name)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot migrate the database: {exc}") from exc
        return applied

    def _is_applied(self, name: str) -> bool:
        with self.engine.begin() as connection:
            return connection.execute(
                text("SELECT 1 FROM migration WHERE name = :name"), {"name": name}
            ).first() is not None

    # ------------------------------------------------------------ mailbox bookkeeping

    def mailbox_position(self, folder: str) -> tuple[int, int] | None:
        """(uidvalidity, last_uid) recorded for `folder`, or None on first contact."""
        with self.session() as s:
            row = s.get(MailboxState, folder)
            return (row.uidvalidity, row.last_uid) if row else None

    def set_mailbox_position(self, folder: str, uidvalidity: int, last_uid: int) -> None:
        with self.session() as s:
            row = s.get(MailboxState, folder)
            row = row or MailboxState(folder=folder, uidvalidity=uidvalidity)
            if row.uidvalidity != uidvalidity:
                row.uidvalidity, row.last_uid = uidvalidity, 0
            row.last_uid = max(row.last_uid, last_uid)
            s.add(row)

    def save_raw(
        self,
        *,
        folder: str,
        uidvalidity: int,
        uid: int,
        raw: bytes,
        size: int,
        content_key: str,
        message_id: str | None,
    ) -> SavedRaw:
        """Commit the raw bytes (or note a duplicate) and advance the folder's last UID, at once.

        A message whose content key is known already is not stored again; its location is
        updated so that flags are set on the copy the server has now.
        """
        with self.session() as s:
            query = select(RawMessage).where(RawMessage.content_key == content_key)
            existing = s.exec(query).first()
            if existing is not None:
                existing.folder, existing.uidvalidity, existing.uid = folder, uidvalidity, uid
                existing.flagged = False
                s.add(existing)
                saved = SavedRaw(_id(existing.raw_message_id), is_new=False)
            else:
                row = RawMessage(
                    content_key=content_key, folder=folder, uidvalidity=uidvalidity, uid=uid,
                    message_id=message_id, raw=raw, size=size, truncated=len(raw) < size,
                    received_at=utcnow(),
                )
                s.add(row)
                s.flush()
                saved = SavedRaw(_id(row.raw_message_id), is_new=True)
            position = s.get(MailboxState, folder)
            if position is None or position.uidvalidity != uidvalidity:
                position = MailboxState(folder=folder, uidvalidity=uidvalidity, last_uid=0)
                position = s.merge(position)
            position.last_uid = max(position.last_uid, uid)
            s.add(position)
            return saved

    def begin_processing(self, raw_message_id: int) -> tuple[bytes, int, int]:
        """Count one more attempt at a stored message: (raw bytes, size on server, attempts)."""
        with self.session() as s:
            row = s.get(RawMessage, raw_message_id)
            if row is None:
                raise StoreError(f"no raw message {raw_message_id}")
            row.attempts += 1
            s.add(row)
            return row.raw, row.size, row.attempts

    def uncount_attempt(self, raw_message_id: int) -> None:
        """Take back the attempt `begin_processing` counted: it ended for want of room, which
        says nothing about the message, so it must not bring the message closer to giving up."""
        with self.session() as s:
            row = s.get(RawMessage, raw_message_id)
            if row is not None and row.attempts > 0:
                row.attempts -= 1
                s.add(row)

    def is_our_message_id(self, message_id: str) -> bool:
        with self.session() as s:
            ref = s.get(ThreadRef, message_id)
            return ref is not None and ref.direction == "out"

    def unprocessed_raw_ids(self) -> list[int]:
        with self.session() as s:
            rows = s.exec(select(RawMessage.raw_message_id).where(RawMessage.state == "received")
                          .order_by(col(RawMessage.raw_message_id)))
            return [_id(r) for r in rows]

    def unflagged_uids(self, folder: str, uidvalidity: int) -> list[int]:
        """UIDs in `folder` whose message is processed but not yet flagged on the server."""
        with self.session() as s:
            rows = s.exec(select(RawMessage.uid).where(
                RawMessage.folder == folder, RawMessage.uidvalidity == uidvalidity,
                RawMessage.state == "processed", col(RawMessage.flagged).is_(False)))
            return sorted(rows)

    def mark_flagged(self, folder: str, uidvalidity: int, uids: Iterable[int]) -> None:
        uid_list = list(uids)
        with self.session() as s:
            rows = s.exec(select(RawMessage).where(
                RawMessage.folder == folder, RawMessage.uidvalidity == uidvalidity,
                col(RawMessage.uid).in_(uid_list)))
            for row in rows:
                row.flagged = True
                s.add(row)

    # ------------------------------------------------------------ outcomes of intake

    def find_thread(self, message_ids: Sequence[str]) -> ThreadMatch | None:
        """The conversation (and task) of the latest of `message_ids` that is known."""
        if not message_ids:
            return None
        with self.session() as s:
            refs = {r.message_id: r for r in s.exec(select(ThreadRef).where(
                col(ThreadRef.message_id).in_(list(message_ids))))}
            for message_id in reversed(message_ids):
                ref = refs.get(message_id)
                if ref is not None:
                    conversation = s.get(Conversation, ref.conversation_id)
                    assert conversation is not None
                    return ThreadMatch(ref.conversation_id, conversation.name, ref.task_id)
        return None

    def record_task(self, raw_message_id: int | None, new: NewTask, reason: str,
                    receipt: Callable[[int, int], Outbound] | None = None) -> int:
        """Record a queued task, its thread reference and audit row; mark the raw processed.
        `receipt(task_id, conversation_id)` builds a "got it" mail queued in the same commit."""
        with self.session() as s:
            conversation = _conversation(s, new.conversation_name)
            now = utcnow()
            task = Task(
                conversation_id=_id(conversation.conversation_id), raw_message_id=raw_message_id,
                owner_address=new.owner_address, subject=new.subject, message_id=new.message_id,
                references=" ".join(new.references), instruction=new.instruction,
                data_json=json.dumps(new.data), created_at=now, updated_at=now,
                sent_at=_utc(new.sent_at), answers_us=new.answers_us,
            )
            s.add(task)
            s.flush()
            task_id = _id(task.task_id)
            _add_ref(s, new.message_id, _id(conversation.conversation_id), task_id)
            _audit(s, "task.queued", reason, raw_message_id, task_id,
                   {"conversation": new.conversation_name})
            _processed(s, raw_message_id, "task", reason)
            if receipt is not None:
                _enqueue(s, receipt(task_id, _id(conversation.conversation_id)))
            return task_id

    def record_command(self, raw_message_id: int | None, new: NewCommand, reason: str) -> int:
        with self.session() as s:
            conversation_id = None
            if new.conversation_name is not None:
                conversation = _conversation(s, new.conversation_name)
                conversation_id = _id(conversation.conversation_id)
                _add_ref(s, new.message_id, conversation_id, new.task_id)
            command = Command(
                raw_message_id=raw_message_id, conversation_id=conversation_id,
                task_id=new.task_id, name=new.name, argument=new.argument,
                owner_address=new.owner_address, subject=new.subject, message_id=new.message_id,
                references=" ".join(new.references), created_at=utcnow(),
                sent_at=_utc(new.sent_at), answers_us=new.answers_us,
            )
            s.add(command)
            s.flush()
            _audit(s, "command.received", reason, raw_message_id, new.task_id,
                   {"command": new.name, "argument": new.argument})
            _processed(s, raw_message_id, "command", reason)
            return _id(command.command_id)

    def record_rejection(
        self, raw_message_id: int | None, kind: str, reason: str, detail: dict[str, Any],
        mail: Outbound | None = None,
    ) -> None:
        """Record why a message creates no task (and queue the owner's notice, if any); the raw
        message counts as handled."""
        with self.session() as s:
            _audit(s, kind, reason, raw_message_id, None, detail)
            _processed(s, raw_message_id, "rejected", reason)
            if mail is not None:
                _enqueue(s, mail)

    def audit(self, kind: str, reason: str, *, raw_message_id: int | None = None,
              task_id: int | None = None, detail: dict[str, Any] | None = None) -> None:
        with self.session() as s:
            _audit(s, kind, reason, raw_message_id, task_id, detail or {})

    # ------------------------------------------------------------ tasks

    def set_task_state(self, task_id: int, state: str, reason: str | None = None) -> None:
        """Move a task along the state machine; an illegal transition raises StoreError."""
        with self.session() as s:
            _move(s, task_id, state, reason)

    # ------------------------------------------------------------ reading, for status and tests

    def tasks(self, states: Sequence[str] = TASK_STATES) -> list[TaskView]:
        with self.session() as s:
            rows = s.exec(select(Task, Conversation.name).join(Conversation).where(
                col(Task.state).in_(list(states))).order_by(col(Task.task_id)))
            return [
                TaskView(_id(t.task_id), name, t.state, t.subject, t.owner_address,
                         t.instruction, json.loads(t.data_json), t.created_at, t.reason)
                for t, name in rows
            ]

    def commands(self) -> list[CommandView]:
        with self.session() as s:
            rows = s.exec(select(Command, Conversation.name).join(
                Conversation, isouter=True).order_by(col(Command.command_id)))
            return [
                CommandView(_id(c.command_id), c.name, c.argument, name, c.task_id, c.state,
                            c.created_at)
                for c, name in rows
            ]

    def conversations(self) -> list[ConversationView]:
        with self.session() as s:
            counts: dict[int, dict[str, int]] = {}
            for conversation_id, state, n in s.exec(
                select(Task.conversation_id, Task.state, func.count()).group_by(
                    col(Task.conversation_id), col(Task.state))
            ):
                counts.setdefault(conversation_id, {})[state] = n
            rows = s.exec(select(Conversation).order_by(col(Conversation.conversation_id)))
            return [
                ConversationView(_id(c.conversation_id), c.name,
                                 counts.get(_id(c.conversation_id), {}))
                for c in rows
            ]

    def audit_events(self, kind_prefix: str = "", limit: int = 1000) -> list[AuditView]:
        with self.session() as s:
            rows = s.exec(select(AuditEvent).where(col(AuditEvent.kind).startswith(kind_prefix))
                          .order_by(col(AuditEvent.audit_id).desc()).limit(limit))
            return [
                AuditView(_id(a.audit_id), a.at, a.kind, a.reason, a.raw_message_id, a.task_id,
                          json.loads(a.detail_json))
                for a in rows
            ]

    def raw_outcomes(self) -> list[tuple[int, str, str | None, str | None]]:
        """(raw_message_id, state, outcome, reason) of every stored message."""
        with self.session() as s:
            rows = s.exec(select(RawMessage.raw_message_id, RawMessage.state, RawMessage.outcome,
                                 RawMessage.reason).order_by(col(RawMessage.raw_message_id)))
            return [(_id(i), st, o, r) for i, st, o, r in rows]


def _task(s: Session, task_id: int) -> Task:
    task = s.get(Task, task_id)
    if task is None:
        raise StoreError(f"no task {task_id}")
    return task


def _move(s: Session, task_id: int, state: str, reason: str | None) -> Task:
    """The one place a task changes state: checked against the machine, audited."""
    task = _task(s, task_id)
    if state not in TASK_TRANSITIONS[task.state]:
        raise StoreError(f"task {task_id} cannot go from {task.state} to {state}")
    task.state, task.reason, task.updated_at = state, reason, utcnow()
    s.add(task)
    if not TASK_TRANSITIONS[state]:  # the task's end: its open calls are answered (L7)
        close_open_calls(s, task)
    _audit(s, f"task.{state}", reason or "", task.raw_message_id, task_id, {})
    return task


def _utc(value: datetime | None) -> datetime | None:
    """In UTC, as everything is stored (SQLite keeps no offset): an aware value converted,
    a naive one (as SQLite hands them back) taken as UTC already."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _id(value: int | None) -> int:
    if value is None:
        raise StoreError("row has no id after flush")
    return value


def _conversation(s: Session, name: str) -> Conversation:
    conversation = s.exec(select(Conversation).where(Conversation.name == name)).first()
    if conversation is None:
        conversation = Conversation(name=name, created_at=utcnow())
        s.add(conversation)
        s.flush()
        log.info("conversation created name=%s", name)
    return conversation


def _add_ref(s: Session, message_id: str | None, conversation_id: int, task_id: int | None,
             direction: str = "in") -> None:
    if message_id and s.get(ThreadRef, message_id) is None:
        s.add(ThreadRef(message_id=message_id, conversation_id=conversation_id, task_id=task_id,
                        direction=direction))


def _enqueue(s: Session, outbound: Outbound) -> None:
    """The outbox row and our Message-ID, in the caller's transaction (SECURITY.md L2, S4)."""
    now = utcnow()
    s.add(OutboxRow(message_id=outbound.message_id, kind=outbound.kind, task_id=outbound.task_id,
                    recipient=outbound.recipient, subject=outbound.subject, raw=outbound.raw,
                    next_attempt_at=now, created_at=now))
    if outbound.conversation_id is not None:
        _add_ref(s, outbound.message_id, outbound.conversation_id, outbound.task_id, "out")
    else:
        s.add(ThreadRef(message_id=outbound.message_id, conversation_id=_main_id(s),
                        task_id=None, direction="out"))
    _audit(s, f"mail.queued.{outbound.kind}", outbound.subject, None, outbound.task_id,
           {"message_id": outbound.message_id, "to": outbound.recipient})


def _main_id(s: Session) -> int:
    return _id(_conversation(s, "main").conversation_id)


def _approval_view(row: Approval) -> ApprovalView:
    return ApprovalView(_id(row.approval_id), row.task_id, row.tool_use_id, row.token, row.digest,
                        row.operation, row.state, row.message_id, _aware(row.expires_at),
                        row.schedule_id)


def _outbox_view(row: OutboxRow) -> OutboxView:
    return OutboxView(_id(row.outbox_id), row.message_id, row.kind, row.recipient, row.subject,
                      row.raw, row.state, row.attempts, row.last_error, row.task_id)


def _audit(s: Session, kind: str, reason: str, raw_message_id: int | None, task_id: int | None,
           detail: dict[str, Any]) -> None:
    s.add(AuditEvent(at=utcnow(), kind=kind, raw_message_id=raw_message_id, task_id=task_id,
                     reason=reason, detail_json=json.dumps(detail, default=str)))


def _processed(s: Session, raw_message_id: int | None, outcome: str, reason: str) -> None:
    if raw_message_id is None:
        return
    row = s.get(RawMessage, raw_message_id)
    if row is not None:
        row.state, row.outcome, row.reason = "processed", outcome, reason
        s.add(row)
    held = s.get(HeldMail, raw_message_id)
    if held is not None:  # held mail that ran: no longer held, in the same commit
        s.delete(held)


def _work(task: Task, conversation_name: str) -> TaskWork:
    return TaskWork(
        _id(task.task_id), task.conversation_id, conversation_name, task.subject,
        task.owner_address, task.instruction, json.loads(task.data_json), task.turns,
        task.tool_calls, task.input_tokens + task.output_tokens + task.cache_read_tokens
        + task.cache_write_tokens, task.cost_usd, task.budget_steps,
    )


from mailagent.store.held import HeldStore  # noqa: E402 (it builds on MailStore)


class Store(HeldStore):
    """Every read and write of mailagent's state; the agent's side: tasks, history, tool calls,
    memory. Safe to share between threads."""

    def requeue_interrupted(self, keep: Iterable[int] = ()) -> list[int]:
        """Tasks left running by a crash go back to the queue; they resume from their history.
        `keep`: tasks that do run now in this process (the others were left by a step that
        could not be recorded)."""
        kept = set(keep)
        with self.session() as s:
            rows = [t for t in s.exec(select(Task).where(Task.state == "running"))
                    if t.task_id not in kept]
            for task in rows:
                task.state, task.updated_at = "queued", utcnow()
                s.add(task)
                _audit(s, "task.resumed", "interrupted by a restart; resuming after its last step",
                       task.raw_message_id, task.task_id, {})
            return [_id(t.task_id) for t in rows]

    def claim_tasks(self, busy: set[int], limit: int, now: datetime) -> list[TaskWork]:
        """Mark as running the oldest queued task of each idle conversation, up to `limit`."""
        if limit <= 0:
            return []
        with self.session() as s:
            blocking = select(Task.conversation_id).where(
                col(Task.state).in_(["running", "waiting_approval"]))
            blocked = set(s.exec(blocking)) | busy
            # Only the oldest queued task of each conversation can start: a backlog of one
            # conversation must not be read whole at every claim.
            oldest = select(func.min(Task.task_id)).where(Task.state == "queued").group_by(
                col(Task.conversation_id))
            rows = s.exec(select(Task, Conversation.name).join(Conversation).where(
                col(Task.task_id).in_(oldest)).order_by(col(Task.task_id)))
            claimed: list[TaskWork] = []
            for task, name in rows:
                if task.conversation_id in blocked:
                    continue
                blocked.add(task.conversation_id)  # only the oldest of each conversation
                if task.not_before is not None and _aware(task.not_before) > now:
                    continue
                task.state, task.updated_at = "running", utcnow()
                s.add(task)
                _audit(s, "task.running", "", task.raw_message_id, task.task_id, {})
                claimed.append(_work(task, name))
                if len(claimed) >= limit:
                    break
            return claimed

    def task_work(self, task_id: int) -> TaskWork:
        with self.session() as s:
            task = _task(s, task_id)
            conversation = s.get(Conversation, task.conversation_id)
            assert conversation is not None
            return _work(task, conversation.name)

    def task_state(self, task_id: int) -> str:
        with self.session() as s:
            task = _task(s, task_id)
            return task.state

    def finish_task(self, task_id: int, state: str, reason: str, result_text: str = "",
                    mail: Outbound | None = None) -> None:
        """End a task and queue its mail in one transaction: never one without the other."""
        with self.session() as s:
            task = _move(s, task_id, state, reason)
            task.result_text = result_text
            s.add(task)
            if mail is not None:
                _enqueue(s, mail)

    def reply_target(self, task_id: int) -> ReplyTarget:
        with self.session() as s:
            task = _task(s, task_id)
            conversation = s.get(Conversation, task.conversation_id)
            assert conversation is not None
            return ReplyTarget(task.owner_address, task.subject, task.message_id,
                               tuple(task.references.split()), task.conversation_id,
                               conversation.name, task_id)

    # ------------------------------------------------------------ outbox

    def enqueue_mail(self, outbound: Outbound) -> None:
        with self.session() as s:
            _enqueue(s, outbound)

    def next_mail_at(self) -> datetime | None:
        """When the earliest queued mail may be sent (a retry waits), or None if none waits."""
        with self.session() as s:
            first = s.exec(select(func.min(OutboxRow.next_attempt_at))
                           .where(OutboxRow.state == "queued")).one()
            return _aware(first) if first is not None else None

    def next_task_event_at(self) -> datetime | None:
        """The earliest moment the worker has something to do that no one tells it about: a
        deferred task may run, or a pending approval expires."""
        with self.session() as s:
            deferred = s.exec(select(func.min(Task.not_before)).where(
                Task.state == "queued", col(Task.not_before).is_not(None))).one()
            expiry = s.exec(select(func.min(Approval.expires_at))
                            .where(Approval.state == "pending")).one()
        times = [_aware(t) for t in (deferred, expiry) if t is not None]
        return min(times) if times else None

    def due_mail(self, now: datetime) -> list[OutboxView]:
        with self.session() as s:
            rows = s.exec(select(OutboxRow).where(OutboxRow.state == "queued").order_by(
                col(OutboxRow.outbox_id)))
            return [_outbox_view(r) for r in rows if _aware(r.next_attempt_at) <= now]

    def outbox(self, states: Sequence[str] = ("queued", "sending", "sent", "failed",
                                              "unknown")) -> list[OutboxView]:
        with self.session() as s:
            rows = s.exec(select(OutboxRow).where(col(OutboxRow.state).in_(list(states)))
                          .order_by(col(OutboxRow.outbox_id)))
            return [_outbox_view(r) for r in rows]

    def set_mail_state(self, outbox_id: int, state: str, error: str = "",
                       retry_at: datetime | None = None) -> None:
        """queued -> sending -> sent | failed | unknown; a retry goes back to queued."""
        with self.session() as s:
            row = s.get(OutboxRow, outbox_id)
            if row is None:
                raise StoreError(f"no outbox row {outbox_id}")
            row.state, row.last_error = state, error or row.last_error
            if state == "sending":
                row.attempts += 1
            if state == "sent":
                row.sent_at = utcnow()
            if retry_at is not None:
                row.next_attempt_at = retry_at
            s.add(row)
            if state in ("sent", "failed", "unknown"):
                _audit(s, f"mail.{state}", error, None, row.task_id,
                       {"message_id": row.message_id, "attempts": row.attempts})

    def interrupted_sends(self) -> list[OutboxView]:
        """Mail that was being handed to SMTP when the service stopped: its outcome is unknown."""
        with self.session() as s:
            rows = list(s.exec(select(OutboxRow).where(OutboxRow.state == "sending")))
            for row in rows:
                row.state = "unknown"
                s.add(row)
            return [_outbox_view(r) for r in rows]

    # ------------------------------------------------------------ approvals

    def request_approval(self, task_id: int, tool_use_id: str, token: str, digest: str,
                         operation: str, expires_at: datetime, reason: str,
                         mail: Outbound | None) -> None:
        """The task waits, the approval is recorded and its mail queued: one transaction."""
        with self.session() as s:
            task = _move(s, task_id, "waiting_approval", reason)
            s.add(Approval(task_id=task_id, tool_use_id=tool_use_id, token=token, digest=digest,
                           operation=operation, message_id=mail.message_id if mail else "",
                           created_at=utcnow(), expires_at=expires_at))
            _audit(s, "approval.requested", operation, task.raw_message_id, task_id,
                   {"tool_use_id": tool_use_id, "digest": digest})
            if mail is not None:
                _enqueue(s, mail)

    def approvals(self, task_id: int | None = None,
                  states: Sequence[str] = ("pending",)) -> list[ApprovalView]:
        with self.session() as s:
            query = select(Approval).where(col(Approval.state).in_(list(states)))
            if task_id is not None:
                query = query.where(Approval.task_id == task_id)
            return [_approval_view(r) for r in s.exec(query.order_by(col(Approval.approval_id)))]

    def approval_for(self, task_id: int, tool_use_id: str) -> ApprovalView | None:
        with self.session() as s:
            row = s.exec(select(Approval).where(Approval.task_id == task_id,
                                                Approval.tool_use_id == tool_use_id)
                         .order_by(col(Approval.approval_id).desc())).first()
            return _approval_view(row) if row else None

    def settle_approval(self, approval_id: int, state: str, reason: str) -> bool:
        """pending -> approved | denied | expired, once; False if it was settled already.

        Approved: the tool call may run and the task goes back to the queue. Otherwise the
        call is refused and the task ends, cancelled.
        """
        with self.session() as s:
            row = s.get(Approval, approval_id)
            if row is None or row.state != "pending" or row.schedule_id is not None:
                return False  # a schedule's approval is settled with its schedule
            row.state, row.settled_at = state, utcnow()
            s.add(row)
            task = s.get(Task, row.task_id)
            assert task is not None
            call = s.exec(select(ToolCallRow).where(ToolCallRow.task_id == row.task_id,
                                                    ToolCallRow.tool_use_id == row.tool_use_id)
                          ).first()
            if call is not None:
                call.state = "approved" if state == "approved" else "refused"
                s.add(call)
            elif state == "approved":  # a budget pause: one more budget step
                task.budget_steps += 1
            if task.state == "waiting_approval" and (call is not None or state == "approved"):
                task.state = "queued" if state == "approved" else "cancelled"
                task.reason, task.updated_at = reason, utcnow()
                s.add(task)
                if task.state == "cancelled":
                    close_open_calls(s, task)
            _audit(s, f"approval.{state}", reason, None, row.task_id,
                   {"operation": row.operation, "digest": row.digest})
            return True

    # ------------------------------------------------------------ commands

    def pending_commands(self) -> list[CommandWork]:
        with self.session() as s:
            rows = s.exec(select(Command, Conversation.name).join(Conversation, isouter=True)
                          .where(Command.state == "pending").order_by(col(Command.command_id)))
            return [CommandWork(
                _id(c.command_id), c.name, c.argument, c.conversation_id, name, c.task_id,
                ReplyTarget(c.owner_address, c.subject, c.message_id,
                            tuple(c.references.split()), c.conversation_id, name, c.task_id))
                for c, name in rows]

    def finish_command(self, command_id: int, mail: Outbound | None, reason: str) -> None:
        with self.session() as s:
            command = s.get(Command, command_id)
            if command is None:
                raise StoreError(f"no command {command_id}")
            command.state = "done"
            s.add(command)
            _audit(s, "command.done", reason, command.raw_message_id, command.task_id,
                   {"command": command.name})
            if mail is not None:
                _enqueue(s, mail)

    def defer_task(self, task_id: int, not_before: datetime, reason: str) -> bool:
        """Put a running task back in the queue until `not_before` (overload, rate limit);
        True the first time this task is deferred."""
        with self.session() as s:
            task = _move(s, task_id, "queued", reason)
            first = task.not_before is None
            task.not_before = not_before
            s.add(task)
            return first

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
            s.add(task)

    def replies_taken_since(self, owner_address: str, since: datetime) -> int:
        """Tasks and commands made, since `since`, from this address's replies to our mail: the
        per-sender rate limit of SECURITY.md S4. A loop needs our mail in it, so only replies
        count; and they count by when we took them up, so held mail counts when it runs."""
        since = _utc(since) or since
        with self.session() as s:
            tasks = s.exec(select(func.count()).select_from(Task).where(
                Task.owner_address == owner_address, col(Task.answers_us).is_(True),
                col(Task.raw_message_id).is_not(None), Task.created_at >= since)).one()
            commands = s.exec(select(func.count()).select_from(Command).where(
                Command.owner_address == owner_address, col(Command.answers_us).is_(True),
                Command.created_at >= since)).one()
            return int(tasks) + int(commands)

    def first_reply_taken_since(self, owner_address: str, since: datetime) -> datetime | None:
        """When the oldest of the replies that `replies_taken_since` counts was taken up."""
        since = _utc(since) or since
        with self.session() as s:
            first = s.exec(select(func.min(Task.created_at)).where(
                Task.owner_address == owner_address, col(Task.answers_us).is_(True),
                col(Task.raw_message_id).is_not(None), Task.created_at >= since)).one()
            command = s.exec(select(func.min(Command.created_at)).where(
                Command.owner_address == owner_address, col(Command.answers_us).is_(True),
                Command.created_at >= since)).one()
            times = [_utc(t) for t in (first, command) if t is not None]
            return min(t for t in times if t is not None) if times else None

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

    # ------------------------------------------------------------ history

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

    # ------------------------------------------------------------ tool calls

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

    def changes(self, task_id: int) -> list[dict[str, Any]]:
        """What a task's tool calls changed on disk, in order."""
        with self.session() as s:
            rows = s.exec(select(ToolCallRow.change_json).where(
                ToolCallRow.task_id == task_id, ToolCallRow.change_json != "").order_by(
                col(ToolCallRow.tool_call_id)))
            return [json.loads(r) for r in rows]

    # ------------------------------------------------------------ memory

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


def _aware(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were stored in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)

