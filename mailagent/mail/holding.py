"""Holding: owner mail that the per-sender rate limit keeps back, and when held mail runs.

In: an accepted `Inbound` and its route, the store, `[limits]` and `[smtp]`. Out: a `Hold` (why,
and whether it may run by itself) or None; the notice to the owner; which held mail runs now.
Side effects: held rows and notices, through the store. It must never drop owner mail
(SECURITY.md L6) and never let a mail loop go on without bound (S4).

Why only replies to our mail count: a mail loop needs mailagent in it, an auto-responder that
answers our answers. A new mail from the owner's phone answers nothing we sent, so 200 of them
written while the computer was off all run. A reply to our mail counts when we take it up, and
more than `limits.max_mails_per_hour` of them from one address in an hour are held, not dropped.

Why a loop stops rather than slows down: held mail runs by itself as the hour allows, but a
reply to our notice of held mail, or to our answer of mail that ran by itself from the hold, is
held until the owner says `release`, and a reply to the notice brings no further notice. So an
auto-responder that answers everything gets at most one more answer and one notice an hour.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailagent.config import LimitSettings, SmtpSettings
from mailagent.mail.intake import Inbound
from mailagent.mail.notify import compose
from mailagent.mail.threads import CommandRoute, Route
from mailagent.store import HeldView, Outbound, ReplyTarget, Store, ThreadMatch

log = logging.getLogger(__name__)

WINDOW = timedelta(hours=1)
# The owner's ways out of a hold, or to stop work, always get through.
NEVER_HELD = frozenset({"release", "cancel", "deny"})


@dataclass(frozen=True)
class Hold:
    reason: str
    runs_by_itself: bool  # False: it may be part of a loop, so it waits for `release`
    tell_owner: bool  # False for a reply to our notice: no notice answers a notice


class Holding:
    """Decides which owner mail is held, tells the owner, and picks held mail to run."""

    def __init__(self, store: Store, limits: LimitSettings, smtp: SmtpSettings) -> None:
        self.store, self.limits, self.smtp = store, limits, smtp

    def check(self, inbound: Inbound, thread: ThreadMatch | None, destination: Route,
              now: datetime) -> Hold | None:
        """Why this mail is held, or None to take it up now."""
        if not inbound.answers_us:
            return None  # new mail cannot be a loop: never counted, never held
        if isinstance(destination, CommandRoute) and destination.name in NEVER_HELD:
            return None
        refs = (*inbound.references, *inbound.in_reply_to)
        if self.store.is_held_notice(refs):
            return Hold("a reply to the notice of held mail: it runs when you reply `release`",
                        runs_by_itself=False, tell_owner=False)
        if thread is not None and thread.task_id is not None and \
                self.store.ran_by_itself(thread.task_id):
            return Hold(f"a reply to the answer of task #{thread.task_id}, which ran from "
                        "held mail: it runs when you reply `release`",
                        runs_by_itself=False, tell_owner=True)
        taken = self.store.replies_taken_since(inbound.owner_address, now - WINDOW)
        limit = self.limits.max_mails_per_hour
        if taken >= limit:
            return Hold(f"{taken} replies to my mail from {inbound.owner_address} in the last "
                        f"hour, the limit is {limit} (limits.max_mails_per_hour)",
                        runs_by_itself=True, tell_owner=True)
        if any(h.runs_by_itself for h in self.store.held(inbound.owner_address)):
            return Hold("older mail from you is held: this one runs after it",
                        runs_by_itself=True, tell_owner=True)
        return None

    def notice(self, inbound: Inbound, hold: Hold, now: datetime) -> Outbound | None:
        """The owner's notice of held mail, at most one an hour per address."""
        if not hold.tell_owner:
            return None
        last = self.store.last_notice_at(inbound.owner_address)
        if last is not None and last > now - WINDOW:
            return None
        count = len(self.store.held(inbound.owner_address)) + 1
        target = ReplyTarget(inbound.owner_address, inbound.subject, inbound.message_id,
                             (*inbound.references, *inbound.in_reply_to), None, None, None)
        return compose(self.smtp, target, "held", "held.md.j2", {
            "count": count, "reason": hold.reason, "limit": self.limits.max_mails_per_hour,
            "runs_at": self.runs_at(inbound.owner_address, now).strftime("%Y-%m-%d %H:%M")})

    def runs_at(self, owner_address: str, now: datetime) -> datetime:
        """About when held mail of this address starts to run by itself (UTC): when the oldest
        reply counted in the hour leaves it."""
        taken = self.store.replies_taken_since(owner_address, now - WINDOW)
        first = self.store.first_reply_taken_since(owner_address, now - WINDOW)
        if taken < self.limits.max_mails_per_hour or first is None:
            return now
        return first + WINDOW

    def due(self, now: datetime) -> list[tuple[int, str]]:
        """(raw_message_id, how) of held mail to run now, oldest first: all that the owner
        released, then per address as many as the hour allows of those that run by themselves."""
        held = self.store.held()
        due = [(h.raw_message_id, "by_owner") for h in held if h.release_requested]
        waiting: dict[str, list[HeldView]] = {}
        for h in held:
            if h.runs_by_itself and not h.release_requested:
                waiting.setdefault(h.owner_address, []).append(h)
        for owner_address, rows in waiting.items():
            taken = self.store.replies_taken_since(owner_address, now - WINDOW)
            room = max(0, self.limits.max_mails_per_hour - taken)
            due += [(h.raw_message_id, "by_itself") for h in rows[:room]]
        return due
