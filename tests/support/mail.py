"""Building test mail as raw bytes, the way a phone and a provider's MX would write it."""

from __future__ import annotations

from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, formatdate, make_msgid

OWNER = "owner@example.com"
AGENT = "agent@example.com"
MX = "mx.example.com"
PASS_RESULTS = f"{MX}; dkim=pass header.d=example.com; spf=pass; dmarc=pass header.from=example.com"


def owner_mail(
    subject: str = "Summarise the reports",
    body: str = "Please summarise the files in ~/Reports.",
    *,
    sender: str = f"Owner <{OWNER}>",
    auth: str | None = PASS_RESULTS,
    headers: dict[str, str] | None = None,
    message_id: str | None = None,
    in_reply_to: str | None = None,
    date: datetime | None = None,
    attachments: list[tuple[str, str, bytes]] | None = None,
) -> bytes:
    """An owner's mail as delivered: Authentication-Results on top, then the client's headers."""
    message = EmailMessage()
    if auth is not None:
        message["Authentication-Results"] = auth
    message["From"] = sender
    message["To"] = AGENT
    message["Subject"] = subject
    message["Date"] = format_datetime(date) if date else formatdate(localtime=True)
    message["Message-ID"] = message_id or make_msgid(domain="example.com")
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    message.set_content(body)
    for filename, content_type, payload in attachments or []:
        maintype, subtype = content_type.split("/", 1)
        message.add_attachment(payload, maintype=maintype, subtype=subtype, filename=filename)
    raw = message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    # Extra headers go in as written (duplicates included), below the ones above.
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head, _, rest = raw.partition(b"\r\n\r\n")
    return head + b"\r\n" + extra.encode() + b"\r\n" + rest


def message_id_of(raw: bytes) -> str:
    for line in raw.split(b"\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    raise ValueError("no Message-ID")
