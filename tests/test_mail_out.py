"""Mail out, end to end: a task mail gets exactly one threaded reply, commands answer by mail,
and the outbox sends once through SMTP trouble and restarts."""

from __future__ import annotations

import email
import time
from email.message import EmailMessage
from email.policy import default as default_policy
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mailagent.config import SmtpSettings
from mailagent.mail.notify import FileToSend, compose, new_message_id
from mailagent.store import ReplyTarget
from tests.support.dovecot import Dovecot
from tests.support.fixtures import MakeService
from tests.support.mail import AGENT, MX, OWNER, message_id_of, owner_mail
from tests.support.model_server import (
    ErrorReply,
    ModelServer,
    error,
    spend_limit,
    text,
    tool_use,
)
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import RecordedMail, SmtpServer


@pytest.fixture
def service(make_service: MakeService) -> ServiceProcess:
    return make_service(sent_folder="Sent")


def parsed(mail: RecordedMail) -> EmailMessage:
    message = email.message_from_bytes(mail.raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


VOID = ("meta", "br", "hr", "img", "link", "input")


class _Tags(HTMLParser):
    """Checks that every element is closed in order and collects attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.attributes: list[tuple[str, str, str | None]] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attributes += [(tag, name, value) for name, value in attrs]
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()


def test_a_task_mail_gets_exactly_one_threaded_reply_with_its_attachment(
        dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    payload = bytes(range(256)) * 40
    model_server.script(
        tool_use("read_file", {"path": "attachments/mail-1/a1.bin"}),
        tool_use("attach_file", {"path": "attachments/mail-1/a1.bin"}),
        text("## Done\n\nThe file is attached. ![x](http://evil.example/p.png?leak=1)"))
    task = owner_mail("[files] Send the data back", "Please send the file back.",
                      attachments=[("data.bin", "application/octet-stream", payload)])
    dovecot.append(task)
    service.start()
    [mail] = smtp_server.wait_for(1, timeout=20)
    time.sleep(1.0)
    assert len(smtp_server.messages) == 1, "more than one reply"
    reply = parsed(mail)
    assert mail.rcpt_tos == [OWNER]
    assert reply["To"] == OWNER and AGENT in reply["From"]
    assert reply["Subject"] == "Re: [files] Send the data back"
    assert reply["In-Reply-To"] == message_id_of(task)
    assert message_id_of(task) in reply["References"]
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["X-Mailagent-Task"] == "1"
    plain = reply.get_body(("plain",))
    html = reply.get_body(("html",))
    assert plain is not None and html is not None
    assert "The file is attached." in plain.get_content()
    assert "Task #1" in plain.get_content() and "tokens" in plain.get_content()
    tags = _Tags()
    tags.feed(html.get_content())
    assert not tags.open
    assert not [a for a in tags.attributes if a[1] in ("src", "href", "background")]
    assert "http://evil.example" not in " ".join(str(a) for a in tags.attributes)
    [attachment] = list(reply.iter_attachments())
    assert attachment.get_filename() == "a1.bin"
    assert attachment.get_content() == payload
    store = service.store()
    assert [m.state for m in store.outbox()] == ["sent"]
    service.stop()


def test_replying_to_the_reply_continues_the_conversation(
        dovecot: Dovecot, smtp_server: SmtpServer, service: ServiceProcess) -> None:
    service.start()
    dovecot.append(owner_mail("[garden] plan the beds"))
    [first] = smtp_server.wait_for(1, timeout=20)
    ours = parsed(first)["Message-ID"]
    dovecot.append(owner_mail("Re: plan the beds", "add tomatoes", in_reply_to=ours))
    second = smtp_server.wait_for(2, timeout=20)[1]
    assert parsed(second)["In-Reply-To"] != ours
    store = service.store()
    assert [t.conversation_name for t in store.tasks()] == ["garden", "garden"]
    # Our own reply arriving in the inbox (e.g. a copy) is never taken as a task.
    dovecot.append(first.raw)
    time.sleep(1.5)
    assert len(store.tasks()) == 2 and len(smtp_server.messages) == 2
    service.stop()


def test_spoofed_and_automatic_mail_is_never_answered(
        dovecot: Dovecot, smtp_server: SmtpServer, service: ServiceProcess) -> None:
    service.start().wait_connected()
    dovecot.append(owner_mail("status", "", auth=None))
    dovecot.append(owner_mail("help", "", auth=f"{MX}; dmarc=fail"))
    dovecot.append(owner_mail("Out of office", headers={"Auto-Submitted": "auto-replied"}))
    store = service.store()
    wait_until(lambda: len(store.raw_outcomes()) == 3
               and all(s == "processed" for _, s, _, _ in store.raw_outcomes()), 10, "intake")
    time.sleep(1.5)
    assert smtp_server.messages == []
    assert store.outbox() == []
    service.stop()


def test_status_help_and_memory_are_answered_by_mail_without_the_model(
        dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    service.start().wait_connected()
    dovecot.append(owner_mail("status", ""))
    dovecot.append(owner_mail("anything", "help"))
    dovecot.append(owner_mail("[taxes] memory", ""))
    replies = smtp_server.wait_for(3, timeout=20)
    bodies = {parsed(m)["Subject"]: parsed(m).get_body(("plain",)).get_content()  # type: ignore[union-attr]
              for m in replies}
    # The text part is clean text: the Markdown's marks are gone, its lists stay lists.
    assert bodies["Re: status"].splitlines()[:3] == ["Conversations", "", "- main: no tasks"]
    assert "cancel" in bodies["Re: anything"]
    assert not [body for body in bodies.values() if "**" in body or "`" in body]
    assert "I remember nothing in the conversation taxes." in bodies["Re: [taxes] memory"]
    assert model_server.message_requests == []
    service.stop()


def test_cancel_by_mail_stops_a_running_task_within_seconds(
        dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    model_server.delay_seconds = 60
    task = owner_mail("Think for a long time")
    dovecot.append(task)
    service.start()
    model_server.wait_for_requests(1, timeout=15)
    asked = time.monotonic()
    dovecot.append(owner_mail("Re: Think for a long time", "cancel",
                              in_reply_to=message_id_of(task)))
    store = service.store()
    wait_until(lambda: store.tasks()[0].state == "cancelled", 10, "the cancelled task")
    assert time.monotonic() - asked < 8
    [reply] = smtp_server.wait_for(1, timeout=10)
    assert "is being stopped" in parsed(reply).get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert len(model_server.message_requests) == 1
    service.stop()


def test_a_421_is_retried_and_sent_once_and_a_550_is_recorded_and_shown(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        service: ServiceProcess) -> None:
    smtp_server.respond_with.append("421 4.3.0 try again later")
    service.start()
    dovecot.append(owner_mail("first"))
    [sent] = smtp_server.wait_for(1, timeout=30)
    assert parsed(sent)["Subject"] == "Re: first"
    store = service.store()
    wait_until(lambda: [m.state for m in store.outbox()] == ["sent"], 10, "sent state")
    assert store.outbox()[0].attempts == 2
    smtp_server.respond_with.append("550 5.1.1 no such user")
    dovecot.append(owner_mail("second"))
    wait_until(lambda: [m.state for m in store.outbox()] == ["sent", "failed"], 20, "failed")
    assert "550" in store.outbox()[1].last_error
    service.stop()
    time.sleep(0.5)
    assert len(smtp_server.messages) == 1
    dovecot.append(owner_mail("status", ""))
    service.start()
    status = smtp_server.wait_for(2, timeout=20)[1]
    body = parsed(status).get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Mail that could not be sent" in body and "550" in body
    service.stop()


def test_a_restart_between_smtp_and_the_outbox_commit_does_not_send_twice(
        dovecot: Dovecot, smtp_server: SmtpServer, service: ServiceProcess) -> None:
    dovecot.create_folder("Sent")
    # The provider files what it sends in Sent, as Gmail and others do.
    smtp_server.on_message = lambda mail: dovecot.append(mail.raw, folder="Sent")
    dovecot.append(owner_mail("only once"))
    service.start(failpoint="after-smtp")
    assert service.wait_exit(timeout=30) == -9
    assert len(smtp_server.messages) == 1
    service.start()
    store = service.store()
    wait_until(lambda: [m.state for m in store.outbox()] == ["sent"], 15, "reconciled")
    time.sleep(1.0)
    assert len(smtp_server.messages) == 1
    assert "found in the Sent folder" in store.outbox()[0].last_error
    service.stop()


def approval_setup(tmp_path: Path, model_server: ModelServer, hours: float = 24) -> Path:
    folder = tmp_path / "records"
    folder.mkdir()
    target = folder / "old.txt"
    target.write_text("old records\n")
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "records.toml").write_text(
        f'[[folders]]\npath = "{folder}"\naccess = "write"\ndelete = "ask"\n')
    config = tmp_path / "mailagent.toml"
    config.write_text(config.read_text().replace("[owner]", f"[agent]\napproval_hours = {hours}"
                                                 "\n\n[owner]"))
    model_server.script(tool_use("delete_file", {"path": str(target)}), text("Deleted it."))
    return target


def body(mail: RecordedMail) -> str:
    return mail.text()


def test_approval_by_reply_deletes_into_the_trash_and_undo_brings_it_back(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    target = approval_setup(tmp_path, model_server)
    task = owner_mail("Clean up", "Delete the old records file.")
    dovecot.append(task)
    service.start()
    [question] = smtp_server.wait_for(1, timeout=20)
    assert f"delete {target}" in body(question)
    assert parsed(question)["In-Reply-To"] == message_id_of(task)
    ours = parsed(question)["Message-ID"]
    assert ours.startswith("<mailagent.approval.")
    store = service.store()
    assert store.tasks()[0].state == "waiting_approval"
    assert target.exists()
    # A forged approval (no authentication) changes nothing.
    dovecot.append(owner_mail("Re: Clean up", "approve", in_reply_to=ours, auth=None))
    time.sleep(2)
    assert target.exists() and store.tasks()[0].state == "waiting_approval"
    approve = owner_mail("Re: Clean up", "approve", in_reply_to=ours)
    dovecot.append(approve)
    mails = smtp_server.wait_for(3, timeout=20)
    texts = [body(m) for m in mails[1:]]
    assert any(f"Approved: delete {target}" in t for t in texts)
    assert any("Deleted it." in t for t in texts)
    assert not target.exists()
    trash = list((tmp_path / "data" / "trash").rglob("*old.txt"))
    assert len(trash) == 1 and trash[0].read_text() == "old records\n"
    assert store.tasks()[0].state == "done"
    # The same approval again (a replay) and a second approve settle nothing more.
    dovecot.append(approve)
    dovecot.append(owner_mail("Re: Clean up", "approve", in_reply_to=ours))
    fourth = smtp_server.wait_for(4, timeout=20)[3]
    assert "Nothing in this thread is waiting" in body(fourth)
    completion = next(m for m in mails[1:] if "Deleted it." in body(m))
    dovecot.append(owner_mail("Re: Clean up", "undo",
                              in_reply_to=parsed(completion)["Message-ID"]))
    undone = smtp_server.wait_for(5, timeout=20)[4]
    assert f"restored {target}" in body(undone)
    assert target.read_text() == "old records\n"
    service.stop()


def test_deny_stops_the_task_and_leaves_the_file(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    target = approval_setup(tmp_path, model_server)
    dovecot.append(owner_mail("Clean up", "Delete the old records file."))
    service.start()
    [question] = smtp_server.wait_for(1, timeout=20)
    dovecot.append(owner_mail("Re: Clean up", "deny",
                              in_reply_to=parsed(question)["Message-ID"]))
    reply = smtp_server.wait_for(2, timeout=20)[1]
    assert f"Denied: delete {target}" in body(reply)
    store = service.store()
    wait_until(lambda: store.tasks()[0].state == "cancelled", 5, "the stopped task")
    assert target.read_text() == "old records\n"
    assert len(model_server.message_requests) == 1
    service.stop()


def test_an_unanswered_approval_expires_as_a_denial(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    target = approval_setup(tmp_path, model_server, hours=0.0005)
    dovecot.append(owner_mail("Clean up", "Delete the old records file."))
    service.start()
    [question] = smtp_server.wait_for(1, timeout=20)
    notice = smtp_server.wait_for(2, timeout=20)[1]
    assert "No answer came in time" in body(notice)
    store = service.store()
    assert store.tasks()[0].state == "cancelled"
    dovecot.append(owner_mail("Re: Clean up", "approve",
                              in_reply_to=parsed(question)["Message-ID"]))
    late = smtp_server.wait_for(3, timeout=20)[2]
    assert "Nothing in this thread is waiting" in body(late)
    assert target.read_text() == "old records\n"
    service.stop()


def test_an_owner_mail_over_a_limit_is_kept_and_the_owner_told_but_a_stranger_is_not(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        service: ServiceProcess) -> None:
    config = tmp_path / "mailagent.toml"
    config.write_text(config.read_text().replace("[owner]", "[limits]\nmax_attachments = 1"
                                                 "\n\n[owner]"))
    files = [("a.txt", "text/plain", b"a"), ("b.txt", "text/plain", b"b")]
    big = owner_mail("Two files", "Here they are.", attachments=files)
    dovecot.append(big)
    dovecot.append(owner_mail("Two files", "x", attachments=files, auth=None))
    service.start()
    [notice] = smtp_server.wait_for(1, timeout=20)
    assert parsed(notice)["In-Reply-To"] == message_id_of(big)
    assert parsed(notice)["To"] == OWNER
    assert "2 attachments, over the limit of 1" in body(notice)
    time.sleep(1.5)
    assert len(smtp_server.messages) == 1
    store = service.store()
    assert store.tasks() == []
    assert len(dovecot.uids()) == 2  # both mails stay in the mailbox
    service.stop()


def test_a_receipt_is_sent_only_when_switched_on(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        service: ServiceProcess) -> None:
    config = tmp_path / "mailagent.toml"
    config.write_text(config.read_text().replace('from = "Mail Agent',
                                                 'send_receipts = true\nfrom = "Mail Agent'))
    task = owner_mail("Receipt please")
    dovecot.append(task)
    service.start()
    receipt, completion = smtp_server.wait_for(2, timeout=20)
    assert "Got it: this is task #1" in body(receipt)
    assert parsed(receipt)["In-Reply-To"] == message_id_of(task)
    assert "Task #1" in body(completion)
    service.stop()


def test_a_broken_policy_file_is_reported_to_the_owner_once(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        service: ServiceProcess) -> None:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "home.toml").write_text(
        '[[folders]]\npath = "/tmp"\naccess = "wrte"\n')
    dovecot.append(owner_mail("List my files"))
    dovecot.append(owner_mail("List them again"))
    service.start()
    mails = smtp_server.wait_for(3, timeout=20)
    time.sleep(1.5)
    notices = [m for m in smtp_server.messages if "policy file does not validate" in body(m)]
    assert len(notices) == 1 and len(smtp_server.messages) == 3
    notice = parsed(notices[0])
    assert notice["To"] == OWNER and notice["Auto-Submitted"] == "auto-replied"
    assert "home.toml" in body(notices[0]) and "line 3" in body(notices[0])
    assert not notice["Subject"].startswith("Re:")
    assert len(mails) == 3
    service.stop()


def budget_setup(tmp_path: Path, model_server: ModelServer) -> None:
    config = tmp_path / "mailagent.toml"
    config.write_text(config.read_text().replace("[owner]", "[agent]\nmax_turns = 2\n\n[owner]"))
    model_server.script(
        tool_use("write_file", {"path": "part1.txt", "content": "first half"}),
        tool_use("attach_file", {"path": "part1.txt"}, text="Half of it is written."))


def test_a_task_paused_at_its_budget_goes_on_after_continue(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    budget_setup(tmp_path, model_server)
    model_server.script(text("All done now."))
    dovecot.append(owner_mail("Long job"))
    service.start()
    [pause] = smtp_server.wait_for(1, timeout=20)
    assert "paused at its budget" in body(pause)
    assert "Half of it is written." in body(pause)
    assert len(model_server.message_requests) == 2
    dovecot.append(owner_mail("Re: Long job", "continue",
                              in_reply_to=parsed(pause)["Message-ID"]))
    mails = smtp_server.wait_for(3, timeout=20)
    assert any("goes on with one more budget" in body(m) for m in mails[1:])
    assert any("All done now." in body(m) for m in mails[1:])
    assert service.store().tasks()[0].state == "done"
    service.stop()


def test_a_paused_task_that_is_not_continued_ends_with_its_partial_outputs(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    budget_setup(tmp_path, model_server)
    dovecot.append(owner_mail("Long job"))
    service.start()
    [pause] = smtp_server.wait_for(1, timeout=20)
    dovecot.append(owner_mail("Re: Long job", "deny", in_reply_to=parsed(pause)["Message-ID"]))
    mails = smtp_server.wait_for(3, timeout=20)
    final = next(m for m in mails[1:] if "did not finish" in body(m))
    assert "budget reached and not continued" in body(final)
    [attachment] = list(parsed(final).iter_attachments())
    assert attachment.get_content() == "first half"
    assert service.store().tasks()[0].state == "failed"
    assert len(model_server.message_requests) == 2
    service.stop()


def test_a_model_outage_is_told_once_and_the_task_done_when_it_is_back(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    config = tmp_path / "mailagent.toml"
    config.write_text(config.read_text().replace("[owner]", "[agent]\nretry_after_seconds = 1"
                                                 "\n\n[owner]"))
    outage = error(529, "overloaded_error", "Overloaded")
    model_server.script(outage, outage, outage, text("Back and done."))
    dovecot.append(owner_mail("Do it when you can"))
    service.start()
    notice, done = smtp_server.wait_for(2, timeout=30)
    assert "is waiting: the model endpoint is busy or unreachable" in body(notice)
    assert "Back and done." in body(done)
    time.sleep(1)
    assert len(smtp_server.messages) == 2
    assert len(model_server.message_requests) == 4
    service.stop()


def test_a_copy_of_each_sent_mail_is_saved_in_sent_when_asked(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        service: ServiceProcess) -> None:
    dovecot.create_folder("Sent")
    config = tmp_path / "mailagent.toml"
    config.write_text(config.read_text().replace('from = "Mail Agent',
                                                 'save_copy = true\nfrom = "Mail Agent'))
    dovecot.append(owner_mail("Keep a copy"))
    service.start()
    [sent] = smtp_server.wait_for(1, timeout=20)
    [uid] = wait_until(lambda: dovecot.uids("Sent"), 10, "the copy in Sent")
    assert parsed(sent)["Message-ID"] in dovecot.fetch(uid, "Sent").decode()
    assert "\\Seen" in dovecot.flags(uid, "Sent")
    service.stop()


def _target() -> ReplyTarget:
    return ReplyTarget(OWNER, "Summarise my notes", "<task@example.com>", (), 1, "main", 7)


def _smtp() -> SmtpSettings:
    return SmtpSettings("127.0.0.1", 1, "none", f"Mail Agent <{AGENT}>")


def test_a_mail_whose_template_does_not_render_still_goes_out_as_plain_text() -> None:
    outbound = compose(_smtp(), _target(), "failure", "no-such-template.md.j2",
                       {"task_id": 7, "reason": "internal error: the disk is full",
                        "changes": ["created /a.txt"]})
    message = email.message_from_bytes(outbound.raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    text = message.get_content()
    assert message.get_content_type() == "text/plain"
    assert "could not write this failure mail as usual" in text
    assert "no-such-template.md.j2" in text and "mailagent check" in text
    assert "Task #7" in text and "the disk is full" in text and "created /a.txt" in text
    assert message["To"] == OWNER and message["In-Reply-To"] == "<task@example.com>"
    assert message["X-Mailagent-Task"] == "7" and message["Auto-Submitted"] == "auto-replied"


def test_a_file_name_with_a_line_break_is_attached_under_a_clean_name(tmp_path: Path) -> None:
    odd = tmp_path / "report\nBcc: x@evil.example.txt"
    odd.write_text("numbers")
    outbound = compose(_smtp(), _target(), "completion", "completion.md.j2",
                       {"task_id": 7, "tokens": 1, "cost": 0.0, "changes": [],
                        "workspace_changes": 0, "answer": "Here is the report.",
                        "undo_hint": False, "run_note": "",
                        "scheduled": []}, [FileToSend(odd, odd.read_bytes())])
    message = email.message_from_bytes(outbound.raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    [attached] = list(message.iter_attachments())
    assert attached.get_filename() == "report Bcc: x@evil.example.txt"
    assert attached.get_content() == "numbers"
    assert "Here is the report." in message.get_body(preferencelist=("plain",)).get_content()
    assert message["Bcc"] is None and message["To"] == OWNER


def test_a_subject_quoted_from_a_forward_is_text_in_the_html_part_never_markup() -> None:
    target = ReplyTarget(OWNER, 'Fwd: <img src="http://evil.example/p.png"> & more',
                         "<task@example.com>", (), 1, "main", 7)
    outbound = compose(_smtp(), target, "notice", "command.md.j2",
                       {"body": "Noted: **bold** and <b>raw</b>."})
    message = email.message_from_bytes(outbound.raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    html_part = message.get_body(preferencelist=("html",))
    assert html_part is not None
    html = html_part.get_content()
    assert "<img" not in html and "&lt;img src=" in html and "&amp; more" in html
    assert "<strong>bold</strong>" in html  # the Markdown still renders
    assert "<b>raw</b>" not in html  # and raw HTML in it stays text


@pytest.mark.parametrize("refusal", [
    spend_limit(),
    error(400, "invalid_request_error", "You have reached your specified API usage limits. "
          "You will regain access on 2027-01-01 at 00:00 UTC."),
    error(402, "billing_error", "Your credit balance is too low to access the Anthropic API."),
], ids=["tier-cap-429", "own-limit-400", "billing-402"])
def test_a_used_up_spend_limit_is_told_once_and_the_tasks_wait_instead_of_failing(
        dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess, refusal: ErrorReply) -> None:
    model_server.default = refusal
    dovecot.append(owner_mail("First thing"))
    dovecot.append(owner_mail("[other] Second thing"))  # another conversation: tried too
    service.start()
    [notice] = smtp_server.wait_for(1, timeout=30)
    store = service.store()
    waiting = wait_until(lambda: len([t for t in store.tasks(["queued"]) if t.reason]) == 2
                         and store.tasks(["queued"]), 20, "both tasks deferred")
    text = body(notice)
    assert "spend limit or is out of credit" in text and "Claude Console" in text
    assert "every 60 minutes" in text
    assert all("spend limit" in (t.reason or "") for t in waiting)
    time.sleep(2)  # no failure mail, no second notice, no retry every minute
    assert len(smtp_server.messages) == 1
    assert len(model_server.message_requests) == 2
    assert store.tasks(["failed"]) == []
    store.close()
    service.stop()


def test_message_ids_stay_unique_whoever_seeds_the_random_module() -> None:
    """Another library (or a test framework) may seed `random`; two mails composed in the same
    instant must still get two Message-IDs, or the outbox would take one for the other."""
    import random

    ids = set()
    for _ in range(50):
        random.seed(7)
        ids.add(new_message_id("Agent <agent@example.com>"))
    assert len(ids) == 50
    assert all(i.startswith("<") and i.endswith("@example.com>") for i in ids)


def test_a_reply_s_message_id_header_stays_on_one_line() -> None:
    outbound = compose(_smtp(), _target(), "notice", "command.md.j2", {"body": "ok"})
    line = next(x for x in outbound.raw.splitlines() if x.lower().startswith(b"message-id:"))
    assert line == f"Message-ID: {outbound.message_id}".encode()
