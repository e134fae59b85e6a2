"""Replies: the mail a task's end brings the owner, and the notices about tasks.

In: a task's `Outcome` and what the store holds of it (its changes, attachments, schedule).
Out: the completion or failure mail (`Outbound`) with the advice for a failure, the notices of a
deferred task, a used-up account, a broken policy, and a schedule paused after failures.
Side effects: the outbox, through the store; reads the files to attach, each through the
descriptor its policy check opened. It must never attach a file outside the task's workspace or
the policy's folders (not even through a folder swapped for a symlink after the check), and
never let a mail that cannot be built stop a task's end.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mailagent.agent.prices import WEB_SEARCH_USD
from mailagent.agent.task import Outcome
from mailagent.agent.web import Source
from mailagent.mail.notify import FileToSend, compose
from mailagent.policy import decide
from mailagent.store import Outbound, TaskWork
from mailagent.tasks.scheduler import Scheduler
from mailagent.tasks.toolbox import Toolbox
from mailagent.tools.drafts import read_judged
from mailagent.tools.files import Anchored, ToolError

log = logging.getLogger(__name__)


ACCOUNT_NOTICE_SECONDS = 24 * 3600  # the owner hears of a used-up account once a day


FAILURE_ADVICE = (
    ("budget:", "It stopped at a budget limit. Send the task again in smaller steps, or raise "
                "the limit in the [agent] section of the config."),
    ("the model endpoint refused", "The model refused the request. Check [model] in the "
                                   "config, then send the task again."),
    ("the conversation cannot be made to fit", "Start a new conversation with a [name] tag."),
    ("the model declined", "The model declined to do this task; nothing more of it was done. "
                           "Rephrase the task, or send a different one."),
)


def advice(reason: str) -> str:
    for prefix, text in FAILURE_ADVICE:
        if reason.startswith(prefix):
            return text
    return "Send the task again; if it fails the same way, run `mailagent status` on the computer."


_MARKDOWN = re.compile(r"([\\`*_{}\[\]<>()#+!|~])")


def plain_markdown(value: str) -> str:
    """`value` as Markdown that reads as itself: no emphasis, link or tag can come of it."""
    return _MARKDOWN.sub(r"\\\1", " ".join(value.split()))


def source_lines(sources: tuple[Source, ...]) -> list[str]:
    """The numbered sources of an answer, each its title and its address as plain text (the
    mail loads nothing remote and links nothing: the owner copies the address)."""
    return [f"{plain_markdown(s.title)}: {plain_markdown(s.url)}" if s.title
            else plain_markdown(s.url) for s in sources]


def web_line(work: TaskWork) -> str:
    """The web tools' part of the cost line: searches are billed apart from tokens."""
    parts = []
    if work.web_searches:
        parts.append(f"{work.web_searches} web search{'es' if work.web_searches != 1 else ''} "
                     f"(${work.web_searches * WEB_SEARCH_USD:.2f})")
    if work.web_fetches:
        parts.append(f"{work.web_fetches} web page{'s' if work.web_fetches != 1 else ''} "
                     "fetched")
    return " · ".join(parts)


def is_in_workspace(change: dict[str, Any], workspace: Path) -> bool:
    """A change that touched only the conversation's own workspace (or the folder itself)."""
    paths = [change["path"], *([change["from"]] if change.get("from") else [])]
    return all(Path(p) == workspace or workspace in Path(p).parents for p in paths)


def _describe(change: dict[str, Any]) -> str:
    if change["op"] == "moved":
        return f"moved {change['from']} to {change['path']}"
    return f"{change['op']} {change['path']}"


class Replies(Toolbox):
    """The worker's mail about tasks: outcomes, notices, deferrals. A part of `Worker`."""

    account_told_at: float | None
    on_mail: Callable[[], None]
    schedules: Scheduler | None

    def after_scheduled_run(self, task_id: int, state: str, mail: Outbound | None) -> None:
        """A schedule's run counts towards pausing it after failures in a row."""
        if self.schedules is None:
            return
        notice = self.schedules.after_run(task_id, state, mail.message_id if mail else None)
        if notice:
            self.store.enqueue_mail(compose(self.settings.smtp, self.store.reply_target(task_id),
                                            "notice", "command.md.j2", {"body": notice}))

    def outcome_mail(self, task_id: int, outcome: Outcome) -> Outbound | None:
        """The completion or failure reply; None (recorded) if it cannot be composed."""
        try:
            work = self.store.task_work(task_id)
            every = self.store.changes(task_id)
            # The workspace is the task's own scratch room: its files are attached or counted,
            # and only what the task changed outside it is listed by name.
            workspace = self.scope(work).workspace
            changes = [_describe(c) for c in every if not is_in_workspace(c, workspace)]
            values = {"task_id": task_id, "tokens": work.tokens, "cost": work.cost_usd,
                      "web": web_line(work), "changes": changes,
                      "workspace_changes": len(every) - len(changes),
                      **self.schedule_lines(work)}
            target = self.store.reply_target(task_id)
            if outcome.state == "done":
                return compose(self.settings.smtp, target, "completion", "completion.md.j2",
                               {**values, "answer": outcome.text or "Done.",
                                "sources": source_lines(outcome.sources),
                                "undo_hint": bool(every)},
                               self.sendable(work, self.store.attachments(task_id)))
            return compose(self.settings.smtp, target, "failure", "failure.md.j2",
                           {**values, "reason": outcome.reason, "advice": advice(outcome.reason),
                            "partial": outcome.text},
                           self.sendable(work, self.store.attachments(task_id)))
        except Exception as exc:  # a reply that cannot be built must not stop the task's end
            log.exception("cannot compose the mail of task_id=%s", task_id)
            self.store.audit("mail.compose_failed", f"{type(exc).__name__}: {exc}",
                             task_id=task_id)
            return None

    def schedule_lines(self, work: TaskWork) -> dict[str, Any]:
        """For the reply: which schedule this run belongs to, and the schedules it made."""
        if self.schedules is None:
            return {"run_note": "", "scheduled": []}
        made = self.store.schedules_made_by(work.task_id)
        return {"run_note": self.schedules.run_note(work.data),
                "scheduled": [self.schedules.confirmation(view) for view in made]}

    def wait_for_account(self, task_id: int, reason: str) -> None:
        """The account's spend limit or credit is used up: retrying every minute would only
        fail again, so the task waits an hour at a time, and the owner hears of it once a day
        (not once per task), with what to do."""
        wait = self.settings.agent.account_retry_seconds
        self.store.defer_task(task_id, datetime.now(UTC) + timedelta(seconds=wait), reason)
        now = time.monotonic()
        if self.account_told_at is not None and now - self.account_told_at < ACCOUNT_NOTICE_SECONDS:
            return
        self.account_told_at = now
        body = (f"Task #{task_id} is waiting: {reason}.\n\nRaise the spend limit or add credit "
                "in the Claude Console (Settings > Limits, and Billing), or wait for the limit "
                f"to reset. This task, and any others meanwhile, are tried again every "
                f"{wait / 60:g} minutes; I will not mail about this again today. Reply `cancel` "
                "to drop this one.")
        self.store.enqueue_mail(compose(self.settings.smtp, self.store.reply_target(task_id),
                                        "notice", "command.md.j2", {"body": body}))
        self.on_mail()

    def tell_deferred(self, task_id: int, reason: str, wait: float) -> None:
        """Once per task: the model endpoint is down, and the task will be tried again."""
        mail = compose(self.settings.smtp, self.store.reply_target(task_id), "notice",
                       "command.md.j2",
                       {"body": f"Task #{task_id} is waiting: {reason}.\n\nI will try again "
                                f"in {wait:g} seconds and reply here when it is done. Reply "
                                "`cancel` to drop it."})
        self.store.enqueue_mail(mail)
        self.on_mail()

    def sendable(self, work: TaskWork, paths: list[str]) -> list[FileToSend]:
        """Attachments that policy still lets us read now, at send time (SECURITY.md E3), read
        through the descriptor the decision's anchor opens (never by name again: F1)."""
        scope = self.scope(work)
        limit = self.settings.smtp.max_attachment_bytes * MAX_READ_FACTOR
        return files_to_send(lambda path: decide(self.policies.current(), "read", path, scope),
                             paths, limit,
                             lambda path, reason: self.store.audit(
                                 "mail.attachment_refused", reason, task_id=work.task_id,
                                 detail={"path": path}))


# A file is read for a mail up to this many times the attachment limit: more could still fit
# zipped only if it compresses better than that; it is named in the mail instead.
MAX_READ_FACTOR = 4


def files_to_send(judge: Callable[[str], Anchored], paths: list[str], limit: int,
                  refused: Callable[[str, str], None]) -> list[FileToSend]:
    """Each path the policy lets us read, with its bytes read through its anchor (or None, to
    name it in the mail, when it is gone or over `limit` bytes); `refused` hears of the
    others, which are not even named."""
    files = []
    for path in paths:
        decision = judge(path)
        if decision.verdict != "allow" or decision.path is None or decision.anchor is None:
            refused(path, decision.reason)
            continue
        try:
            _, payload = read_judged(decision, limit)
        except ToolError as error:
            refused(path, str(error))
            files.append(FileToSend(decision.path, None))
            continue
        files.append(FileToSend(decision.path, payload))
    return files
