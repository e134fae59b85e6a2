"""Faults at the level of processes: `kill -9` at every step of a mail's path, then a restart.

Whatever step the service dies at, the mail ends as exactly one task, worked on once, answered
by exactly one reply that the SMTP server received once (SECURITY.md L1, L2, L4). The real
service runs as a subprocess against Dovecot, aiosmtpd and the scripted model; the SMTP server
files what it accepts in the Sent folder, as most providers do, so an unknown outcome can be
reconciled there.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot
from tests.support.fixtures import MakeService, on_both_databases
from tests.support.mail import message_id_of, owner_mail
from tests.support.model_server import ModelServer, text, tool_use
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import SmtpServer

DONE = "$MailagentDone"

# Every step of one mail's path, in order, each with a failpoint in the product.
KILL_POINTS = [
    "after-fetch",  # raw bytes in memory, nothing committed
    "after-save",  # raw bytes and content key committed, not processed
    "after-process",  # task committed, IMAP keyword not set yet
    "after-model",  # the model's tool call committed, the tool not run
    "mid-tool",  # the file written, the tool call not recorded
    "after-tool",  # the tool call recorded, the model not asked again
    "after-queue",  # the task done and its reply in the outbox, no attempt made
    "before-smtp",  # the reply marked `sending`, nothing handed to SMTP
    "after-smtp",  # SMTP accepted the reply (DATA answered 250), the outbox not updated
]


@pytest.fixture
def service(dovecot: Dovecot, smtp_server: SmtpServer,
            make_service: MakeService) -> ServiceProcess:
    dovecot.create_folder("Sent")
    smtp_server.on_message = lambda mail: dovecot.append(mail.raw, folder="Sent")
    return make_service(sent_folder="Sent")


@on_both_databases
@pytest.mark.parametrize("kill_point", KILL_POINTS)
def test_a_kill_at_any_step_ends_in_one_task_one_tool_run_and_one_reply(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess, kill_point: str) -> None:
    model_server.script(tool_use("write_file", {"path": "note.txt", "content": "written once"}),
                        text("The note is written."))
    task_mail = owner_mail("[notes] Write the note", "Write note.txt, please.")
    uid = dovecot.append(task_mail)
    service.start(failpoint=kill_point)
    assert service.wait_exit(timeout=40) == -9, service.log()
    assert f"failpoint {kill_point}: killing the process" in service.log()
    note = tmp_path / "data" / "workspaces" / "notes" / "note.txt"
    written_before = note.stat().st_mtime_ns if note.exists() else None

    service.start()
    store = service.store()
    try:
        wait_until(lambda: [t.state for t in store.tasks()] == ["done"]
                   and [m.state for m in store.outbox()] == ["sent"], 30,
                   f"the task done and its reply sent; log:\n{service.log()}")
        wait_until(lambda: DONE in dovecot.flags(uid), 10, "the done keyword")
        time.sleep(1.5)  # room for a duplicate to show up, if there were one
        [task] = store.tasks()
        [reply] = smtp_server.messages
        assert reply.rcpt_tos == ["owner@example.com"]
        assert message_id_of(task_mail).encode() in reply.raw
        assert b"The note is written." in reply.raw
        assert len(dovecot.uids("Sent")) == 1
        assert note.read_text() == "written once"
        if written_before is not None:
            assert note.stat().st_mtime_ns == written_before, "the write ran twice"
        assert not (tmp_path / "data" / "trash").exists(), "the file was replaced"
        assert store.task_work(task.task_id).tool_calls == 1
        assert len(model_server.message_requests) == 2, "a model turn was repeated"
        assert [(state, outcome) for _, state, outcome, _ in store.raw_outcomes()] == [
            ("processed", "task")]
    finally:
        store.close()
    assert service.stop() == 0
