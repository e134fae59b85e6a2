"""Putting mail into the test Dovecot and reading it back, as a mail client would.

The helper methods (``append``, ``uids``, ``flags``...) deliberately use the
standard library ``imaplib``/``smtplib`` so that the fixture does not depend on
the IMAP library used by the code under test.

UIDVALIDITY: Dovecot keeps a per-user ``dovecot-uidvalidity`` counter in the
mail root and gives every newly created mailbox ``max(now, last + 1)``.  So
deleting a folder and creating it again (``delete_folder`` + ``create_folder``,
or simply ``append`` after the delete; APPEND does not auto-create, so create it
first) always yields a *different* UIDVALIDITY, even within the same second,
and UIDs start again at 1.  That is the supported way for tests to simulate a
"UIDVALIDITY changed" event.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import imaplib
import re
import smtplib
from collections.abc import Iterator, Sequence

from tests.support.dovecot_config import DovecotError

__all__ = ["MailboxHelpers"]


def _imap_utf7_encode(name: str) -> str:
    """Encode a mailbox name as IMAP modified UTF-7 (RFC 3501 5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.append(
                "&" + base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",") + "-"
            )
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def _quote(name: str) -> str:
    encoded = _imap_utf7_encode(name)
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check(typ: str, data: Sequence[object], what: str) -> None:
    if typ != "OK":
        raise DovecotError(f"IMAP {what} failed: {typ} {data!r}")



class MailboxHelpers:
    """The mailbox side of :class:`tests.support.dovecot.Dovecot`: IMAP over its plain port
    and LMTP delivery, logged in as one of its users."""

    host: str
    imap_port: int
    lmtp_port: int
    users: dict[str, str]

    @contextlib.contextmanager
    def imap(self, user: str = "agent@example.com") -> Iterator[imaplib.IMAP4]:
        """A logged-in stdlib ``imaplib.IMAP4`` connection (plain port)."""
        if user not in self.users:
            raise DovecotError(f"unknown test user {user!r}")
        conn = imaplib.IMAP4(self.host, self.imap_port, timeout=10)
        try:
            conn.login(user, self.users[user])
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def append(
        self,
        raw: bytes,
        folder: str = "INBOX",
        user: str = "agent@example.com",
        flags: tuple[str, ...] = (),
        internal_date: datetime.datetime | None = None,
    ) -> int:
        """APPEND ``raw`` to ``folder`` (must exist) and return its UID; ``internal_date``
        (aware) is the arrival time the server records, now when absent."""
        with self.imap(user) as conn:
            flag_list = "(" + " ".join(flags) + ")" if flags else None
            typ, data = conn.append(_quote(folder), flag_list, internal_date, raw)
            _check(typ, data, f"APPEND to {folder!r}")
            text = b" ".join(d for d in data if isinstance(d, bytes)).decode(errors="replace")
            match = re.search(r"APPENDUID (\d+) (\d+)", text)
            if match is None:
                raise DovecotError(f"no APPENDUID in APPEND response {data!r}")
            return int(match.group(2))

    def deliver(
        self,
        raw: bytes,
        recipient: str = "agent@example.com",
        sender: str = "owner@example.com",
    ) -> None:
        """Deliver ``raw`` to ``recipient``'s INBOX via LMTP (like an MTA would)."""
        with smtplib.LMTP(self.host, self.lmtp_port, timeout=10) as lmtp:
            refused = lmtp.sendmail(sender, [recipient], raw)
        if refused:
            raise DovecotError(f"LMTP refused {refused!r}")

    def create_folder(self, name: str, user: str = "agent@example.com") -> None:
        with self.imap(user) as conn:
            typ, data = conn.create(_quote(name))
            _check(typ, data, f"CREATE {name!r}")

    def delete_folder(self, name: str, user: str = "agent@example.com") -> None:
        with self.imap(user) as conn:
            typ, data = conn.delete(_quote(name))
            _check(typ, data, f"DELETE {name!r}")

    def folders(self, user: str = "agent@example.com") -> list[str]:
        """Names (modified UTF-7 as on the wire) of all folders of ``user``."""
        with self.imap(user) as conn:
            typ, data = conn.list()
            _check(typ, data, "LIST")
        names = []
        for item in data:
            if not isinstance(item, bytes):
                continue
            match = re.match(rb'\((?P<attrs>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.*)$', item)
            if match:
                name = match.group("name").decode()
                if name.startswith('"') and name.endswith('"'):
                    name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
                names.append(name)
        return names

    def uids(self, folder: str = "INBOX", user: str = "agent@example.com") -> list[int]:
        """All UIDs in ``folder``, ascending."""
        with self.imap(user) as conn:
            _check(*conn.select(_quote(folder), readonly=True), f"EXAMINE {folder!r}")
            typ, data = conn.uid("SEARCH", "ALL")
            _check(typ, data, "UID SEARCH")
        first = data[0] if data else None
        if not isinstance(first, bytes):
            return []
        return sorted(int(uid) for uid in first.split())

    def uidvalidity(self, folder: str = "INBOX", user: str = "agent@example.com") -> int:
        with self.imap(user) as conn:
            typ, data = conn.status(_quote(folder), "(UIDVALIDITY)")
            _check(typ, data, f"STATUS {folder!r}")
        text = b" ".join(d for d in data if isinstance(d, bytes)).decode(errors="replace")
        match = re.search(r"UIDVALIDITY (\d+)", text)
        if match is None:
            raise DovecotError(f"no UIDVALIDITY in {data!r}")
        return int(match.group(1))

    def flags(self, uid: int, folder: str = "INBOX", user: str = "agent@example.com") -> set[str]:
        """System flags and keywords of message ``uid``, e.g. ``{"\\\\Seen", "$Label1"}``.

        ``\\Recent`` is left out: it is session state, not a stored flag.
        """
        with self.imap(user) as conn:
            _check(*conn.select(_quote(folder), readonly=True), f"EXAMINE {folder!r}")
            typ, data = conn.uid("FETCH", str(uid), "(FLAGS)")
            _check(typ, data, "UID FETCH FLAGS")
        for item in data:
            if isinstance(item, bytes) and re.search(rb"UID %d\b" % uid, item):
                flags = {flag.decode() for flag in imaplib.ParseFlags(item)}
                return flags - {"\\Recent"}
        raise DovecotError(f"message UID {uid} not found in {folder!r}")

    def fetch(self, uid: int, folder: str = "INBOX", user: str = "agent@example.com") -> bytes:
        """The full raw message (``BODY.PEEK[]``, does not set \\Seen)."""
        with self.imap(user) as conn:
            _check(*conn.select(_quote(folder), readonly=True), f"EXAMINE {folder!r}")
            typ, data = conn.uid("FETCH", str(uid), "(BODY.PEEK[])")
            _check(typ, data, "UID FETCH BODY.PEEK[]")
        for item in data:
            if isinstance(item, tuple) and len(item) == 2:
                return bytes(item[1])
        raise DovecotError(f"message UID {uid} not found in {folder!r}")

    def set_flags(
        self,
        uid: int,
        flags: tuple[str, ...],
        folder: str = "INBOX",
        user: str = "agent@example.com",
        mode: str = "+FLAGS",
    ) -> None:
        """STORE ``mode`` (``+FLAGS``/``-FLAGS``/``FLAGS``) on message ``uid``."""
        with self.imap(user) as conn:
            _check(*conn.select(_quote(folder)), f"SELECT {folder!r}")
            typ, data = conn.uid("STORE", str(uid), mode, "(" + " ".join(flags) + ")")
            _check(typ, data, "UID STORE")
