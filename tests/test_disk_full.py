"""A full disk or database is a stop, not a loss (SECURITY.md L1, L6): the owner gets one mail,
mail stays in the mailbox unmarked, and the service goes on by itself once there is room."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from mailagent.errors import StoreFullError, as_full
from mailagent.store import Store
from tests.support.config import write_config
from tests.support.dovecot import Dovecot
from tests.support.mail import message_id_of, owner_mail
from tests.support.model_server import ModelServer
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import RecordedMail, SmtpServer

DONE = "$MailagentDone"
FULL_SUBJECT = "mailagent: the disk or the database is full"


def limit_pages(store: Store, pages: int) -> None:
    """Every new connection of the store may grow the database to `pages` pages and no more."""
    def limit(connection: Any, _record: Any) -> None:
        connection.execute(f"PRAGMA max_page_count = {pages}")

    event.listen(store.engine, "connect", limit)
    store.engine.dispose()


def test_a_full_database_is_a_store_full_error_that_the_service_is_told_of(
        tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'mailagent.db'}")
    told: list[StoreFullError] = []
    store.on_full = told.append
    with store.engine.connect() as connection:
        pages = int(connection.exec_driver_sql("PRAGMA page_count").scalar_one())
    limit_pages(store, pages)
    raw = owner_mail("Big", "x" * 200_000)
    with pytest.raises(StoreFullError, match="database or disk is full"):
        store.save_raw(folder="INBOX", uidvalidity=1, uid=1, raw=raw, size=len(raw),
                       content_key="k1", message_id=None)
    assert len(told) == 1 and told[0].transient
    assert store.unprocessed_raw_ids() == []  # nothing half-stored
    limit_pages(store, pages + 1000)
    saved = store.save_raw(folder="INBOX", uidvalidity=1, uid=1, raw=raw, size=len(raw),
                           content_key="k1", message_id=None)
    assert saved.is_new and store.unprocessed_raw_ids() == [saved.raw_message_id]
    assert as_full(OSError(errno.ENOSPC, "No space left on device")) is not None
    assert as_full(OSError(errno.EACCES, "Permission denied")) is None


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A file system of 24 MiB of its own for the data directory (tmpfs: the tests run as
    root), so that the disk really fills up."""
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(data)], check=True)
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the disk has no room left; return it."""
    filler = folder / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(descriptor, b"\0" * 65536)
    finally:
        os.close(descriptor)
    return filler


def full_mails(smtp: SmtpServer) -> list[RecordedMail]:
    return [m for m in smtp.messages if str(m.message()["Subject"]) == FULL_SUBJECT]


def test_a_full_disk_keeps_mail_in_the_mailbox_tells_the_owner_once_and_goes_on_with_room(
        tmp_path: Path, small_disk: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    config = write_config(tmp_path, dovecot.imap_port, smtp_server.port,
                          model_url=model_server.base_url)
    service = ServiceProcess(config).start()
    try:
        service.wait_connected()
        filler = fill(small_disk)
        sent = [owner_mail("With the figures", "Look at the attachment.",
                           attachments=[("figures.bin", "application/octet-stream",
                                         os.urandom(300_000))]),
                owner_mail("Second", "Say hello."), owner_mail("Third", "Say hello again.")]
        for raw in sent:
            dovecot.append(raw)
        [alarm] = smtp_server.wait_for(1, timeout=30)
        assert str(alarm.message()["Subject"]) == FULL_SUBJECT
        assert "Nothing is lost" in alarm.text() and str(small_disk) in alarm.text()
        service.wait_for_log("reconnecting", count=3)  # tried again, and again: no more mail
        assert len(smtp_server.messages) == 1
        assert all(DONE not in dovecot.flags(uid) for uid in dovecot.uids())
        assert service.store().tasks() == []
        filler.unlink()
        answers = smtp_server.wait_for(1 + 3, timeout=60)
        replied = {str(m.message()["In-Reply-To"]) for m in answers if m is not alarm}
        assert replied == {message_id_of(raw) for raw in sent}
        assert len(full_mails(smtp_server)) == 1
        wait_until(lambda: all(DONE in dovecot.flags(uid) for uid in dovecot.uids()), 30,
                   "the done keyword on all three")
        store = service.store()
        assert [outcome for _, _, outcome, _ in store.raw_outcomes()] == ["task"] * 3
        assert [t.state for t in store.tasks()] == ["done"] * 3
        assert store.audit_events("store.room")
        assert [m.subject for m in store.outbox(["sent"]) if m.kind == "notice"] == \
            [FULL_SUBJECT]  # recorded once there was room
        assert service.stop() == 0
    finally:
        service.kill()
