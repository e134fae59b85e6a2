"""The draft tool: the model writes a mail to someone other than the owner, and sends nothing.

In: recipients, subject, body, workspace paths to attach and the Message-ID it answers, from the
model; `make`, a callable from the worker that composes the mail whole, holds it and asks the
owner (tasks/draft_approval.py). Out: what the model is told, or ToolError. Side effects: none
here. It never sends: a draft leaves only after the owner approves that exact mail by reply,
and only to recipients the policy's `[mail] may_write_to` allows (SECURITY.md E1).
Attachments are read through descriptors from the root of the rule that allowed reading them
(`read_judged`), never by their name again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailagent.errors import PolicyError
from mailagent.tools.files import Anchored, ToolError, read_anchored

MAX_RECIPIENTS = 20
MAX_BODY_CHARS = 50_000
MAX_ATTACHMENTS = 10


@dataclass(frozen=True)
class DraftRequest:
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str
    body: str
    attach: tuple[str, ...]
    in_reply_to: str | None


def read_judged(decision: Anchored, limit: int) -> tuple[Path, bytes]:
    """The bytes of the file a `read` decision allowed, through its anchor; ToolError if it
    is not allowed, not a regular file, or over `limit` bytes."""
    if decision.verdict != "allow" or decision.anchor is None:
        raise ToolError(f"denied by {decision.rule}: {decision.reason}")
    try:
        return decision.anchor.path, read_anchored(decision.anchor, limit, whole=True)
    except PolicyError as error:
        raise ToolError(str(error)) from None


@dataclass
class DraftTools:
    make: Callable[[DraftRequest], str]

    def draft_mail(self, to: list[str], subject: str, body: str, cc: list[str] | None = None,
                   attach: list[str] | None = None, in_reply_to: str | None = None) -> str:
        """Draft a mail from the agent's address to other people. It is NOT sent now.

        The owner is mailed the draft exactly as it would go out (recipients, subject, the
        whole body, each attachment's name, size and SHA-256). It is sent, unchanged, only if
        the owner replies `approve`; `deny`, no answer in time, or a change to an attached
        file drops it. Tell the owner in your answer that the mail waits for their approval,
        and do not draft the same mail again. Only addresses the policy allows can be used;
        any other is refused and nothing is drafted. Write the body as plain text, complete
        and signed as the owner wishes: it goes out exactly as written.

        Args:
            to: the recipients' plain addresses, e.g. ["landlord@example.org"].
            subject: the subject line, at most 200 characters.
            body: the whole text of the mail, plain text.
            cc: addresses to copy, optional.
            attach: paths of files to attach (as for read_file), optional.
            in_reply_to: the Message-ID of a mail of this conversation that this one answers
                (it then carries that mail's thread headers), optional.
        """
        to_list, cc_list, paths = (_strings(value, name) for value, name in
                                   ((to, "to"), (cc or [], "cc"), (attach or [], "attach")))
        if not to_list or len(to_list) + len(cc_list) > MAX_RECIPIENTS:
            raise ToolError(f"to needs 1 to {MAX_RECIPIENTS} addresses (cc included)")
        if not subject.strip():
            raise ToolError("subject is empty: write the subject line")
        if not body.strip() or len(body) > MAX_BODY_CHARS:
            raise ToolError(f"body must have 1 to {MAX_BODY_CHARS} characters")
        if len(paths) > MAX_ATTACHMENTS:
            raise ToolError(f"at most {MAX_ATTACHMENTS} attachments")
        return self.make(DraftRequest(to_list, cc_list, subject, body, paths,
                                      in_reply_to or None))


def _strings(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ToolError(f"{name} must be a list of non-empty strings")
    return tuple(v.strip() for v in value)
