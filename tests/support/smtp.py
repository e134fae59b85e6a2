"""An in-process SMTP server for tests (aiosmtpd ``Controller`` in a thread).

``SmtpServer.start()`` listens on 127.0.0.1 on a free port.  With a
``username`` (the default), AUTH PLAIN/LOGIN is required before MAIL FROM
(``auth_required=True``; ``auth_require_tls=False`` so it works without TLS)
and wrong credentials are answered with ``535 5.7.8``.  With
``tls_cert=(cert, key)`` STARTTLS is offered (not required).

Accepted messages are recorded in ``messages`` as :class:`RecordedMail`.
``respond_with`` is a queue of forced replies for the next DATA commands,
e.g. ``server.respond_with.append("421 4.3.0 try later")`` or
``"550 5.1.1 no such user"``; each forced reply is used once (and the message
is *not* recorded), after which messages are accepted normally again.  A
forced ``421`` also closes the connection, as RFC 5321 requires.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["RecordedMail", "SmtpServer"]

HOST = "127.0.0.1"


@dataclass
class RecordedMail:
    """One message accepted by :class:`SmtpServer`."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    login: str | None = field(default=None, compare=False)
    """The AUTH identity used for this message (``None`` without AUTH)."""

    def message(self) -> EmailMessage:
        message = email.message_from_bytes(self.raw, policy=default_policy)
        assert isinstance(message, EmailMessage)
        return message

    def text(self) -> str:
        """The plain-text body, as a reader sees it."""
        part = self.message().get_body(("plain",))
        assert part is not None
        return str(part.get_content())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class _Authenticator:
    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password
        self.attempts: list[tuple[str, bool]] = []

    def __call__(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", errors="replace")
        password = auth_data.password.decode("utf-8", errors="replace")
        ok = login == self.username and password == self.password
        self.attempts.append((login, ok))
        if ok:
            return AuthResult(success=True, auth_data=login)
        # handled=False makes aiosmtpd answer "535 5.7.8 Authentication credentials invalid".
        return AuthResult(success=False, handled=False)


class _Handler:
    """aiosmtpd handler; hook methods are named after the SMTP verbs."""

    def __init__(self, owner: SmtpServer) -> None:
        self.owner = owner

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        owner = self.owner
        with owner._condition:
            forced = owner.respond_with.pop(0) if owner.respond_with else None
        if forced is not None:
            owner.forced_responses.append(forced)
            if forced.startswith("421") and server.transport is not None:
                # The reply is written before the loop runs this callback;
                # close() flushes it, then drops the connection.
                asyncio.get_running_loop().call_soon(server.transport.close)
            return forced
        raw = envelope.original_content or b""
        if isinstance(envelope.content, bytes) and not raw:
            raw = envelope.content
        login = session.auth_data if isinstance(session.auth_data, str) else None
        mail = RecordedMail(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            raw=bytes(raw),
            login=login,
        )
        with owner._condition:
            owner.messages.append(mail)
            owner._condition.notify_all()
        if owner.on_message is not None:  # e.g. a provider that files sent mail in Sent
            await asyncio.to_thread(owner.on_message, mail)
        return "250 2.0.0 OK queued"


class _Controller(Controller):
    """Controller that requires AUTH without aiosmtpd's "no TLS" UserWarning.

    aiosmtpd warns (UserWarning, per connection, in the server thread) when
    ``auth_required=True`` and ``auth_require_tls=False``; with pytest's
    ``filterwarnings = error`` that breaks every connection.  So the SMTP
    instance is built with ``auth_required=False`` and the flag is switched on
    afterwards.
    """

    def __init__(self, handler: Any, *, require_auth: bool, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._require_auth = require_auth

    def factory(self) -> SMTP:
        smtp = SMTP(self.handler, **self.SMTP_kwargs)
        if self._require_auth:
            smtp._auth_required = True
        return smtp


class SmtpServer:
    """A running aiosmtpd server; see the module docstring."""

    host: str
    port: int
    username: str | None
    password: str
    messages: list[RecordedMail]
    respond_with: list[str]
    forced_responses: list[str]

    def __init__(
        self,
        username: str | None = "agent@example.com",
        password: str = "agent-secret",
        tls_cert: tuple[Path, Path] | None = None,
    ) -> None:
        self.host = HOST
        self.username = username
        self.password = password
        self.tls_cert = tls_cert
        self.messages = []
        self.respond_with = []
        self.forced_responses = []
        self.on_message: Callable[[RecordedMail], None] | None = None
        self._condition = threading.Condition()
        self._authenticator = _Authenticator(username, password) if username is not None else None
        self.port = _free_port()
        kwargs: dict[str, Any] = {}
        if self._authenticator is not None:
            kwargs.update(authenticator=self._authenticator, auth_require_tls=False)
        if tls_cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(tls_cert[0]), str(tls_cert[1]))
            kwargs.update(tls_context=context, require_starttls=False)
        self._controller = _Controller(
            _Handler(self),
            require_auth=self._authenticator is not None,
            hostname=self.host,
            port=self.port,
            server_hostname="localhost",
            ready_timeout=10.0,
            **kwargs,
        )
        self._running = False

    @classmethod
    def start(
        cls,
        username: str | None = "agent@example.com",
        password: str = "agent-secret",
        tls_cert: tuple[Path, Path] | None = None,
    ) -> SmtpServer:
        """Start a server on a free port of 127.0.0.1 and return it."""
        server = cls(username=username, password=password, tls_cert=tls_cert)
        server._controller.start()
        server._running = True
        return server

    @property
    def auth_attempts(self) -> list[tuple[str, bool]]:
        """``(login, succeeded)`` for every AUTH attempt so far."""
        return list(self._authenticator.attempts) if self._authenticator else []

    def wait_for(self, count: int, timeout: float = 10.0) -> list[RecordedMail]:
        """Wait until at least ``count`` messages were recorded; return them all."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"expected {count} message(s) within {timeout}s, got {len(self.messages)}"
                    )
                self._condition.wait(remaining)
            return list(self.messages)

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        if self._running:
            self._running = False
            with contextlib.suppress(AssertionError, RuntimeError):
                self._controller.stop()

    def __enter__(self) -> SmtpServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SmtpServer {self.host}:{self.port} messages={len(self.messages)}>"
