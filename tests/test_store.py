"""The store: migrations, exactly-once bookkeeping and the task state machine."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mailagent.errors import StoreError
from mailagent.store import MIGRATIONS, NewTask, Store
from mailagent.tasks.when import IDLE_LOOK_SECONDS, quiet_seconds
from tests.support.fixtures import on_both_databases


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store.open(database_url)
    yield store
    store.close()


def new_task(conversation: str = "main") -> NewTask:
    return NewTask(conversation_name=conversation, owner_address="o@example.com", subject="s",
                   message_id="<m1@example.com>", references=(), instruction="do it", data={})


@on_both_databases
def test_migrations_are_applied_once_and_recorded(database: str, database_url: str) -> None:
    first = Store.open(database_url)
    assert first.migrate() == []
    second = Store.open(database_url)
    assert second.migrate() == []
    second.close()
    with first.engine.connect() as connection:
        names = [r[0] for r in connection.exec_driver_sql(
            "SELECT name FROM migration ORDER BY name")]
        applied_at = connection.exec_driver_sql("SELECT max(applied_at) FROM migration").scalar()
        if database == "sqlite":
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert names == [name for name, _ in MIGRATIONS]
    assert names[:3] == ["0001_initial", "0002_agent", "0003_outbox"]
    assert first.engine.dialect.name == database
    # kept in UTC, whatever the server's time zone (the test PostgreSQL's is not UTC)
    applied = datetime.fromisoformat(str(applied_at)).replace(tzinfo=UTC)  # SQLite: text
    assert abs(applied - datetime.now(UTC)) < timedelta(minutes=5)
    first.close()


def test_a_database_that_cannot_be_opened_is_named_without_its_password() -> None:
    with pytest.raises(StoreError) as missing:
        Store.open("postgresql+pg8000://mailagent:s3cret@db.example.com/mailagent")
    assert "'postgresql+pg8000://mailagent:***@db.example.com/mailagent'" in str(missing.value)
    assert "pip install 'mailagent[postgres]'" in str(missing.value)
    with pytest.raises(StoreError) as unknown:
        Store.open("postgresql+nosuch://mailagent:s3cret@db.example.com/mailagent")
    assert "s3cret" not in str(unknown.value) and "mailagent:***@" in str(unknown.value)


@on_both_databases
def test_same_content_is_stored_once_and_advances_the_position(store: Store) -> None:
    kwargs = {"folder": "INBOX", "uidvalidity": 9, "raw": b"x", "size": 1, "content_key": "k",
              "message_id": None}
    first = store.save_raw(uid=4, **kwargs)  # type: ignore[arg-type]
    again = store.save_raw(uid=8, **kwargs)  # type: ignore[arg-type]
    assert first.is_new and not again.is_new
    assert first.raw_message_id == again.raw_message_id
    assert store.mailbox_position("INBOX") == (9, 8)
    assert store.unprocessed_raw_ids() == [first.raw_message_id]


@on_both_databases
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


@on_both_databases
def test_thread_lookup_finds_the_conversation_of_a_known_message(store: Store) -> None:
    task_id = store.record_task(None, new_task("taxes"), "test")
    match = store.find_thread(["<unknown@x>", "<m1@example.com>"])
    assert match is not None
    assert (match.conversation_name, match.task_id) == ("taxes", task_id)
    assert store.find_thread(["<unknown@x>"]) is None


CALL = {"type": "tool_use", "id": "toolu_old", "name": "read_file", "input": {"path": "a"}}


def test_the_repair_migration_answers_calls_an_older_database_left_open(tmp_path: Path) -> None:
    from sqlalchemy import text

    from mailagent.store.repair import LOST

    store = Store.open(f"sqlite:///{tmp_path / 'db.sqlite'}")
    first = store.record_task(None, new_task(), "test")
    cid = store.task_work(first).conversation_id
    with store.engine.begin() as connection:  # as an older version left them: not answered
        connection.execute(text("UPDATE task SET state = 'cancelled' WHERE task_id = :t"),
                           {"t": first})
    store.append_history(cid, first, "user", [{"type": "text", "text": "do it"}])
    store.append_history(cid, first, "assistant", [{"type": "text", "text": ""}, CALL])
    second = store.record_task(None, new_task(), "test")
    store.append_history(cid, second, "user", [{"type": "text", "text": "next"}])
    store.append_history(cid, second, "assistant", [{"type": "text", "text": "ok"}, dict(
        CALL, id="toolu_end")])
    store.set_task_state(second, "running")
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE task SET state = 'failed' WHERE task_id = :t"),
                           {"t": second})
        connection.execute(text("DELETE FROM migration WHERE name = :n"),
                           {"n": "0009_answer_open_tool_calls"})
    assert store.migrate() == ["0009_answer_open_tool_calls"]
    history = [(item.role, item.content) for item in store.history(cid)]
    assert history[1] == ("assistant", [CALL])  # the empty text is gone
    assert history[2][1][0] == {"type": "tool_result", "tool_use_id": "toolu_old",
                                "content": LOST, "is_error": True}
    assert history[2][1][1] == {"type": "text", "text": "next"}
    assert history[-1] == ("user", [{"type": "tool_result", "tool_use_id": "toolu_end",
                                     "content": LOST, "is_error": True}])


@on_both_databases
def test_a_task_ending_with_a_call_open_answers_it_in_the_history(store: Store) -> None:
    task_id = store.record_task(None, new_task(), "test")
    cid = store.task_work(task_id).conversation_id
    store.set_task_state(task_id, "running")
    store.append_history(cid, task_id, "assistant", [CALL])
    store.finish_task(task_id, "cancelled", "cancelled by the owner")
    [item] = [i for i in store.history(cid) if i.role == "user"]
    assert item.content == [{"type": "tool_result", "tool_use_id": "toolu_old", "is_error": True,
                             "content": "not run: the task was cancelled"}]


def test_the_gate_before_every_request_mends_any_history() -> None:
    from mailagent.store.repair import LOST, valid_messages

    messages = [{"role": "user", "content": [{"type": "text", "text": "do it"}]},
                {"role": "assistant", "content": [{"type": "text", "text": ""}, CALL]},
                {"role": "user", "content": [
                    {"type": "text", "text": "next"},
                    {"type": "tool_result", "tool_use_id": "toolu_gone", "content": "x"}]}]
    assert valid_messages(messages) == [
        messages[0],
        {"role": "assistant", "content": [CALL]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_old", "content": LOST,
             "is_error": True},
            {"type": "text", "text": "next"}]}]


@on_both_databases
def test_the_worker_learns_when_it_next_has_something_to_do_on_its_own(store: Store) -> None:
    # An idle service sleeps until then (at most IDLE_LOOK_SECONDS) instead of polling.
    now = datetime.now(UTC)
    assert store.next_task_event_at() is None
    assert quiet_seconds(None, now) == IDLE_LOOK_SECONDS
    first = store.record_task(None, new_task(), "t")
    second = store.record_task(None, new_task("other"), "t")
    [one, two] = store.claim_tasks(set(), 2, now)
    store.defer_task(one.task_id, now + timedelta(seconds=7), "busy")
    store.request_approval(two.task_id, "toolu_1", "token", "digest", "delete a.txt",
                           now + timedelta(seconds=3), "ask", None)
    assert {one.task_id, two.task_id} == {first, second}
    due = store.next_task_event_at()
    assert due is not None and abs((due - now).total_seconds() - 3) < 0.01
    assert 2.9 < quiet_seconds(due, now) < 3.1
    assert quiet_seconds(now + timedelta(hours=2), now) == IDLE_LOOK_SECONDS
    assert quiet_seconds(now - timedelta(seconds=5), now) < 0.1
