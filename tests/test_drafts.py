"""Whom drafts may address, as tables, and the send step's rule with a real store, the real
Postman and a real SMTP server: a hijacked model that gets a row into the outbox by any path
still reaches no one but the owner unless the row is a draft the owner approved, byte for byte
(SECURITY.md E1, S3)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailagent.bell import Bell
from mailagent.errors import PolicyError
from mailagent.mail.drafts import compose_draft, draft_digest, envelope_of
from mailagent.mail.notify import Postman
from mailagent.policy import decide_recipients, explain_recipient, load_policy
from mailagent.store import DraftQuestion, NewDraft, NewTask, Outbound, OutboxView, Store
from mailagent.store.tables import OutboxRow
from tests.support.config import settings_for_tests
from tests.support.smtp import SmtpServer

OWN = frozenset({"owner@example.com", "agent@example.com"})


def policy_with(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "mail.toml").write_text(text)
    return folder


@pytest.mark.parametrize(("patterns", "address", "verdict"), [
    ('["*@example.org"]', "landlord@example.org", "allow"),
    ('["*@example.org"]', "Landlord@EXAMPLE.org", "allow"),  # the lower-cased whole address
    ('["*@example.org"]', "Anna <anna@example.org>", "allow"),
    ('["*@example.org"]', "x@example.org.evil.example", "deny"),
    ('["*@example.org"]', "x@sub.example.org", "deny"),
    ('["*@*.example.org"]', "x@sub.example.org", "allow"),
    ('["landlord@example.org"]', "landlord2@example.org", "deny"),
    ('["*@example.org"]', "a@example.org, b@evil.example", "deny"),  # two mailboxes in one
    ('["*@example.org"]', "a@example.org\r\nBcc: b@evil.example", "deny"),
    ("[]", "landlord@example.org", "deny"),
])
def test_may_write_to_is_a_glob_on_the_whole_lower_cased_address(
        tmp_path: Path, patterns: str, address: str, verdict: str) -> None:
    policy = load_policy(policy_with(tmp_path, f"[mail]\nmay_write_to = {patterns}\n"))
    assert decide_recipients(policy, [address]).verdict == verdict


def test_no_mail_table_allows_no_one_and_explain_says_so(tmp_path: Path) -> None:
    policy = load_policy(policy_with(tmp_path, "[commands]\nallow = []\n"))
    assert decide_recipients(policy, ["owner@example.com"]).verdict == "deny"
    assert "draft_mail is not offered" in explain_recipient(policy, "a@example.org")
    allowed = load_policy(policy_with(tmp_path, '[mail]\nmay_write_to = ["*@example.org"]\n'))
    assert explain_recipient(allowed, "a@example.org").startswith(
        'ask: mail.toml:1 [mail] may_write_to "*@example.org": draft_mail may write to')
    assert explain_recipient(allowed, "a@evil.example").startswith("deny: ")


@pytest.mark.parametrize(("text", "message"), [
    ('[mail]\nmay_write_to = ["example.org"]\n', "line 2: may_write_to: 'example.org' is not"),
    ('[mail]\nmay_write_to = "*@example.org"\n', "line 2: may_write_to must be a list"),
    ('[mail]\nmay_write = ["*@example.org"]\n', 'did you mean "may_write_to"'),
    ('[mial]\nmay_write_to = ["*@example.org"]\n', "unknown table or key 'mial'"),
])
def test_a_broken_mail_table_is_an_error_naming_the_line(tmp_path: Path, text: str,
                                                         message: str) -> None:
    with pytest.raises(PolicyError, match=message.replace("(", r"\(")):
        load_policy(policy_with(tmp_path, text))


# ---------------------------------------------------------------- the send step


def held_draft(store: Store, tmp_path: Path) -> tuple[int, bytes]:
    """A task, and a draft to stranger@example.org held with its question; (id, its bytes)."""
    task_id = store.record_task(None, NewTask("main", "owner@example.com", "Landlord", "<t@x>",
                                              (), "Write to the landlord.", {}), reason="test")
    smtp = settings_for_tests(tmp_path).smtp
    composed = compose_draft(smtp, ["stranger@example.org"], [], "Hi", "Hello.\n", [], None)
    digest = draft_digest(composed.recipients, composed.raw, ())
    question = Outbound("<q@example.com>", "approval", "owner@example.com", "Re: Landlord",
                        b"To: owner@example.com\r\n\r\nApprove?\r\n", task_id, 1)
    view = store.hold_draft(
        NewDraft(task_id, 1, composed.message_id, composed.recipients, composed.subject,
                 composed.raw, composed.raw_sha256, (), digest),
        lambda _held: DraftQuestion("t" * 32, "send draft", datetime.now(UTC), question))
    return view.draft_id, composed.raw


def deliver_all(store: Store, tmp_path: Path, smtp_server: SmtpServer) -> None:
    settings = settings_for_tests(tmp_path)
    smtp = replace(settings.smtp, host="127.0.0.1", port=smtp_server.port, security="none",
                   username="agent@example.com", password="agent-secret")

    async def nothing(_raw: bytes) -> None:
        return None

    async def unknown(_message_id: str) -> bool | None:
        return None

    postman = Postman(smtp, store, Bell(), own_addresses=OWN, find_in_sent=unknown,
                      save_to_sent=nothing)

    async def run() -> None:
        for mail in store.due_mail(datetime.now(UTC)):
            await postman.deliver(mail)
        await postman.courier.close()

    asyncio.run(run())


@pytest.mark.parametrize(("raw", "refused"), [
    (b"To: owner@example.com\r\nCc: stranger@example.org\r\n\r\nx", True),
    (b"To: owner@example.com\nBcc: stranger@example.org\n\nx", True),  # LF line ends
    (b"To: owner@example.com,\r\n stranger@example.org\r\n\r\nx", True),  # folded
    (b"To: owner@example.com\n\r\nCc: stranger@example.org\r\n\r\nx", False),  # in the body
    (b"To: owner@example.com\r\n\r\nCc: stranger@example.org\r\n", False),
    (b"To: =?utf-8?q?Owner?= <owner@example.com>\r\nCc: agent@example.com\r\n\r\nx", False),
])
def test_a_row_that_is_no_draft_goes_only_if_every_header_address_is_our_own(
        raw: bytes, refused: bool) -> None:
    mail = OutboxView(1, "<a@x>", "completion", "owner@example.com", "s", raw, "queued", 0, "",
                      None)
    envelope, why = envelope_of(mail, OWN, None)
    if refused:
        assert envelope == () and why.startswith("refused: stranger@example.org is not an owner")
    else:
        assert (envelope, why) == (("owner@example.com",), "")


def test_the_outbox_sends_a_stranger_nothing_without_an_approved_draft_of_those_bytes(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'db.sqlite'}")
    draft_id, raw = held_draft(store, tmp_path)
    # What a hijacked model might get written into the outbox by any path: a plain row to a
    # stranger, one to the owner that copies a stranger, and the held draft's own bytes,
    # marked as the draft, before the owner said a word.
    store.enqueue_mail(Outbound("<a@x>", "completion", "stranger@example.org", "s", b"x"))
    store.enqueue_mail(Outbound("<b@x>", "completion", "owner@example.com", "s",
                                b"To: owner@example.com\r\nCc: stranger@example.org\r\n\r\nx"))
    store.enqueue_mail(Outbound("<c@x>", "draft", "stranger@example.org", "s", raw,
                                draft_id=draft_id))
    deliver_all(store, tmp_path, smtp_server)
    assert [m.rcpt_tos for m in smtp_server.messages] == [["owner@example.com"]]  # the question
    refused = {o.message_id: o.last_error for o in store.outbox(["failed"])}
    assert set(refused) == {"<a@x>", "<b@x>", "<c@x>"}
    assert all(e.startswith("refused: ") for e in refused.values())
    assert "is not approved by the owner" in refused["<c@x>"]


def test_an_approved_draft_goes_only_as_its_own_bytes_to_its_own_recipients(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'db.sqlite'}")
    draft_id, raw = held_draft(store, tmp_path)
    [approval] = store.approvals()
    view = store.draft(draft_id)
    assert view is not None
    release = Outbound(view.message_id, "draft", "stranger@example.org", "Hi", raw, 1, 1,
                       draft_id)
    assert store.settle_draft(approval.approval_id, "approved", "approved", "test", release)
    assert not store.settle_draft(approval.approval_id, "approved", "approved", "test", release)
    with store.session() as s:  # a second row claiming the same draft, with other bytes
        s.add(OutboxRow(message_id="<forged@x>", kind="draft", recipient="thief@evil.example",
                        subject="s", raw=raw.replace(b"Hello.", b"Secrets"), draft_id=draft_id,
                        next_attempt_at=datetime.now(UTC),
                        created_at=datetime.now(UTC)))
    deliver_all(store, tmp_path, smtp_server)
    to_stranger = [m for m in smtp_server.messages if m.rcpt_tos != ["owner@example.com"]]
    assert [(m.rcpt_tos, m.raw) for m in to_stranger] == [(["stranger@example.org"], raw)]
    [forged] = store.outbox(["failed"])
    assert forged.message_id == "<forged@x>" and "not the exact mail" in forged.last_error
    approved = store.draft(draft_id)
    assert approved is not None
    assert envelope_of(replace(store.outbox(["sent"])[-1], raw=raw + b" "), OWN,
                       approved)[1].startswith("refused: ")
