"""The service against a real Dovecot: pickup by IDLE, exactly once, and what may not pass."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mailagent.store import Store
from tests.support.config import write_config
from tests.support.dovecot import Dovecot
from tests.support.fixtures import MakeService
from tests.support.mail import MX, OWNER, message_id_of, owner_mail
from tests.support.model_server import ModelServer
from tests.support.proxy import SilentProxy
from tests.support.service import ServiceProcess, wait_until

DONE = "$MailagentDone"


@pytest.fixture
def service(make_service: MakeService) -> ServiceProcess:
    return make_service(smtp_port=1)  # replies go nowhere: these tests are about intake


def tasks(store: Store) -> list[tuple[str, str]]:
    return [(t.conversation_name, t.subject) for t in store.tasks()]


def wait_tasks(service: ServiceProcess, count: int, timeout: float = 20.0) -> list[tuple[str, str]]:
    store = service.store()
    try:
        return wait_until(lambda: len(tasks(store)) >= count and tasks(store), timeout,
                          f"{count} tasks; log:\n{service.log()}")
    finally:
        store.close()


def test_owner_mail_becomes_one_queued_task_picked_up_by_idle(
        dovecot: Dovecot, service: ServiceProcess) -> None:
    service.start().wait_connected()
    time.sleep(0.3)  # in IDLE now; polling is set to 600 s, so only IDLE can notice
    uid = dovecot.append(owner_mail("[reports] Summarise Q3"))
    assert wait_tasks(service, 1, timeout=5) == [("reports", "[reports] Summarise Q3")]
    store = service.store()
    task = wait_until(lambda: [t for t in store.tasks() if t.state == "done"], 10, "done")[0]
    assert task.owner_address == OWNER
    wait_until(lambda: DONE in dovecot.flags(uid), 5, "the done keyword")
    assert "\\Seen" not in dovecot.flags(uid)
    assert service.stop() == 0


def test_backlog_delivered_while_stopped_is_taken_once_across_restarts(
        dovecot: Dovecot, service: ServiceProcess) -> None:
    for n in range(3):
        dovecot.deliver(owner_mail(f"task {n}"))
    service.start()
    assert len(wait_tasks(service, 3)) == 3
    assert service.stop() == 0
    dovecot.append(owner_mail("task 3"))
    service.start()
    assert len(wait_tasks(service, 4)) == 4
    assert service.stop() == 0
    service.start().wait_connected()
    time.sleep(1)
    assert service.stop() == 0
    assert sorted(s for _, s in tasks(service.store())) == [f"task {n}" for n in range(4)]


def test_mail_arriving_while_a_backlog_is_taken_is_not_left_for_the_idle_renewal(
        dovecot: Dovecot, service: ServiceProcess) -> None:
    # The backlog keeps the first catch-up busy, so the next mail lands mid-command: the server
    # announces it in that command's reply, and IDLE (renewed only every 30 s here) never will.
    for n in range(30):
        dovecot.append(owner_mail(f"backlog {n}"))
    service.start().wait_connected()
    dovecot.append(owner_mail("during the catch-up"))
    subjects = {s for _, s in wait_tasks(service, 31, timeout=15)}
    assert "during the catch-up" in subjects
    assert service.stop() == 0


@pytest.mark.parametrize("failpoint", ["after-fetch", "after-save", "after-process"])
def test_a_kill_at_any_step_neither_loses_nor_repeats_a_task(
        dovecot: Dovecot, service: ServiceProcess, failpoint: str) -> None:
    uid = dovecot.append(owner_mail("[crash] only once"))
    service.start(failpoint=failpoint)
    assert service.wait_exit() == -9
    service.start()
    assert wait_tasks(service, 1) == [("crash", "[crash] only once")]
    wait_until(lambda: DONE in dovecot.flags(uid), 5, "the done keyword")
    service.stop()
    service.start().wait_connected()
    time.sleep(0.5)
    service.stop()
    assert len(service.store().tasks()) == 1


def test_a_uidvalidity_change_is_reconciled_by_content(tmp_path: Path, dovecot: Dovecot) -> None:
    dovecot.create_folder("Agent")
    process = ServiceProcess(write_config(tmp_path, dovecot.imap_port, 1,
                                          imap_extra='folder = "Agent"'))
    first = owner_mail("first")
    dovecot.append(first, folder="Agent")
    process.start()
    try:
        wait_tasks(process, 1)
        process.stop()
        before = dovecot.uidvalidity("Agent")
        dovecot.delete_folder("Agent")
        dovecot.create_folder("Agent")
        dovecot.append(first, folder="Agent")
        dovecot.append(owner_mail("second"), folder="Agent")
        assert dovecot.uidvalidity("Agent") != before
        process.start()
        wait_tasks(process, 2)
        process.wait_for_log("UIDVALIDITY of Agent changed")
        time.sleep(0.5)
        assert sorted(s for _, s in tasks(process.store())) == ["first", "second"]
    finally:
        process.kill()


SPOOFS = {
    "no-auth-results": owner_mail("spoof 1", auth=None),
    "dmarc-fail": owner_mail("spoof 2", auth=f"{MX}; dmarc=fail header.from=example.com"),
    "untrusted-authserv": owner_mail("spoof 3", auth="evil.example.net; dmarc=pass"),
    "forged-below-real": owner_mail("spoof 4", auth=f"{MX}; dmarc=fail",
                                    headers={"Authentication-Results": f"{MX}; dmarc=pass"}),
    "two-from": owner_mail("spoof 5", headers={"From": "<owner@example.com>"},
                           sender="<evil@attacker.net>"),
    "auto-reply": owner_mail("Out of office", headers={"Auto-Submitted": "auto-replied"}),
    "bounce": owner_mail("Undelivered", sender="MAILER-DAEMON@example.com"),
    "our-own": owner_mail("Re: done", headers={"X-Mailagent-Task": "1"}),
}


def test_spoofed_automatic_and_own_mail_creates_no_task_only_audit_rows(
        dovecot: Dovecot, service: ServiceProcess) -> None:
    service.start().wait_connected()
    for raw in SPOOFS.values():
        dovecot.append(raw)
    dovecot.append(owner_mail("the real one"))
    assert wait_tasks(service, 1) == [("main", "the real one")]
    store = service.store()
    wait_until(lambda: len(store.audit_events("intake.")) >= len(SPOOFS), 5, "audit rows")
    events = store.audit_events("intake.")
    assert {e.kind for e in events} <= {"intake.unauthenticated", "intake.loop"}
    assert len(events) == len(SPOOFS) and all(e.reason for e in events)
    assert [t.subject for t in store.tasks()] == ["the real one"]
    outcomes = [o for _, state, o, _ in store.raw_outcomes() if state == "processed"]
    assert outcomes.count("rejected") == len(SPOOFS)


def test_server_restart_and_dropped_connections_are_survived(
        dovecot: Dovecot, service: ServiceProcess) -> None:
    service.start().wait_connected()
    dovecot.append(owner_mail("before"))
    wait_tasks(service, 1)
    dovecot.stop()
    dovecot.start_again()
    service.wait_connected(count=2)
    dovecot.append(owner_mail("after restart"))
    wait_tasks(service, 2)
    dovecot.drop_connections()
    service.wait_connected(count=3)
    dovecot.append(owner_mail("after drop"))
    assert len(wait_tasks(service, 3)) == 3
    assert service.stop() == 0


def test_a_second_instance_on_the_same_data_refuses_to_start(
        dovecot: Dovecot, service: ServiceProcess, tmp_path: Path) -> None:
    service.start().wait_connected()
    second = ServiceProcess(service.config_path)
    second.log_path = tmp_path / "second.log"
    second.start()
    assert second.wait_exit() == 2
    assert "another mailagent is running" in second.log()
    assert service.stop() == 0


def test_replies_in_a_thread_continue_its_conversation(
        dovecot: Dovecot, service: ServiceProcess) -> None:
    service.start().wait_connected()
    first = owner_mail("[garden] plan the beds")
    dovecot.append(first)
    wait_tasks(service, 1)
    reply = owner_mail("Re: plan the beds", "add tomatoes", in_reply_to=message_id_of(first))
    dovecot.append(reply)
    dovecot.append(owner_mail("status", ""))
    assert wait_tasks(service, 2)[1] == ("garden", "Re: plan the beds")
    store = service.store()
    wait_until(lambda: store.commands(), 5, "the status command")
    assert [(c.name, c.conversation_name) for c in store.commands()] == [("status", "main")]


def test_a_silent_connection_drop_is_noticed_and_mail_still_arrives(
        tmp_path: Path, dovecot: Dovecot) -> None:
    proxy = SilentProxy(dovecot.imap_port)
    config = write_config(tmp_path, proxy.port, 1)
    config.write_text(config.read_text().replace("idle_renew_seconds = 30",
                                                 "idle_renew_seconds = 2")
                      .replace("timeout_seconds = 5", "timeout_seconds = 2"))
    service = ServiceProcess(config)
    try:
        service.start().wait_connected()
        time.sleep(0.5)  # in IDLE by now
        proxy.go_silent()
        dovecot.append(owner_mail("sent while the line was dead"))
        service.wait_connected(count=2)
        assert proxy.accepted >= 2
        assert wait_tasks(service, 1) == [("main", "sent while the line was dead")]
        assert "IMAP idle_done failed: timed out; reconnecting" in service.log()
    finally:
        service.kill()
        proxy.close()


def test_a_new_data_directory_does_not_run_again_mail_already_marked_done(
        tmp_path: Path, dovecot: Dovecot, model_server: ModelServer) -> None:
    """A reinstall, a new machine or a wiped data folder on the same mailbox (L6)."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    first = ServiceProcess(write_config(tmp_path / "old", dovecot.imap_port, 1,
                                        model_url=model_server.base_url))
    old_uid = dovecot.append(owner_mail("done last week"))
    first.start()
    try:
        wait_tasks(first, 1)
        wait_until(lambda: DONE in dovecot.flags(old_uid), 10, "the done keyword")
    finally:
        first.kill()
    dovecot.append(owner_mail("marked done elsewhere"), flags=(DONE,))
    dovecot.append(owner_mail("not done yet"))
    fresh = ServiceProcess(write_config(tmp_path / "new", dovecot.imap_port, 1,
                                        model_url=model_server.base_url))
    fresh.start()
    try:
        assert wait_tasks(fresh, 1) == [("main", "not done yet")]
        fresh.wait_connected()
        time.sleep(1)
        assert tasks(fresh.store()) == [("main", "not done yet")]
    finally:
        fresh.kill()


def test_mail_that_comes_between_the_catch_up_and_idle_is_announced_at_once(
        tmp_path: Path, dovecot: Dovecot) -> None:
    # IDLE only announces what arrives after it starts; the catch-up records what it fetched
    # before IDLE begins, and mail delivered meanwhile must not wait for the IDLE renewal.
    from mailagent.config import load_settings
    from mailagent.mail.mailbox import Mailbox

    config = write_config(tmp_path, dovecot.imap_port, 1)
    mailbox = Mailbox(load_settings(config, {"TEST_IMAP_PASSWORD": "agent-secret"}).imap)
    mailbox.connect()
    try:
        assert mailbox.uids_after(0) == []  # the catch-up's last command
        dovecot.append(owner_mail("between the catch-up and IDLE"))
        began = time.monotonic()
        assert mailbox.wait(10, threading.Event()) is True
        assert time.monotonic() - began < 5
        assert len(mailbox.uids_after(0)) == 1
    finally:
        mailbox.close()
