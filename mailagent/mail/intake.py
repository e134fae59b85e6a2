"""Intake: raw bytes -> an inbound message from the owner, or a rejection with its reason.

In: the raw bytes of one mail (as stored), its size on the server, and `IntakeRules`.
Out: `Inbound` (authenticated, within limits, not a loop, not a replay, typed text apart from
data) or `Rejection` (kind, reason, whether the owner should hear of it).
Pure: no I/O except the DNS lookups of `dkim` mode, which go through an injectable function.
It must never trust a header an attacker can write: only the topmost Authentication-Results of a
trusted server, or a DKIM signature verified here, makes a sender the owner (SECURITY.md S1).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parsedate_to_datetime
from typing import Any

import authres
import dkim
import mailparser

from mailagent.addresses import plain_address
from mailagent.config import LimitSettings, OwnerSettings
from mailagent.content import clean_header, html_to_text, split_reply, strip_invisible

log = logging.getLogger(__name__)

_MSG_ID = re.compile(r"<[^<>\s]{1,900}>")
_CONTENT_TYPE_LINE = re.compile(rb"^content-type\s*:", re.IGNORECASE | re.MULTILINE)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LOOP_SENDERS = ("mailer-daemon", "postmaster")


@dataclass(frozen=True)
class IntakeRules:
    owner: OwnerSettings
    limits: LimitSettings
    now: datetime
    is_ours: Callable[[str], bool] = lambda _message_id: False
    dnsfunc: Callable[..., bytes | None] | None = None


@dataclass(frozen=True)
class Attachment:
    index: int
    original_name: str  # as the sender wrote it, control characters removed; metadata only
    content_type: str
    payload: bytes


@dataclass(frozen=True)
class Inbound:
    owner_address: str
    authenticated_by: str
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str
    date: datetime | None
    typed_text: str
    quoted_text: str
    forwarded: tuple[str, ...]
    attachments: tuple[Attachment, ...] = field(default=())
    answers_us: bool = False  # In-Reply-To or References names mail we sent: see `answers_us`


@dataclass(frozen=True)
class Rejection:
    kind: str  # limit | malformed | loop | unauthenticated | replay
    reason: str
    tell_owner: bool = False  # only for mail that did come from the authenticated owner
    detail: dict[str, Any] = field(default_factory=dict)
    owner_address: str | None = None  # where to tell it: set only after authentication
    subject: str = ""
    message_id: str | None = None
    references: tuple[str, ...] = ()


# ---------------------------------------------------------------- keys and headers


def header_block(raw: bytes) -> bytes:
    match = _HEADER_END.search(raw)
    return raw[: match.start()] if match else raw


def parse_headers(raw: bytes) -> Message:
    return BytesHeaderParser(policy=compat32).parsebytes(header_block(raw) + b"\r\n\r\n")


def message_ids(value: str | None) -> tuple[str, ...]:
    """The `<...>` ids in a Message-ID, In-Reply-To or References value, in order."""
    return tuple(_MSG_ID.findall(value or ""))


def content_key(raw: bytes) -> tuple[str, str | None]:
    """A key that is the same for every copy of one mail: (key, Message-ID or None).

    It binds the Message-ID to the body, so a stranger reusing an id cannot shadow real mail;
    without a Message-ID it covers the identifying headers and the body.
    """
    headers = parse_headers(raw)
    ids = message_ids(str(headers.get("Message-ID", "")))
    message_id = ids[0] if ids else None
    match = _HEADER_END.search(raw)
    body = raw[match.end():] if match else b""
    digest = hashlib.sha256(body.replace(b"\r\n", b"\n")).hexdigest()
    if message_id:
        key = f"mid:{message_id}:{digest}"
    else:
        identity = "\n".join(str(headers.get(h, "")) for h in ("From", "Date", "Subject", "To"))
        key = f"raw:{identity}:{digest}"
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest(), message_id


# ---------------------------------------------------------------- limits and loops


def check_header_limit(raw: bytes, limits: LimitSettings) -> Rejection | None:
    header_bytes = len(header_block(raw))
    if header_bytes > limits.max_header_bytes:
        return Rejection("limit", f"headers are {header_bytes} bytes, over the limit of "
                         f"{limits.max_header_bytes} (limits.max_header_bytes)")
    return None


def check_limits(raw: bytes, size: int, limits: LimitSettings) -> Rejection | None:
    """Cheap checks before the body is parsed (SECURITY.md R1)."""
    if size > limits.max_message_bytes or len(raw) > limits.max_message_bytes:
        return Rejection("limit", f"message is {size} bytes, over the limit of "
                         f"{limits.max_message_bytes} (limits.max_message_bytes)")
    # Every MIME part has a Content-Type line, so this bounds parts and depth before parsing.
    declared = len(_CONTENT_TYPE_LINE.findall(raw))
    if declared > limits.max_mime_parts:
        return Rejection("limit", f"message declares {declared} MIME parts, over the limit of "
                         f"{limits.max_mime_parts} (limits.max_mime_parts)")
    return None


def loop_reason(headers: Message, is_ours: Callable[[str], bool]) -> str | None:
    """Why this mail must never be answered (SECURITY.md S4), or None."""
    auto = str(headers.get("Auto-Submitted", "")).split(";")[0].strip().lower()
    if auto and auto != "no":
        return f"automatic mail (Auto-Submitted: {clean_header(auto, 60)})"
    precedence = str(headers.get("Precedence", "")).strip().lower()
    if precedence in ("bulk", "list", "junk", "auto_reply"):
        return f"bulk or list mail (Precedence: {precedence})"
    if headers.get("List-Id") is not None:
        return "mailing-list mail (List-Id present)"
    if headers.get("X-Autoreply") is not None or headers.get("X-Autorespond") is not None:
        return "automatic reply (X-Autoreply)"
    if headers.get("X-Mailagent-Task") is not None:
        return "mail sent by a mailagent (X-Mailagent-Task present)"
    return_path = headers.get_all("Return-Path") or []
    if any(str(v).strip() in ("<>", "") for v in return_path):
        return "bounce (empty Return-Path)"
    sender = str(headers.get("From", "")).lower()
    if any(f"{name}@" in sender for name in _LOOP_SENDERS):
        return "bounce (from MAILER-DAEMON or postmaster)"
    content_type = str(headers.get("Content-Type", "")).lower()
    if "multipart/report" in content_type:
        return "delivery or read report (multipart/report)"
    ids = message_ids(str(headers.get("Message-ID", "")))
    if ids and is_ours(ids[0]):
        return "our own mail (Message-ID is one mailagent sent)"
    return None


# ---------------------------------------------------------------- sender authentication


def from_address(headers: Message) -> tuple[str | None, str]:
    """The single, strictly parsed From address, or (None, why not)."""
    values = headers.get_all("From") or []
    if len(values) != 1:
        return None, f"{len(values)} From headers (exactly one is required)"
    address, why = plain_address(str(values[0]))
    return address, f"From header {why}" if address is None else ""


def _domain(address: str) -> str:
    return address.rsplit("@", 1)[1]


def _aligned(signing_domain: str, from_domain: str) -> bool:
    signing_domain = signing_domain.lower().rstrip(".")
    return from_domain == signing_domain or from_domain.endswith("." + signing_domain)


_AUTHSERV_ID = re.compile(r"^\s*(?:\([^()]*\)\s*)*([^\s;()]+)")


def _authserv_id(value: str) -> str:
    """The authserv-id of an Authentication-Results value (RFC 8601 2.2: its first token,
    before any version and the first `;`), read without parsing the results after it."""
    match = _AUTHSERV_ID.match(value)
    return match.group(1).lower() if match else ""


def _verify_authentication_results(headers: Message, address: str, owner: OwnerSettings) -> str:
    """'' if the topmost trusted Authentication-Results passes DMARC or aligned DKIM."""
    trusted = None
    for value in headers.get_all("Authentication-Results") or []:
        text = " ".join(str(value).split())
        authserv_id = _authserv_id(text)
        if authserv_id not in owner.trusted_authserv_ids:
            continue  # another server's, or the sender's own: never parsed, never counted
        try:
            trusted = authres.AuthenticationResultsHeader.parse_value(text)
        except Exception:  # authres raises its own SyntaxError and others on junk
            # The trusted server's verdict is this header; one below it may be forged, so an
            # unreadable verdict is a refusal, never a reason to look further down (S1).
            return (f"the topmost Authentication-Results header from {authserv_id} cannot be "
                    "parsed (it quotes text the sender chose); no header below it is trusted")
        break
    if trusted is None:
        return "no Authentication-Results header from a trusted server"
    domain = _domain(address)
    for result in trusted.results:
        props = {f"{p.type}.{p.name}".lower(): str(p.value or "").lower()
                 for p in result.properties}
        method, outcome = str(result.method).lower(), str(result.result).lower()
        if method == "dmarc" and outcome == "pass" and props.get("header.from", domain) == domain:
            return ""
        if method == "dkim" and outcome == "pass" and _aligned(props.get("header.d", ""), domain):
            return ""
    return f"{trusted.authserv_id} reports no DMARC pass and no aligned DKIM pass"


def _verify_dkim(raw: bytes, address: str, dnsfunc: Callable[..., bytes | None] | None) -> str:
    """'' if a DKIM signature aligned with the From domain verifies here."""
    headers = parse_headers(raw)
    count = len(headers.get_all("DKIM-Signature") or [])
    if count == 0:
        return "no DKIM signature"
    for index in range(count):
        verifier = dkim.DKIM(raw)
        try:
            kwargs = {"dnsfunc": dnsfunc} if dnsfunc else {}
            ok = verifier.verify(idx=index, **kwargs)
        except Exception:  # dkimpy raises DKIMException and parser errors on bad signatures
            ok = False
        signing_domain = (verifier.domain or b"").decode("ascii", "replace")
        if ok and _aligned(signing_domain, _domain(address)):
            return ""
    return "no DKIM signature aligned with the From domain verifies"


def authenticate_sender(raw: bytes, headers: Message, rules: IntakeRules) -> tuple[str | None, str]:
    """(owner address, how) if the mail is from an owner per SECURITY.md S1, else (None, why)."""
    address, why = from_address(headers)
    if address is None:
        return None, why
    if address not in rules.owner.addresses:
        return None, "sender is not an owner address"
    mode = rules.owner.verification
    if mode == "none":
        return address, "allowlist only (owner.verification = none)"
    if mode == "dkim":
        why = _verify_dkim(raw, address, rules.dnsfunc)
    else:
        why = _verify_authentication_results(headers, address, rules.owner)
    return (address, mode) if not why else (None, why)


# ---------------------------------------------------------------- replay window


def replay_reason(headers: Message, rules: IntakeRules) -> str | None:
    """Why the Date puts this mail outside the accepted window (SECURITY.md S2), or None."""
    if headers.get("Date") is None:
        return "no Date header"
    date = sent_at(headers)
    if date is None:
        return "Date header does not parse"
    if date < rules.now - timedelta(days=rules.limits.max_age_days):
        return f"Date {date.isoformat()} is older than {rules.limits.max_age_days:g} days"
    if date > rules.now + timedelta(minutes=rules.limits.max_future_minutes):
        return f"Date {date.isoformat()} is in the future"
    return None


def sent_at(headers: Message) -> datetime | None:
    """The Date header as an aware time (a zone of -0000 is UTC), or None if absent or broken."""
    try:
        date = parsedate_to_datetime(str(headers.get("Date", "")))
    except (TypeError, ValueError, IndexError):
        return None
    return date if date.tzinfo else date.replace(tzinfo=UTC)


def answers_us(headers: Message, is_ours: Callable[[str], bool]) -> bool:
    """Whether this mail replies to mail we sent (an id of ours in In-Reply-To or References).

    Only such mail can be part of a mail loop: a loop needs mailagent in it, an auto-responder
    answering our answers. New mail from the owner's phone answers nothing of ours, so the
    per-sender rate limit never counts it and a backlog of new tasks is never held (S4).
    """
    ids = (*message_ids(str(headers.get("In-Reply-To", ""))),
           *message_ids(str(headers.get("References", ""))))
    return any(is_ours(message_id) for message_id in dict.fromkeys(ids))


# ---------------------------------------------------------------- the MIME tree


@dataclass
class _Parts:
    text: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    count: int = 0
    depth: int = 0


def _decoded_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("utf-8", errors="replace")


def _render_forwarded(part: Message) -> str:
    """A forwarded message as data: its identifying headers and its text."""
    inner = part.get_payload()
    message = inner[0] if isinstance(inner, list) and inner else None
    if not isinstance(message, Message):
        return _decoded_text(part)
    lines = [f"{h}: {clean_header(str(message.get(h, '')))}" for h in ("From", "Date", "Subject")]
    body = _Parts()
    _walk(message, body, depth=1, limit=50)
    text = "\n".join(body.text) or html_to_text("\n".join(body.html))
    return "\n".join([*lines, "", strip_invisible(text)])


_BODY_TYPES = frozenset({"text/plain", "text/html"})


def _walk(part: Message, parts: _Parts, depth: int, limit: int) -> None:
    parts.count += 1
    parts.depth = max(parts.depth, depth)
    if depth > limit:
        return
    content_type = part.get_content_type()
    filename = part.get_filename()
    disposition = (part.get_content_disposition() or "").lower()
    if content_type == "message/rfc822" and disposition != "attachment":
        parts.forwarded.append(_render_forwarded(part))
    elif part.is_multipart():
        for sub in part.get_payload():
            if isinstance(sub, Message):
                _walk(sub, parts, depth + 1, limit)
    elif filename or disposition == "attachment" or content_type not in _BODY_TYPES:
        # An invitation (text/calendar) or contact card inside multipart/alternative is a file
        # of data, never the owner's typed text.
        payload = part.get_payload(decode=True)
        parts.attachments.append(Attachment(
            index=len(parts.attachments), original_name=clean_header(str(filename or ""), 255),
            content_type=content_type,
            payload=payload if isinstance(payload, bytes) else b"",
        ))
    elif content_type == "text/html":
        parts.html.append(_decoded_text(part))
    else:
        parts.text.append(_decoded_text(part))


def _check_parts(parts: _Parts, limits: LimitSettings) -> str | None:
    if parts.depth > limits.max_mime_depth:
        return (f"MIME nesting is more than {limits.max_mime_depth} levels deep "
                "(limits.max_mime_depth)")
    if parts.count > limits.max_mime_parts:
        return f"message has {parts.count} MIME parts, over limits.max_mime_parts"
    if len(parts.attachments) > limits.max_attachments:
        return (f"message has {len(parts.attachments)} attachments, over the limit of "
                f"{limits.max_attachments} (limits.max_attachments)")
    for attachment in parts.attachments:
        if len(attachment.payload) > limits.max_attachment_bytes:
            return (f"attachment {attachment.index + 1} is {len(attachment.payload)} bytes, "
                    f"over limits.max_attachment_bytes ({limits.max_attachment_bytes})")
    return None


# ---------------------------------------------------------------- the stage


def read_inbound(raw: bytes, size: int, rules: IntakeRules) -> Inbound | Rejection:
    """Decide what one stored mail is: an owner's message to act on, or a rejection.

    Sender checks come first and use the headers only, so that the owner can be told why a mail
    of theirs was refused (too large, say), while a stranger never hears back. Headers over the
    limit are judged on their first `max_header_bytes` only (the provider's Authentication-Results
    is on top), so an owner hears of the limit and nothing parses more than that.
    """
    limited = check_header_limit(raw, rules.limits)
    if limited:
        raw = header_block(raw)[: rules.limits.max_header_bytes]
    headers = parse_headers(raw)
    loop = loop_reason(headers, rules.is_ours)
    if loop:
        return Rejection("loop", loop)
    owner, how = authenticate_sender(raw, headers, rules)
    if owner is None:
        return limited or Rejection("unauthenticated", how)
    checked = limited or _check_owner_mail(raw, size, headers, rules)
    if isinstance(checked, Rejection):
        ids = message_ids(str(headers.get("Message-ID", "")))
        return replace(checked, tell_owner=True, owner_address=owner,
                       subject=clean_header(str(headers.get("Subject", ""))),
                       message_id=ids[0] if ids else None,
                       references=message_ids(str(headers.get("References", ""))))
    subject, parts = checked
    return replace(_inbound(owner, how, headers, subject, parts),
                   answers_us=answers_us(headers, rules.is_ours))


def _check_owner_mail(raw: bytes, size: int, headers: Message,
                      rules: IntakeRules) -> Rejection | tuple[str, _Parts]:
    """An authenticated owner's mail: why it is refused, or its parsed (subject, parts)."""
    replay = replay_reason(headers, rules)
    if replay:
        return Rejection("replay", replay)
    limited = check_limits(raw, size, rules.limits)
    if limited:
        return limited
    parts = _Parts()
    try:
        parsed = mailparser.parse_from_bytes(raw)
        _walk(parsed.message, parts, depth=1, limit=rules.limits.max_mime_depth)
    except (Exception, RecursionError) as exc:  # hostile MIME ends as a recorded rejection
        return Rejection("malformed", f"message cannot be parsed ({type(exc).__name__})")
    too_much = _check_parts(parts, rules.limits)
    if too_much:
        return Rejection("limit", too_much)
    return parsed.subject or "", parts


def _inbound(owner: str, how: str, headers: Message, subject: str, parts: _Parts) -> Inbound:
    body = "\n".join(parts.text) if parts.text else html_to_text("\n".join(parts.html))
    split = split_reply(body)
    forwarded = [split.forwarded] if split.forwarded else []
    ids = message_ids(str(headers.get("Message-ID", "")))
    date = sent_at(headers)
    return Inbound(
        owner_address=owner,
        authenticated_by=how,
        message_id=ids[0] if ids else None,
        in_reply_to=message_ids(str(headers.get("In-Reply-To", ""))),
        references=message_ids(str(headers.get("References", ""))),
        subject=clean_header(subject),
        date=date,
        typed_text=split.typed,
        quoted_text=split.quoted,
        forwarded=tuple(forwarded + parts.forwarded),
        attachments=tuple(parts.attachments),
    )
