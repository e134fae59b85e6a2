"""Notices: the service's own news for its owner, mail that answers no mail.

In: a subject and a body (a schedules file or a policy file that does not validate, an MCP server
that is down, mail to the service that stopped arriving). Out: one notice in the outbox for the
first owner address, and the postman's bell rung. It must never write to anyone but the owner.
"""

from __future__ import annotations

import logging

from mailagent.bell import Bell
from mailagent.config import Settings
from mailagent.errors import PolicyError
from mailagent.mail.notify import compose
from mailagent.store import ReplyTarget, Store

log = logging.getLogger(__name__)


class Notices:
    """Tells the owner; shared by every stage that has news."""

    def __init__(self, settings: Settings, store: Store, mail_bell: Bell) -> None:
        self.settings, self.store, self.mail_bell = settings, store, mail_bell

    def tell(self, subject: str, body: str) -> None:
        target = ReplyTarget(self.settings.owner.addresses[0], subject, None, (), None, None,
                             None)
        self.store.enqueue_mail(compose(self.settings.smtp, target, "notice", "command.md.j2",
                                        {"body": body}))
        self.mail_bell.ring()

    def policy_broken(self, error: PolicyError) -> None:
        """A broken policy file: logged, recorded, and the owner told (once per error)."""
        log.error("policy: %s (the last good policy stays in force)", error)
        self.store.audit("policy.error", str(error))
        self.tell("mailagent: a policy file is broken",
                  f"A policy file does not validate: {error}\n\nThe last good policy stays in "
                  "force (or, if there was none, nothing is allowed). Fix the file; the change "
                  "takes effect without a restart. `mailagent check` shows the problem too.")
