"""The database under the store: the engine, sessions, migrations, and the helpers every area uses.

In: a SQLAlchemy URL. Out: `MailStore`, the base of every area of the store (the engine, one
session per change, the forward-only migrations, the audit trail), and the row helpers the areas
share. Side effects: the database only. A full disk or database becomes one `StoreFullError`,
told to `on_full` as it is raised.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, SQLModel, col, create_engine, select

from mailagent.errors import StoreError, StoreFullError
from mailagent.store.repair import close_open_calls
from mailagent.store.tables import (
    MIGRATIONS,
    TASK_TRANSITIONS,
    Approval,
    AuditEvent,
    Conversation,
    HeldMail,
    OutboxRow,
    RawMessage,
    Task,
    ThreadRef,
    utcnow,
)
from mailagent.store.views import ApprovalView, AuditView, Outbound, OutboxView, TaskWork

log = logging.getLogger(__name__)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _utc_session(dbapi_connection: Any, _record: Any) -> None:
    # Datetimes are stored in UTC without an offset: a server in another time zone would
    # otherwise turn each one into its local time on the way in.
    cursor = dbapi_connection.cursor()
    cursor.execute("SET TIME ZONE 'UTC'")
    cursor.close()
    dbapi_connection.commit()


def create_store_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get their folder created and WAL switched on,
    PostgreSQL sessions their time zone set to UTC."""
    try:
        if url.startswith("sqlite"):
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        engine = create_engine(url, pool_pre_ping=True)
        if engine.dialect.name == "postgresql":
            event.listen(engine, "connect", _utc_session)
        return engine
    except ImportError as exc:  # the driver is not installed
        raise StoreError(
            f"cannot open the database {without_password(url)!r}: its driver is missing "
            f"({exc}); for PostgreSQL, `pip install 'mailagent[postgres]'` and a URL "
            "postgresql+psycopg://...") from exc
    except (SQLAlchemyError, OSError, ValueError) as exc:
        raise StoreError(f"cannot open the database {without_password(url)!r}: {exc}") from exc


def without_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return "(a URL that does not parse)"


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
    """The database: one engine, a session per change, migrations and the audit trail. Safe to
    share between threads; each area of the store builds on it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Told of every StoreFullError as it is raised, from whichever thread: the service
        # tells the owner once, whichever stage ran out of room.
        self.on_full: Callable[[StoreFullError], None] = lambda _error: None

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

    def describe(self) -> str:
        """The database as a person may read it: its kind and its URL, any password hidden."""
        url = self.engine.url
        return f"{url.get_backend_name()} {url.render_as_string(hide_password=True)}"

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

    def audit(self, kind: str, reason: str, *, raw_message_id: int | None = None,
              task_id: int | None = None, detail: dict[str, Any] | None = None) -> None:
        with self.session() as s:
            _audit(s, kind, reason, raw_message_id, task_id, detail or {})

    def audit_events(self, kind_prefix: str = "", limit: int = 1000) -> list[AuditView]:
        with self.session() as s:
            rows = s.exec(select(AuditEvent).where(col(AuditEvent.kind).startswith(kind_prefix))
                          .order_by(col(AuditEvent.audit_id).desc()).limit(limit))
            return [
                AuditView(_id(a.audit_id), a.at, a.kind, a.reason, a.raw_message_id, a.task_id,
                          json.loads(a.detail_json))
                for a in rows
            ]


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
                    next_attempt_at=now, created_at=now, draft_id=outbound.draft_id))
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
                        row.schedule_id, row.draft_id)


def _outbox_view(row: OutboxRow) -> OutboxView:
    return OutboxView(_id(row.outbox_id), row.message_id, row.kind, row.recipient, row.subject,
                      row.raw, row.state, row.attempts, row.last_error, row.task_id,
                      row.draft_id)


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
        task.web_search_requests, task.web_fetch_requests,
    )


def _aware(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were stored in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
