"""Mail to other people: whom `draft_mail` may address, by the `[mail]` table of the policy.

In: the `Policy` in force, the task's `Scope`, and a draft's recipients and attachment paths as
the model gave them. Out: a `Decision`: allow only when every recipient parses strictly as one
plain address that a `may_write_to` pattern matches (a glob on the whole lower-cased address)
and every attachment may be read. Pure apart from looking the attachments up (policy.decide).
It must never allow anything without a `[mail]` table, and an allow here sends nothing: every
draft still waits for the owner's approval of that exact mail (SECURITY.md E1).
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any

from mailagent.addresses import plain_address
from mailagent.policy.decide import decide
from mailagent.policy.rules import Decision, Policy, Scope

NOT_OFFERED = ("draft_mail is not offered: no policy file has a [mail] table with "
               "may_write_to")


def matching_pattern(policy: Policy, address: str) -> str | None:
    """The first `may_write_to` pattern that matches the lower-cased address, if any."""
    if policy.mail is None:
        return None
    return next((p for p in policy.mail.may_write_to if fnmatchcase(address.lower(), p)), None)


def decide_recipients(policy: Policy, recipients: Sequence[str]) -> Decision:
    """allow when every recipient is one plain address that `may_write_to` allows."""
    rule = policy.mail
    if rule is None or not rule.may_write_to:
        return Decision("deny", "default: deny (no [mail] table)", NOT_OFFERED, None)
    if not recipients:
        return Decision("deny", f"{rule.source} [mail]", "a draft needs at least one address "
                        "in to", None)
    for given in recipients:
        address, why = plain_address(given) if isinstance(given, str) else (None, "is no text")
        if address is None:
            return Decision("deny", f"{rule.source} [mail]", f"the recipient {str(given)[:80]!r} "
                            f"{why}: give one plain address such as name@example.org", None)
        if matching_pattern(policy, address) is None:
            return Decision("deny", f"{rule.source} [mail] may_write_to",
                            f"{address} is not one of the addresses the policy lets drafts go "
                            "to; nothing was drafted. Tell the owner, who may add it to "
                            "may_write_to", None)
    return Decision("allow", f"{rule.source} [mail] may_write_to", "the recipients are allowed; "
                    "the mail goes out only after the owner approves it", None)


def decide_draft(policy: Policy, scope: Scope, tool_input: dict[str, Any]) -> Decision:
    """A draft_mail call: its recipients by the [mail] table, its attachments by `read`."""
    to, cc, attach = (tool_input.get(key) or [] for key in ("to", "cc", "attach"))
    if not all(isinstance(value, list) for value in (to, cc, attach)):
        return Decision("deny", "draft_mail", "to, cc and attach must be lists", None)
    recipients = decide_recipients(policy, [*to, *cc])
    if recipients.verdict != "allow":
        return recipients
    for path in attach:
        judged = decide(policy, "read", str(path), scope)
        if judged.verdict != "allow":
            return Decision("deny", judged.rule, f"the attachment cannot go: {judged.reason}",
                            judged.path)
    return recipients


def explain_recipient(policy: Policy, address: str) -> str:
    """`allow: <rule>: <reason>` or `deny: ...` for `mailagent policy explain mail ADDRESS`."""
    decision = decide_recipients(policy, [address])
    if decision.verdict == "allow":
        pattern = matching_pattern(policy, plain_address(address)[0] or address)
        return (f"ask: {decision.rule} \"{pattern}\": draft_mail may write to {address}; each "
                "mail goes out only after the owner replies approve to it")
    return f"{decision.verdict}: {decision.rule}: {decision.reason}"
