"""Store queries of the mail that comes in: the mailbox position, raw messages, and what intake
made of each (a task, a command, a rejection), with the thread references that route replies.

In: calls from the service's in-leg. Out: frozen views and ids. Side effects: the `raw_message`,
`mailbox_state`, `thread_ref`, `task` and `command` tables. As everywhere in the store, it decides
nothing: a raw message is committed before it is processed, and each outcome in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from mailagent.errors import StoreError
from mailagent.store.db import (
    MailStore,
    _add_ref,
    _audit,
    _conversation,
    _enqueue,
    _id,
    _processed,
    _utc,
)
from mailagent.store.tables import (
    Command,
    Conversation,
    MailboxState,
    RawMessage,
    Task,
    ThreadRef,
    utcnow,
)
from mailagent.store.views import NewCommand, NewTask, Outbound, SavedRaw, ThreadMatch


class InboxStore(MailStore):
    """Mail that came in: the mailbox position, raw messages and what intake made of them."""

    def mailbox_position(self, folder: str) -> tuple[int, int] | None:
        """(uidvalidity, last_uid) recorded for `folder`, or None on first contact."""
        with self.session() as s:
            row = s.get(MailboxState, folder)
            return (row.uidvalidity, row.last_uid) if row else None

    def set_mailbox_position(self, folder: str, uidvalidity: int, last_uid: int) -> None:
        with self.session() as s:
            row = s.get(MailboxState, folder)
            row = row or MailboxState(folder=folder, uidvalidity=uidvalidity)
            if row.uidvalidity != uidvalidity:
                row.uidvalidity, row.last_uid = uidvalidity, 0
            row.last_uid = max(row.last_uid, last_uid)
            s.add(row)

    def save_raw(
        self,
        *,
        folder: str,
        uidvalidity: int,
        uid: int,
        raw: bytes,
        size: int,
        content_key: str,
        message_id: str | None,
    ) -> SavedRaw:
        """Commit the raw bytes (or note a duplicate) and advance the folder's last UID, at once.

        A message whose content key is known already is not stored again; its location is
        updated so that flags are set on the copy the server has now.
        """
        with self.session() as s:
            query = select(RawMessage).where(RawMessage.content_key == content_key)
            existing = s.exec(query).first()
            if existing is not None:
                existing.folder, existing.uidvalidity, existing.uid = folder, uidvalidity, uid
                existing.flagged = False
                s.add(existing)
                saved = SavedRaw(_id(existing.raw_message_id), is_new=False)
            else:
                row = RawMessage(
                    content_key=content_key, folder=folder, uidvalidity=uidvalidity, uid=uid,
                    message_id=message_id, raw=raw, size=size, truncated=len(raw) < size,
                    received_at=utcnow(),
                )
                s.add(row)
                s.flush()
                saved = SavedRaw(_id(row.raw_message_id), is_new=True)
            position = s.get(MailboxState, folder)
            if position is None or position.uidvalidity != uidvalidity:
                position = MailboxState(folder=folder, uidvalidity=uidvalidity, last_uid=0)
                position = s.merge(position)
            position.last_uid = max(position.last_uid, uid)
            s.add(position)
            return saved

    def begin_processing(self, raw_message_id: int) -> tuple[bytes, int, int]:
        """Count one more attempt at a stored message: (raw bytes, size on server, attempts)."""
        with self.session() as s:
            row = s.get(RawMessage, raw_message_id)
            if row is None:
                raise StoreError(f"no raw message {raw_message_id}")
            row.attempts += 1
            s.add(row)
            return row.raw, row.size, row.attempts

    def uncount_attempt(self, raw_message_id: int) -> None:
        """Take back the attempt `begin_processing` counted: it ended for want of room, which
        says nothing about the message, so it must not bring the message closer to giving up."""
        with self.session() as s:
            row = s.get(RawMessage, raw_message_id)
            if row is not None and row.attempts > 0:
                row.attempts -= 1
                s.add(row)

    def is_our_message_id(self, message_id: str) -> bool:
        with self.session() as s:
            ref = s.get(ThreadRef, message_id)
            return ref is not None and ref.direction == "out"

    def unprocessed_raw_ids(self) -> list[int]:
        with self.session() as s:
            rows = s.exec(select(RawMessage.raw_message_id).where(RawMessage.state == "received")
                          .order_by(col(RawMessage.raw_message_id)))
            return [_id(r) for r in rows]

    def unflagged_uids(self, folder: str, uidvalidity: int) -> list[int]:
        """UIDs in `folder` whose message is processed but not yet flagged on the server."""
        with self.session() as s:
            rows = s.exec(select(RawMessage.uid).where(
                RawMessage.folder == folder, RawMessage.uidvalidity == uidvalidity,
                RawMessage.state == "processed", col(RawMessage.flagged).is_(False)))
            return sorted(rows)

    def mark_flagged(self, folder: str, uidvalidity: int, uids: Iterable[int]) -> None:
        uid_list = list(uids)
        with self.session() as s:
            rows = s.exec(select(RawMessage).where(
                RawMessage.folder == folder, RawMessage.uidvalidity == uidvalidity,
                col(RawMessage.uid).in_(uid_list)))
            for row in rows:
                row.flagged = True
                s.add(row)

    def find_thread(self, message_ids: Sequence[str]) -> ThreadMatch | None:
        """The conversation (and task) of the latest of `message_ids` that is known."""
        if not message_ids:
            return None
        with self.session() as s:
            refs = {r.message_id: r for r in s.exec(select(ThreadRef).where(
                col(ThreadRef.message_id).in_(list(message_ids))))}
            for message_id in reversed(message_ids):
                ref = refs.get(message_id)
                if ref is not None:
                    conversation = s.get(Conversation, ref.conversation_id)
                    assert conversation is not None
                    return ThreadMatch(ref.conversation_id, conversation.name, ref.task_id)
        return None

    def record_task(self, raw_message_id: int | None, new: NewTask, reason: str,
                    receipt: Callable[[int, int], Outbound] | None = None) -> int:
        """Record a queued task, its thread reference and audit row; mark the raw processed.
        `receipt(task_id, conversation_id)` builds a "got it" mail queued in the same commit."""
        with self.session() as s:
            conversation = _conversation(s, new.conversation_name)
            now = utcnow()
            task = Task(
                conversation_id=_id(conversation.conversation_id), raw_message_id=raw_message_id,
                owner_address=new.owner_address, subject=new.subject, message_id=new.message_id,
                references=" ".join(new.references), instruction=new.instruction,
                data_json=json.dumps(new.data), created_at=now, updated_at=now,
                sent_at=_utc(new.sent_at), answers_us=new.answers_us,
            )
            s.add(task)
            s.flush()
            task_id = _id(task.task_id)
            _add_ref(s, new.message_id, _id(conversation.conversation_id), task_id)
            _audit(s, "task.queued", reason, raw_message_id, task_id,
                   {"conversation": new.conversation_name})
            _processed(s, raw_message_id, "task", reason)
            if receipt is not None:
                _enqueue(s, receipt(task_id, _id(conversation.conversation_id)))
            return task_id

    def record_command(self, raw_message_id: int | None, new: NewCommand, reason: str) -> int:
        with self.session() as s:
            conversation_id = None
            if new.conversation_name is not None:
                conversation = _conversation(s, new.conversation_name)
                conversation_id = _id(conversation.conversation_id)
                _add_ref(s, new.message_id, conversation_id, new.task_id)
            command = Command(
                raw_message_id=raw_message_id, conversation_id=conversation_id,
                task_id=new.task_id, name=new.name, argument=new.argument,
                owner_address=new.owner_address, subject=new.subject, message_id=new.message_id,
                references=" ".join(new.references), created_at=utcnow(),
                sent_at=_utc(new.sent_at), answers_us=new.answers_us,
            )
            s.add(command)
            s.flush()
            _audit(s, "command.received", reason, raw_message_id, new.task_id,
                   {"command": new.name, "argument": new.argument})
            _processed(s, raw_message_id, "command", reason)
            return _id(command.command_id)

    def record_rejection(
        self, raw_message_id: int | None, kind: str, reason: str, detail: dict[str, Any],
        mail: Outbound | None = None,
    ) -> None:
        """Record why a message creates no task (and queue the owner's notice, if any); the raw
        message counts as handled."""
        with self.session() as s:
            _audit(s, kind, reason, raw_message_id, None, detail)
            _processed(s, raw_message_id, "rejected", reason)
            if mail is not None:
                _enqueue(s, mail)

    def raw_outcomes(self) -> list[tuple[int, str, str | None, str | None]]:
        """(raw_message_id, state, outcome, reason) of every stored message."""
        with self.session() as s:
            rows = s.exec(select(RawMessage.raw_message_id, RawMessage.state, RawMessage.outcome,
                                 RawMessage.reason).order_by(col(RawMessage.raw_message_id)))
            return [(_id(i), st, o, r) for i, st, o, r in rows]

    def replies_taken_since(self, owner_address: str, since: datetime) -> int:
        """Tasks and commands made, since `since`, from this address's replies to our mail: the
        per-sender rate limit of SECURITY.md S4. A loop needs our mail in it, so only replies
        count; and they count by when we took them up, so held mail counts when it runs."""
        since = _utc(since) or since
        with self.session() as s:
            tasks = s.exec(select(func.count()).select_from(Task).where(
                Task.owner_address == owner_address, col(Task.answers_us).is_(True),
                col(Task.raw_message_id).is_not(None), Task.created_at >= since)).one()
            commands = s.exec(select(func.count()).select_from(Command).where(
                Command.owner_address == owner_address, col(Command.answers_us).is_(True),
                Command.created_at >= since)).one()
            return int(tasks) + int(commands)

    def first_reply_taken_since(self, owner_address: str, since: datetime) -> datetime | None:
        """When the oldest of the replies that `replies_taken_since` counts was taken up."""
        since = _utc(since) or since
        with self.session() as s:
            first = s.exec(select(func.min(Task.created_at)).where(
                Task.owner_address == owner_address, col(Task.answers_us).is_(True),
                col(Task.raw_message_id).is_not(None), Task.created_at >= since)).one()
            command = s.exec(select(func.min(Command.created_at)).where(
                Command.owner_address == owner_address, col(Command.answers_us).is_(True),
                Command.created_at >= since)).one()
            times = [_utc(t) for t in (first, command) if t is not None]
            return min(t for t in times if t is not None) if times else None
