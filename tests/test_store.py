"""The store: migrations, exactly-once bookkeeping and the task state machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailagent.errors import StoreError
from mailagent.store import MIGRATIONS, NewTask, Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(f"sqlite:///{tmp_path / 'db.sqlite'}")


def new_task(conversation: str = "main") -> NewTask:
    return NewTask(conversation_name=conversation, owner_address="o@example.com", subject="s",
                   message_id="<m1@example.com>", references=(), instruction="do it", data={})


def test_migrations_are_applied_once_and_recorded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    first = Store.open(url)
    assert first.migrate() == []
    with first.engine.connect() as connection:
        names = [r[0] for r in connection.exec_driver_sql("SELECT name FROM migration")]
        mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
    assert names == [name for name, _ in MIGRATIONS]
    assert names[:3] == ["0001_initial", "0002_agent", "0003_outbox"]
    assert mode == "wal"


def test_same_content_is_stored_once_and_advances_the_position(store: Store) -> None:
    kwargs = {"folder": "INBOX", "uidvalidity": 9, "raw": b"x", "size": 1, "content_key": "k",
              "message_id": None}
    first = store.save_raw(uid=4, **kwargs)  # type: ignore[arg-type]
    again = store.save_raw(uid=8, **kwargs)  # type: ignore[arg-type]
    assert first.is_new and not again.is_new
    assert first.raw_message_id == again.raw_message_id
    assert store.mailbox_position("INBOX") == (9, 8)
    assert store.unprocessed_raw_ids() == [first.raw_message_id]


def test_a_task_moves_only_along_the_state_machine(store: Store) -> None:
    task_id = store.record_task(None, new_task(), "test")
    store.set_task_state(task_id, "running")
    store.set_task_state(task_id, "waiting_approval")
    store.set_task_state(task_id, "running")
    store.set_task_state(task_id, "done")
    with pytest.raises(StoreError, match="cannot go from done to running"):
        store.set_task_state(task_id, "running")
    kinds = [e.kind for e in store.audit_events("task.")]
    assert kinds[0] == "task.done" and "task.queued" in kinds


def test_thread_lookup_finds_the_conversation_of_a_known_message(store: Store) -> None:
    task_id = store.record_task(None, new_task("taxes"), "test")
    match = store.find_thread(["<unknown@x>", "<m1@example.com>"])
    assert match is not None
    assert (match.conversation_name, match.task_id) == ("taxes", task_id)
    assert store.find_thread(["<unknown@x>"]) is None
