"""Store queries of liveness probes: queueing one, its return, and what status reports.

In: calls from the canary and the status outputs. Out: `ProbeReport`. Side effects: the `probe`
table, the probe's outbox row, and `canary.*` audit rows. As everywhere in the store, it decides
nothing: whether a probe is genuine is decided by the canary (its HMAC) before it gets here;
here a nonce is taken once, and only with the Message-ID it was sent with.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import col, select

from mailagent.store.db import MailStore, _aware, _enqueue, _processed
from mailagent.store.db import _audit as audit_row
from mailagent.store.tables import AuditEvent, OutboxRow, Probe, utcnow
from mailagent.store.views import Outbound

ALARM_KINDS = ("canary.broken", "canary.recovered")


@dataclass(frozen=True)
class ProbeReport:
    last_queued_at: datetime | None
    last_returned_at: datetime | None
    last_round_trip_seconds: float | None
    # When the oldest probe sent after the last one that came back was sent, if it is not back
    # within the timeout: since then, mail to us has not been seen arriving.
    overdue_since: datetime | None
    alarm: bool  # the owner was told the inbound path is broken, and not yet that it recovered


def queue_probe(store: MailStore, outbound: Outbound, nonce: str) -> None:
    """The probe's row and its outbox row, in one transaction."""
    with store.session() as s:
        _enqueue(s, outbound)
        s.add(Probe(nonce=nonce, message_id=outbound.message_id, queued_at=utcnow()))


def take_probe(store: MailStore, raw_message_id: int, nonce: str,
               message_id: str | None) -> float | None:
    """Record that probe `nonce` came back: seconds since it was queued; None if no probe with
    this nonce and Message-ID is out (unknown, or back already: a replay)."""
    with store.session() as s:
        row = s.exec(select(Probe).where(Probe.nonce == nonce)).first()
        if row is None or row.message_id != message_id or row.returned_at is not None:
            return None
        now = utcnow()
        row.returned_at, row.raw_message_id = now, raw_message_id
        s.add(row)
        seconds = (now - _aware(row.queued_at)).total_seconds()
        _processed(s, raw_message_id, "probe", "our liveness probe came back")
        audit_row(s, "canary.returned", f"back after {seconds:.0f} s", raw_message_id, None,
                  {"nonce": nonce})
        return seconds


def probe_report(store: MailStore, timeout: timedelta, now: datetime) -> ProbeReport:
    with store.session() as s:
        last = s.exec(select(Probe).order_by(col(Probe.probe_id).desc()).limit(1)).first()
        back = s.exec(select(Probe).where(col(Probe.returned_at).is_not(None))
                      .order_by(col(Probe.returned_at).desc()).limit(1)).first()
        overdue_query = (
            select(OutboxRow.sent_at)
            .join(Probe, col(Probe.message_id) == col(OutboxRow.message_id))
            .where(col(Probe.returned_at).is_(None), col(OutboxRow.sent_at).is_not(None),
                   col(OutboxRow.sent_at) < now - timeout)
            .order_by(col(OutboxRow.sent_at)).limit(1))
        if back is not None:
            overdue_query = overdue_query.where(col(Probe.queued_at) > back.queued_at)
        overdue = s.exec(overdue_query).first()
        latest_alarm = s.exec(select(AuditEvent.kind)
                              .where(col(AuditEvent.kind).in_(ALARM_KINDS))
                              .order_by(col(AuditEvent.audit_id).desc()).limit(1)).first()
        returned_at = _aware(back.returned_at) if back and back.returned_at else None
        return ProbeReport(
            last_queued_at=_aware(last.queued_at) if last else None,
            last_returned_at=returned_at,
            last_round_trip_seconds=(returned_at - _aware(back.queued_at)).total_seconds()
            if back and returned_at else None,
            overdue_since=_aware(overdue) if overdue else None,
            alarm=latest_alarm == "canary.broken",
        )


def set_alarm(store: MailStore, broken: bool, reason: str) -> None:
    store.audit(ALARM_KINDS[0] if broken else ALARM_KINDS[1], reason)
