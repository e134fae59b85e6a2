"""`mailagent demo`: its embedded mail server, and what it says without a model.

The demo's whole loop runs from the installed program in tests/test_installed.py."""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
from datetime import date
from pathlib import Path

import imapclient
import pytest

from mailagent.cli.demo_mail import DemoMailServer

AGENT = "agent@mailagent.localhost"
OWNER = "you@mailagent.localhost"


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "MAILAGENT_CONFIG")}
    return env


def test_without_key_or_url_it_says_what_to_set_and_starts_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "mailagent", "demo", "--dir", str(folder)],
                            capture_output=True, text=True, env=clean_env(), timeout=120)
    assert result.returncode == 2
    assert "ANTHROPIC_API_KEY" in result.stderr and "--base-url" in result.stderr
    assert result.stdout == ""
    assert not folder.exists()


@pytest.fixture
def mail_server() -> DemoMailServer:
    server = DemoMailServer(AGENT, "secret-pw").start()
    yield server  # type: ignore[misc]
    server.stop()


def test_the_embedded_smtp_delivers_into_the_imap_inbox_and_idle_announces_it(
        mail_server: DemoMailServer) -> None:
    imap = imapclient.IMAPClient("127.0.0.1", port=mail_server.imap_port, ssl=False, timeout=10)
    imap.login(AGENT, "secret-pw")
    imap.select_folder("INBOX")
    imap.idle()
    raw = (f"From: {OWNER}\r\nTo: {AGENT}\r\nSubject: hello\r\nMessage-ID: <m1@x>\r\n\r\n"
           "Body.\r\n").encode()
    mail_server.send(raw, OWNER, AGENT)
    responses = imap.idle_check(timeout=15)
    imap.idle_done()
    assert any(r[1] == b"EXISTS" for r in responses if len(r) > 1)
    [uid] = imap.search(["SINCE", date(2000, 1, 1)])
    body = imap.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"]
    assert body.endswith(raw) and body.startswith(b"Received: ")
    imap.logout()
    assert mail_server.owner_mail == []  # mail to the agent is not the owner's


def test_the_embedded_smtp_takes_mail_only_with_the_password(
        mail_server: DemoMailServer) -> None:
    raw = f"From: {OWNER}\r\nTo: {AGENT}\r\nSubject: forged\r\n\r\nDo it.\r\n".encode()
    with smtplib.SMTP("127.0.0.1", mail_server.smtp_port, timeout=10) as smtp, \
            pytest.raises(smtplib.SMTPSenderRefused) as refused:
        smtp.sendmail(OWNER, [AGENT], raw)
    assert refused.value.smtp_code == 530  # authentication required
    with smtplib.SMTP("127.0.0.1", mail_server.smtp_port, timeout=10) as smtp, \
            pytest.raises(smtplib.SMTPAuthenticationError):
        smtp.login(AGENT, "wrong")
    imap = imapclient.IMAPClient("127.0.0.1", port=mail_server.imap_port, ssl=False, timeout=10)
    imap.login(AGENT, "secret-pw")
    imap.select_folder("INBOX")
    assert imap.search(["ALL"]) == []
    imap.logout()


def test_the_demo_mail_server_refuses_to_listen_beyond_loopback() -> None:
    with pytest.raises(Exception, match="loopback only"):
        DemoMailServer(AGENT, "pw", host="0.0.0.0").start()
