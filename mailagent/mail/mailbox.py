"""Mailbox: IMAP only. Watch one folder and hand every new message's raw bytes to a sink.

In: `ImapSettings`, a `Ledger` of where it is in each folder (the store) and a `MailSink` (the
service). Out: calls to `sink.receive(fetched)`, one per message, in UID order; after the sink
has committed a message, the message gets the done keyword.
Side effects: one persistent IMAP connection, IDLE where offered (renewed well within the 29
minutes of RFC 2177) or polling, reconnects with jittered backoff, a UID catch-up after every
(re)connect and after a wake from sleep. The only importer of imapclient.
It must never fetch with anything but BODY.PEEK (the owner's \\Seen flags are theirs), never
use sequence numbers, and never mark a message before the sink has committed it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Any, Protocol, TypeVar

import imapclient
from imapclient.exceptions import IMAPClientError
from imapclient.exceptions import LoginError as ImapLoginError

from mailagent import __version__
from mailagent.config import ImapSettings
from mailagent.errors import (
    ConnectError,
    ConnectionLostError,
    FolderError,
    LoginError,
    MailagentError,
)
from mailagent.mail import oauth

log = logging.getLogger(__name__)
T = TypeVar("T")

FETCH_BATCH = 25
IDLE_CHECK_SECONDS = 1.0
CLOCK_JUMP_SECONDS = 30.0


@dataclass(frozen=True)
class Fetched:
    folder: str
    uidvalidity: int
    uid: int
    raw: bytes  # the whole message, or only its header when it is over the size limit
    size: int  # RFC822.SIZE as the server reports it


class MailSink(Protocol):
    """Who takes the fetched messages (the service)."""

    def catching_up(self) -> None: ...  # before each catch-up: finish what came before
    def receive(self, fetched: Fetched) -> None: ...


class Ledger(Protocol):
    """Where the watcher keeps its place in each folder (the store)."""

    def mailbox_position(self, folder: str) -> tuple[int, int] | None: ...
    def set_mailbox_position(self, folder: str, uidvalidity: int, last_uid: int) -> None: ...
    def unflagged_uids(self, folder: str, uidvalidity: int) -> list[int]: ...
    def mark_flagged(self, folder: str, uidvalidity: int, uids: Iterable[int]) -> None: ...


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


def _keepalive(sock: socket.socket) -> None:
    """Let the kernel notice a peer that vanished without FIN, even during IDLE."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class Mailbox:
    """One logged-in IMAP connection with the configured folder selected."""

    def __init__(self, settings: ImapSettings) -> None:
        self.settings = settings
        self.client: imapclient.IMAPClient | None = None
        self.uidvalidity = 0
        self.uidnext = 0
        self.can_idle = False
        self.can_keyword = True

    def connect(self) -> None:
        s = self.settings
        try:
            client = imapclient.IMAPClient(
                s.host, port=s.port, ssl=s.security == "ssl",
                ssl_context=_ssl_context(s.ca_file), timeout=s.timeout_seconds,
            )
        except (OSError, IMAPClientError) as exc:
            raise ConnectError(f"cannot reach IMAP server {s.host}:{s.port} ({exc}): check "
                               "imap.host, imap.port and imap.security") from exc
        self.client = client
        try:
            self._secure_and_login(client)
            _keepalive(client.socket())
            capabilities = client.capabilities()
            if b"ID" in capabilities:
                client.id_({"name": "mailagent", "version": __version__})
            self.can_idle = b"IDLE" in capabilities
            self._select()
        except BaseException:
            self.close()
            raise

    def _secure_and_login(self, client: imapclient.IMAPClient) -> None:
        s = self.settings
        try:
            if s.security == "starttls":
                if b"STARTTLS" not in client.capabilities():
                    raise ConnectError(f"IMAP server {s.host}:{s.port} does not offer STARTTLS: "
                                       "refusing to log in in clear; use imap.security = \"ssl\"")
                client.starttls(_ssl_context(s.ca_file))
            if s.oauth is not None:
                _oauth2_login(client, s)
            else:
                client.login(s.username, s.password)
        except ImapLoginError as exc:
            raise LoginError(f"IMAP login as {s.username} on {s.host} was refused: check "
                             "imap.username and the password") from exc
        except (OSError, IMAPClientError) as exc:
            raise ConnectError(f"IMAP handshake with {s.host}:{s.port} failed: {exc}") from exc

    def _select(self) -> None:
        assert self.client is not None
        try:
            status = self.client.select_folder(self.settings.folder)
        except IMAPClientError as exc:
            raise FolderError(f"cannot open IMAP folder {self.settings.folder!r}: {exc}: "
                              "check imap.folder") from exc
        self.uidvalidity = int(status[b"UIDVALIDITY"])
        self.uidnext = int(status.get(b"UIDNEXT", 0))
        flags = status.get(b"PERMANENTFLAGS", (b"\\*",))
        self.can_keyword = b"\\*" in flags
        self._announced_news()  # the SELECT's own counts are not news

    def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            client.logout()
        except (OSError, IMAPClientError):
            with contextlib.suppress(OSError):
                client.shutdown()

    def _call(self, what: str, *args: Any, **kwargs: Any) -> Any:
        """Run one IMAP command; socket and protocol failures become ConnectionLostError."""
        if self.client is None:
            raise ConnectionLostError("not connected")
        try:
            return getattr(self.client, what)(*args, **kwargs)
        except (OSError, IMAPClientError) as exc:
            raise ConnectionLostError(f"IMAP {what} failed: {exc}") from exc

    def uids_after(self, last_uid: int) -> list[int]:
        uids = self._call("search", ["UID", f"{last_uid + 1}:*"])
        return sorted(uid for uid in uids if uid > last_uid)

    def uids_since(self, since: date) -> list[int]:
        """Mail since `since` that no mailagent has marked done: on first contact (a new data
        directory, a rebuilt folder) the done keyword is what remembers mail already handled."""
        keyword = self.settings.done_keyword
        return sorted(self._call("search", ["SINCE", since, "NOT", "KEYWORD", keyword]))

    def fetch(self, uids: Sequence[int], max_bytes: int) -> Iterator[Fetched]:
        """The messages with these UIDs, in order; over-size ones as their header only."""
        for start in range(0, len(uids), FETCH_BATCH):
            batch = list(uids[start : start + FETCH_BATCH])
            sizes = self._call("fetch", batch, ["RFC822.SIZE"])
            small = [u for u in batch if u in sizes and sizes[u][b"RFC822.SIZE"] <= max_bytes]
            large = [u for u in batch if u in sizes and u not in small]
            bodies = self._call("fetch", small, ["BODY.PEEK[]"]) if small else {}
            heads = self._call("fetch", large, ["BODY.PEEK[HEADER]"]) if large else {}
            for uid in batch:
                data = bodies.get(uid) or heads.get(uid)
                if data is None:
                    continue  # expunged meanwhile
                raw = data.get(b"BODY[]") or data.get(b"BODY[HEADER]") or b""
                yield Fetched(self.settings.folder, self.uidvalidity, uid, raw,
                              int(sizes[uid][b"RFC822.SIZE"]))

    def has_message_id(self, message_id: str) -> bool:
        """Whether the selected folder holds a message with this Message-ID header."""
        return bool(self._call("search", ["HEADER", "Message-ID", message_id]))

    def append(self, raw: bytes) -> None:
        self._call("append", self.settings.folder, raw, flags=[b"\\Seen"])

    def mark_done(self, uids: Sequence[int]) -> None:
        if uids and self.can_keyword:
            self._call("add_flags", list(uids), [self.settings.done_keyword.encode()])

    def noop(self) -> None:
        self._call("noop")

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        """Wait up to `seconds` for news in the folder; True if something may have arrived."""
        if not self.can_idle:
            stop.wait(seconds)
            self.noop()
            return True
        # A NOOP just before IDLE: mail that came after the last command (while the catch-up
        # recorded what it fetched) is announced now, and IDLE would not announce it again.
        _, updates = self._call("noop")
        if self._announced_news() or any(
                len(u) > 1 and u[1] in (b"EXISTS", b"RECENT") for u in updates):
            return True
        self._call("idle")
        # imaplib files an untagged EXISTS read before IDLE's continuation away, where
        # idle_check never looks.
        news = self._announced_news()
        deadline = time.monotonic() + seconds
        wall_start = time.time()
        try:
            while not news and not stop.is_set() and time.monotonic() < deadline:
                began = time.monotonic()
                responses = self._call("idle_check", timeout=IDLE_CHECK_SECONDS)
                if any(r[1] in (b"EXISTS", b"RECENT") for r in responses if len(r) > 1):
                    news = True
                    break
                if not responses and time.monotonic() - began < IDLE_CHECK_SECONDS / 4:
                    break  # readable but nothing parsed: the server closed; DONE will tell
                if _clock_jumped(wall_start, deadline - seconds):
                    log.info("wall clock jumped (sleep?): reconnecting")
                    self._abandon()  # a connection that slept is likely dead: no DONE on it
                    raise ConnectionLostError("woke from sleep")
        finally:
            if self.client is not None:
                self._call("idle_done")  # also before LOGOUT at shutdown: no command in IDLE
        return news

    def _abandon(self) -> None:
        """Drop the connection without a word to the server, which may be gone."""
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(OSError):
                client.shutdown()

    def _announced_news(self) -> bool:
        """Whether a reply to one of our commands announced new mail since the last look.

        A message that arrives while a command runs is announced by an untagged EXISTS in that
        command's reply, and IDLE will not announce it again. imaplib files such responses away
        unasked, so they are read (and cleared) there before idling.
        """
        assert self.client is not None
        untagged = self.client._imap.untagged_responses
        exists, recent = untagged.pop("EXISTS", None), untagged.pop("RECENT", None)
        return bool(exists or recent)


def _oauth2_login(client: imapclient.IMAPClient, s: ImapSettings) -> None:
    """AUTHENTICATE XOAUTH2 with a fresh access token; a refusal names what to do."""
    assert s.oauth is not None
    token = oauth.access_token(s.oauth, s.username)
    try:
        client.oauth2_login(s.username, token)
    except ImapLoginError as exc:
        raise LoginError(f"IMAP XOAUTH2 login as {s.username} on {s.host} was refused: the "
                         "access token was not accepted; check imap.username, or run "
                         "`mailagent init --oauth` again") from exc


def _clock_jumped(wall_start: float, mono_start: float) -> bool:
    return abs((time.time() - wall_start) - (time.monotonic() - mono_start)) > CLOCK_JUMP_SECONDS


def in_folder(settings: ImapSettings, folder: str, action: Callable[[Mailbox], T]) -> T:
    """Run `action` on a short-lived connection to another folder (e.g. Sent)."""
    mailbox = Mailbox(replace(settings, folder=folder))
    mailbox.connect()
    try:
        return action(mailbox)
    finally:
        mailbox.close()


class Watcher:
    """Keeps a Mailbox connected and feeds its new messages to the sink until stopped."""

    def __init__(self, settings: ImapSettings, ledger: Ledger, sink: MailSink,
                 max_message_bytes: int, max_age_days: float) -> None:
        self.settings, self.ledger, self.sink = settings, ledger, sink
        self.max_message_bytes, self.max_age_days = max_message_bytes, max_age_days
        self.stop_event = threading.Event()
        self.connected = threading.Event()
        self.mailbox: Mailbox | None = None

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        failures = 0
        while not self.stop_event.is_set():
            try:
                self._session()
                failures = 0
            except MailagentError as exc:
                failures += 1
                delay = min(self.settings.reconnect_max_seconds, 2.0 ** min(failures, 16))
                delay *= random.uniform(0.5, 1.0)
                log.warning("IMAP: %s; reconnecting in %.1f s", exc, delay)
                self.stop_event.wait(delay)
            finally:
                self.connected.clear()
                if self.mailbox is not None:
                    self.mailbox.close()
                    self.mailbox = None

    def _session(self) -> None:
        self.mailbox = mailbox = Mailbox(self.settings)
        mailbox.connect()
        self.connected.set()
        log.info("IMAP connected folder=%s uidvalidity=%s idle=%s",
                 self.settings.folder, mailbox.uidvalidity, mailbox.can_idle)
        self.catch_up(mailbox)
        while not self.stop_event.is_set():
            s = self.settings
            mailbox.wait(s.idle_renew_seconds if mailbox.can_idle else s.poll_seconds,
                         self.stop_event)
            if not self.stop_event.is_set():
                self.catch_up(mailbox)

    def catch_up(self, mailbox: Mailbox) -> None:
        """Fetch every message after the last one recorded, hand each over, then flag them."""
        folder = self.settings.folder
        self.sink.catching_up()
        position = self.ledger.mailbox_position(folder)
        first_contact = position is None or position[0] != mailbox.uidvalidity
        if first_contact:
            # Only recent mail: older mail would be refused by the replay window anyway.
            since = date.fromtimestamp(time.time() - self.max_age_days * 86400)
            uids = mailbox.uids_since(since)
            if position is not None:
                log.warning("UIDVALIDITY of %s changed (%s -> %s): reconciling by content",
                            folder, position[0], mailbox.uidvalidity)
        else:
            assert position is not None
            uids = mailbox.uids_after(position[1])
        for fetched in mailbox.fetch(uids, self.max_message_bytes):
            if self.stop_event.is_set():
                return
            self.sink.receive(fetched)
        if first_contact:
            last = max([*uids, mailbox.uidnext - 1, 0])
            self.ledger.set_mailbox_position(folder, mailbox.uidvalidity, last)
        pending = self.ledger.unflagged_uids(folder, mailbox.uidvalidity)
        mailbox.mark_done(pending)
        self.ledger.mark_flagged(folder, mailbox.uidvalidity, pending)
