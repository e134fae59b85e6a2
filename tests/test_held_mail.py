"""Owner mail over the rate limit is held, never dropped (SECURITY.md S4, L6): a backlog of new
tasks all runs, replies to our mail over the limit wait with one notice an hour, `release` runs
them, held mail survives a restart and runs by itself as the hour allows, and an auto-responder
that answers all our mail cannot keep an exchange going."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailagent.config import LimitSettings
from mailagent.mail.mailbox import Fetched
from mailagent.mail.notify import compose
from mailagent.mail.threads import parse_command
from mailagent.service import Service
from mailagent.store import Store
from mailagent.tasks.commands import HELP
from tests.support.clock import FakeClock
from tests.support.config import settings_for_tests, write_config
from tests.support.dovecot import Dovecot
from tests.support.mail import OWNER, message_id_of, owner_mail
from tests.support.model_server import ModelServer
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import RecordedMail, SmtpServer


def notices(smtp: SmtpServer) -> list[RecordedMail]:
    return [m for m in smtp.messages if "held, not answered yet" in m.text()]


def answered(smtp: SmtpServer) -> set[str]:
    """The Message-IDs that our sent mail (other than notices of held mail) answers."""
    held = notices(smtp)
    return {str(m.message()["In-Reply-To"]) for m in smtp.messages
            if m.message()["In-Reply-To"] and m not in held}


def test_two_hundred_new_tasks_mailed_while_the_computer_was_off_are_all_answered(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    written = datetime.now(UTC) - timedelta(minutes=50)
    sent = [owner_mail(f"Task {n}", f"Do thing {n}.", date=written + timedelta(seconds=10 * n))
            for n in range(200)]
    for raw in sent:
        dovecot.append(raw)
    service = ServiceProcess(write_config(tmp_path, dovecot.imap_port, smtp_server.port,
                                          model_url=model_server.base_url)).start()
    try:
        smtp_server.wait_for(200, timeout=75)
        assert answered(smtp_server) == {message_id_of(raw) for raw in sent}
        store = service.store()
        assert store.held() == []
        assert [e for e in store.audit_events("intake.") if e.kind != "intake.duplicate"] == []
        assert service.stop() == 0
    finally:
        service.kill()


def start(tmp_path: Path, dovecot: Dovecot, smtp: SmtpServer, model: ModelServer
          ) -> ServiceProcess:
    config = write_config(tmp_path, dovecot.imap_port, smtp.port, model_url=model.base_url,
                          extra="[limits]\nmax_mails_per_hour = 3\n")
    return ServiceProcess(config).start()


def test_replies_over_the_limit_wait_with_one_notice_until_release_even_across_a_restart(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    task = owner_mail("Summarise the reports")
    dovecot.append(task)
    service = start(tmp_path, dovecot, smtp_server, model_server)
    try:
        [first] = smtp_server.wait_for(1, timeout=30)
        ours = str(first.message()["Message-ID"])
        replies = [owner_mail("Re: Summarise the reports", f"And now part {n}.",
                              in_reply_to=ours) for n in range(5)]
        for raw in replies:
            dovecot.append(raw)
        smtp_server.wait_for(1 + 3 + 1, timeout=30)  # three answered, one notice
        store = service.store()
        wait_until(lambda: len(store.held()) == 2, 10, "two held mails")
        [notice] = notices(smtp_server)
        assert "1 mail from you is held" in notice.text()
        assert "Reply release to run all of it now." in notice.text()
        late = owner_mail("Re: Summarise the reports", "One more part.", in_reply_to=ours)
        dovecot.append(late)
        wait_until(lambda: len(store.held()) == 3, 10, "the late reply held too")
        time.sleep(3)  # the held-mail pass runs every 2 s: nothing runs, no second notice
        assert len(smtp_server.messages) == 5 and len(notices(smtp_server)) == 1
        assert answered(smtp_server) == {message_id_of(r) for r in [task, *replies[:3]]}
        assert service.stop() == 0
        service = ServiceProcess(service.config_path).start()  # held mail is not lost
        service.wait_connected()
        assert len(service.store().held()) == 3
        assert "Held mail: 3" in status_lines(service)
        status = owner_mail("status", "")  # new mail: never held, answered without the model
        dovecot.append(status)
        [*_, status_reply] = smtp_server.wait_for(6, timeout=30)
        assert "Held mail: 3" in status_reply.text()
        release = owner_mail("Re: held", "release", in_reply_to=str(notice.message()["Message-ID"]))
        dovecot.append(release)
        smtp_server.wait_for(6 + 1 + 3, timeout=30)
        held_ids = {message_id_of(r) for r in [*replies[3:], late]}
        assert held_ids <= answered(smtp_server)
        reply = next(m for m in smtp_server.messages
                     if m.message()["In-Reply-To"] == message_id_of(release))
        assert "3 held mails from you now run" in reply.text()
        assert service.store().held() == []
        assert service.stop() == 0
    finally:
        service.kill()


def status_lines(service: ServiceProcess) -> str:
    result = subprocess.run([sys.executable, "-m", "mailagent", "status", "--config",
                             str(service.config_path)], capture_output=True, text=True,
                            env=service.env, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def in_process(tmp_path: Path, limit: int) -> tuple[Service, Store]:
    settings = settings_for_tests(tmp_path, limits=LimitSettings(max_mails_per_hour=limit))
    store = Store.open(settings.database_url)
    return Service(settings, store), store


def test_held_mail_runs_by_itself_oldest_first_once_the_hour_allows(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    clock = FakeClock(tmp_path, datetime.now(UTC))
    config = write_config(tmp_path, dovecot.imap_port, smtp_server.port,
                          model_url=model_server.base_url,
                          extra="[limits]\nmax_mails_per_hour = 2\n"
                                "[canary]\ninterval_minutes = 0\n")
    service = ServiceProcess(config)
    service.env.update(clock.env())
    service.start()
    try:
        task = owner_mail("Summarise the reports", date=clock.now())
        dovecot.append(task)
        [first] = smtp_server.wait_for(1, timeout=30)
        replies = [owner_mail("Re: Summarise the reports", f"Part {n}.", date=clock.now(),
                              in_reply_to=str(first.message()["Message-ID"])) for n in range(5)]
        for raw in replies:
            dovecot.append(raw)
        smtp_server.wait_for(1 + 2 + 1, timeout=30)  # two answered, then a notice
        store = service.store()
        wait_until(lambda: len(store.held()) == 3, 10, "three held mails")
        clock.set(clock.now() + timedelta(minutes=61))
        smtp_server.wait_for(4 + 2, timeout=30)  # as many as the hour allows
        time.sleep(3)
        assert [h.raw_message_id for h in store.held()] == \
            [i for i, _, outcome, _ in store.raw_outcomes() if outcome == "held"][-1:]
        assert answered(smtp_server) == {message_id_of(r) for r in [task, *replies[:4]]}
        clock.set(clock.now() + timedelta(minutes=61))
        smtp_server.wait_for(7, timeout=30)
        assert answered(smtp_server) == {message_id_of(r) for r in [task, *replies]}
        assert store.held() == [] and len(notices(smtp_server)) == 1
        assert service.stop() == 0
    finally:
        service.kill()


def finish_all(service: Service, store: Store) -> None:
    """A stand-in for the worker: every queued task is done and answered in its thread."""
    for work in store.claim_tasks(set(), 100, datetime.now(UTC)):
        target = store.reply_target(work.task_id)
        mail = compose(service.settings.smtp, target, "completion", "command.md.j2",
                       {"body": "Done."})
        store.finish_task(work.task_id, "done", "answered", "Done.", mail)


def auto_respond(service: Service, store: Store, replied: set[str], uid: list[int]) -> int:
    """An auto-responder on the owner's address, without Auto-Submitted: it answers every mail
    we send it. How many replies it wrote."""
    count = 0
    for mail in store.outbox():
        if mail.message_id in replied or mail.recipient != OWNER:
            continue
        replied.add(mail.message_id)
        uid[0] += 1
        raw = owner_mail(f"Re: {mail.subject}", "I am away this week.",
                         in_reply_to=mail.message_id)
        service.receive(Fetched("INBOX", 1, uid[0], raw, len(raw)))
        count += 1
    return count


def test_an_auto_responder_answering_all_our_mail_ends_held_with_one_notice(
        tmp_path: Path) -> None:
    service, store = in_process(tmp_path, limit=3)
    first = owner_mail("Summarise the reports", "Please.")
    service.receive(Fetched("INBOX", 1, 1, first, len(first)))
    replied: set[str] = set()
    uid, rounds, now = [1], 0, datetime.now(UTC)
    for hour in range(6):
        service.run_held(now + timedelta(hours=hour, minutes=1))
        while True:
            finish_all(service, store)
            if auto_respond(service, store, replied, uid) == 0:
                break
            rounds += 1
            assert rounds < 50, "the exchange does not stop"
    assert len(store.tasks()) == 1 + 3 + 1  # the task, the limit, one held mail that ran
    assert [m.kind for m in store.outbox()].count("held") == 1
    assert store.held() and not [h for h in store.held() if h.runs_by_itself]
    assert service.run_held(now + timedelta(hours=10)) == 0


def test_release_is_a_mail_command_listed_by_help() -> None:
    assert parse_command("Release") == ("release", "")
    assert "- `release`:" in HELP
