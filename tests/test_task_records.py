"""Progress and records read from the store: the step a running task is at, today's tasks and
the daily total, and a record that shows images and PDFs by what they are and never a fence id
(in-process, on a real database; the service end to end is in test_service_progress.py)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import text as sql

from mailagent.cli.status_view import as_json, plain_lines, take_snapshot
from mailagent.config import AgentSettings, OwnerSettings
from mailagent.content import fence
from mailagent.store import CommandWork, ReplyTarget, Store, Usage
from mailagent.tasks.commands import show_text, status_text
from mailagent.tasks.progress import day_report, progress_lines, running_progress
from mailagent.tasks.record import record_lines, task_record
from mailagent.tasks.toolbox import conversation_nonce
from tests.support.config import settings_for_tests
from tests.support.mail import MX, OWNER
from tests.support.tasks import add_task

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(3000)).decode()


def started(store: Store, instruction: str) -> int:
    task_id = add_task(store, instruction)
    [work] = store.claim_tasks(set(), 8, datetime.now(UTC))
    assert work.task_id == task_id
    return task_id


def test_the_step_is_the_tool_that_runs_now_or_the_approval_awaited(tmp_path: Path) -> None:
    store = Store.open(settings_for_tests(tmp_path).database_url)
    task_id = started(store, "make the chart")
    store.add_usage(task_id, Usage(input_tokens=900, output_tokens=100, cost_usd=0.02))
    [progress] = running_progress(store)
    assert (progress.turn, progress.doing) == (2, "waiting for the model")
    store.record_tool_decision(task_id, "toolu_1", "run_command",
                               {"command": "python3 make.py", "cwd": "charts"}, "allow",
                               "[commands] allow python3", "python3 is allowed")
    store.set_tool_call(task_id, "toolu_1", "started")
    [progress] = running_progress(store)
    assert (progress.turn, progress.doing) == (1, "running run_command python3 make.py")
    assert progress.task.cost_usd == 0.02 and progress.task.tokens == 1000
    store.set_tool_call(task_id, "toolu_1", "done", {"type": "tool_result", "content": "ok"})
    store.record_tool_decision(task_id, "toolu_2", "delete_file", {"path": "old.csv"}, "ask",
                               "folder ~/out", "delete needs approval")
    store.set_task_state(task_id, "waiting_approval", "delete_file needs approval")
    [progress] = running_progress(store)
    assert progress.doing == "waiting for your approval"
    assert [(s.name, s.state) for s in progress.tools] == [("run_command", "done"),
                                                          ("delete_file", "waiting")]
    for n in range(12):
        store.record_tool_decision(task_id, f"toolu_r{n}", "read_file", {"path": f"r{n}.txt"},
                                   "allow", "workspace", "")
    [progress] = running_progress(store)
    [tools] = [line for line in progress_lines(progress, datetime.now(UTC)) if "tools" in line]
    assert tools.startswith("  tools so far: 4 earlier, then read_file r2.txt (decided); ")
    assert tools.endswith("; read_file r11.txt (decided)")


def test_today_lists_each_outcome_duration_and_cost_and_the_total_against_the_cap(
        tmp_path: Path) -> None:
    settings = settings_for_tests(
        tmp_path, agent=AgentSettings(daily_cost_usd=3.0),
        owner=OwnerSettings((OWNER,), "authentication-results", (MX,), timezone="Europe/Paris"))
    store = Store.open(settings.database_url)
    old = started(store, "last week's task")
    store.add_usage(old, Usage(output_tokens=10, cost_usd=1.5))
    store.finish_task(old, "done", "answered")
    with store.session() as s:  # it ended two days ago
        s.execute(sql("UPDATE task SET updated_at = :at WHERE task_id = :id"),
                  {"at": datetime.now(UTC) - timedelta(days=2), "id": old})
    done = started(store, "summarise the reports")
    store.add_usage(done, Usage(output_tokens=10, cost_usd=0.25))
    store.finish_task(done, "done", "answered")
    failed = started(store, "convert the scans")
    store.add_usage(failed, Usage(output_tokens=10, cost_usd=0.5))
    store.finish_task(failed, "failed", "budget")
    never = add_task(store, "never ran")
    store.set_task_state(never, "cancelled", "cancelled by the owner")

    now = datetime.now(UTC)
    day = day_report(store, now, "Europe/Paris", 3.0)
    assert [(t.task_id, t.state) for t in day.tasks] == [(done, "done"), (failed, "failed"),
                                                         (never, "cancelled")]
    assert day.cost_usd == 0.75 and day.last_24h_usd == 0.75 and day.daily_cost_usd == 3.0
    assert day.since.utcoffset() == timedelta(0)
    assert day.since.astimezone(ZoneInfo("Europe/Paris")).hour == 0
    data = as_json(take_snapshot(store, settings))
    [first, second, third] = data["today"]["tasks"]
    assert first["duration_seconds"] is not None and first["cost_usd"] == 0.25
    assert (second["state"], second["cost_usd"]) == ("failed", 0.5)
    assert (third["started_at"], third["duration_seconds"]) == (None, None)
    assert data["service"] == {"running": False, "holder": None}
    lines = "\n".join(plain_lines(take_snapshot(store, settings)))
    assert f"#{third['task_id']} [main] cancelled, not started, $0.0000: never ran" in lines
    assert ("today: 3 task(s), $0.7500; last 24 hours $0.7500 of the daily limit $3.00 "
            "(agent.daily_cost_usd)") in lines
    assert "Service: not running" in lines
    mailed = status_text(store, settings)
    assert "**Today**" in mailed and f"- #{second['task_id']} [main] failed" in mailed


def test_a_record_shows_images_by_what_they_are_and_never_the_fence_id(tmp_path: Path) -> None:
    settings = settings_for_tests(tmp_path)
    store = Store.open(settings.database_url)
    task_id = started(store, "what is on this photo?")
    [conversation] = [c for c in store.conversations() if c.name == "main"]
    nonce = conversation_nonce(settings.data_dir, conversation.conversation_id)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG}}
    cid = conversation.conversation_id
    store.append_history(cid, task_id, "user", [
        {"type": "text", "text": fence("mail", "what is on this photo?", nonce)}, image])
    store.append_history(cid, task_id, "assistant", [
        {"type": "text", "text": f"I look at it (fence {nonce})."},
        {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "a.png"}}])
    store.record_tool_decision(task_id, "toolu_1", "read_file", {"path": "a.png"}, "allow",
                               "workspace", "the conversation's workspace")
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
        {"type": "text", "text": f'<data kind="tool-output" id="{nonce}">'}, image,
        {"type": "text", "text": f'</data id="{nonce}">'}]}
    store.set_tool_call(task_id, "toolu_1", "done", result)
    store.append_history(cid, task_id, "user", [result])
    store.finish_task(task_id, "done", "answered")

    record = task_record(store, task_id, datetime.now(UTC), settings.data_dir)
    assert record is not None
    shown = json.dumps(record) + "\n".join(record_lines(record))
    assert PNG[:200] not in shown and nonce not in shown and "<data" not in shown
    [turn] = record["turns"]
    assert turn["text"] == "I look at it (fence [hidden])."
    [call] = turn["tool_calls"]
    assert call["result"] == f"[image: image/png, {len(PNG) * 3 // 4} bytes]"
    assert (call["verdict"], call["rule"], call["state"]) == ("allow", "workspace", "done")
    assert record["instruction"] == "what is on this photo?"
    assert task_record(store, task_id + 1, datetime.now(UTC)) is None


def test_show_by_mail_without_a_number_needs_a_thread_and_names_a_missing_task(
        tmp_path: Path) -> None:
    settings = settings_for_tests(tmp_path)
    store = Store.open(settings.database_url)
    task_id = started(store, "tidy the folder")

    def show(argument: str, in_thread_of: int | None) -> str:
        reply = ReplyTarget(OWNER, "show", None, (), None, "main", in_thread_of)
        return show_text(store, CommandWork(1, "show", argument, None, "main", in_thread_of,
                                            reply), settings)

    assert "works as a reply in the thread of a task" in show("", None)
    assert show("", task_id).startswith(f"Task #{task_id} [main]: running")
    assert show(str(task_id), None) == show("", task_id)
    assert show("42", None) == "There is no task #42; reply `status` to see the tasks."
