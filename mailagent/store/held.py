"""Store queries of held mail: owner mail the per-sender rate limit keeps back (S4, L6).

In: calls from the service (holding and running held mail) and from the `release` command.
Out: frozen `HeldView`s and counts. Side effects: the `held_mail` table, the raw message's state
and the owner's notice in the outbox. As everywhere in the store, it decides nothing. A held
mail's raw bytes stay in `raw_message`, so a restart loses nothing: it is still held after it.
Its held row is deleted in the transaction that records its outcome (a task, a command or a
rejection), so a crash while held mail runs leaves it held: never lost, never run twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session, col, func, select

from mailagent.store.db import _audit, _enqueue, _utc
from mailagent.store.schedules import ScheduleStore
from mailagent.store.tables import HeldMail, OutboxRow, RawMessage, Task, utcnow
from mailagent.store.views import HeldView, Outbound

NOTICE_KIND = "held"


def _view(row: HeldMail) -> HeldView:
    return HeldView(row.raw_message_id, row.owner_address, row.reason,
                    _utc(row.held_at) or row.held_at, row.runs_by_itself,
                    row.release_requested_at is not None)


def hold_row(s: Session, raw_message_id: int, owner_address: str, reason: str,
             runs_by_itself: bool, notice: Outbound | None) -> None:
    """Hold a stored mail in the caller's transaction. Held mail that was let go and is held
    again (tools were stopped while it ran) is held anew, from now, for the new reason."""
    row = s.get(RawMessage, raw_message_id)
    if row is not None:
        # A fresh count of attempts: being held is no failed attempt.
        row.state, row.outcome, row.reason, row.attempts = "held", "held", reason, 0
        s.add(row)
    held = s.get(HeldMail, raw_message_id) or HeldMail(
        raw_message_id=raw_message_id, owner_address=owner_address, reason=reason,
        held_at=utcnow())
    held.reason, held.held_at, held.runs_by_itself = reason, utcnow(), runs_by_itself
    held.release_requested_at = None
    s.add(held)
    _audit(s, "intake.held", reason, raw_message_id, None,
           {"runs_by_itself": runs_by_itself, "notice": notice is not None})
    if notice is not None:
        _enqueue(s, notice)


class HeldStore(ScheduleStore):
    """Held mail: hold, list, ask to release, and take back for processing."""

    def hold(self, raw_message_id: int, owner_address: str, reason: str, runs_by_itself: bool,
             notice: Outbound | None = None) -> None:
        """Keep a stored mail back (and queue the owner's notice, if any): one transaction."""
        with self.session() as s:
            hold_row(s, raw_message_id, owner_address, reason, runs_by_itself, notice)

    def held(self, owner_address: str | None = None) -> list[HeldView]:
        """Held mail, oldest first; of one owner address if given."""
        with self.session() as s:
            query = select(HeldMail).order_by(col(HeldMail.raw_message_id))
            if owner_address is not None:
                query = query.where(HeldMail.owner_address == owner_address)
            return [_view(r) for r in s.exec(query)]

    def request_release(self, owner_address: str) -> int:
        """Mark every held mail of this owner to run now; how many there are."""
        with self.session() as s:
            rows = list(s.exec(select(HeldMail).where(HeldMail.owner_address == owner_address)))
            now = utcnow()
            for row in rows:
                row.release_requested_at = row.release_requested_at or now
                s.add(row)
            if rows:
                _audit(s, "held.release", f"{len(rows)} held mail(s) to run now", None, None,
                       {"owner": owner_address})
            return len(rows)

    def last_notice_at(self, owner_address: str) -> datetime | None:
        """When this owner was last told of held mail."""
        with self.session() as s:
            at = s.exec(select(func.max(OutboxRow.created_at)).where(
                OutboxRow.kind == NOTICE_KIND, OutboxRow.recipient == owner_address)).one()
            return _utc(at)

    def is_held_notice(self, message_ids: Sequence[str]) -> bool:
        """Whether one of these ids is a notice of held mail that we sent."""
        if not message_ids:
            return False
        with self.session() as s:
            return s.exec(select(OutboxRow.outbox_id).where(
                OutboxRow.kind == NOTICE_KIND,
                col(OutboxRow.message_id).in_(list(message_ids)))).first() is not None

    def ran_by_itself(self, task_id: int) -> bool:
        """Whether this task came from held mail that ran without the owner's `release`."""
        with self.session() as s:
            task = s.get(Task, task_id)
            return task is not None and json.loads(task.data_json).get("released") == "by_itself"
