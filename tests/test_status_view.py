"""`mailagent status` for scripts (`--json`, stable keys) and for people (tables on a terminal)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailagent.cli.status_view import as_json, plain_lines, take_snapshot
from mailagent.mail.mailbox import Fetched
from mailagent.service import Service
from mailagent.store import Store, mailbox_identity
from tests.support.config import settings_for_tests, write_config
from tests.support.dovecot import Dovecot
from tests.support.mail import owner_mail
from tests.support.model_server import ModelServer
from tests.support.service import ServiceProcess, wait_until

KEYS = {"conversations", "tasks", "schedules", "approvals", "outbox", "commands", "connectors",
        "refusals", "inbound", "held", "halt", "duplicates", "gave_up", "running", "today",
        "service"}


@pytest.fixture
def served(tmp_path: Path, dovecot: Dovecot, model_server: ModelServer
           ) -> Iterator[ServiceProcess]:
    """A service that has done one owner task and refused one stranger's mail, then stopped."""
    service = ServiceProcess(write_config(tmp_path, dovecot.imap_port, 1,
                                          model_url=model_server.base_url))
    dovecot.append(owner_mail("[home] fix the boiler schedule"))
    dovecot.append(owner_mail("hi", sender="Stranger <stranger@example.net>"))
    service.start()
    try:
        store = service.store()
        wait_until(lambda: len(store.raw_outcomes()) == 2
                   and [t.state for t in store.tasks()] == ["done"], 20, "intake and the task")
    finally:
        service.stop()
    yield service


def test_status_json_has_the_stable_keys(served: ServiceProcess) -> None:
    result = subprocess.run([sys.executable, "-m", "mailagent", "status", "--json", "--config",
                             str(served.config_path)], capture_output=True, text=True,
                            env=served.env, timeout=60)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == KEYS
    assert data["conversations"] == [{"name": "home", "task_counts": {"done": 1}}]
    [task] = data["tasks"]
    assert set(task) == {"task_id", "conversation", "state", "subject", "owner", "created_at",
                         "reason"}
    assert (task["conversation"], task["state"], task["subject"], task["owner"]) == \
        ("home", "done", "[home] fix the boiler schedule", "owner@example.com")
    assert task["created_at"].startswith("20")
    refusals = [(r["kind"], r["reason"]) for r in data["refusals"]]
    assert ("intake.unauthenticated", "sender is not an owner address") in refusals
    assert data["schedules"] == [] and data["approvals"] == [] and data["commands"] == []
    assert data["held"] == [] and data["halt"] is None
    assert data["duplicates"] == [] and data["gave_up"] == []
    assert data["running"] == [] and data["service"] == {"running": False, "holder": None}
    [today] = data["today"]["tasks"]
    assert (today["task_id"], today["state"]) == (task["task_id"], "done")
    assert set(today) == {"task_id", "conversation", "state", "subject", "started_at",
                          "ended_at", "duration_seconds", "cost_usd"}
    assert today["duration_seconds"] >= 0 and today["cost_usd"] == data["today"]["cost_usd"] > 0
    assert data["today"]["daily_cost_usd"] == 20.0


def test_status_shows_mail_seen_twice_and_mail_given_up(tmp_path: Path) -> None:
    """Mail taken in but not acted on is not hidden: a second copy of a mail already seen,
    and a mail whose processing failed three times, each with the number it is kept under."""
    settings = settings_for_tests(tmp_path)
    store = Store.open(settings.database_url)
    service = Service(settings, store)
    raw = owner_mail("[home] water the plants")
    for uid in (1, 2):  # the same mail twice in the mailbox (a client saved it again)
        service.receive(Fetched("INBOX", 7, uid, raw, len(raw)))
    crashing = owner_mail("this one crashed the service every time")
    saved = store.save_raw(folder="INBOX", uidvalidity=7, uid=3, raw=crashing,
                           size=len(crashing), content_key="k3", message_id=None)
    for _ in range(3):  # three starts that died while processing it
        store.begin_processing(saved.raw_message_id)
    service.process_pending()

    snap = take_snapshot(store)
    data = as_json(snap)
    [duplicate] = data["duplicates"]
    assert (duplicate["uid"], duplicate["raw_message_id"]) == (2, 1)
    [gave_up] = data["gave_up"]
    assert (gave_up["raw_message_id"], gave_up["reason"]) == (saved.raw_message_id,
                                                               "gave up after 3 attempts")
    assert all(r["kind"] != "intake.gave_up" for r in data["refusals"])
    text = "\n".join(plain_lines(snap))
    assert "Duplicates (seen before, not acted on again):" in text
    assert "raw #1 uid 2" in text
    assert f"raw #{saved.raw_message_id}: gave up after 3 attempts" in text


def test_status_names_the_service_of_another_computer_that_holds_the_mailbox(
        tmp_path: Path) -> None:
    """One database, the mailbox's service on another computer: this one runs nothing, and
    says who watches the mailbox rather than "not running"."""
    settings = settings_for_tests(tmp_path)
    store = Store.open(settings.database_url)
    snap = take_snapshot(store, settings)
    assert as_json(snap)["service"] == {"running": False, "holder": None}
    assert "Service: not running (start it with `mailagent run`" in "\n".join(plain_lines(snap))
    elsewhere = tmp_path / "laptop-data"  # the other service's data directory
    mailbox = mailbox_identity(settings.imap.host, settings.imap.username, settings.imap.folder)
    with store.claim_mailbox(mailbox, elsewhere, lambda _why: None):
        snap = take_snapshot(store, settings)
    holder = as_json(snap)["service"]["holder"]
    assert as_json(snap)["service"]["running"] is False
    assert holder["data_dir"] == str(elsewhere.resolve()) and holder["pid"] == os.getpid()
    assert holder["since"].startswith("20")
    text = "\n".join(plain_lines(snap))
    assert "Service: not running here; the mailbox is watched by a service on host " in text
    assert f"data_dir {elsewhere.resolve()}" in text
    store.close()


def read_terminal(command: list[str], env: dict[str, str]) -> str:
    """Run `command` with its stdout on a pseudo-terminal, as in a person's shell."""
    master, slave = pty.openpty()
    process = subprocess.Popen(command, stdout=slave, stderr=subprocess.DEVNULL, env=env)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert process.wait(60) == 0
    return b"".join(chunks).decode("utf-8", errors="replace")


def test_status_on_a_terminal_is_tables_with_the_same_facts(served: ServiceProcess) -> None:
    env = {**served.env, "COLUMNS": "160", "NO_COLOR": "1", "TERM": "xterm"}
    text = read_terminal([sys.executable, "-m", "mailagent", "status", "--config",
                          str(served.config_path)], env)
    for title in ("Conversations", "Tasks", "Schedules", "Waiting for your approval", "Outbox",
                  "Commands waiting", "Recent refusals", "Running now", "Today (1 task(s)",
                  "Service: not running"):
        assert title in text
    assert "│" in text or "┃" in text  # drawn as tables, not lines
    rows = [line for line in text.splitlines() if "home" in line]
    assert any("1 done" in row for row in rows)
    assert any("[home] fix the boiler schedule" in row and "owner@example.com" in row
               for row in rows)
    assert "intake.unauthenticated" in text and "sender is not an owner address" in text
