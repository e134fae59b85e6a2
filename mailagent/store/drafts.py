"""Store queries of drafts: mail to other people, held until the owner approves that exact mail.

In: calls from the draft approvals (tasks/draft_approval.py) and the Postman's send-time gate.
Out: frozen `DraftView`s, and the stored mails a draft may answer. Side effects: the `draft`
table, its approval, the question mail and, on approval, the draft's outbox row, each change
in one transaction. A draft reaches the outbox only in the commit that approves it.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from sqlmodel import Session, col, func, select

from mailagent.store.db import MailStore, _audit, _enqueue, _id
from mailagent.store.tables import Approval, Draft, OutboxRow, RawMessage, Task, ThreadRef, utcnow
from mailagent.store.views import DraftQuestion, DraftView, NewDraft, Outbound

MAX_SEEN_MAILS = 200  # of a conversation's stored mails looked through for a thread


class DraftStore(MailStore):
    """Drafts: held whole, approved or dropped once."""

    def hold_draft(self, new: NewDraft,
                   question: Callable[[DraftView], DraftQuestion]) -> DraftView:
        """The draft, its approval and the question mail (built by `question` from the held
        draft, whose number it shows): one commit."""
        with self.session() as s:
            row = Draft(task_id=new.task_id, conversation_id=new.conversation_id,
                        message_id=new.message_id, recipients_json=json.dumps(new.recipients),
                        subject=new.subject, raw=new.raw, raw_sha256=new.raw_sha256,
                        attachments_json=json.dumps(list(new.attachments)), digest=new.digest,
                        created_at=utcnow())
            s.add(row)
            s.flush()
            view = _draft_view(row, None)
            asked = question(view)
            s.add(Approval(task_id=new.task_id, tool_use_id="", token=asked.token,
                           digest=new.digest, operation=asked.operation,
                           message_id=asked.mail.message_id, created_at=utcnow(),
                           expires_at=asked.expires_at, draft_id=view.draft_id))
            _audit(s, "draft.held", asked.operation, None, new.task_id,
                   {"draft": view.draft_id, "to": list(new.recipients), "digest": new.digest})
            _enqueue(s, asked.mail)
            return view

    def draft(self, draft_id: int) -> DraftView | None:
        with self.session() as s:
            row = s.get(Draft, draft_id)
            if row is None:
                return None
            approval = s.exec(select(Approval).where(Approval.draft_id == draft_id)
                              .order_by(col(Approval.approval_id).desc())).first()
            return _draft_view(row, approval)

    def waiting_drafts(self, conversation_id: int) -> int:
        with self.session() as s:
            return int(s.exec(select(func.count()).select_from(Draft).where(
                Draft.conversation_id == conversation_id,
                Draft.state == "awaiting_approval")).one())

    def settle_draft(self, approval_id: int, state: str, draft_state: str, reason: str,
                     release: Outbound | None = None) -> bool:
        """pending -> approved | denied | expired, once, with the draft's state; `release`
        (the draft's own bytes, for an approval) goes into the outbox in the same commit.
        False if it was settled already or the draft no longer waits."""
        with self.session() as s:
            approval = s.get(Approval, approval_id)
            if approval is None or approval.state != "pending" or approval.draft_id is None:
                return False
            approval.state, approval.settled_at = state, utcnow()
            s.add(approval)
            row = s.get(Draft, approval.draft_id)
            if row is None or row.state != "awaiting_approval":
                return False
            row.state, row.reason, row.settled_at = draft_state, reason, utcnow()
            s.add(row)
            _audit(s, f"draft.{draft_state}", reason, None, row.task_id,
                   {"draft": row.draft_id, "digest": approval.digest})
            if release is not None and draft_state == "approved":
                _enqueue(s, release)
            return True

    def seen_mails(self, conversation_id: int) -> list[bytes]:
        """The raw mails of a conversation, newest first: the owner's (forwards inside them
        included) and ours, for a draft that answers one of them."""
        with self.session() as s:
            return _raws_in(s, conversation_id)


def _raws_in(s: Session, conversation_id: int) -> list[bytes]:
    incoming = s.exec(select(RawMessage.raw).join(Task, col(Task.raw_message_id)
                                                  == col(RawMessage.raw_message_id))
                      .where(Task.conversation_id == conversation_id)
                      .order_by(col(RawMessage.raw_message_id).desc()).limit(MAX_SEEN_MAILS))
    ours = s.exec(select(OutboxRow.raw).join(ThreadRef, col(ThreadRef.message_id)
                                             == col(OutboxRow.message_id))
                  .where(ThreadRef.conversation_id == conversation_id)
                  .order_by(col(OutboxRow.outbox_id).desc()).limit(MAX_SEEN_MAILS))
    return [bytes(raw) for raw in [*incoming, *ours]]


def _draft_view(row: Draft, approval: Approval | None) -> DraftView:
    approved = approval.digest if approval is not None and approval.state == "approved" else ""
    return DraftView(_id(row.draft_id), row.task_id, row.conversation_id, row.message_id,
                     tuple(json.loads(row.recipients_json)), row.subject, bytes(row.raw),
                     row.raw_sha256, tuple(json.loads(row.attachments_json)), row.digest,
                     row.state, approved)
