"""Store queries of the outbox: mail written before it is sent, and what became of it.

In: calls from the worker, the service's send leg and the CLI. Out: frozen `OutboxView`s.
Side effects: the `outbox` table. Each mail is a row with its Message-ID before any send is
tried, so that a retry never sends a mail twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func
from sqlmodel import col, select

from mailagent.errors import StoreError
from mailagent.store.db import MailStore, _audit, _aware, _enqueue, _outbox_view
from mailagent.store.tables import OutboxRow, utcnow
from mailagent.store.views import Outbound, OutboxView


class OutboxStore(MailStore):
    """The outbox: mail written before it is sent, and what became of it."""

    def enqueue_mail(self, outbound: Outbound) -> None:
        with self.session() as s:
            _enqueue(s, outbound)

    def next_mail_at(self) -> datetime | None:
        """When the earliest queued mail may be sent (a retry waits), or None if none waits."""
        with self.session() as s:
            first = s.exec(select(func.min(OutboxRow.next_attempt_at))
                           .where(OutboxRow.state == "queued")).one()
            return _aware(first) if first is not None else None

    def due_mail(self, now: datetime) -> list[OutboxView]:
        with self.session() as s:
            rows = s.exec(select(OutboxRow).where(OutboxRow.state == "queued").order_by(
                col(OutboxRow.outbox_id)))
            return [_outbox_view(r) for r in rows if _aware(r.next_attempt_at) <= now]

    def outbox(self, states: Sequence[str] = ("queued", "sending", "sent", "failed",
                                              "unknown")) -> list[OutboxView]:
        with self.session() as s:
            rows = s.exec(select(OutboxRow).where(col(OutboxRow.state).in_(list(states)))
                          .order_by(col(OutboxRow.outbox_id)))
            return [_outbox_view(r) for r in rows]

    def set_mail_state(self, outbox_id: int, state: str, error: str = "",
                       retry_at: datetime | None = None) -> None:
        """queued -> sending -> sent | failed | unknown; a retry goes back to queued."""
        with self.session() as s:
            row = s.get(OutboxRow, outbox_id)
            if row is None:
                raise StoreError(f"no outbox row {outbox_id}")
            row.state, row.last_error = state, error or row.last_error
            if state == "sending":
                row.attempts += 1
            if state == "sent":
                row.sent_at = utcnow()
            if retry_at is not None:
                row.next_attempt_at = retry_at
            s.add(row)
            if state in ("sent", "failed", "unknown"):
                _audit(s, f"mail.{state}", error, None, row.task_id,
                       {"message_id": row.message_id, "attempts": row.attempts})

    def interrupted_sends(self) -> list[OutboxView]:
        """Mail that was being handed to SMTP when the service stopped: its outcome is unknown."""
        with self.session() as s:
            rows = list(s.exec(select(OutboxRow).where(OutboxRow.state == "sending")))
            for row in rows:
                row.state = "unknown"
                s.add(row)
            return [_outbox_view(r) for r in rows]
