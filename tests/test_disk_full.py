"""A full disk or database is a stop, not a loss (SECURITY.md L1, L6): the owner gets one mail,
mail stays in the mailbox unmarked, and the service goes on by itself once there is room."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from mailagent.errors import StoreFullError, as_full
from mailagent.store import Store
from tests.support.mail import owner_mail


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
