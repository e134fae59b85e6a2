"""One service per mailbox across machines (SECURITY.md L5): two data directories that share a
database and a mailbox never both run a service. On PostgreSQL an advisory lock held by the
service's connection says so, elsewhere a lease that its holder renews; the second service
refuses to start with a line naming the first (host, pid, since)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text, update

from mailagent.errors import AlreadyRunningError
from mailagent.store import Store, mailbox_identity
from mailagent.store.claims import (
    CLAIMS,
    HEARTBEAT_SECONDS,
    LEASE_SECONDS,
    MailboxClaim,
    advisory_key,
)
from mailagent.store.tables import utcnow
from tests.support.dovecot import Dovecot
from tests.support.fixtures import MakeService, on_both_databases
from tests.support.mail import owner_mail
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import SmtpServer

MAILBOX = mailbox_identity("127.0.0.1", "agent@example.com", "INBOX")


def never_lost(reason: str) -> None:
    raise AssertionError(f"the claim was lost: {reason}")


@pytest.fixture
def stores(database_url: str) -> Iterator[tuple[Store, Store]]:
    """Two stores on one database, as two machines would open it."""
    first, second = Store.open(database_url), Store.open(database_url)
    yield first, second
    first.close()
    second.close()


def test_the_mailbox_is_one_key_whatever_the_case_of_the_host_the_user_and_inbox() -> None:
    assert mailbox_identity("IMAP.Example.com ", "Agent@Example.com", "inbox") == \
        mailbox_identity("imap.example.com", "agent@example.com", "INBOX")
    assert mailbox_identity("h", "agent", "Work") != mailbox_identity("h", "agent", "work")
    assert mailbox_identity("h", "agent", "INBOX") != mailbox_identity("h", "agent", "Work")
    assert advisory_key(MAILBOX) == advisory_key(MAILBOX)
    assert -(2**63) <= advisory_key(MAILBOX) < 2**63


@on_both_databases
def test_a_second_claim_on_the_mailbox_is_refused_naming_the_holder_until_it_lets_go(
        stores: tuple[Store, Store], tmp_path: Path) -> None:
    first, second = stores
    assert second.mailbox_holder(MAILBOX) is None
    with first.claim_mailbox(MAILBOX, tmp_path / "a", never_lost):
        with pytest.raises(AlreadyRunningError) as refused, \
                second.claim_mailbox(MAILBOX, tmp_path / "b", never_lost):
            pass
        holder = second.mailbox_holder(MAILBOX)
        assert holder is not None
        assert (holder.host, holder.pid) == (socket.gethostname(), os.getpid())
        assert holder.data_dir == str((tmp_path / "a").resolve())
        assert f"host {holder.host}, pid {holder.pid}" in str(refused.value)
        assert f"since {holder.since:%Y-%m-%d %H:%M:%S} UTC" in str(refused.value)
        assert abs(holder.since - utcnow()) < timedelta(seconds=30)  # stored in UTC
        # another mailbox on the same database is free
        with second.claim_mailbox(MAILBOX + "-other", tmp_path / "b", never_lost):
            pass
    assert second.mailbox_holder(MAILBOX) is None
    with second.claim_mailbox(MAILBOX, tmp_path / "b", never_lost) as claim:
        assert claim.renew()
        holder = first.mailbox_holder(MAILBOX)
        assert holder is not None and holder.data_dir == str((tmp_path / "b").resolve())


def test_a_lease_left_by_another_data_dir_is_taken_only_once_it_lapses(
        stores: tuple[Store, Store], tmp_path: Path) -> None:
    first, second = stores
    # taken and never let go, nor renewed: its holder died (kill -9)
    MailboxClaim(first.engine, MAILBOX, tmp_path / "a").take()
    with pytest.raises(AlreadyRunningError):
        MailboxClaim(second.engine, MAILBOX, tmp_path / "b").take()
    # the same data directory on this machine takes it at once: its file lock vouches
    MailboxClaim(first.engine, MAILBOX, tmp_path / "a").take()
    lapsed = utcnow() - timedelta(seconds=LEASE_SECONDS + 1)
    with first.engine.begin() as connection:
        connection.execute(update(CLAIMS).values(renewed_at=lapsed))
    assert second.mailbox_holder(MAILBOX) is None
    with second.claim_mailbox(MAILBOX, tmp_path / "b", never_lost):
        assert first.mailbox_holder(MAILBOX) is not None


@on_both_databases
def test_a_claim_cut_off_and_taken_over_is_known_lost_at_its_next_renewal(
        stores: tuple[Store, Store], database: str, tmp_path: Path) -> None:
    first, second = stores
    claim = MailboxClaim(first.engine, MAILBOX, tmp_path / "a")
    claim.take()
    try:
        assert claim.renew()
        if database == "postgresql":  # the server ends the session that held the lock
            end_other_sessions(second)
        else:  # the lease lapsed, as it does when its holder stalls
            with second.engine.begin() as connection:
                connection.execute(update(CLAIMS).values(
                    renewed_at=utcnow() - timedelta(seconds=LEASE_SECONDS + 1)))
        with second.claim_mailbox(MAILBOX, tmp_path / "b", never_lost):
            assert not claim.renew()
    finally:
        claim.release()


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_lock_whose_session_the_server_ended_is_taken_again_if_nobody_took_it(
        stores: tuple[Store, Store], tmp_path: Path) -> None:
    first, second = stores
    claim = MailboxClaim(first.engine, MAILBOX, tmp_path / "a")
    claim.take()
    end_other_sessions(second)
    assert claim.renew()
    with pytest.raises(AlreadyRunningError):
        MailboxClaim(second.engine, MAILBOX, tmp_path / "b").take()
    claim.release()
    assert second.mailbox_holder(MAILBOX) is None


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_who_holds_a_lock_is_read_from_the_server_without_taking_it(
        stores: tuple[Store, Store], tmp_path: Path) -> None:
    # Keys of both signs: a bigint key shows in pg_locks split in two unsigned halves.
    mailboxes = [mailbox_identity("127.0.0.1", f"agent{n}@example.com", "INBOX")
                 for n in range(40)]
    negative = next(m for m in mailboxes if advisory_key(m) < 0)
    positive = next(m for m in mailboxes if advisory_key(m) > 0)
    first, second = stores
    for mailbox in (negative, positive):
        claim = MailboxClaim(first.engine, mailbox, tmp_path / "a")
        claim.take()
        try:
            holder = second.mailbox_holder(mailbox)
            assert holder is not None and holder.pid == os.getpid(), mailbox
            with second.engine.begin() as connection:  # the reader took no lock of its own
                held = connection.execute(text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND pid <> pg_backend_pid()")).scalar()
            assert held == 1
        finally:
            claim.release()
        assert second.mailbox_holder(mailbox) is None


def end_other_sessions(store: Store) -> None:
    """What a restart of the server, or a network cut, does to every other connection.

    pg_terminate_backend only sends the signal unless given a timeout; with one it waits
    until the session is gone (PostgreSQL 14+, "Server Signaling Functions"), so its locks
    are free when this returns.
    """
    with store.engine.begin() as connection:
        ended = connection.execute(text(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalars().all()
    assert ended and all(ended), f"sessions not ended in 10 s: {ended}"


def services_on_one_mailbox(tmp_path: Path, make_service: MakeService,
                            database_url: str) -> tuple[ServiceProcess, ServiceProcess]:
    """Two services of two data directories, one database, one mailbox."""
    return (make_service(folder=_folder(tmp_path / "a"), database_url=database_url),
            make_service(folder=_folder(tmp_path / "b"), database_url=database_url))


def database_line(service: ServiceProcess) -> str:
    """The line of `mailagent check` on the database, for the config of `service`."""
    checked = subprocess.run([sys.executable, "-m", "mailagent", "check", "--config",
                              str(service.config_path)], capture_output=True, text=True,
                             env=service.env, timeout=60)
    [line] = [line for line in checked.stdout.splitlines() if line.startswith("ok: database ")]
    return line


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


@on_both_databases
def test_a_second_service_on_the_same_database_and_mailbox_refuses_to_start(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, make_service: MakeService,
        database_url: str) -> None:
    first, second = services_on_one_mailbox(tmp_path, make_service, database_url)
    first.start().wait_connected()
    assert first.process is not None
    second.start()
    assert second.wait_exit(timeout=60) != 0
    assert "another mailagent runs on the mailbox 127.0.0.1/agent@example.com/INBOX with " \
        f"this database (host {socket.gethostname()}, pid {first.process.pid}, data_dir " \
        f"{(tmp_path / 'a' / 'data').resolve()}, since " in second.log(), second.log()
    assert "IMAP connected" not in second.log()
    assert f"the mailbox {MAILBOX} is held by a running service (host {socket.gethostname()}, " \
        f"pid {first.process.pid}, " in database_line(second)
    assert first.stop() == 0
    assert f"the mailbox {MAILBOX} is free" in database_line(second)
    second.start().wait_connected()
    dovecot.append(owner_mail("Hello", "Are you there?"))
    store = second.store()
    try:
        wait_until(lambda: [t.state for t in store.tasks()] == ["done"], 30,
                   f"the task done by the second service; log:\n{second.log()}")
    finally:
        store.close()
    assert second.stop() == 0


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_after_a_kill_the_lock_is_free_at_once_for_another_machine(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, make_service: MakeService,
        database_url: str) -> None:
    first, second = services_on_one_mailbox(tmp_path, make_service, database_url)
    first.start().wait_connected()
    first.kill()  # kill -9: no release; the server ends the lock with the connection
    second.start().wait_connected()
    assert "mailbox claimed mailbox=127.0.0.1/agent@example.com/INBOX by=advisory lock" in \
        second.log()
    assert second.stop() == 0


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_service_whose_lock_another_took_meanwhile_stops_at_its_next_renewal(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, make_service: MakeService,
        database_url: str) -> None:
    first, second = services_on_one_mailbox(tmp_path, make_service, database_url)
    first.start().wait_connected()
    with contextlib.closing(Store.open(database_url)) as store:
        end_other_sessions(store)  # the first's connections, the lock's among them
    second.start().wait_connected()
    first.wait_for_log(f"the claim on the mailbox {MAILBOX} was lost: another service may run "
                       "on it now; stopping", timeout=HEARTBEAT_SECONDS + 15)
    assert first.wait_exit(timeout=30) == 0
    assert second.process is not None and second.process.poll() is None
    assert second.stop() == 0
