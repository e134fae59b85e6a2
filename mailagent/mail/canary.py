"""Canary: a liveness probe of the inbound path, mailed to ourselves and expected back.

In: `CanarySettings`, the store, the SMTP From address, and a secret key in the data directory.
Out: every `canary.interval_minutes` a probe in the outbox, sent like any mail; `take` tells the
service whether a stored message is one of our probes coming back (then it is recorded, and is
no task, no command, no refusal); `status_lines` for `mailagent status` and the `status` command.
Side effects: `<data_dir>/canary.key` (made once, mode 0600), the probe table, and one notice to
the owner (by SMTP, the path that still works) when a probe is not back within
`canary.timeout_minutes`, and one when the inbound path works again.
It must never take a mail it cannot verify for a probe: the HMAC binds the nonce, the send time
and the Message-ID under a key only this data directory holds, and each nonce is taken once. A
forged or replayed probe goes on to intake like any other mail, and is refused there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import secrets
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, parseaddr

from mailagent.config import Settings
from mailagent.content import clean_header
from mailagent.mail.intake import message_ids, parse_headers
from mailagent.mail.notices import Notices
from mailagent.mail.notify import new_message_id
from mailagent.store import Outbound, Store
from mailagent.store.probes import ProbeReport, probe_report, queue_probe, set_alarm, take_probe
from mailagent.tasks.workspace import data_key

log = logging.getLogger(__name__)

HEADER = "X-Mailagent-Canary"
VERSION = "v1"


def sign(key: bytes, nonce: str, sent: int, message_id: str) -> str:
    payload = f"{VERSION}|{nonce}|{sent}|{message_id}".encode()
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def compose_probe(settings: Settings, key: bytes, nonce: str, now: datetime) -> Outbound:
    """A short plain mail to our own address, marked and signed so we know it coming back."""
    smtp = settings.smtp
    recipient = settings.canary.address or parseaddr(smtp.from_address)[1]
    message_id = new_message_id(smtp.from_address)
    sent = int(now.timestamp())
    message = EmailMessage()
    message["From"] = clean_header(smtp.from_address)
    message["To"] = clean_header(recipient)
    message["Subject"] = f"mailagent inbound check {nonce}"
    message["Date"] = formatdate(sent, localtime=True)
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    message[HEADER] = (f"{VERSION}; nonce={nonce}; sent={sent}; "
                       f"mac={sign(key, nonce, sent, message_id)}")
    message.set_content("mailagent checks that mail to this address reaches it. This mail is "
                        "handled automatically; there is nothing to do.\n")
    return Outbound(message_id, "canary", recipient, str(message["Subject"]), message.as_bytes())


def verified_nonce(raw: bytes, key: bytes) -> tuple[str, str] | None:
    """(nonce, Message-ID) of a probe whose signature is right, else None. Pure."""
    headers = parse_headers(raw)
    values = headers.get_all(HEADER) or []
    ids = message_ids(str(headers.get("Message-ID", "")))
    if len(values) != 1 or len(ids) != 1:
        return None
    fields = dict(part.strip().partition("=")[::2] for part in str(values[0]).split(";")[1:])
    nonce, sent, mac = fields.get("nonce", ""), fields.get("sent", ""), fields.get("mac", "")
    if not str(values[0]).startswith(VERSION) or not nonce or not sent.isdigit():
        return None
    if not hmac.compare_digest(mac, sign(key, nonce, int(sent), ids[0])):
        return None
    return nonce, ids[0]


class Canary:
    """Sends probes on time, takes them back, and tells the owner when they stop coming."""

    def __init__(self, settings: Settings, store: Store, notices: Notices) -> None:
        self.settings, self.store = settings, store
        self.tell_owner, self.on_mail = notices.tell, notices.mail_bell.ring
        self.started_at = datetime.now(UTC)  # the first probe goes one interval after start

    @property
    def interval(self) -> timedelta:
        return timedelta(minutes=self.settings.canary.interval_minutes)

    @property
    def timeout(self) -> timedelta:
        return timedelta(minutes=self.settings.canary.timeout_minutes)

    @functools.cached_property
    def key(self) -> bytes:
        """Made at the first probe sent or checked, so a switched-off canary makes none."""
        return data_key(self.settings.data_dir, "canary.key")

    def take(self, raw_message_id: int, raw: bytes) -> bool:
        """Whether this stored message is one of our probes, back now (and recorded so)."""
        if HEADER.lower().encode() not in raw[:65536].lower():
            return False
        verified = verified_nonce(raw, self.key)
        if verified is None:
            return False
        seconds = take_probe(self.store, raw_message_id, *verified)
        if seconds is None:
            return False
        log.info("probe back raw_message_id=%s after %.1f s", raw_message_id, seconds)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        if self.interval <= timedelta(0):
            return
        pause = min(30.0, max(0.5, self.interval.total_seconds() / 4))
        while not stop.is_set():
            self.tick(datetime.now(UTC))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=pause)

    def tick(self, now: datetime) -> None:
        """Send a probe when one is due; raise or clear the alarm, telling the owner once."""
        report = probe_report(self.store, self.timeout, now)
        if now - (report.last_queued_at or self.started_at) >= self.interval:
            nonce = secrets.token_hex(8)
            queue_probe(self.store, compose_probe(self.settings, self.key, nonce, now), nonce)
            log.info("probe queued nonce=%s", nonce)
            self.on_mail()
        if report.overdue_since is not None and not report.alarm:
            self.alarm(report)
        elif report.overdue_since is None and report.alarm:
            self.recovered(report)

    def alarm(self, report: ProbeReport) -> None:
        since = report.overdue_since
        assert since is not None
        reason = (f"a probe mailed to {self.probe_address()} at {since:%Y-%m-%d %H:%M} UTC "
                  f"did not come back within {self.settings.canary.timeout_minutes:g} minutes")
        log.error("inbound mail is BROKEN: %s", reason)
        set_alarm(self.store, True, reason)
        self.tell_owner("mailagent: mail to me is not arriving", (
            f"Mail sent to me does not seem to reach me: {reason}.\n\nUntil this is fixed, "
            "tasks you mail me may wait unseen. Check the IMAP settings and the mailbox (is it "
            "full? is the password still valid?); `mailagent status` and `mailagent check` on "
            "the computer say more. I will mail you again once mail arrives."))

    def recovered(self, report: ProbeReport) -> None:
        back = report.last_returned_at
        when = f"{back:%Y-%m-%d %H:%M} UTC" if back else "now"
        log.info("inbound mail works again: a probe came back at %s", when)
        set_alarm(self.store, False, f"a probe came back at {when}")
        self.tell_owner("mailagent: mail to me arrives again",
                        f"Mail sent to me arrives again: a probe came back at {when}. Mail "
                        "you sent meanwhile is taken now, in order.")

    def probe_address(self) -> str:
        return self.settings.canary.address or parseaddr(self.settings.smtp.from_address)[1]


def status_lines(store: Store, now: datetime | None = None) -> list[str]:
    """What the probe says about the inbound path, for both status outputs."""
    report = probe_report(store, timedelta(days=3650), now or datetime.now(UTC))
    if report.alarm:
        latest = store.audit_events("canary.broken", limit=1)
        why = latest[0].reason if latest else "a probe did not come back"
        back = (f"; the last probe back came at {report.last_returned_at:%Y-%m-%d %H:%M} UTC"
                if report.last_returned_at else "")
        return [f"Inbound mail: BROKEN: {why}{back}"]
    if report.last_returned_at is not None and report.last_round_trip_seconds is not None:
        return [f"Inbound mail: ok, the last probe came back at "
                f"{report.last_returned_at:%Y-%m-%d %H:%M} UTC after "
                f"{report.last_round_trip_seconds:.0f} s"]
    if report.last_queued_at is not None:
        return [f"Inbound mail: a probe was sent at {report.last_queued_at:%Y-%m-%d %H:%M} UTC, "
                "none back yet"]
    return ["Inbound mail: not checked (no probe sent; see [canary] interval_minutes)"]
