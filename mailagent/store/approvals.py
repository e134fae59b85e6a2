"""Store queries of approvals: the questions a task waits on, and the owner's answers.

In: calls from the worker and mail commands. Out: frozen `ApprovalView`s. Side effects: the
`approval` table and the state of the task that waits. Settling an approval is one transaction
that only a pending approval passes, so an answer counts once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlmodel import col, select

from mailagent.store.db import MailStore, _approval_view, _audit, _enqueue, _move
from mailagent.store.repair import close_open_calls
from mailagent.store.tables import Approval, Task, ToolCallRow, utcnow
from mailagent.store.views import ApprovalView, Outbound


class ApprovalStore(MailStore):
    """Approvals: the questions tasks wait on, and the owner's answers."""

    def request_approval(self, task_id: int, tool_use_id: str, token: str, digest: str,
                         operation: str, expires_at: datetime, reason: str,
                         mail: Outbound | None) -> None:
        """The task waits, the approval is recorded and its mail queued: one transaction."""
        with self.session() as s:
            task = _move(s, task_id, "waiting_approval", reason)
            s.add(Approval(task_id=task_id, tool_use_id=tool_use_id, token=token, digest=digest,
                           operation=operation, message_id=mail.message_id if mail else "",
                           created_at=utcnow(), expires_at=expires_at))
            _audit(s, "approval.requested", operation, task.raw_message_id, task_id,
                   {"tool_use_id": tool_use_id, "digest": digest})
            if mail is not None:
                _enqueue(s, mail)

    def approvals(self, task_id: int | None = None,
                  states: Sequence[str] = ("pending",)) -> list[ApprovalView]:
        with self.session() as s:
            query = select(Approval).where(col(Approval.state).in_(list(states)))
            if task_id is not None:
                query = query.where(Approval.task_id == task_id)
            return [_approval_view(r) for r in s.exec(query.order_by(col(Approval.approval_id)))]

    def approval_for(self, task_id: int, tool_use_id: str) -> ApprovalView | None:
        with self.session() as s:
            row = s.exec(select(Approval).where(Approval.task_id == task_id,
                                                Approval.tool_use_id == tool_use_id)
                         .order_by(col(Approval.approval_id).desc())).first()
            return _approval_view(row) if row else None

    def settle_approval(self, approval_id: int, state: str, reason: str) -> bool:
        """pending -> approved | denied | expired, once; False if it was settled already.

        Approved: the tool call may run and the task goes back to the queue. Otherwise the
        call is refused and the task ends, cancelled.
        """
        with self.session() as s:
            row = s.get(Approval, approval_id)
            if row is None or row.state != "pending" or row.schedule_id is not None \
                    or row.draft_id is not None:
                return False  # a schedule's or a draft's approval is settled with it
            row.state, row.settled_at = state, utcnow()
            s.add(row)
            task = s.get(Task, row.task_id)
            assert task is not None
            call = s.exec(select(ToolCallRow).where(ToolCallRow.task_id == row.task_id,
                                                    ToolCallRow.tool_use_id == row.tool_use_id)
                          ).first()
            if call is not None:
                call.state = "approved" if state == "approved" else "refused"
                s.add(call)
            elif state == "approved":  # a budget pause: one more budget step
                task.budget_steps += 1
            if task.state == "waiting_approval" and (call is not None or state == "approved"):
                task.state = "queued" if state == "approved" else "cancelled"
                task.reason, task.updated_at = reason, utcnow()
                s.add(task)
                if task.state == "cancelled":
                    close_open_calls(s, task)
            _audit(s, f"approval.{state}", reason, None, row.task_id,
                   {"operation": row.operation, "digest": row.digest})
            return True
