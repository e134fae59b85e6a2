"""Notify: outcomes -> threaded reply mails -> the outbox -> SMTP. The only importer of aiosmtplib.

In: a `ReplyTarget` (the mail being answered), a template and its values, files to attach
(`FileToSend`: their bytes read already, by the caller, through the descriptor its policy
check opened; no file is read here by its name).
Out: `Outbound` mails, queued in the store before any attempt, then sent by the `Postman`, which
retries transient failures with backoff, records permanent ones, and reconciles a send whose
outcome is unknown by looking for its Message-ID in the Sent folder before sending it again.
It must never take a recipient or a header from mail content (SECURITY.md S3, E1): the recipient
is the authenticated owner the task came from, and every header value is cleaned of CR, LF and
control characters.
"""

from __future__ import annotations

import asyncio
import io
import logging
import mimetypes
import random
import re
import secrets
import ssl
import time
import zipfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from pathlib import Path
from typing import Any

import aiosmtplib

from mailagent.bell import Bell
from mailagent.config import SmtpSettings
from mailagent.content import clean_header
from mailagent.errors import OAuthError, RenderError, SmtpError
from mailagent.failpoints import failpoint
from mailagent.mail import oauth
from mailagent.mail.render import markdown_html, markdown_text, render
from mailagent.store import Outbound, OutboxView, ReplyTarget, Store
from mailagent.tasks.when import quiet_seconds

log = logging.getLogger(__name__)

MAX_REFERENCES = 20
RETRY_BASE_SECONDS = 5.0
RETRY_MAX_SECONDS = 1800.0


class SendOutcome:
    SENT, RETRY, FAILED, UNKNOWN = "sent", "retry", "failed", "unknown"


# ---------------------------------------------------------------- composing


def new_message_id(from_address: str) -> str:
    domain = parseaddr(from_address)[1].rpartition("@")[2] or "mailagent.invalid"
    # Not email.utils.make_msgid: it draws from the process-wide `random`, which anything may
    # seed (a test framework does, per example), and a repeated Message-ID would break the
    # outbox's exactly-once send (SECURITY.md L2). 96 bits from the OS instead, kept short so
    # that the header is never folded onto a second line.
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    return f"<{stamp}.{secrets.token_urlsafe(12)}@{clean_header(domain, 200)}>"


def approval_message_id(from_address: str, token: str) -> str:
    """The approval mail's Message-ID carries its token: the owner's reply brings it back."""
    domain = from_address.rpartition("@")[2].strip("> ") or "mailagent.invalid"
    return f"<mailagent.approval.{token}@{domain}>"


def reply_subject(subject: str) -> str:
    subject = clean_header(subject, 200) or "(no subject)"
    return subject if subject.lower().startswith("re:") else f"Re: {subject}"


ANSWER_NEEDED = "Answer needed:"
_REPLY_AND_TAG = re.compile(r"^(re:\s*)?(\[[^\]]{1,64}\]\s*)?", re.IGNORECASE)


def question_subject(subject: str) -> str:
    """A question's subject says an answer is needed, after `Re:` and any `[name]` tag, which
    keep their places (SPEC.md), so that the reply still finds its conversation; said once."""
    match = _REPLY_AND_TAG.match(subject)
    end = match.end() if match else 0
    head, rest = subject[:end], subject[end:]
    if rest.lower().startswith(ANSWER_NEEDED.lower()):
        return subject
    return f"{head}{ANSWER_NEEDED} {rest}".rstrip()


@dataclass(frozen=True)
class FileToSend:
    """A file for a mail: where it is (its name, and where the mail says it stays), and its
    bytes, or None when it could not be read (the mail names it instead)."""

    path: Path
    payload: bytes | None


@dataclass(frozen=True)
class AttachmentPlan:
    files: list[tuple[str, bytes, str]]  # (file name, bytes, MIME type)
    attached: list[str]
    not_attached: list[str]


@dataclass(frozen=True)
class Picture:
    """An attached image shown in the HTML part too: a multipart/related part named by `cid`;
    `key` is the image source the template writes for it."""
    key: str
    cid: str
    name: str
    payload: bytes
    content_type: str


# Shown in the body as well as attached; never SVG, which may load or run what it holds.
PICTURE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


def plan_pictures(plan: AttachmentPlan, max_bytes: int, from_address: str) -> list[Picture]:
    """The attached images that fit a second time (inline) within the size limit."""
    room = max_bytes - sum(len(payload) for _, payload, _ in plan.files)
    domain = parseaddr(from_address)[1].rpartition("@")[2] or "mailagent.invalid"
    pictures: list[Picture] = []
    for name, payload, content_type in plan.files:
        if content_type not in PICTURE_TYPES or len(payload) > room:
            continue
        room -= len(payload)
        cid = f"picture{len(pictures) + 1}.{secrets.token_hex(8)}@{clean_header(domain, 200)}"
        pictures.append(Picture(f"picture-{len(pictures) + 1}", cid, name, payload,
                                content_type))
    return pictures


def attachment_name(name: str) -> str:
    """A file name fit for a MIME header: one line, no control or invisible characters, no
    folder separators, at most 120 characters with its extension kept."""
    clean = clean_header(name, 400).replace("/", "_").replace("\\", "_").strip(". ") or "file"
    if len(clean) <= 120:
        return clean
    stem, dot, extension = clean.rpartition(".")
    return (stem[: 119 - len(extension)] + dot + extension) if dot and len(extension) < 10 \
        else clean[:120]


def plan_attachments(files: Sequence[FileToSend], max_bytes: int) -> AttachmentPlan:
    """Attach as they are if they fit; else one zip; else none, and say where they are."""
    present = [(f.path, f.payload) for f in files if f.payload is not None]
    missing = [str(f.path) for f in files if f.payload is None]
    total = sum(len(payload) for _, payload in present)
    if total <= max_bytes:
        names = [attachment_name(path.name) for path, _ in present]
        attached = [(name, payload, mimetypes.guess_type(name)[0] or "application/octet-stream")
                    for name, (_, payload) in zip(names, present, strict=True)]
        return AttachmentPlan(attached, names, missing)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, payload in present:
            archive.writestr(path.name, payload)
    if buffer.tell() <= max_bytes:
        return AttachmentPlan([("outputs.zip", buffer.getvalue(), "application/zip")],
                              [f"outputs.zip ({', '.join(p.name for p, _ in present)})"], missing)
    return AttachmentPlan([], [], [str(path) for path, _ in present] + missing)


def compose(smtp: SmtpSettings, target: ReplyTarget, kind: str, template: str,
            values: dict[str, Any], attachments: Sequence[FileToSend] = (),
            message_id: str | None = None) -> Outbound:
    """A reply in the target's thread, to the owner who wrote it, with text and HTML parts.

    What cannot be built as asked still goes out, saying why, so the owner always hears: as
    plain text when a template does not render, without the files when attaching them fails."""
    plan = plan_attachments(attachments, smtp.max_attachment_bytes)
    pictures = plan_pictures(plan, smtp.max_attachment_bytes, smtp.from_address)
    # A reply says so; a notice that answers no mail (no Message-ID to answer) does not.
    subject = reply_subject(target.subject) if target.message_id else clean_header(
        target.subject, 200)
    if kind == "approval":
        subject = question_subject(subject)
    message_id = message_id or new_message_id(smtp.from_address)
    shown = [{"key": p.key, "alt": re.sub(r"[\[\]\\]", "", p.name)} for p in pictures]
    try:
        source = render(template, **values, attached=plan.attached,
                        not_attached=plan.not_attached, pictures=shown)
        html: str | None = render("mail.html.j2", subject=subject, body=markdown_html(
            source, {p.key: p.cid for p in pictures}))
        text = markdown_text(source)
    except RenderError as exc:
        log.error("mail %s rendered as plain text: %s", kind, exc)
        text, html, pictures = plain_fallback(kind, values, exc), None, []
    try:
        message = _message(smtp, target, subject, message_id, text, html, plan.files, pictures)
    except (ValueError, TypeError) as exc:  # e.g. a file name the email package refuses
        log.error("mail %s sent without its attachments: %s", kind, exc)
        names = ", ".join(repr(name) for name, _, _ in plan.files)
        text += (f"\n\nThe files could not be attached ({type(exc).__name__}: {exc}): {names}. "
                 "They are still where the task left them.\n")
        message = _message(smtp, target, subject, message_id, text, None, [], [])
    return Outbound(message_id, kind, target.recipient, subject, message.as_bytes(),
                    target.task_id, target.conversation_id)


def _message(smtp: SmtpSettings, target: ReplyTarget, subject: str, message_id: str,
             text: str, html: str | None, files: Sequence[tuple[str, bytes, str]],
             pictures: Sequence[Picture]) -> EmailMessage:
    """multipart/mixed: the text and the HTML as alternatives (the HTML with its pictures as
    multipart/related parts), then the files, the pictures among them again as attachments."""
    message = EmailMessage()
    message["From"] = clean_header(smtp.from_address)
    message["To"] = clean_header(target.recipient)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = message_id
    references = [*target.references, *([target.message_id] if target.message_id else [])]
    if target.message_id:
        message["In-Reply-To"] = clean_header(target.message_id)
    if references:
        message["References"] = clean_header(" ".join(dict.fromkeys(references[-MAX_REFERENCES:])))
    message["Auto-Submitted"] = "auto-replied"
    if target.task_id is not None:
        message["X-Mailagent-Task"] = str(target.task_id)
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
        html_part = message.get_body(("html",))
        assert isinstance(html_part, EmailMessage)
        for picture in pictures:
            maintype, _, subtype = picture.content_type.partition("/")
            html_part.add_related(picture.payload, maintype=maintype, subtype=subtype,
                                  cid=f"<{picture.cid}>", filename=picture.name,
                                  disposition="inline")
    for name, payload, content_type in files:
        maintype, _, subtype = content_type.partition("/")
        message.add_attachment(payload, maintype=maintype, subtype=subtype, filename=name)
    return message


FALLBACK_FIELDS = ("answer", "body", "operation", "reason", "advice", "partial")


def plain_fallback(kind: str, values: dict[str, Any], error: RenderError) -> str:
    """The mail's values as plain lines, for when its template cannot be rendered."""
    lines = [f"mailagent could not write this {kind} mail as usual: {error}", ""]
    if values.get("task_id") is not None:
        lines.append(f"Task #{values['task_id']}")
    lines += [str(values[key]) for key in FALLBACK_FIELDS if values.get(key)]
    changes = values.get("changes") or []
    if changes:
        lines += ["", "Files changed:", *[f"- {change}" for change in changes]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- sending


def _client(settings: SmtpSettings) -> aiosmtplib.SMTP:
    context = ssl.create_default_context(cafile=settings.ca_file)
    return aiosmtplib.SMTP(
        hostname=settings.host, port=settings.port, timeout=settings.timeout_seconds,
        use_tls=settings.security == "ssl", start_tls=settings.security == "starttls",
        tls_context=context,
    )


async def _connect(settings: SmtpSettings) -> aiosmtplib.SMTP:
    client = _client(settings)
    where = f"{settings.host}:{settings.port}"
    try:
        await client.connect()
        if settings.username is not None and settings.oauth is not None:
            token = await asyncio.to_thread(oauth.access_token, settings.oauth, settings.username)
            await client.auth_xoauth2(settings.username, token)
        elif settings.username is not None:
            await client.login(settings.username, settings.password or "")
    except aiosmtplib.SMTPAuthenticationError as exc:
        client.close()
        what = "run `mailagent init --oauth` again" if settings.oauth else "the password"
        raise SmtpError(f"SMTP login as {settings.username} on {where} was refused: check "
                        f"smtp.username and {what}", transient=False) from exc
    except OAuthError as exc:
        client.close()
        raise SmtpError(f"no OAuth access token for SMTP: {exc}",
                        transient=exc.transient) from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        client.close()
        raise SmtpError(f"cannot reach SMTP server {where} ({exc}): check smtp.host, "
                        "smtp.port and smtp.security", transient=True) from exc
    return client


async def check_smtp(settings: SmtpSettings) -> None:
    """Connect, secure and log in as the config says; raise SmtpError with what to fix."""
    client = await _connect(settings)
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        client.close()


class Courier:
    """One SMTP connection, kept while replies keep coming: a backlog sends hundreds of them,
    and a connection with its greeting, TLS and login per mail would cost more than the mail.

    A kept connection is checked with NOOP before it is used again, so that a server that
    dropped it meanwhile costs a reconnect, never a mail with an unknown outcome. It is closed
    after `KEEP_SECONDS` without mail, and after any failure.
    """

    KEEP_SECONDS = 10.0

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self.client: aiosmtplib.SMTP | None = None
        self.used_at = 0.0

    async def send(self, mail: OutboxView,
                   envelope: Sequence[str] | None = None) -> tuple[str, str]:
        """Hand one mail to SMTP, to `envelope` (default its recipient): (outcome, detail).
        Before DATA a failure is retried; after it, a broken connection leaves the outcome
        unknown."""
        sender = parseaddr(self.settings.from_address)[1]
        try:
            client = await self.connection()
        except SmtpError as exc:
            return (SendOutcome.RETRY if exc.transient else SendOutcome.FAILED), str(exc)
        try:
            await client.sendmail(sender, list(envelope or [mail.recipient]), mail.raw)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            await self.close()
            codes = [r.code for r in exc.recipients]
            transient = all(400 <= c < 500 for c in codes)
            return (SendOutcome.RETRY if transient else SendOutcome.FAILED), str(exc)
        except aiosmtplib.SMTPResponseException as exc:
            await self.close()
            return (SendOutcome.RETRY if 400 <= exc.code < 500 else SendOutcome.FAILED), \
                f"{exc.code} {exc.message}"
        except (aiosmtplib.SMTPException, OSError) as exc:
            await self.close()
            return SendOutcome.UNKNOWN, f"connection lost while sending: {exc}"
        self.used_at = time.monotonic()
        return SendOutcome.SENT, ""

    async def connection(self) -> aiosmtplib.SMTP:
        if self.client is not None:
            try:
                await self.client.noop()
                return self.client
            except (aiosmtplib.SMTPException, OSError):
                self.client.close()
                self.client = None
        self.client = await _connect(self.settings)
        return self.client

    def idle_close_in(self) -> float:
        return max(0.0, self.KEEP_SECONDS - (time.monotonic() - self.used_at))

    async def close_if_idle(self) -> None:
        if self.client is not None and time.monotonic() - self.used_at > self.KEEP_SECONDS:
            await self.close()

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()


def retry_delay(attempts: int) -> float:
    base: float = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2.0 ** max(attempts - 1, 0))
    return base * random.uniform(0.5, 1.0)


class Postman:
    """Sends what the outbox holds; a mail's row and Message-ID exist before any attempt.

    Before each send, `envelope_of` (mail/drafts.py) says to whom: a row goes to anyone but
    `own_addresses` (the owners' and the agent's) only as a draft the owner approved, byte for
    byte; any other row is refused there and recorded as failed, whatever wrote it."""

    def __init__(self, settings: SmtpSettings, store: Store, bell: Bell, *,
                 own_addresses: frozenset[str],
                 find_in_sent: Callable[[str], Awaitable[bool | None]],
                 save_to_sent: Callable[[bytes], Awaitable[None]],
                 failpoint_name: str | None = None) -> None:
        self.settings, self.store = settings, store
        self.own_addresses = frozenset(a.lower() for a in own_addresses)
        self.find_in_sent, self.save_to_sent = find_in_sent, save_to_sent
        self.failpoint_name = failpoint_name
        self.wake = bell  # rung by whatever queues a mail
        self.courier = Courier(settings)

    async def run(self, stop: asyncio.Event) -> None:
        await self.reconcile()
        while not stop.is_set():
            self.wake.clear()  # before looking: a mail queued while sending wakes the next look
            for mail in self.store.due_mail(datetime.now(UTC)):
                if stop.is_set():
                    break
                await self.deliver(mail)
            await self.courier.close_if_idle()
            waits = [asyncio.create_task(self.wake.wait()), asyncio.create_task(stop.wait())]
            wait = quiet_seconds(self.store.next_mail_at(), datetime.now(UTC))
            if self.courier.client is not None:  # wake to close a connection left idle
                wait = min(wait, self.courier.idle_close_in())
            await asyncio.wait(waits, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waits:
                waiter.cancel()
        await self.courier.close()

    async def reconcile(self) -> None:
        """Mail left `sending` by a crash has an unknown outcome: settle each one."""
        for mail in self.store.interrupted_sends():
            await self.settle_unknown(mail)

    async def settle_unknown(self, mail: OutboxView) -> None:
        """Sent if the Sent folder has its Message-ID; otherwise queued again, same Message-ID
        (so a client that did get it shows one mail)."""
        found = await self.find_in_sent(mail.message_id)
        if found:
            self.store.set_mail_state(mail.outbox_id, "sent", "found in the Sent folder")
            return
        why = ("not in the Sent folder" if found is False
               else "no Sent folder to check (imap.sent_folder)")
        log.warning("mail %s had an unknown outcome, %s: sending it again", mail.message_id, why)
        later = datetime.now(UTC) + timedelta(seconds=retry_delay(mail.attempts))
        self.store.set_mail_state(mail.outbox_id, "queued", f"unknown outcome, {why}",
                                  retry_at=later)

    async def deliver(self, mail: OutboxView) -> None:
        failpoint(self.failpoint_name, "after-queue")  # in the outbox, no attempt made yet
        from mailagent.mail.drafts import envelope_of  # it builds on this module

        draft = self.store.draft(mail.draft_id) if mail.draft_id is not None else None
        envelope, refusal = envelope_of(mail, self.own_addresses, draft)
        if refusal:
            log.warning("mail refused message_id=%s task_id=%s: %s", mail.message_id,
                        mail.task_id, refusal)
            self.store.set_mail_state(mail.outbox_id, "failed", refusal)
            return
        self.store.set_mail_state(mail.outbox_id, "sending")
        failpoint(self.failpoint_name, "before-smtp")  # marked sending, nothing handed over
        outcome, detail = await self.courier.send(mail, envelope)
        failpoint(self.failpoint_name, "after-smtp")  # sent, but not yet recorded
        log.info("mail %s message_id=%s task_id=%s %s", outcome, mail.message_id, mail.task_id,
                 detail)
        if outcome == SendOutcome.SENT:
            self.store.set_mail_state(mail.outbox_id, "sent")
            await self.save_to_sent(mail.raw)
        elif outcome == SendOutcome.RETRY:
            later = datetime.now(UTC) + timedelta(seconds=retry_delay(mail.attempts + 1))
            self.store.set_mail_state(mail.outbox_id, "queued", detail, retry_at=later)
        elif outcome == SendOutcome.FAILED:
            self.store.set_mail_state(mail.outbox_id, "failed", detail)
        else:
            self.store.set_mail_state(mail.outbox_id, "unknown", detail)
            await self.settle_unknown(mail)
