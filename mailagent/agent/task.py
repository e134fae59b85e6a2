"""A task as the agent sees it: what it is handed for one task, and what it hands back.

In: nothing (definitions only). Out: `TaskContext`, made by the worker's toolbox (the task, the
system prompt, the tools, and `check`, the policy decision for a call), and `Outcome`, how a
run of the task ended. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailagent.agent.web import Source
from mailagent.policy.binding import Binding
from mailagent.policy.rules import InternetRule
from mailagent.store import TaskWork
from mailagent.tools.files import Judged
from mailagent.tools.media import Media


def show_nothing(_attachment: dict[str, Any]) -> Media | str | None:
    return None


def no_internet() -> InternetRule | None:
    return None


@dataclass(frozen=True)
class Outcome:
    state: str  # done | failed | waiting_approval | deferred | cancelled
    reason: str = ""
    text: str = ""
    call: dict[str, Any] | None = None  # the tool_use block that waits for approval
    account_limit: bool = False  # deferred because the account's spend limit or credit is used
    retry_after: float | None = None  # deferred: the wait the endpoint asked for
    sources: tuple[Source, ...] = ()  # done: what the answer cites, numbered as its marks


@dataclass
class TaskContext:
    """What the service hands the agent for one task."""

    work: TaskWork
    system: str
    tools: dict[str, Callable[..., str | Media]]
    check: Callable[[str, dict[str, Any]], Judged]
    nonce: str
    # The binding of the approved call that runs now (None: no approval): what its tools may
    # act on, each file compared by identity and content with what the owner approved.
    set_approved: Callable[[Binding | None], None]
    bind: Callable[[str, dict[str, Any]], Binding]
    # What the model is shown of an attachment of the task's mail: its image or PDF blocks,
    # the text of a calendar or contact card, or None (read it with read_file).
    show: Callable[[dict[str, Any]], Media | str | None] = show_nothing
    # The policy's [internet] rule in force now (None: no web tool), read at every request.
    internet: Callable[[], InternetRule | None] = no_internet
