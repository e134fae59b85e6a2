"""Notify: outbound mail over SMTP. The only importer of aiosmtplib.

In: `SmtpSettings`. Out, for now: a login check for `mailagent check`. Replies, the outbox and
templates build on this module. It must never take a recipient or a header from mail content.
"""

from __future__ import annotations

import ssl

import aiosmtplib

from mailagent.config import SmtpSettings
from mailagent.errors import MailagentError


class SmtpError(MailagentError):
    """The SMTP server could not be reached or refused us."""


def _client(settings: SmtpSettings) -> aiosmtplib.SMTP:
    context = ssl.create_default_context(cafile=settings.ca_file)
    return aiosmtplib.SMTP(
        hostname=settings.host, port=settings.port, timeout=settings.timeout_seconds,
        use_tls=settings.security == "ssl", start_tls=settings.security == "starttls",
        tls_context=context,
    )


async def check_smtp(settings: SmtpSettings) -> None:
    """Connect, secure and log in as the config says; raise SmtpError with what to fix."""
    client = _client(settings)
    where = f"{settings.host}:{settings.port}"
    try:
        await client.connect()
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise SmtpError(f"cannot reach SMTP server {where} ({exc}): check smtp.host, "
                        "smtp.port and smtp.security") from exc
    try:
        if settings.username is not None:
            await client.login(settings.username, settings.password or "")
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise SmtpError(f"SMTP login as {settings.username} on {where} was refused: check "
                        "smtp.username and the password") from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise SmtpError(f"SMTP login on {where} failed: {exc}") from exc
    finally:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()
