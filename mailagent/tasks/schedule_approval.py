"""Schedule approvals: a schedule that the model made on its own runs only once the owner approves.

In: the `schedule_task` calls of a task (when, task text), what the conversation's model has
been shown (judged by `mailagent.tasks.provenance`), and the owner's `approve` or `deny` replies to
the question. Out: the tool's answer; for a schedule that the owner's own words did not make, an
inactive schedule (`awaiting_approval`) and a question in the thread of the mail that made it;
on `approve`, the schedule active from its next time; on `deny`, or no answer within
`agent.approval_hours`, the schedule cancelled without ever running. Side effects: the store
(the schedule, its approval and the question mail in one commit) and the outbox.
A question is bound to a digest of exactly what would run (when, time zone, task text,
conversation and thread) and to a random token carried in its Message-ID; it is settled once,
expires, and only an authenticated owner's reply to that mail settles it (SECURITY.md A1, S5).
It must never make a schedule active on anything else, nor let the task wait for the answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from mailagent.config import Settings
from mailagent.mail.notify import approval_message_id, compose
from mailagent.store import ApprovalView, ReplyTarget, ScheduleQuestion, ScheduleView, Store
from mailagent.tasks.provenance import why_the_models
from mailagent.tasks.scheduler import Scheduler
from mailagent.tasks.when import Rule, local_text, next_run

log = logging.getLogger(__name__)

MAX_QUOTED_CHARS = 2000  # of the owner's words shown in the question


def schedule_digest(view: ScheduleView) -> str:
    """What a schedule's approval is bound to: exactly what would run, where and when."""
    state = {"schedule": view.schedule_id, "conversation": view.conversation_name,
             "origin_task": view.origin_task_id, "thread": view.message_id,
             "rule": view.rule_json, "timezone": view.timezone, "task": view.task_text}
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


class ScheduleApprovals:
    """Makes the schedules of `schedule_task`, and settles the questions about those that the
    model made on its own."""

    def __init__(self, settings: Settings, store: Store, schedules: Scheduler,
                 on_mail: Callable[[], None]) -> None:
        self.settings, self.store, self.schedules = settings, store, schedules
        self.on_mail = on_mail

    def make(self, task_id: int, when: str, task: str) -> str:
        """The schedule_task tool for task `task_id`: what the model is told. Raises
        ValueError (a WhenError) with what to write instead."""
        why = why_the_models(self.store.seen_by_model(task_id), task_id)
        if not why:
            return self.schedules.confirmation(self.schedules.create(task_id, when, task))
        # Read before the commit that records the schedule, which builds the question.
        words = self.store.task_work(task_id).instruction.strip()
        target = self.store.reply_target(task_id)
        view = self.schedules.create(task_id, when, task, awaiting=why,
                                     question=lambda made: self.question(target, made, why,
                                                                         words))
        log.info("schedule awaits approval schedule_id=%s task_id=%s", view.schedule_id,
                 task_id)
        self.on_mail()
        return (f"{self.schedules.confirmation(view)}\n\nIt is not the owner's own request "
                f"({why}), so the owner was asked. Tell the owner in your answer that it waits "
                "for their approval; do not make it again.")

    def question(self, target: ReplyTarget, view: ScheduleView, why: str,
                 words: str) -> ScheduleQuestion:
        """The approval mail, in the thread of the mail that made the schedule."""
        token, hours = secrets.token_hex(16), self.settings.agent.approval_hours
        values = {"schedule_id": view.schedule_id, "when": view.when_text,
                  "timezone": view.timezone, "conversation": view.conversation_name,
                  "first_run": local_text(view.next_run_at, ZoneInfo(view.timezone)),
                  "task_lines": view.task_text.splitlines() or [""], "reason": why,
                  "owner_lines": (words[:MAX_QUOTED_CHARS] or "(nothing typed)").splitlines(),
                  "hours": hours}
        mail = compose(self.settings.smtp, target, "approval",
                       "schedule_approval.md.j2", values,
                       message_id=approval_message_id(self.settings.smtp.from_address, token))
        operation = (f"run schedule #{view.schedule_id} ({view.when_text}, {view.timezone}): "
                     f"{view.task_text[:200]}")
        return ScheduleQuestion(token, schedule_digest(view), operation,
                                datetime.now(UTC) + timedelta(hours=hours), mail)

    def settle(self, approval: ApprovalView, answer: str) -> str:
        """The owner's `approve` or `deny` in reply to the question (the caller checked that
        the reply answers that very mail): the reply's text."""
        assert approval.schedule_id is not None
        number = approval.schedule_id
        view = self.store.schedule(number)
        if approval.expires_at < datetime.now(UTC):
            self.expire(approval)
            return f"The question about schedule #{number} had expired; it never ran."
        if view is None or view.state != "awaiting_approval":  # cancelled by `cancel N`
            state = view.state if view else "gone"
            self.store.settle_schedule_approval(approval.approval_id, "denied",
                                                f"its schedule is {state}", "cancelled", None)
            return f"Schedule #{number} no longer waits for approval ({state}); nothing changed."
        if answer != "approve" or schedule_digest(view) != approval.digest:
            why = "denied by the owner" if answer != "approve" else "changed since the question"
            self.store.settle_schedule_approval(approval.approval_id, "denied", why,
                                                "cancelled", None)
            return (f"Schedule #{number} ({view.when_text}) is dropped ({why}); it never ran "
                    "and will not run.")
        return self.activate(approval, view)

    def activate(self, approval: ApprovalView, view: ScheduleView) -> str:
        zone = ZoneInfo(view.timezone)
        upcoming = next_run(Rule.from_json(view.rule_json), zone, datetime.now(UTC))
        state, why = ("active", "approved by the owner") if upcoming else (
            "finished", "approved after its time had passed")
        if not self.store.settle_schedule_approval(approval.approval_id, "approved", why,
                                                   state, upcoming):
            return ("Nothing waits for your approval here any more (it was settled already); "
                    "nothing changed.")
        self.schedules.changed.set()
        if upcoming is None:
            return (f"Schedule #{view.schedule_id} ({view.when_text}) was approved after its "
                    "time had passed; it will not run.")
        return (f"Approved: schedule #{view.schedule_id} ({view.when_text}, {view.timezone}) "
                f"is active; next run {local_text(upcoming, zone)}.")

    def expire(self, approval: ApprovalView) -> None:
        """No answer in time: the schedule is dropped without ever running, and the owner
        told in its thread."""
        if not self.store.settle_schedule_approval(
                approval.approval_id, "expired", "no answer before the approval expired",
                "cancelled", None):
            return
        body = ("No answer came in time, so this is dropped without ever running: "
                f"{approval.operation}")
        self.store.enqueue_mail(compose(self.settings.smtp,
                                        self.store.reply_target(approval.task_id), "notice",
                                        "command.md.j2", {"body": body}))
        self.on_mail()
