"""Drafts: a mail to someone other than the owner, composed whole, and the rule at the send step.

In: what `draft_mail` asked for (recipients already allowed by the policy, subject, body, the
attachments' bytes) and, for a reply, the stored mails of the conversation. Out: the exact MIME
bytes that would go out (Message-ID and Date included, so what is sent is byte for byte what
the owner was shown), the digest an approval binds (recipients, those bytes, and each
attachment's source path, size and SHA-256), the thread headers of the mail it answers, and
`envelope_of`: to whom an outbox row may go. Pure: no I/O.
It must never let a row reach anyone but the owner unless that row is a draft the owner
approved, byte for byte (SECURITY.md E1, S3): the Postman asks `envelope_of` before each send.
"""

from __future__ import annotations

import email
import hashlib
import json
import mimetypes
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.policy import SMTP
from email.utils import formatdate, getaddresses, parseaddr
from typing import Any

from mailagent.addresses import plain_address
from mailagent.config import SmtpSettings
from mailagent.content import clean_header
from mailagent.mail.intake import parse_headers
from mailagent.mail.notify import MAX_REFERENCES, attachment_name, new_message_id
from mailagent.store import DraftView, OutboxView

MAX_SUBJECT_CHARS = 200


@dataclass(frozen=True)
class Thread:
    """The mail a draft answers: its Message-ID and the References it carries on."""

    in_reply_to: str
    references: tuple[str, ...]


@dataclass(frozen=True)
class Composed:
    message_id: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str
    in_reply_to: str | None
    raw: bytes  # exactly what goes out, CRLF line ends as on the wire

    @property
    def recipients(self) -> tuple[str, ...]:
        """The envelope: to, then cc."""
        return (*self.to, *self.cc)

    @property
    def raw_sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


def compose_draft(smtp: SmtpSettings, to: Sequence[str], cc: Sequence[str], subject: str,
                  body: str, files: Sequence[tuple[str, bytes]],
                  thread: Thread | None) -> Composed:
    """The whole mail, from the agent's address, to plain addresses (no display names from
    the model), every header value cleaned of CR, LF and control characters."""
    message = EmailMessage(policy=SMTP)
    message["From"] = clean_header(smtp.from_address)
    message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    clean_subject = clean_header(subject, MAX_SUBJECT_CHARS) or "(no subject)"
    message["Subject"] = clean_subject
    message["Date"] = formatdate(localtime=True)
    message_id = new_message_id(smtp.from_address)
    message["Message-ID"] = message_id
    if thread is not None:
        message["In-Reply-To"] = thread.in_reply_to
        message["References"] = " ".join(thread.references)
    message["Auto-Submitted"] = "auto-replied"  # never answered by auto-responders (S4)
    message.set_content(body)
    for name, payload in files:
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        maintype, _, subtype = kind.partition("/")
        if maintype in ("message", "multipart"):  # sent as the bytes they are
            maintype, subtype = "application", "octet-stream"
        message.add_attachment(payload, maintype=maintype, subtype=subtype,
                               filename=attachment_name(name))
    return Composed(message_id, tuple(to), tuple(cc), clean_subject,
                    thread.in_reply_to if thread else None, message.as_bytes(policy=SMTP))


def draft_digest(recipients: Sequence[str], raw: bytes,
                 attachments: Iterable[dict[str, Any]]) -> str:
    """What a draft's approval is bound to: the envelope, the exact bytes (headers, body and
    attachment bytes), and each attachment's source file as it was when it was drafted."""
    state = {"recipients": list(recipients), "raw_sha256": hashlib.sha256(raw).hexdigest(),
             "attachments": [dict(a) for a in attachments]}
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def normal_message_id(text: str) -> str:
    """`<id@host>` as a Message-ID header writes it, whether or not the model kept the
    angle brackets."""
    inner = clean_header(text, 300).strip().strip("<>").strip()
    return f"<{inner}>" if inner and " " not in inner else ""


def find_thread(message_id: str, raws: Iterable[bytes]) -> Thread | None:
    """The thread of the stored mail (or a mail forwarded inside one) whose Message-ID this
    is, or None when the conversation has not seen it."""
    wanted = normal_message_id(message_id)
    if not wanted:
        return None
    for raw in raws:
        for message in _messages_in(email.message_from_bytes(raw)):
            if normal_message_id(str(message.get("Message-ID", ""))) == wanted:
                return Thread(wanted, _references(message, wanted))
    return None


def _messages_in(message: Message, depth: int = 0) -> Iterable[Message]:
    yield message
    if depth >= 3:
        return
    for part in message.walk():
        if part.get_content_type() == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                yield from _messages_in(inner[0], depth + 1)


def _references(message: Message, message_id: str) -> tuple[str, ...]:
    earlier = str(message.get("References", "") or message.get("In-Reply-To", "")).split()
    chain = [i for i in (normal_message_id(r) for r in earlier) if i and i != message_id]
    return (*chain[-(MAX_REFERENCES - 1):], message_id)


def envelope_of(mail: OutboxView, own: frozenset[str],
                draft: DraftView | None) -> tuple[tuple[str, ...], str]:
    """To whom this outbox row may go: (envelope, "") or ((), why it is refused).

    A row that is no approved draft goes only to our own addresses (the owners', the agent's),
    and every address in its To, Cc and Bcc must be one of them too. A draft goes only to its
    approved recipients, and only as the exact bytes whose digest the owner approved."""
    if mail.draft_id is None:
        listed = [mail.recipient, *_header_addresses(mail.raw)]
        strangers = [a for a in listed if (plain_address(a)[0] or a.lower()) not in own]
        if strangers:
            return (), (f"refused: {strangers[0][:200]} is not an owner address, and this "
                        "mail is no draft that the owner approved")
        return (parseaddr(mail.recipient)[1] or mail.recipient,), ""
    if draft is None or draft.state != "approved" or not draft.approved_digest:
        return (), f"refused: draft #{mail.draft_id} is not approved by the owner"
    exact = (hashlib.sha256(mail.raw).hexdigest() == draft.raw_sha256
             and mail.message_id == draft.message_id
             and draft_digest(draft.recipients, mail.raw, draft.attachments)
             == draft.approved_digest)
    if not exact:
        return (), f"refused: this is not the exact mail of draft #{mail.draft_id} that the " \
                   "owner approved"
    return draft.recipients, ""


def _header_addresses(raw: bytes) -> list[str]:
    head = parse_headers(raw)
    values = [str(v) for name in ("To", "Cc", "Bcc") for v in head.get_all(name, [])]
    return [address for _, address in getaddresses(values) if address]
