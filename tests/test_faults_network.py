"""Faults at the level of sockets: connections reset or silenced mid-FETCH, an SMTP answer lost
after DATA, and a machine waking from sleep (SECURITY.md L1, L2, L3).

A TCP proxy (tests/support/proxy.py) sits between the service and Dovecot or the SMTP server
and breaks connections the way networks do. Assertions are on what the servers received and
on the store, never on the service's internals.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clock import faketime_library
from tests.support.config import write_config
from tests.support.dovecot import Dovecot
from tests.support.mail import owner_mail
from tests.support.model_server import ModelServer
from tests.support.proxy import FaultProxy
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import SmtpServer


@pytest.fixture
def imap_proxy(dovecot: Dovecot) -> Iterator[FaultProxy]:
    proxy = FaultProxy(dovecot.imap_port)
    yield proxy
    proxy.close()


@pytest.fixture
def smtp_proxy(smtp_server: SmtpServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(smtp_server.port)
    yield proxy
    proxy.close()


def configure(config: Path, **replacements: str) -> Path:
    text = config.read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    config.write_text(text)
    return config


def done_and_sent(service: ServiceProcess, timeout: float = 30.0) -> None:
    store = service.store()
    try:
        wait_until(lambda: [t.state for t in store.tasks()] == ["done"]
                   and [m.state for m in store.outbox()] == ["sent"], timeout,
                   "one task done and its reply sent")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; log:\n{service.log()}") from None
    finally:
        store.close()


@pytest.mark.parametrize("fault", ["reset", "silent"])
def test_a_connection_broken_mid_fetch_is_resumed_by_uid_and_the_mail_taken_once(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        imap_proxy: FaultProxy, fault: str) -> None:
    service = ServiceProcess(write_config(tmp_path, imap_proxy.port, smtp_server.port,
                                          model_url=model_server.base_url))
    payload = random.Random(7).randbytes(2 * 1024 * 1024)
    try:
        service.start().wait_connected()
        time.sleep(0.5)  # in IDLE now
        # The break lands inside the body of the large FETCH (about 2.7 MB of base64).
        (imap_proxy.reset_after if fault == "reset" else imap_proxy.silent_after)(400_000)
        dovecot.append(owner_mail("Keep the archive", "Keep this file.",
                                  attachments=[("archive.bin", "application/octet-stream",
                                                payload)]))
        done_and_sent(service, timeout=45)
        assert imap_proxy.faults_fired == [f"{fault} after server bytes"]
        assert "reconnecting in" in service.log()
        assert service.log().count("IMAP connected") >= 2
        saved = tmp_path / "data" / "workspaces" / "main" / "attachments" / "mail-1" / "a1.bin"
        assert saved.read_bytes() == payload
        store = service.store()
        assert [o for _, _, o, _ in store.raw_outcomes()] == ["task"]
        store.close()
        time.sleep(1.0)
        assert len(smtp_server.messages) == 1
        assert service.stop() == 0
    finally:
        service.kill()


@pytest.mark.parametrize("server_got_it", [True, False])
def test_an_smtp_answer_lost_after_data_is_reconciled_in_sent_and_never_sent_twice(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        smtp_proxy: FaultProxy, server_got_it: bool) -> None:
    dovecot.create_folder("Sent")
    smtp_server.on_message = lambda mail: dovecot.append(mail.raw, folder="Sent")
    config = write_config(tmp_path, dovecot.imap_port, smtp_proxy.port,
                          model_url=model_server.base_url, imap_extra='sent_folder = "Sent"')
    configure(config, **{'from = "Mail Agent': 'timeout_seconds = 3\nfrom = "Mail Agent'})
    service = ServiceProcess(config)
    smtp_proxy.stall_after_data(forward_end=server_got_it)
    dovecot.append(owner_mail("Answer once"))
    try:
        service.start()
        done_and_sent(service, timeout=45)
        time.sleep(1.5)
        assert smtp_proxy.faults_fired == ["stall after DATA"]
        [mail] = smtp_server.messages
        assert b"Subject: Re: Answer once" in mail.raw
        assert "connection lost while sending" in service.log()
        store = service.store()
        [row] = store.outbox()
        store.close()
        if server_got_it:
            assert row.last_error == "found in the Sent folder" and row.attempts == 1
        else:
            assert "not in the Sent folder: sending it again" in service.log()
            assert row.attempts == 2
        assert len(dovecot.uids("Sent")) == 1
        assert service.stop() == 0
    finally:
        service.kill()


def test_a_wake_from_sleep_reconnects_at_once_and_catches_up_by_uid(
        tmp_path: Path, dovecot: Dovecot, imap_proxy: FaultProxy) -> None:
    """A suspend, for real as far as the service can tell: the process is frozen (SIGSTOP), its
    connection dies silently meanwhile, mail arrives, and on wake (SIGCONT) the wall clock is an
    hour ahead while the monotonic clock is not (Linux's CLOCK_MONOTONIC stops during suspend).
    libfaketime moves only the wall clock (FAKETIME_DONT_FAKE_MONOTONIC); in 0.9.10 that breaks
    time.sleep (EINVAL), which the mail path does not use, while select, socket timeouts,
    threading and asyncio waits work. IDLE is renewed only every 300 s and the dead socket
    is not noticed before the 60 s keepalive, so only the jump can explain a quick catch-up."""
    config = configure(write_config(tmp_path, imap_proxy.port, 1),
                       **{"idle_renew_seconds = 30": "idle_renew_seconds = 300",
                          "timeout_seconds = 5": "timeout_seconds = 25"})
    offset = tmp_path / "faketime.offset"
    offset.write_text("+0\n")
    service = ServiceProcess(config)
    service.env.update({"LD_PRELOAD": str(faketime_library()),
                        "FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_NO_CACHE": "1",
                        "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    try:
        service.start().wait_connected()
        wait_until(lambda: b"IDLE\r\n" in imap_proxy.from_clients, 10, "the IDLE command")
        time.sleep(0.5)
        assert service.process is not None
        os.kill(service.process.pid, signal.SIGSTOP)
        imap_proxy.go_silent()
        dovecot.append(owner_mail("sent while the lid was closed"))
        offset.write_text("+3600\n")
        time.sleep(0.5)
        woke = time.monotonic()
        os.kill(service.process.pid, signal.SIGCONT)
        store = service.store()
        wait_until(lambda: [t.subject for t in store.tasks()], 25,
                   f"the task after the wake; log:\n{service.log()}")
        took = time.monotonic() - woke
        store.close()
        assert "wall clock jumped (sleep?): reconnecting" in service.log()
        assert service.log().count("IMAP connected") == 2
        # The slept connection is dropped, not waited on for its socket timeout (25 s).
        assert "idle_done failed" not in service.log()
        assert took < 20, f"caught up only after {took:.0f} s"
        assert service.stop() == 0
    finally:
        service.kill()
