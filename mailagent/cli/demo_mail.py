"""The demo's mail server: SMTP (aiosmtpd) and IMAP with IDLE (pymap), on loopback only.

In: the agent's and the owner's addresses and a password. Out: a running SMTP and IMAP server on
127.0.0.1 (free ports), mail to the agent delivered into its IMAP INBOX, and mail to the owner
kept in `owner_mail` for the demo to print. The only importer of aiosmtpd and pymap.

Delivery is what a real provider does: SMTP accepts the message (only after AUTH, so other local
users cannot hand the agent orders), then it is appended to the agent's INBOX over IMAP, where the
service's IDLE connection is told about it. Nothing is written into mailagent's store here.
The server runs its own event loop in a thread so the caller stays synchronous.
"""

from __future__ import annotations

import asyncio
import imaplib
import logging
import threading
import time
import warnings
from argparse import Namespace
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from email.utils import formatdate, parseaddr
from typing import Any

from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import AuthResult, LoginPassword
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session as SmtpSession
from proxyprotocol.reader import ProxyProtocolReader
from pymap.backend.dict import DictBackend
from pymap.imap import IMAPServer

from mailagent.errors import MailagentError

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "::1")
START_SECONDS = 15.0


@dataclass
class Delivered:
    """What the SMTP side received for the owner: envelope and the raw message."""

    sender: str
    recipients: list[str]
    raw: bytes


@dataclass
class DemoMailServer:
    """SMTP and IMAP for one agent address; mail for any other address is kept for printing."""

    agent: str
    password: str
    host: str = "127.0.0.1"
    imap_port: int = 0
    smtp_port: int = 0
    owner_mail: list[Delivered] = field(default_factory=list)
    on_owner_mail: Callable[[Delivered], None] = lambda mail: None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _stack: AsyncExitStack | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------ starting and stopping

    def start(self) -> DemoMailServer:
        if self.host not in LOOPBACK:
            raise MailagentError(f"the demo mail server listens on loopback only, not {self.host}")
        ready = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve, args=(ready, errors),
                                        name="demo-mail-server", daemon=True)
        self._thread.start()
        if not ready.wait(START_SECONDS) or errors:
            raise MailagentError(f"the demo's mail server did not start: {errors or 'timeout'}")
        return self

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _serve(self, ready: threading.Event, errors: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._start_servers())
        except BaseException as exc:  # reported to start(), which raises it as an error
            errors.append(exc)
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            if self._stack is not None:
                loop.run_until_complete(self._stack.aclose())
            loop.close()

    @staticmethod
    def _quiet() -> None:
        """aiosmtpd warns about AUTH without TLS at every connection: here that is the design
        (loopback only), and the reason is printed once by the demo instead."""
        warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
        logging.getLogger("mail.log").setLevel(logging.ERROR)

    async def _start_servers(self) -> None:
        """pymap's in-memory backend with one user, the agent, and IMAP in clear on loopback;
        aiosmtpd requiring AUTH (in clear too: loopback only, one run's random password)."""
        args = Namespace(debug=False, host=self.host, port=0, cert=None, key=None, tls=False,
                         passlib_cfg=None, proxy_protocol=None, inherited_sockets=None,
                         demo_data=False, demo_user=self.agent, demo_password=self.password)
        self._quiet()
        backend, config = await DictBackend.init(args, secure_auth=False)
        config.apply_context()
        self._stack = stack = AsyncExitStack()
        await backend.start(stack)
        reader = ProxyProtocolReader(config.proxy_protocol)
        imap = await asyncio.start_server(reader.get_callback(IMAPServer(backend.login, config)),
                                          host=self.host, port=0)
        await stack.enter_async_context(imap)
        self.imap_port = int(imap.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        smtp = await loop.create_server(
            lambda: SmtpServer(_Handler(self), hostname="mailagent-demo",
                               authenticator=self._authenticate, auth_required=True,
                               auth_require_tls=False),
            host=self.host, port=0)
        await stack.enter_async_context(smtp)
        self.smtp_port = int(smtp.sockets[0].getsockname()[1])

    # ------------------------------------------------------------ SMTP in

    def _authenticate(self, server: SmtpServer, session: SmtpSession, envelope: SmtpEnvelope,
                      mechanism: str, auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login.decode() == self.agent
              and auth_data.password.decode() == self.password)
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535

    def deliver(self, sender: str, recipients: list[str], raw: bytes) -> None:
        """Mail for the agent goes into its IMAP INBOX; anything else is the owner's."""
        if any(r.lower() == self.agent.lower() for r in recipients):
            self._append_to_inbox(raw)
        others = [r for r in recipients if r.lower() != self.agent.lower()]
        if others:
            mail = Delivered(sender, others, raw)
            with self._lock:
                self.owner_mail.append(mail)
            self.on_owner_mail(mail)

    def _append_to_inbox(self, raw: bytes) -> None:
        with imaplib.IMAP4(self.host, self.imap_port, timeout=30) as imap:
            imap.login(self.agent, self.password)
            imap.append("INBOX", "", imaplib.Time2Internaldate(time.time()), raw)
            imap.logout()

    def send(self, raw: bytes, sender: str, recipient: str) -> None:
        """Hand a message to the SMTP server, as a mail client would."""
        import smtplib

        with smtplib.SMTP(self.host, self.smtp_port, timeout=30) as smtp:
            smtp.login(self.agent, self.password)
            smtp.sendmail(sender, [recipient], raw)


class _Handler:
    """aiosmtpd's DATA handler: hands the message to delivery off the event loop."""

    def __init__(self, server: DemoMailServer) -> None:
        self.server = server

    async def handle_DATA(self, server: SmtpServer, session: SmtpSession,
                          envelope: SmtpEnvelope) -> str:
        raw = envelope.original_content or b""
        sender = parseaddr(envelope.mail_from or "")[1]
        received = f"Received: from demo client by mailagent-demo; {formatdate()}\r\n".encode()
        try:
            await asyncio.to_thread(self.server.deliver, sender, list(envelope.rcpt_tos),
                                    received + raw)
        except (OSError, imaplib.IMAP4.error) as exc:
            log.warning("demo delivery failed: %s", exc)
            return "451 delivery failed, try again later"
        return "250 OK"
