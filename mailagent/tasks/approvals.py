"""Approvals: a task that waits for the owner's `approve`, `deny` or `continue`, and the answer.

In: an `Outcome` that waits (a call the policy says to ask about, or a budget reached), and the
owner's reply commands. Out: the approval mail, bound by its Message-ID's token and by the
operation's digest; on an answer, the approval settled and the task going on or ended; with no
answer in `agent.approval_hours`, the approval expired. Side effects: the store and the outbox.
It must never settle an approval from a mail that does not answer the approval mail itself.
Built on the replies (an ended pause mails what was made), which build on the toolbox (an
approval judges the call again; an attachment is judged by the policy).
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta

from mailagent.agent.loop import Agent
from mailagent.agent.task import Outcome
from mailagent.bell import Bell
from mailagent.mail.notify import approval_message_id, compose
from mailagent.policy.calls import describe_operation, operation_digest
from mailagent.store import ApprovalView, CommandWork
from mailagent.tasks.commands import NOT_IN_THREAD
from mailagent.tasks.replies import Replies

log = logging.getLogger(__name__)


BUDGET_STEP = "one more budget step"


class Approvals(Replies):
    """Approvals and budget pauses of the worker's tasks. A part of `Worker`."""

    agent: Agent
    wake: Bell

    def ask_approval(self, task_id: int, outcome: Outcome) -> None:
        """Record what waits, bound to a digest and a token, and mail the owner the question."""
        assert outcome.call is not None
        name, tool_input = outcome.call["name"], outcome.call.get("input") or {}
        work = self.store.task_work(task_id)
        decision = self.judge_call(self.scope(work), name, tool_input)
        existing = self.store.approval_for(task_id, outcome.call["id"])
        if existing is not None and existing.state == "pending":
            self.store.set_task_state(task_id, "waiting_approval", outcome.reason)
            return
        token = secrets.token_hex(16)
        operation = describe_operation(name, tool_input, decision)
        hours = self.settings.agent.approval_hours
        mail = compose(self.settings.smtp, self.store.reply_target(task_id), "approval",
                       "approval.md.j2", {"task_id": task_id, "operation": operation,
                                          "reason": decision.reason, "hours": hours},
                       message_id=approval_message_id(self.settings.smtp.from_address, token))
        self.store.request_approval(task_id, outcome.call["id"], token,
                                    operation_digest(decision, name, tool_input), operation,
                                    datetime.now(UTC) + timedelta(hours=hours),
                                    outcome.reason, mail)

    def ask_to_continue(self, task_id: int, outcome: Outcome) -> None:
        """A task at its budget waits for `continue`; the question is an approval too."""
        work = self.store.task_work(task_id)
        token, hours = secrets.token_hex(16), self.settings.agent.approval_hours
        mail = compose(self.settings.smtp, self.store.reply_target(task_id), "approval",
                       "budget.md.j2", {"task_id": task_id, "reason": outcome.reason,
                                        "tokens": work.tokens, "cost": work.cost_usd,
                                        "partial": outcome.text, "hours": hours},
                       message_id=approval_message_id(self.settings.smtp.from_address, token))
        self.store.request_approval(task_id, "", token, "", BUDGET_STEP,
                                    datetime.now(UTC) + timedelta(hours=hours),
                                    outcome.reason, mail)

    def settle(self, command: CommandWork) -> str:
        """An `approve`, `deny` or `continue` reply: it must answer the approval mail itself,
        whose Message-ID carries the token."""
        if command.task_id is None:
            return NOT_IN_THREAD
        for approval in self.store.approvals(command.task_id):
            is_budget = approval.operation == BUDGET_STEP
            kind_fits = command.name == "deny" or (command.name == "continue") == is_budget
            if approval.message_id not in command.reply.references or not kind_fits:
                continue
            if approval.schedule_id is not None and self.schedule_approvals is not None:
                return self.schedule_approvals.settle(approval, command.name)
            if approval.draft_id is not None:
                return self.draft_approvals.settle(approval, command.name)
            if approval.expires_at < datetime.now(UTC):
                self.expire(approval)
                return f"The question about {approval.operation} had expired; nothing was done."
            state = "denied" if command.name == "deny" else "approved"
            if not self.store.settle_approval(approval.approval_id, state,
                                              f"{state} by the owner"):
                break
            self.wake.ring()
            if is_budget:
                return self.after_budget_answer(approval, state)
            if state == "approved":
                return f"Approved: {approval.operation}. Task #{approval.task_id} goes on."
            return f"Denied: {approval.operation}. Task #{approval.task_id} is stopped."
        return ("Nothing in this thread is waiting for your approval (it may have been settled "
                "already). Reply to the approval mail itself.")

    def after_budget_answer(self, approval: ApprovalView, state: str) -> str:
        if state == "approved":
            return f"Task #{approval.task_id} goes on with one more budget."
        self.end_paused(approval.task_id, "not continued")
        return f"Task #{approval.task_id} is ended; what it made so far comes in a separate mail."

    def end_paused(self, task_id: int, why: str) -> None:
        """A budget pause that is not continued ends the task, partial outputs attached."""
        work = self.store.task_work(task_id)
        partial = self.agent.partial_text(work.conversation_id, task_id)
        outcome = Outcome("failed", f"budget reached and {why}", partial)
        self.store.finish_task(task_id, "failed", outcome.reason, partial,
                               self.outcome_mail(task_id, outcome))
        self.on_mail()

    def expire(self, approval: ApprovalView) -> None:
        if approval.schedule_id is not None and self.schedule_approvals is not None:
            self.schedule_approvals.expire(approval)
            return
        if approval.draft_id is not None:
            self.draft_approvals.expire(approval)
            return
        if approval.operation == BUDGET_STEP:
            if self.store.settle_approval(approval.approval_id, "expired", "no answer in time"):
                self.end_paused(approval.task_id, "no `continue` came in time")
            return
        if self.store.settle_approval(approval.approval_id, "expired",
                                      "no answer before the approval expired"):
            mail = compose(self.settings.smtp, self.store.reply_target(approval.task_id),
                           "notice", "command.md.j2",
                           {"body": f"No answer came in time, so this was not done: "
                                    f"{approval.operation}. Task #{approval.task_id} is stopped."})
            self.store.enqueue_mail(mail)
            self.on_mail()

    def expire_approvals(self) -> None:
        now = datetime.now(UTC)
        for approval in self.store.approvals():
            if approval.expires_at < now:
                self.expire(approval)
