"""The liveness canary: a signed probe through SMTP and back through IMAP, end to end.

The SMTP server plays the provider: what is addressed to the agent is delivered to its Dovecot
INBOX (unless a test wants the probe lost). Probes go every 3 seconds here.
"""

from __future__ import annotations

import email
import re
import subprocess
import sys
import time
from email.policy import default as default_policy
from pathlib import Path

import pytest

from mailagent.mail.canary import HEADER, verified_nonce
from tests.support.config import write_config
from tests.support.dovecot import Dovecot
from tests.support.fixtures import MakeService
from tests.support.mail import AGENT, OWNER, owner_mail
from tests.support.model_server import ModelServer
from tests.support.proxy import FaultProxy
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import RecordedMail, SmtpServer

CANARY = "[canary]\ninterval_minutes = 0.05\ntimeout_minutes = 0.15\n"


def deliver_to_agent(dovecot: Dovecot) -> object:
    def provider(mail: RecordedMail) -> None:
        if AGENT in mail.rcpt_tos:
            dovecot.append(mail.raw)
    return provider


def to_owner(smtp_server: SmtpServer) -> list[str]:
    """Subjects of the mails the owner got."""
    subjects = []
    for mail in list(smtp_server.messages):
        if OWNER in mail.rcpt_tos:
            subjects.append(str(email.message_from_bytes(mail.raw, policy=default_policy)
                                ["Subject"]))
    return subjects


def cli_status(service: ServiceProcess) -> str:
    result = subprocess.run([sys.executable, "-m", "mailagent", "status", "--config",
                             str(service.config_path)], capture_output=True, text=True,
                            env=service.env, timeout=60, check=True)
    return result.stdout


@pytest.fixture
def service(make_service: MakeService) -> ServiceProcess:
    return make_service(extra=CANARY)


def test_a_probe_comes_back_and_is_recorded_never_taken_as_a_task(
        dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    smtp_server.on_message = deliver_to_agent(dovecot)  # type: ignore[assignment]
    service.start()
    store = service.store()
    wait_until(lambda: [o for _, _, o, _ in store.raw_outcomes()].count("probe") >= 2, 30,
               "two probes back")
    assert "Inbound mail: ok, the last probe came back" in cli_status(service)
    dovecot.append(owner_mail("status", ""))
    wait_until(lambda: to_owner(smtp_server), 20, "the status reply")
    [reply] = [m for m in smtp_server.messages if OWNER in m.rcpt_tos]
    assert b"Inbound mail: ok" in reply.raw
    assert store.tasks() == []
    assert len(model_server.message_requests) == 0
    assert not [e for e in store.audit_events("intake.") if e.kind != "intake.duplicate"]
    outcomes = {o for _, _, o, _ in store.raw_outcomes()}
    assert outcomes == {"probe", "command"}
    probes = [m for m in smtp_server.messages if m.rcpt_tos == [AGENT]]
    assert all(f"{HEADER}: v1; nonce=".encode() in m.raw for m in probes)
    store.close()
    assert service.stop() == 0


def test_a_broken_inbound_path_is_told_once_and_its_recovery_too(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer) -> None:
    smtp_server.on_message = deliver_to_agent(dovecot)  # type: ignore[assignment]
    proxy = FaultProxy(dovecot.imap_port)
    service = ServiceProcess(write_config(tmp_path, proxy.port, smtp_server.port,
                                          extra=CANARY))
    try:
        service.start().wait_connected()
        store = service.store()
        wait_until(lambda: "probe" in [o for _, _, o, _ in store.raw_outcomes()], 30,
                   "a probe back")
        proxy.cut()  # IMAP unreachable; SMTP still works
        wait_until(lambda: to_owner(smtp_server), 40, "the mail saying inbound is broken")
        assert "Inbound mail: BROKEN: a probe mailed to agent@example.com" in cli_status(service)
        time.sleep(10)  # more than three intervals: probes keep going, the alarm is not repeated
        assert to_owner(smtp_server) == ["mailagent: mail to me is not arriving"]
        assert "inbound mail is BROKEN" in service.log()
        proxy.restore()
        wait_until(lambda: len(to_owner(smtp_server)) >= 2, 40, "the mail saying it recovered")
        time.sleep(4)
        assert to_owner(smtp_server) == ["mailagent: mail to me is not arriving",
                                         "mailagent: mail to me arrives again"]
        assert "Inbound mail: ok" in cli_status(service)
        assert store.tasks() == []
        store.close()
        assert service.stop() == 0
    finally:
        service.kill()
        proxy.close()


def test_a_forged_or_replayed_probe_is_refused_like_any_stranger_mail(
        dovecot: Dovecot, smtp_server: SmtpServer, service: ServiceProcess) -> None:
    service.start().wait_connected()  # the provider loses the probes: none comes back itself
    [probe] = smtp_server.wait_for(1, timeout=30)[:1]
    key = (service.config_path.parent / "data" / "canary.key").read_bytes().strip()
    nonce, message_id = verified_nonce(probe.raw, key) or ("", "")
    assert nonce
    forged_mac = re.sub(rb"mac=[0-9a-f]+", b"mac=" + b"0" * 64, probe.raw).replace(
        message_id.encode(), b"<copy-2@attacker.example>")
    other_id = probe.raw.replace(message_id.encode(), b"<copy-1@attacker.example>")
    for raw in (forged_mac, other_id):
        dovecot.append(raw)
    store = service.store()
    wait_until(lambda: len(store.raw_outcomes()) == 2 and all(
        state == "processed" for _, state, _, _ in store.raw_outcomes()), 20, "both refused")
    assert [o for _, _, o, _ in store.raw_outcomes()] == ["rejected", "rejected"]
    dovecot.append(probe.raw)  # the genuine probe, once
    wait_until(lambda: [o for _, _, o, _ in store.raw_outcomes()][2:] == ["probe"], 20,
               "the genuine probe taken")
    replay = probe.raw + b"\r\nAgain.\r\n"  # a new mail to the dedupe, its nonce spent
    dovecot.append(replay)
    wait_until(lambda: len(store.raw_outcomes()) == 4 and store.raw_outcomes()[3][1] ==
               "processed", 20, "the replay refused")
    assert [o for _, _, o, _ in store.raw_outcomes()] == ["rejected", "rejected", "probe",
                                                          "rejected"]
    refusals = store.audit_events("intake.")
    assert len(refusals) == 3 and {e.kind for e in refusals} <= {"intake.loop",
                                                                  "intake.unauthenticated"}
    assert len(store.audit_events("canary.returned")) == 1
    assert store.tasks() == [] and not to_owner(smtp_server)
    store.close()
    assert service.stop() == 0
