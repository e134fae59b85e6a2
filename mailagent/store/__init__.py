"""The store: SQLModel tables, forward-only named migrations, and the queries of every stage.

In: calls from the service and the CLI. Out: frozen dataclasses (never live ORM objects).
Side effects: the database only (SQLite in WAL mode by default, any SQLAlchemy URL otherwise).
It must never decide anything: it records what the stages decided, each change in one transaction,
so that a crash between two calls leaves a state the service can resume from.
"""

from __future__ import annotations

from mailagent.store.approvals import ApprovalStore
from mailagent.store.claims import ClaimStore, Holder, mailbox_identity, mailbox_of
from mailagent.store.db import create_store_engine
from mailagent.store.drafts import DraftStore
from mailagent.store.held import HeldStore
from mailagent.store.history import HistoryStore
from mailagent.store.inbox import InboxStore
from mailagent.store.outbox import OutboxStore
from mailagent.store.tables import MIGRATIONS, TASK_STATES, TASK_TRANSITIONS, Task
from mailagent.store.tasks import TaskStore
from mailagent.store.views import (
    ApprovalView,
    AuditView,
    CommandView,
    CommandWork,
    ConversationView,
    DraftQuestion,
    DraftView,
    HeldView,
    HistoryItem,
    NewCommand,
    NewDraft,
    NewSchedule,
    NewTask,
    Outbound,
    OutboxView,
    ReplyTarget,
    SavedRaw,
    ScheduledRun,
    ScheduleQuestion,
    ScheduleView,
    SeenContext,
    SeenTask,
    TaskView,
    TaskWork,
    ThreadMatch,
    ToolCallView,
    Usage,
)

__all__ = [
    "MIGRATIONS",
    "TASK_STATES",
    "TASK_TRANSITIONS",
    "ApprovalView",
    "AuditView",
    "CommandView",
    "CommandWork",
    "ConversationView",
    "DraftQuestion",
    "DraftView",
    "HeldView",
    "HistoryItem",
    "Holder",
    "NewCommand",
    "NewDraft",
    "NewSchedule",
    "NewTask",
    "Outbound",
    "OutboxView",
    "ReplyTarget",
    "SavedRaw",
    "ScheduleQuestion",
    "ScheduleView",
    "ScheduledRun",
    "SeenContext",
    "SeenTask",
    "Store",
    "Task",
    "TaskView",
    "TaskWork",
    "ThreadMatch",
    "ToolCallView",
    "Usage",
    "create_store_engine",
    "mailbox_identity",
    "mailbox_of",
]


class Store(InboxStore, TaskStore, OutboxStore, ApprovalStore, HistoryStore, HeldStore,
            DraftStore, ClaimStore):
    """Every read and write of mailagent's state, one area per module (inbox, tasks, outbox,
    approvals, history, schedules, held mail, drafts, the claim on the mailbox) over one
    database (`db`). Safe to share between threads."""

    @classmethod
    def open(cls, url: str, migrate: bool = True) -> Store:
        """The store at `url`, migrated unless a reader beside the service asks not to."""
        store = Store(create_store_engine(url))
        if migrate:
            store.migrate()
        return store
