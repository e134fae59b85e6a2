"""Store queries of halts: tools stopped because the service cannot go on with them.

In: calls from the service (a halt, mail kept while it lasts, noticing its end) and from the
CLI (`resume`, `status`, `check`). Out: `HaltView`s and counts. Side effects: the `halt` table,
held rows of the owner mail kept meanwhile, the owner's mails in the outbox, and `halt.*` audit
rows. As everywhere in the store, it decides nothing. A halt, its audit row and the owner's mail
are one transaction, and one halt at most is in force: two failed checks at the same moment make
one halt and one mail. A halt ends only by `resume`; a restart finds it in force. Also here:
the record of a mail that had to go straight to SMTP while the database was full.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from mailagent.store.db import MailStore, _audit, _enqueue, _id, _utc
from mailagent.store.held import hold_row
from mailagent.store.tables import Halt, HeldMail, OutboxRow, utcnow
from mailagent.store.views import Outbound


@dataclass(frozen=True)
class HaltView:
    halt_id: int
    reason: str  # one line: what changed, after which command
    detail: dict[str, Any]  # problems, task_id, conversation, command
    halted_at: datetime  # UTC
    kept_notice_at: datetime | None  # when the owner was told that their mail is kept


def _view(row: Halt) -> HaltView:
    return HaltView(_id(row.halt_id), row.reason, json.loads(row.detail_json),
                    _utc(row.halted_at) or row.halted_at, _utc(row.kept_notice_at))


def _active(s: Session) -> Halt | None:
    return s.exec(select(Halt).where(col(Halt.resumed_at).is_(None))
                  .order_by(col(Halt.halt_id).desc())).first()


def active_halt(store: MailStore) -> HaltView | None:
    """The halt in force, if any."""
    with store.session() as s:
        row = _active(s)
        return _view(row) if row is not None else None


def halt(store: MailStore, reason: str, detail: dict[str, Any],
         mail: Outbound | None) -> HaltView | None:
    """Record a halt and queue the owner's mail, at once; None (and nothing written) when a
    halt is in force already."""
    with store.session() as s:
        if _active(s) is not None:
            return None
        row = Halt(reason=reason, detail_json=json.dumps(detail, default=str),
                   halted_at=utcnow())
        s.add(row)
        s.flush()
        _audit(s, "halt.stopped", reason, None, detail.get("task_id"), detail)
        if mail is not None:
            _enqueue(s, mail)
        return _view(row)


def keep(store: MailStore, raw_message_id: int, owner_address: str, reason: str,
         notice: Outbound | None) -> None:
    """Hold owner mail that came while tools are stopped; with `notice`, the halt records that
    the owner was told, in the same transaction (so they are told once)."""
    with store.session() as s:
        hold_row(s, raw_message_id, owner_address, reason, False, notice)
        row = _active(s)
        if notice is not None and row is not None:
            row.kept_notice_at = utcnow()
            s.add(row)


def resume(store: MailStore) -> tuple[HaltView, int] | None:
    """End the halt in force: tools may run again, and the mail kept since it began is let go
    (it runs as if released by the owner). (the halt, how many kept mails run now), or None
    when no halt is in force."""
    with store.session() as s:
        row = _active(s)
        if row is None:
            return None
        now = utcnow()
        row.resumed_at = now
        s.add(row)
        kept = list(s.exec(select(HeldMail).where(col(HeldMail.held_at) >= row.halted_at)))
        for held in kept:
            held.release_requested_at = held.release_requested_at or now
            s.add(held)
        _audit(s, "halt.resumed", f"resumed by the owner; {len(kept)} kept mail(s) run now",
               None, None, {"halt_id": row.halt_id})
        return _view(row), len(kept)


def record_sent_straight(store: MailStore, outbound: Outbound, note: str) -> None:
    """A mail that went straight to SMTP because the outbox had no room (the database was
    full), recorded once there is room: its row, already sent, and its Message-ID as ours."""
    with store.session() as s:
        _enqueue(s, outbound)
        row = s.exec(select(OutboxRow).where(OutboxRow.message_id == outbound.message_id)).one()
        row.state, row.attempts, row.sent_at, row.last_error = "sent", 1, utcnow(), note
        s.add(row)
