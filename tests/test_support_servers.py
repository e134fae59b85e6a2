"""Self-tests for the test servers in tests/support."""

from __future__ import annotations

import imaplib
import smtplib
import ssl

import pytest

from tests.support.dovecot import Dovecot
from tests.support.smtp import SmtpServer

# The fixtures ``dovecot`` and ``smtp_server`` come from tests/support/fixtures.py
# (imported in tests/conftest.py).

MESSAGE = (
    b"From: Owner <owner@example.com>\r\n"
    b"To: Agent <agent@example.com>\r\n"
    b"Subject: fixture test\r\n"
    b"Message-ID: <fixture-test@example.com>\r\n"
    b"\r\n"
    b"Hello agent.\r\n"
)


def _message(n: int) -> bytes:
    return MESSAGE.replace(b"fixture test", b"fixture test %d" % n)


def test_append_then_uids_fetch_and_flags(dovecot: Dovecot) -> None:
    assert dovecot.uids() == []
    first = dovecot.append(_message(1))
    second = dovecot.append(_message(2), flags=("\\Seen", "$AgentDone"))
    assert second > first
    assert dovecot.uids() == [first, second]
    assert dovecot.fetch(first) == _message(1)
    assert dovecot.fetch(second) == _message(2)
    assert dovecot.flags(first) == set()  # fetch used BODY.PEEK[]: still unseen
    assert dovecot.flags(second) == {"\\Seen", "$AgentDone"}
    # The other user has a separate mailbox.
    assert dovecot.uids(user="owner@example.com") == []


def test_append_to_nested_and_non_ascii_folders(dovecot: Dovecot) -> None:
    for folder in ("Archive/2024", "a.b", "Entwürfe"):
        dovecot.create_folder(folder)
        uid = dovecot.append(_message(3), folder=folder)
        assert dovecot.uids(folder) == [uid]
    assert {"INBOX", "Archive", "Archive/2024", "a.b", "Entw&APw-rfe"} <= set(dovecot.folders())


def test_lmtp_delivery_arrives_in_inbox(dovecot: Dovecot) -> None:
    dovecot.deliver(_message(4))
    uids = dovecot.uids()
    assert len(uids) == 1
    delivered = dovecot.fetch(uids[0])
    # LMTP adds trace headers in front of the original message.
    assert delivered.endswith(_message(4))
    assert b"Return-Path: <owner@example.com>" in delivered
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        dovecot.deliver(_message(5), recipient="nobody@example.com")


def test_uidvalidity_changes_after_delete_and_recreate(dovecot: Dovecot) -> None:
    dovecot.create_folder("X")
    dovecot.append(_message(1), folder="X")
    dovecot.append(_message(2), folder="X")
    before = dovecot.uidvalidity("X")
    dovecot.delete_folder("X")
    dovecot.create_folder("X")
    uid = dovecot.append(_message(3), folder="X")
    assert dovecot.uidvalidity("X") != before
    assert uid == 1
    assert dovecot.uids("X") == [1]


def test_stop_and_start_again_keeps_mail_and_ports(dovecot: Dovecot) -> None:
    uid = dovecot.append(_message(1))
    ports = (dovecot.imap_port, dovecot.imaps_port, dovecot.lmtp_port)
    validity = dovecot.uidvalidity()
    dovecot.stop()
    assert not dovecot.running
    with pytest.raises(OSError):
        imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=2)
    dovecot.start_again()
    assert dovecot.running
    assert (dovecot.imap_port, dovecot.imaps_port, dovecot.lmtp_port) == ports
    assert dovecot.uids() == [uid]
    assert dovecot.uidvalidity() == validity
    assert dovecot.fetch(uid) == _message(1)


def test_kill_then_start_again(dovecot: Dovecot) -> None:
    uid = dovecot.append(_message(1))
    conn = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=5)
    conn.login("agent@example.com", "agent-secret")
    conn.select("INBOX")
    dovecot.kill()
    assert not dovecot.running
    try:
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            conn.noop()
    finally:
        conn.shutdown()
    dovecot.start_again()
    assert dovecot.uids() == [uid]
    assert dovecot.append(_message(2)) > uid


def test_drop_connections_kicks_existing_clients(dovecot: Dovecot) -> None:
    conn = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=5)
    conn.login("agent@example.com", "agent-secret")
    conn.select("INBOX")
    assert conn.noop()[0] == "OK"
    assert dovecot.connected_users() == ["agent@example.com"]
    dovecot.drop_connections()
    try:
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            conn.noop()
    finally:
        conn.shutdown()
    # The server itself is still up and accepts new connections.
    assert dovecot.running
    assert dovecot.append(_message(1)) == 1


def test_imaps_and_starttls_with_generated_certificate(dovecot: Dovecot) -> None:
    if dovecot.imaps_port is None or dovecot.cert_path is None:
        pytest.skip("openssl not available")
    context = ssl.create_default_context(cafile=str(dovecot.cert_path))
    with imaplib.IMAP4_SSL(
        dovecot.host, dovecot.imaps_port, ssl_context=context, timeout=5
    ) as conn:
        assert conn.login("agent@example.com", "agent-secret")[0] == "OK"
    with imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=5) as conn:
        assert "STARTTLS" in conn.capabilities
        conn.starttls(context)
        assert conn.login("agent@example.com", "agent-secret")[0] == "OK"


def test_wrong_imap_password_is_rejected(dovecot: Dovecot) -> None:
    with (
        imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=5) as conn,
        pytest.raises(imaplib.IMAP4.error),
    ):
        conn.login("agent@example.com", "wrong")


def test_smtp_records_authenticated_message(smtp_server: SmtpServer) -> None:
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as client:
        client.login("agent@example.com", "agent-secret")
        client.sendmail("agent@example.com", ["owner@example.com"], MESSAGE)
    [mail] = smtp_server.wait_for(1)
    assert mail.mail_from == "agent@example.com"
    assert mail.rcpt_tos == ["owner@example.com"]
    assert mail.raw == MESSAGE
    assert mail.login == "agent@example.com"


def test_smtp_requires_auth(smtp_server: SmtpServer) -> None:
    with (
        smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as client,
        pytest.raises(smtplib.SMTPSenderRefused) as info,
    ):
        client.sendmail("agent@example.com", ["owner@example.com"], MESSAGE)
    assert info.value.smtp_code == 530
    assert smtp_server.messages == []


def test_smtp_wrong_password_gets_535(smtp_server: SmtpServer) -> None:
    with (
        smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as client,
        pytest.raises(smtplib.SMTPAuthenticationError) as info,
    ):
        client.login("agent@example.com", "wrong-secret")
    assert info.value.smtp_code == 535
    assert smtp_server.messages == []
    assert ("agent@example.com", False) in smtp_server.auth_attempts


def test_smtp_forced_421_then_accepts(smtp_server: SmtpServer) -> None:
    smtp_server.respond_with.append("421 4.3.0 try later")
    client = smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5)
    client.login("agent@example.com", "agent-secret")
    with pytest.raises(smtplib.SMTPDataError) as info:
        client.sendmail("agent@example.com", ["owner@example.com"], _message(1))
    assert info.value.smtp_code == 421
    client.close()
    assert smtp_server.messages == []
    # Retry on a new connection succeeds: the forced response was used once.
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as client:
        client.login("agent@example.com", "agent-secret")
        client.sendmail("agent@example.com", ["owner@example.com"], _message(2))
    [mail] = smtp_server.wait_for(1)
    assert mail.raw == _message(2)
    assert smtp_server.forced_responses == ["421 4.3.0 try later"]


def test_smtp_forced_550_is_permanent_failure(smtp_server: SmtpServer) -> None:
    smtp_server.respond_with.append("550 5.1.1 no such user")
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as client:
        client.login("agent@example.com", "agent-secret")
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("agent@example.com", ["nobody@example.com"], MESSAGE)
        assert info.value.smtp_code == 550
        # Same connection keeps working after a 5xx.
        client.sendmail("agent@example.com", ["owner@example.com"], MESSAGE)
    assert [m.rcpt_tos for m in smtp_server.wait_for(1)] == [["owner@example.com"]]


def test_smtp_without_auth_and_with_starttls(dovecot: Dovecot) -> None:
    if dovecot.cert_path is None or dovecot.key_path is None:
        pytest.skip("openssl not available")
    with SmtpServer.start(username=None, tls_cert=(dovecot.cert_path, dovecot.key_path)) as server:
        context = ssl.create_default_context(cafile=str(dovecot.cert_path))
        with smtplib.SMTP(server.host, server.port, timeout=5) as client:
            client.starttls(context=context)
            client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        [mail] = server.wait_for(1)
        assert mail.login is None
        assert mail.mail_from == "a@example.com"
