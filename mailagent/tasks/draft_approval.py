"""Draft approvals: a mail the model drafted goes out only once the owner approves that mail.

In: the `draft_mail` calls of a task (recipients, subject, body, attachments, the mail it
answers), and the owner's `approve` or `deny` replies to the question. Out: the tool's answer;
the draft composed whole (mail/drafts.py) and held with its question, in the thread of the
task's mail, showing the mail exactly as it would go out; on `approve`, that exact mail in the
outbox; on `deny`, no answer within `agent.approval_hours`, or anything changed since the
question (an attachment's bytes, the policy's recipients), the draft dropped and nothing sent.
Side effects: the store (draft, approval and question in one commit) and the outbox.
A question is bound to the draft's digest and to a random token carried in its Message-ID; it
is settled once, expires, and only an authenticated owner's reply to that mail settles it
(SECURITY.md E1, A1). The task never waits for the answer.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailagent.addresses import plain_address
from mailagent.config import Settings
from mailagent.mail.drafts import Composed, compose_draft, draft_digest, find_thread
from mailagent.mail.notify import approval_message_id, attachment_name, compose
from mailagent.policy import Decision
from mailagent.store import (
    ApprovalView,
    DraftQuestion,
    DraftView,
    NewDraft,
    Outbound,
    ReplyTarget,
    Store,
)
from mailagent.tools.drafts import DraftRequest
from mailagent.tools.files import ToolError

log = logging.getLogger(__name__)

MAX_WAITING_DRAFTS = 10  # per conversation (SECURITY.md R2)


@dataclass(frozen=True)
class Attachment:
    path: Path
    name: str
    data: bytes

    def state(self) -> dict[str, object]:
        return {"path": str(self.path), "name": self.name, "size": len(self.data),
                "sha256": hashlib.sha256(self.data).hexdigest()}


class DraftApprovals:
    """Holds the drafts of `draft_mail` and settles the questions about them.

    `judge_recipients` is the policy's decision on a list of addresses; `read(task_id, path)`
    reads a file as the task's read policy allows, now (ToolError otherwise)."""

    def __init__(self, settings: Settings, store: Store, on_mail: Callable[[], None],
                 judge_recipients: Callable[[Sequence[str]], Decision],
                 read: Callable[[int, str, int], tuple[Path, bytes]]) -> None:
        self.settings, self.store, self.on_mail = settings, store, on_mail
        self.judge_recipients, self.read = judge_recipients, read

    def make(self, task_id: int, request: DraftRequest) -> str:
        """The draft_mail tool for task `task_id`: what the model is told, or ToolError."""
        to, cc = self.addresses(request.to), self.addresses(request.cc)
        cc = tuple(a for a in cc if a not in to)
        work = self.store.task_work(task_id)
        if self.store.waiting_drafts(work.conversation_id) >= MAX_WAITING_DRAFTS:
            raise ToolError(f"{MAX_WAITING_DRAFTS} drafts already wait for the owner's approval "
                            "in this conversation; nothing was drafted")
        files = self.attachments(task_id, request.attach)
        thread = None
        if request.in_reply_to:
            thread = find_thread(request.in_reply_to, self.store.seen_mails(work.conversation_id))
            if thread is None:
                raise ToolError(f"in_reply_to {request.in_reply_to[:200]!r} is no mail this "
                                "conversation has seen; leave it out, or give the Message-ID "
                                "of one of its mails")
        composed = compose_draft(self.settings.smtp, to, cc, request.subject, request.body,
                                 [(f.name, f.data) for f in files], thread)
        states = tuple(f.state() for f in files)
        digest = draft_digest(composed.recipients, composed.raw, states)
        target = self.store.reply_target(task_id)
        view = self.store.hold_draft(
            NewDraft(task_id, work.conversation_id, composed.message_id, composed.recipients,
                     composed.subject, composed.raw, composed.raw_sha256, states, digest),
            lambda held: self.question(target, held, composed, request, digest))
        log.info("draft held draft_id=%s task_id=%s", view.draft_id, task_id)
        self.on_mail()
        return (f"Draft #{view.draft_id} to {', '.join(composed.recipients)} was NOT sent: the "
                "owner was mailed it exactly as it would go out, and it is sent only if they "
                "reply approve (dropped on deny or without an answer within "
                f"{self.settings.agent.approval_hours:g} hours). Tell the owner in your answer "
                "that it waits for their approval; do not draft it again.")

    def addresses(self, given: Sequence[str]) -> tuple[str, ...]:
        """Plain lower-cased addresses, each allowed by the policy now (else ToolError)."""
        decision = self.judge_recipients(given) if given else None
        if decision is not None and decision.verdict != "allow":
            raise ToolError(f"denied by {decision.rule}: {decision.reason}")
        return tuple(dict.fromkeys(plain_address(a)[0] or a for a in given))

    def attachments(self, task_id: int, paths: Sequence[str]) -> list[Attachment]:
        limit, files = self.settings.smtp.max_attachment_bytes, []
        for path in paths:
            resolved, data = self.read(task_id, path, limit)
            files.append(Attachment(resolved, attachment_name(resolved.name), data))
        if sum(len(f.data) for f in files) > limit:
            raise ToolError(f"the attachments are over {limit} bytes together "
                            "(smtp.max_attachment_bytes); attach fewer or smaller files")
        return files

    def question(self, target: ReplyTarget, view: DraftView, composed: Composed,
                 request: DraftRequest, digest: str) -> DraftQuestion:
        """The approval mail, in the task's thread: the draft as it would go out."""
        token, hours = secrets.token_hex(16), self.settings.agent.approval_hours
        # A fence longer than any run of backticks in the body: shown verbatim, as text and
        # in the HTML part alike.
        longest = max((len(run) for run in re.findall("`+", request.body)), default=0)
        values = {"draft_id": view.draft_id, "task_id": view.task_id,
                  "sender": self.settings.smtp.from_address, "to": ", ".join(composed.to),
                  "cc": ", ".join(composed.cc), "subject": composed.subject,
                  "in_reply_to": composed.in_reply_to or "", "fence": "`" * max(3, longest + 1),
                  "body": request.body, "attachments": list(view.attachments),
                  "message_sha256": composed.raw_sha256, "digest": digest,
                  "message_id": composed.message_id, "hours": hours}
        mail = compose(self.settings.smtp, target, "approval", "draft_approval.md.j2", values,
                       message_id=approval_message_id(self.settings.smtp.from_address, token))
        operation = (f"send draft #{view.draft_id} to {', '.join(composed.recipients)}: "
                     f"{composed.subject[:120]}")
        return DraftQuestion(token, operation, datetime.now(UTC) + timedelta(hours=hours), mail)

    def settle(self, approval: ApprovalView, answer: str) -> str:
        """The owner's `approve` or `deny` in reply to the question (the caller checked that
        the reply answers that very mail): the reply's text."""
        assert approval.draft_id is not None
        number, draft = approval.draft_id, self.store.draft(approval.draft_id)
        if approval.expires_at < datetime.now(UTC):
            self.expire(approval)
            return f"The question about draft #{number} had expired; nothing was sent."
        if draft is None or draft.state != "awaiting_approval":
            state = draft.state if draft else "gone"
            self.store.settle_draft(approval.approval_id, "denied", "denied",
                                    f"the draft is {state}")
            return f"Draft #{number} no longer waits for approval ({state}); nothing was sent."
        if answer != "approve":
            self.store.settle_draft(approval.approval_id, "denied", "denied",
                                    "denied by the owner")
            return f"Draft #{number} to {', '.join(draft.recipients)} is dropped; nothing was sent."
        why = self.changed(draft, approval)
        if why:
            self.store.settle_draft(approval.approval_id, "denied", "void", f"void: {why}")
            return (f"Draft #{number} is void and was NOT sent: {why}. Ask again in the task's "
                    "thread if a new draft should be made.")
        release = _outbound(draft)
        if not self.store.settle_draft(approval.approval_id, "approved", "approved",
                                       "approved by the owner", release):
            return "Nothing waits for your approval here any more; nothing was sent."
        self.on_mail()
        return (f"Approved: draft #{number} goes out now to {', '.join(draft.recipients)}, "
                "exactly as shown.")

    def changed(self, draft: DraftView, approval: ApprovalView) -> str:
        """Why the draft is no longer what the owner was shown or may send, or ''."""
        decision = self.judge_recipients(draft.recipients)
        if decision.verdict != "allow":
            return f"the policy no longer allows it ({decision.reason})"
        for shown in draft.attachments:
            try:
                _, data = self.read(draft.task_id, str(shown["path"]),
                                    self.settings.smtp.max_attachment_bytes)
            except ToolError as exc:
                return f"the attachment {shown['name']} cannot be read any more ({exc})"
            if hashlib.sha256(data).hexdigest() != shown["sha256"] or len(data) != shown["size"]:
                return f"the attachment {shown['name']} changed since the question"
        if draft_digest(draft.recipients, draft.raw, draft.attachments) != approval.digest:
            return "the mail is not the one the question showed"
        return ""

    def expire(self, approval: ApprovalView) -> None:
        """No answer in time: the draft is dropped, and the owner told in its thread."""
        if not self.store.settle_draft(approval.approval_id, "expired", "expired",
                                       "no answer before the approval expired"):
            return
        body = f"No answer came in time, so this was not sent: {approval.operation}"
        self.store.enqueue_mail(compose(self.settings.smtp,
                                        self.store.reply_target(approval.task_id), "notice",
                                        "command.md.j2", {"body": body}))
        self.on_mail()


def _outbound(draft: DraftView) -> Outbound:
    return Outbound(draft.message_id, "draft", ", ".join(draft.recipients), draft.subject,
                    draft.raw, draft.task_id, draft.conversation_id, draft.draft_id)
