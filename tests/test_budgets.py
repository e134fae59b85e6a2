"""Budgets that a hostile model or endpoint runs into (SECURITY.md R1), and an approval that
no longer matches the file it was given for (A1), through the worker and the real SDK."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.model_server import ModelServer, RecordedRequest, Reply, text, tool_use
from tests.support.tasks import add_task, make_settings, open_store, settle


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    (folder / "docs").mkdir(parents=True)
    (folder / "out").mkdir()
    (folder / "out" / "keep.txt").write_text("keep me\n")
    return folder


def test_the_daily_cost_cap_ends_the_next_task_without_asking_the_model(
        tmp_path: Path, model: ModelServer, home: Path) -> None:
    settings = make_settings(tmp_path, model, home, daily_cost_usd=1.0)
    store = open_store(settings)
    add_task(store, "expensive", conversation="a")
    model.script(text("Done, at a price.", usage={"input_tokens": 1_000_000}))  # $3
    settle(settings, store, home)
    add_task(store, "cheap", conversation="b")
    settle(settings, store, home)
    first, second = store.tasks()
    assert first.state == "done"
    assert second.state == "failed"
    assert "(agent.daily_cost_usd)" in (second.reason or "")
    assert len(model.message_requests) == 1


def test_the_task_cost_budget_pauses_a_task(
        tmp_path: Path, model: ModelServer, home: Path) -> None:
    settings = make_settings(tmp_path, model, home, max_task_cost_usd=0.5)
    store = open_store(settings)
    add_task(store, "costly")
    model.script(tool_use("list_files", {"path": "."}, usage={"input_tokens": 500_000}))
    settle(settings, store, home)
    [task] = store.tasks()
    assert task.state == "waiting_approval"  # paused: `continue` by mail grants one more
    assert "(agent.max_task_cost_usd)" in (task.reason or "")
    assert len(model.message_requests) == 1


def test_the_tool_call_budget_ends_a_task(
        tmp_path: Path, model: ModelServer, home: Path) -> None:
    settings = make_settings(tmp_path, model, home, max_tool_calls=3)
    store = open_store(settings)
    add_task(store, "wander")

    def wander(request: RecordedRequest) -> Reply:
        return tool_use("list_files", {"path": f"./{len(model.requests)}"})
    model.default = wander
    settle(settings, store, home)
    [task] = store.tasks()
    assert task.state == "failed"
    assert "3 tool calls (agent.max_tool_calls)" in (task.reason or "")
    assert len(model.message_requests) == 4


def test_an_approval_given_for_a_file_that_changed_since_deletes_nothing(
        tmp_path: Path, model: ModelServer, home: Path) -> None:
    policy = f'[[folders]]\npath = "{home / "out"}"\naccess = "write"\ndelete = "ask"\n'
    settings = make_settings(tmp_path, model, home, policy=policy)
    store = open_store(settings)
    add_task(store, "Delete keep.txt")
    model.script(tool_use("delete_file", {"path": "~/out/keep.txt"}), text("Handled."))
    settle(settings, store, home)
    [approval] = store.approvals()
    (home / "out" / "keep.txt").write_text("new and important\n")  # changed after the question
    assert store.settle_approval(approval.approval_id, "approved", "approved by the owner")
    settle(settings, store, home)
    assert (home / "out" / "keep.txt").read_text() == "new and important\n"
    [result] = model.message_requests[-1].tool_results
    assert result["is_error"] is True
    assert "the file changed after the owner approved" in str(result["content"])
    assert not store.settle_approval(approval.approval_id, "approved", "again")  # single use


def test_an_approved_move_of_a_file_that_changed_since_moves_nothing(
        tmp_path: Path, model: ModelServer, home: Path) -> None:
    """The question named the file as it was; the answer is bound to those bytes (A1)."""
    (home / "archive").mkdir()
    policy = (f'[[folders]]\npath = "{home / "out"}"\naccess = "write"\ndelete = "ask"\n\n'
              f'[[folders]]\npath = "{home / "archive"}"\naccess = "write"\n')
    settings = make_settings(tmp_path, model, home, policy=policy)
    store = open_store(settings)
    add_task(store, "Archive keep.txt")
    model.script(tool_use("move_file", {"source": "~/out/keep.txt",
                                        "destination": "~/archive/keep.txt"}), text("Handled."))
    settle(settings, store, home)
    [approval] = store.approvals()
    (home / "out" / "keep.txt").write_text("swapped for something else\n")
    assert store.settle_approval(approval.approval_id, "approved", "approved by the owner")
    settle(settings, store, home)
    assert (home / "out" / "keep.txt").read_text() == "swapped for something else\n"
    assert not (home / "archive" / "keep.txt").exists()
    [result] = model.message_requests[-1].tool_results
    assert result["is_error"] is True and "changed after the owner approved" in \
        str(result["content"])
