"""What a task is doing and what it did, asked of a running service: `status` (the mail and
`mailagent status --json`) shows a running task's turn and step, its tools so far with their
paths, the files it changed, its elapsed time and its cost so far, and today's tasks with their
outcome, duration and cost against `agent.daily_cost_usd`; `show N` (the mail and the command)
shows a finished task's tool call with its policy decision and the file it changed; `history
--json` lists the tasks. Nothing is mailed unasked."""

from __future__ import annotations

import email
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from tests.support.dovecot import Dovecot
from tests.support.fixtures import MakeService
from tests.support.mail import OWNER, owner_mail
from tests.support.model_server import ModelServer, RecordedRequest, Reply, text, tool_use
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import RecordedMail, SmtpServer

NOTES = "Meter reading: 4711\n" * 20  # longer than a record shows of an input


def held_until(gate: threading.Event, reply: Reply) -> Callable[[RecordedRequest], Reply]:
    """A model request that hangs until the test sets `gate`, then gets `reply`."""
    def answer(_request: RecordedRequest) -> Reply:
        if not gate.wait(90):
            raise AssertionError("the test never let the held request go")
        return reply
    return answer


def body(mail: RecordedMail) -> str:
    message = email.message_from_bytes(mail.raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def answer_to(smtp_server: SmtpServer, service: ServiceProcess, subject: str) -> str:
    """The text of the reply to the owner's mail `subject`."""
    mail = wait_until(lambda: next((m for m in smtp_server.messages if OWNER in m.rcpt_tos
                                    and f"Re: {subject}" in str(m.raw[:4000])), None), 40,
                      f"the answer to {subject!r}; log:\n{service.log()}")
    return body(mail)


def mailagent(service: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "mailagent", *args, "--config",
                             str(service.config_path)], capture_output=True, text=True,
                            env=service.env, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def status_json(service: ServiceProcess) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(mailagent(service, "status", "--json").stdout)
    return data


def test_status_shows_what_a_running_task_did_so_far_and_show_n_what_it_did(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        make_service: MakeService) -> None:
    service = make_service(extra="[agent]\ndaily_cost_usd = 7.5\n")
    gate = threading.Event()
    model_server.script(
        tool_use("write_file", {"path": "notes.txt", "content": NOTES}),
        held_until(gate, text("The notes are written.")))
    dovecot.append(owner_mail("Write my notes", "Write the meter reading into notes.txt."))
    service.start()
    try:
        store = service.store()
        wait_until(lambda: len(model_server.message_requests) >= 2, 40,
                   f"the second model request; log:\n{service.log()}")
        time.sleep(1.2)  # the task has run for more than a second
        data = status_json(service)
        [running] = data["running"]
        assert (running["task_id"], running["state"], running["turn"]) == (1, "running", 2)
        assert running["doing"] == "waiting for the model"
        assert running["tools"] == [{"name": "write_file", "target": "notes.txt",
                                     "verdict": "allow", "state": "done"}]
        notes = tmp_path / "data" / "workspaces" / "main" / "notes.txt"
        assert running["files_changed"] == [{"op": "created", "path": str(notes)}]
        assert running["elapsed_seconds"] >= 1.0
        so_far = store.task_work(1)
        cost_so_far = so_far.cost_usd
        assert cost_so_far > 0 and running["cost_usd"] == round(cost_so_far, 6)
        assert running["tokens"] == so_far.tokens > 0
        assert data["service"]["running"] is True
        assert service.process is not None
        assert data["service"]["holder"]["pid"] == service.process.pid  # the mailbox's holder
        assert smtp_server.messages == []  # nothing is mailed unasked

        dovecot.append(owner_mail("status", "status"))
        answer = answer_to(smtp_server, service, "status")
        assert "#1 [main] Write my notes" in answer
        assert "turn 2: waiting for the model" in answer
        assert "tools so far: write_file notes.txt (done)" in answer
        assert f"files changed: created {notes}" in answer
        assert "running for " in answer
        assert f"cost so far ${cost_so_far:.4f}, {so_far.tokens} tokens" in answer
        assert "of the daily limit $7.50 (agent.daily_cost_usd)" in answer
        assert NOTES.strip() not in answer  # what the tool wrote is not shown

        gate.set()
        wait_until(lambda: [t.state for t in store.tasks()] == ["done"], 40,
                   f"the task's end; log:\n{service.log()}")
        wait_until(lambda: any("The notes are written." in body(m)
                               for m in smtp_server.messages), 40, "the completion mail")
        cost = store.task_work(1).cost_usd
        data = status_json(service)
        assert data["running"] == []
        [today] = data["today"]["tasks"]
        assert (today["task_id"], today["state"]) == (1, "done")
        assert today["duration_seconds"] >= 1.0 and today["cost_usd"] == round(cost, 6)
        assert data["today"]["cost_usd"] == round(cost, 6)
        assert data["today"]["daily_cost_usd"] == 7.5

        record = json.loads(mailagent(service, "show", "1", "--json").stdout)
        assert record["instruction"] == "Write the meter reading into notes.txt."
        first, second = record["turns"]
        [call] = first["tool_calls"]
        assert (call["name"], call["target"], call["verdict"], call["state"]) == \
            ("write_file", "notes.txt", "allow", "done")
        assert call["rule"] and call["input"]["content"] == f"<{len(NOTES)} characters>"
        assert call["change"] == {"op": "created", "path": str(notes)}
        assert second["text"] == "The notes are written." and second["tool_calls"] == []
        assert record["files_changed"] == [{"op": "created", "path": str(notes)}]
        assert [(m["kind"], m["recipient"]) for m in record["mails"]] == [("completion", OWNER)]
        assert record["usage"]["cost_usd"] == round(cost, 6)
        assert record["usage"]["turns"] == 2 and record["usage"]["tool_calls"] == 1
        nonce_key = (tmp_path / "data" / "fence.key").read_bytes()
        assert nonce_key and 'id="' not in json.dumps(record)  # no fence id is shown

        shown = mailagent(service, "show", "1").stdout
        assert f"- write_file notes.txt: allow by {call['rule']}, done" in shown
        assert f"- created {notes}" in shown and "- completion to owner@example.com" in shown

        dovecot.append(owner_mail("show 1", "show 1"))
        answer = answer_to(smtp_server, service, "show 1")
        assert f"write_file notes.txt: allow by {call['rule']}, done" in answer
        assert f"created {notes}" in answer and "Your words:" in answer

        missing = subprocess.run([sys.executable, "-m", "mailagent", "show", "99", "--config",
                                  str(service.config_path)], capture_output=True, text=True,
                                 env=service.env, timeout=60)
        assert missing.returncode == 2 and missing.stdout == ""
        assert "there is no task #99" in missing.stderr and "mailagent history" in missing.stderr

        [listed] = json.loads(mailagent(service, "history", "--json").stdout)
        assert (listed["task_id"], listed["conversation"], listed["state"]) == \
            (1, "main", "done")
        assert listed["subject"] == "Write my notes" and listed["cost_usd"] == round(cost, 6)
        assert listed["duration_seconds"] >= 1.0 and listed["created_at"].startswith("20")
        listing = mailagent(service, "history", "--limit", "5").stdout
        assert listing.startswith("#1 [main] done, ") and listing.rstrip().endswith(
            ": Write my notes")
    finally:
        gate.set()
        service.stop()


def test_status_names_the_command_that_runs_now_and_history_the_cancelled_task(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        make_service: MakeService) -> None:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "commands.toml").write_text(
        '[commands]\nallow = ["sh"]\ntimeout_seconds = 60\n')
    service = make_service()
    command = "sh -c '/bin/sleep 917'"
    model_server.script(tool_use("run_command", {"command": command}))
    task = owner_mail("Long job", "Run the long job.")
    dovecot.append(task)
    service.start()
    try:
        wait_until(lambda: running_in_proc("sleep 917"), 40,
                   f"the command to start; log:\n{service.log()}")
        [running] = status_json(service)["running"]
        assert (running["turn"], running["doing"]) == (1, f"running run_command {command}")
        assert running["tools"] == [{"name": "run_command", "target": command,
                                     "verdict": "allow", "state": "started"}]
        assert running["files_changed"] == []

        message = email.message_from_bytes(task, policy=default_policy)
        dovecot.append(owner_mail("Re: Long job", "cancel", in_reply_to=message["Message-ID"]))
        store = service.store()
        wait_until(lambda: [t.state for t in store.tasks()] == ["cancelled"], 30,
                   f"the cancel; log:\n{service.log()}")
        [listed] = json.loads(mailagent(service, "history", "--json").stdout)
        assert (listed["task_id"], listed["state"]) == (1, "cancelled")
        assert listed["ended_at"] is not None
        [turn] = json.loads(mailagent(service, "show", "1", "--json").stdout)["turns"]
        [call] = turn["tool_calls"]
        assert (call["name"], call["target"], call["state"]) == ("run_command", command,
                                                                 "unfinished")
        [today] = status_json(service)["today"]["tasks"]
        assert today["state"] == "cancelled" and today["duration_seconds"] is not None
    finally:
        service.kill()


def running_in_proc(marker: str) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False
