"""One service per mailbox across machines: the claim a running service holds in the database.

In: the store's engine and the mailbox's identity (IMAP host, user and folder). Out: a claim held
for the life of `mailagent run`, or AlreadyRunningError naming who holds it (host, pid, since);
for `mailagent check`, who holds it now. Side effects: the mailbox's row of `instance_claim`, and
on PostgreSQL a session advisory lock held by one connection kept open for the claim's life (the
server lets go of it when that connection ends, a `kill -9` included). Other databases have no
such lock: there the row is a lease that its holder renews every HEARTBEAT_SECONDS and that
lapses LEASE_SECONDS after the last renewal. The data directory's file lock (instance.py) stays;
this one covers two data directories, on one machine or two, that share a database and a mailbox.
It decides nothing else: it only keeps a second service from starting.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, and_, delete, insert, or_, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import SQLModel

from mailagent.errors import AlreadyRunningError, StoreError
from mailagent.store.db import MailStore, _aware
from mailagent.store.tables import utcnow

if TYPE_CHECKING:
    from mailagent.settings import ImapSettings

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0
HEARTBEAT_SECONDS = 15.0
CLAIMS = SQLModel.metadata.tables["instance_claim"]


def mailbox_identity(host: str, username: str, folder: str) -> str:
    """The mailbox one service at most may watch: the same wherever the config is, whatever
    the port it is reached on, the case of the host and of the user name (the same account
    at every provider that matters; two names that may be one account are kept apart rather
    than watched twice), and of INBOX, whose name IMAP takes in any case (RFC 3501 5.1)."""
    inbox = folder.strip().upper() == "INBOX"
    return f"{host.strip().lower()}/{username.strip().lower()}/{'INBOX' if inbox else folder}"


def mailbox_of(imap: ImapSettings) -> str:
    """The identity of the mailbox a config's [imap] section watches."""
    return mailbox_identity(imap.host, imap.username, imap.folder)


def advisory_key(mailbox: str) -> int:
    """PostgreSQL's advisory lock key for `mailbox`: a signed 64-bit number from its hash."""
    return int.from_bytes(hashlib.sha256(mailbox.encode()).digest()[:8], "big", signed=True)


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    data_dir: str
    since: datetime  # UTC

    def line(self) -> str:
        return (f"host {self.host}, pid {self.pid}, data_dir {self.data_dir}, "
                f"since {self.since:%Y-%m-%d %H:%M:%S} UTC")


class MailboxClaim:
    """The claim of one service on one mailbox: `take` it, `renew` it, `release` it."""

    def __init__(self, engine: Engine, mailbox: str, data_dir: Path) -> None:
        self.engine = engine
        self.mailbox = mailbox
        self.data_dir = str(data_dir.resolve())
        self.host = socket.gethostname()
        self.token = uuid.uuid4().hex
        self.is_locking = self.engine.dialect.name == "postgresql"
        self.connection: Connection | None = None  # PostgreSQL's: it holds the lock
        self.renewed_at = utcnow()

    def take(self) -> None:
        """Claim the mailbox, or raise AlreadyRunningError naming its holder."""
        try:
            taken = self._lock() if self.is_locking else self._lease()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot claim the mailbox {self.mailbox}: {exc}") from exc
        if not taken:
            holder = holder_of(self.engine, self.mailbox)
            who = holder.line() if holder else "a service that has not written its name yet"
            raise AlreadyRunningError(
                f"another mailagent runs on the mailbox {self.mailbox} with this database "
                f"({who}): stop it first, or give this one another mailbox")
        log.info("mailbox claimed mailbox=%s by=%s", self.mailbox,
                 "advisory lock" if self.is_locking else "lease")

    def _lock(self) -> bool:
        connection = self.engine.connect()
        got = connection.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                 {"key": advisory_key(self.mailbox)}).scalar()
        connection.commit()  # the lock is the session's: it outlives the transaction
        if not got:
            connection.close()
            return False
        self.connection = connection
        try:
            with self.engine.begin() as writing:
                writing.execute(delete(CLAIMS).where(CLAIMS.c.mailbox == self.mailbox))
                writing.execute(insert(CLAIMS).values(self._row(utcnow())))
        except SQLAlchemyError:
            self.connection = None
            connection.close()  # and the lock with it
            raise
        return True

    def _lease(self) -> bool:
        """Take the row if it lapsed, is ours, or was left by a service of our own data
        directory on this machine (the data directory's lock says that one has ended)."""
        now = utcnow()
        row = self._row(now)
        with self.engine.begin() as connection:
            taken = connection.execute(update(CLAIMS).where(
                CLAIMS.c.mailbox == self.mailbox,
                or_(CLAIMS.c.renewed_at < now - timedelta(seconds=LEASE_SECONDS),
                    CLAIMS.c.token == self.token,
                    and_(CLAIMS.c.host == self.host, CLAIMS.c.data_dir == self.data_dir)),
            ).values(row)).rowcount
        if taken:
            return True
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(CLAIMS).values(row))
        except IntegrityError:  # someone holds it
            return False
        return True

    def _row(self, now: datetime) -> dict[str, object]:
        return {"mailbox": self.mailbox, "token": self.token, "host": self.host,
                "pid": os.getpid(), "data_dir": self.data_dir, "since": now, "renewed_at": now}

    def renew(self) -> bool:
        """Renew the lease, or make sure the lock is still held (taken again on a new
        connection if the server ended ours and nobody took it meanwhile); False if another
        service may hold the mailbox now."""
        try:
            if self.is_locking and not self._still_locked():
                return False
            with self.engine.begin() as connection:
                renewed = connection.execute(update(CLAIMS).where(
                    CLAIMS.c.mailbox == self.mailbox, CLAIMS.c.token == self.token,
                ).values(renewed_at=utcnow())).rowcount
        except SQLAlchemyError as exc:
            log.warning("cannot renew the claim on the mailbox %s: %s", self.mailbox, exc)
            # the lock is tried again at the next beat; a lease runs on until it lapses
            lapsed = utcnow() - self.renewed_at >= timedelta(seconds=LEASE_SECONDS)
            return self.is_locking or not lapsed
        if renewed:
            self.renewed_at = utcnow()
        return bool(renewed) or self.is_locking

    def _still_locked(self) -> bool:
        if self.connection is not None:
            try:
                self.connection.execute(text("SELECT 1"))
                self.connection.commit()
                return True
            except SQLAlchemyError:  # the session, and the lock with it, ended
                with contextlib.suppress(SQLAlchemyError):
                    self.connection.close()
                self.connection = None
        if not self._lock():
            return False
        log.warning("the connection that held the lock on the mailbox %s ended; it is held "
                    "again", self.mailbox)
        return True

    def release(self) -> None:
        try:
            with self.engine.begin() as connection:
                connection.execute(delete(CLAIMS).where(CLAIMS.c.mailbox == self.mailbox,
                                                        CLAIMS.c.token == self.token))
            if self.connection is not None:
                self.connection.execute(text("SELECT pg_advisory_unlock(:key)"),
                                        {"key": advisory_key(self.mailbox)})
                self.connection.commit()
        except SQLAlchemyError as exc:  # the lock ends with the connection all the same
            log.warning("cannot release the claim on the mailbox %s: %s", self.mailbox, exc)
        finally:
            if self.connection is not None:
                self.connection.close()
                self.connection = None


class ClaimStore(MailStore):
    """The claim of a running service on its mailbox, and who holds it now."""

    def mailbox_holder(self, mailbox: str) -> Holder | None:
        try:
            return holder_of(self.engine, mailbox)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the claim on the mailbox {mailbox}: {exc}") from exc

    def claim_mailbox(self, mailbox: str, data_dir: Path,
                      on_lost: Callable[[str], None]) -> AbstractContextManager[MailboxClaim]:
        return _claimed(self.engine, mailbox, data_dir, on_lost)


@contextmanager
def _claimed(engine: Engine, mailbox: str, data_dir: Path,
             on_lost: Callable[[str], None]) -> Iterator[MailboxClaim]:
    """Hold the claim on `mailbox` while the block runs, renewed by a thread of its own;
    `on_lost` is told (from that thread) if another service could have taken it meanwhile."""
    claim = MailboxClaim(engine, mailbox, data_dir)
    claim.take()
    stopped = threading.Event()

    def beat() -> None:
        while not stopped.wait(HEARTBEAT_SECONDS):
            if not claim.renew():
                on_lost(f"the claim on the mailbox {mailbox} was lost: another service may "
                        "run on it now")
                return

    heart = threading.Thread(target=beat, name="mailbox-claim", daemon=True)
    heart.start()
    try:
        yield claim
    finally:
        stopped.set()
        heart.join()
        claim.release()


def holder_of(engine: Engine, mailbox: str) -> Holder | None:
    """Who holds `mailbox` now, or None if it is free (a lapsed lease or a free lock)."""
    with engine.begin() as connection:
        row = connection.execute(select(CLAIMS).where(CLAIMS.c.mailbox == mailbox)).first()
        if row is None:
            return None
        if connection.dialect.name == "postgresql":
            if _is_lock_free(connection, mailbox):
                return None
        elif _aware(row.renewed_at) < utcnow() - timedelta(seconds=LEASE_SECONDS):
            return None
    return Holder(row.host, row.pid, row.data_dir, _aware(row.since))


def _is_lock_free(connection: Connection, mailbox: str) -> bool:
    """Whether no session holds the mailbox's lock, read from pg_locks without trying to take
    it: a try would hold it for a moment, and a service starting at that moment would refuse
    to run. A bigint key shows as its high half in classid, its low half in objid, and
    objsubid 1 (PostgreSQL's documentation of pg_locks, "advisory locks")."""
    key = advisory_key(mailbox) & 0xFFFF_FFFF_FFFF_FFFF
    return not connection.execute(text(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND classid::bigint = :high AND objid::bigint = :low AND objsubid = 1)"),
        {"high": key >> 32, "low": key & 0xFFFF_FFFF}).scalar()
