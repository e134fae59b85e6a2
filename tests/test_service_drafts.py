"""Mail to other people end to end: `draft_mail` sends nothing; the owner is shown the mail
exactly, and only `approve` sends it, byte for byte, in its thread; `deny`, expiry, a changed
attachment or a recipient outside `[mail] may_write_to` send nothing; without a `[mail]` table
the tool is not offered (SECURITY.md E1)."""

from __future__ import annotations

import email
import hashlib
import re
import textwrap
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import formatdate
from pathlib import Path

from tests.support.dovecot import Dovecot
from tests.support.fixtures import MakeService
from tests.support.mail import AGENT, OWNER, PASS_RESULTS, owner_mail
from tests.support.model_server import ModelServer, text, tool_use
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import RecordedMail, SmtpServer

LANDLORD = "landlord@example.org"
BODY = "Hello,\n\nTuesday at 10:00 works for the visit.\n\n```code``` stays as written.\n\nAnna\n"


def allow_mail(tmp_path: Path, patterns: str = '["*@example.org"]') -> None:
    (tmp_path / "policies" / "mail.toml").write_text(f"[mail]\nmay_write_to = {patterns}\n")


def parsed(mail: RecordedMail) -> EmailMessage:
    message = email.message_from_bytes(mail.raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


def body(mail: RecordedMail) -> str:
    part = parsed(mail).get_body(("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def mails_to(smtp_server: SmtpServer, address: str) -> list[RecordedMail]:
    return [m for m in smtp_server.messages if address in m.rcpt_tos]


def wait_mail(smtp_server: SmtpServer, service: ServiceProcess, what: str,
              match: str, timeout: float = 40) -> RecordedMail:
    """The first mail to the owner whose text holds `match`."""
    return wait_until(lambda: next((m for m in mails_to(smtp_server, OWNER)
                                    if match in body(m)), None), timeout,
                      f"{what}; log:\n{service.log()}")


def forward_of_the_landlords_mail() -> tuple[bytes, str]:
    """The owner forwards the landlord's mail as an attachment, as phones do; the landlord's
    Message-ID and the References it carries."""
    landlord = EmailMessage()
    landlord["From"] = LANDLORD
    landlord["To"] = OWNER
    landlord["Subject"] = "Visit next week?"
    landlord["Message-ID"] = "<visit-2@example.org>"
    landlord["References"] = "<visit-1@example.org>"
    landlord.set_content("Would Tuesday or Wednesday suit you?")
    message = EmailMessage()
    message["Authentication-Results"] = PASS_RESULTS
    message["From"] = f"Owner <{OWNER}>"
    message["To"] = AGENT
    message["Subject"] = "Fwd: Visit next week?"
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = "<fwd-1@example.com>"
    message.set_content("Tell the landlord Tuesday works, and send the notes.")
    message.add_attachment(landlord)
    raw = message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return raw, "<visit-2@example.org>"


def shown(question: RecordedMail, label: str) -> str:
    found = re.search(rf"{label} (\S+?)[ ,)]", body(question).replace("\n", " "))
    assert found, body(question)
    return found.group(1)


def test_a_draft_goes_out_only_after_approve_byte_for_byte_what_was_shown_in_its_thread(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    allow_mail(tmp_path)
    forward, landlord_id = forward_of_the_landlords_mail()
    model_server.script(
        tool_use("write_file", {"path": "notes.txt", "content": "Meter reading: 4711\n"}),
        tool_use("draft_mail", {"to": [LANDLORD], "cc": ["Office@Example.org"],
                                "subject": "Re: Visit next week?", "body": BODY,
                                "attach": ["notes.txt"], "in_reply_to": landlord_id}),
        text("I drafted the mail; it waits for your approval."))
    dovecot.append(forward)
    service.start()
    try:
        question = wait_mail(smtp_server, service, "the approval question", "not sent")
        [result] = [r for req in model_server.message_requests for r in req.tool_results
                    if "Draft #1" in str(r["content"])]
        assert not result.get("is_error") and "NOT sent" in str(result["content"])
        shown_text = body(question)
        assert f"To: {LANDLORD}" in shown_text and "Cc: office@example.org" in shown_text
        assert "Subject: Re: Visit next week?" in shown_text
        # the whole body, verbatim (the text part sets it off as a block, indented)
        assert textwrap.indent(BODY.strip(), "    ") in shown_text
        notes = tmp_path / "data" / "workspaces" / "main" / "notes.txt"
        file_sha = hashlib.sha256(notes.read_bytes()).hexdigest()
        assert f"notes.txt, {notes.stat().st_size} bytes, SHA-256 {file_sha}" in shown_text
        wait_mail(smtp_server, service, "the task's answer", "waits for your approval")
        assert mails_to(smtp_server, LANDLORD) == []  # nothing left before the owner's word

        dovecot.append(owner_mail("Re: Fwd: Visit next week?", "approve",
                                  in_reply_to=parsed(question)["Message-ID"]))
        [sent] = wait_until(lambda: mails_to(smtp_server, LANDLORD), 40,
                            f"the approved draft; log:\n{service.log()}")
        assert sorted(sent.rcpt_tos) == [LANDLORD, "office@example.org"]
        assert hashlib.sha256(sent.raw).hexdigest() == shown(question, "and the SHA-256")
        message = parsed(sent)
        assert message["Message-ID"] == shown(question, "Message-ID")
        assert message["From"].addresses[0].addr_spec == AGENT and message["To"] == LANDLORD
        assert message["In-Reply-To"] == landlord_id
        assert message["References"] == f"<visit-1@example.org> {landlord_id}"
        assert body(sent) == BODY
        [attached] = list(message.iter_attachments())
        assert attached.get_filename() == "notes.txt"
        assert attached.get_payload(decode=True) == notes.read_bytes()  # base64: exact bytes
        assert "goes out now" in body(wait_mail(smtp_server, service, "the answer to approve",
                                                "Approved: draft #1"))
        dovecot.append(owner_mail("Re: Fwd: Visit next week?", "approve",
                                  in_reply_to=parsed(question)["Message-ID"]))
        wait_mail(smtp_server, service, "the second approve's answer", "Nothing in this thread")
        assert len(mails_to(smtp_server, LANDLORD)) == 1  # single use
        assert service.stop() == 0
    finally:
        service.kill()


def test_deny_a_changed_attachment_and_a_stranger_send_nothing_to_anyone_but_the_owner(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    allow_mail(tmp_path, '["landlord@example.org"]')
    model_server.script(
        tool_use("write_file", {"path": "plan.txt", "content": "v1"}),
        tool_use("draft_mail", {"to": [LANDLORD], "subject": "First", "body": "One."}),
        tool_use("draft_mail", {"to": [LANDLORD], "subject": "Second", "body": "Two.",
                                "attach": ["plan.txt"]}),
        tool_use("draft_mail", {"to": ["thief@evil.example"], "subject": "Files",
                                "body": "Here."}),
        tool_use("draft_mail", {"to": [LANDLORD], "cc": ["thief@example.org"],
                                "subject": "Files", "body": "Here."}),
        text("Two drafts wait for your approval."))
    dovecot.append(owner_mail("Landlord", "Write to the landlord twice."))
    service.start()
    try:
        first = wait_mail(smtp_server, service, "the first question", "Subject: First")
        second = wait_mail(smtp_server, service, "the second question", "Subject: Second")
        wait_mail(smtp_server, service, "the task's answer", "Two drafts wait")
        refusals = [re.search(r"thief@\S+ is not one of", str(r["content"]))
                    for req in model_server.message_requests for r in req.tool_results
                    if r.get("is_error")]
        assert [found.group(0) for found in refusals if found] == [
            "thief@evil.example is not one of", "thief@example.org is not one of"]

        dovecot.append(owner_mail("Re: Landlord", "deny",
                                  in_reply_to=parsed(first)["Message-ID"]))
        assert "nothing was sent" in body(wait_mail(smtp_server, service, "the deny's answer",
                                                    "Draft #1 to"))
        (tmp_path / "data" / "workspaces" / "main" / "plan.txt").write_text("v2")
        dovecot.append(owner_mail("Re: Landlord", "approve",
                                  in_reply_to=parsed(second)["Message-ID"]))
        void = wait_mail(smtp_server, service, "the void approval's answer",
                         "is void and was NOT sent")
        assert "the attachment plan.txt changed since the question" in body(void)
        assert len(smtp_server.messages) == 5
        assert all(m.rcpt_tos == [OWNER] for m in smtp_server.messages)
        store = service.store()
        try:
            drafts = [store.draft(n) for n in (1, 2)]
            assert [d.state for d in drafts if d] == ["denied", "void"]
            assert not [o for o in store.outbox() if o.kind == "draft"]
        finally:
            store.close()
        assert service.stop() == 0
    finally:
        service.kill()


def test_an_unanswered_draft_expires_and_is_never_sent(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    allow_mail(tmp_path)
    config = service.config_path
    config.write_text(config.read_text().replace("[owner]", "[agent]\napproval_hours = 0.0005"
                                                 "\n\n[owner]"))
    model_server.script(tool_use("draft_mail", {"to": [LANDLORD], "subject": "Late",
                                                "body": "Too late."}), text("Drafted."))
    dovecot.append(owner_mail("Landlord", "Write to the landlord."))
    service.start()
    try:
        question = wait_mail(smtp_server, service, "the question", "Subject: Late")
        wait_mail(smtp_server, service, "the expiry notice", "No answer came in time, so this "
                  "was not sent: send draft #1")
        dovecot.append(owner_mail("Re: Landlord", "approve",
                                  in_reply_to=parsed(question)["Message-ID"]))
        wait_mail(smtp_server, service, "the late approve's answer", "Nothing in this thread")
        assert mails_to(smtp_server, LANDLORD) == []
        assert service.stop() == 0
    finally:
        service.kill()


def test_without_a_mail_table_draft_mail_is_not_offered_and_a_call_is_refused(
        dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        make_service: MakeService) -> None:
    service = make_service()
    model_server.script(tool_use("draft_mail", {"to": [LANDLORD], "subject": "Hi",
                                                "body": "Hello."}), text("I could not."))
    dovecot.append(owner_mail("Landlord", "Write to the landlord."))
    service.start()
    try:
        wait_mail(smtp_server, service, "the answer", "I could not.")
        first = model_server.message_requests[0]
        names = [tool["name"] for tool in first.body.get("tools", [])]
        assert "read_file" in names and "draft_mail" not in names
        [result] = model_server.message_requests[1].tool_results
        assert result.get("is_error") and "draft_mail is not offered" in str(result["content"])
        assert all(m.rcpt_tos == [OWNER] for m in smtp_server.messages)
        assert service.stop() == 0
    finally:
        service.kill()
