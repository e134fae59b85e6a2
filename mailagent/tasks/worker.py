"""Worker: runs queued tasks with the agent, in order within a conversation, several at once.

In: the store's queue, the policy folder, the agent. Out: task state changes (done, failed,
waiting_approval, or back to queued after overload), each with its reason. Side effects: what the
tools do, always through the policy engine's decisions. Here is the catch-all around each task.
It must never run two tasks of one conversation at once, nor run a tool call policy did not allow.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mailagent.agent.loop import Agent, Outcome, TaskContext
from mailagent.config import Settings
from mailagent.content import fence
from mailagent.errors import ModelError, PolicyError, StoreFullError
from mailagent.mail.notify import approval_message_id, compose
from mailagent.mail.render import render
from mailagent.policy import (
    CommandsRule,
    Decision,
    Policy,
    PolicyWatcher,
    Scope,
    decide,
    decide_move,
    protected_paths,
)
from mailagent.policy.calls import check_call, describe_operation, operation_digest
from mailagent.policy.sandbox import Limits, Runner, SandboxInfo, View
from mailagent.store import (
    ApprovalView,
    CommandWork,
    Outbound,
    ReplyTarget,
    Store,
    TaskWork,
)
from mailagent.tasks.commands import NOT_IN_THREAD, answer
from mailagent.tasks.schedule_approval import ScheduleApprovals
from mailagent.tasks.scheduler import Scheduler
from mailagent.tasks.when import quiet_seconds
from mailagent.tasks.workspace import data_key, workspace_dir
from mailagent.tools.command import CommandTools
from mailagent.tools.connector import ConnectorTools
from mailagent.tools.files import FileTools, ToolError
from mailagent.tools.mcp_servers import Connectors
from mailagent.tools.memory import MemoryTools
from mailagent.tools.schedule import ScheduleTools

log = logging.getLogger(__name__)


FULL_RETRY_SECONDS = 2.0  # a full disk or database: how soon the worker tries again


FILE_TOOLS = ("list_files", "read_file", "write_file", "edit_file", "move_file", "delete_file",
              "search_files", "attach_file")


BUDGET_STEP = "one more budget step"


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


def _describe(change: dict[str, Any]) -> str:
    if change["op"] == "moved":
        return f"moved {change['from']} to {change['path']}"
    return f"{change['op']} {change['path']}"


def conversation_nonce(data_dir: Path, conversation_id: int) -> str:
    """A fence id unknown to senders and stable per conversation (a stable prompt prefix)."""
    key = data_key(data_dir, "fence.key")
    return hmac.new(key, str(conversation_id).encode(), hashlib.sha256).hexdigest()[:16]


class Worker:
    def __init__(self, settings: Settings, store: Store, agent: Agent,
                 home: Path | None = None, on_mail: Callable[[], None] = lambda: None,
                 schedules: Scheduler | None = None,
                 sandbox: SandboxInfo | None = None,
                 connectors: Connectors | None = None) -> None:
        self.settings, self.store, self.agent = settings, store, agent
        self.connectors = connectors
        self.schedules = schedules
        self.schedule_approvals = None if schedules is None else ScheduleApprovals(
            settings, store, schedules, lambda: self.on_mail())
        self.home = home or Path.home()
        self.sandbox = sandbox or SandboxInfo("none", detail="not looked for")
        self.runners: dict[int, Runner] = {}  # task_id -> what runs its commands
        self.on_mail = on_mail
        self.cancelling: dict[int, str] = {}  # task_id -> why it is being stopped
        self.account_told_at: float | None = None  # when the owner last heard of the account
        self.policies = PolicyWatcher(settings.policies_dir, self.policy_broken)
        self.running: dict[int, asyncio.Task[None]] = {}
        self.conversations: dict[int, int] = {}  # task_id -> conversation_id
        self.wake = asyncio.Event()
        self.on_busy: Callable[[bool], None] = lambda busy: None  # first task started, last ended
        # Set by the service: whether tools are stopped (an integrity check failed), and the
        # check around each command (mailagent.policy.integrity).
        self.tools_stopped: Callable[[], bool] = lambda: False
        self.watch: Callable[[TaskWork, str], AbstractContextManager[list[str]]] = \
            lambda _work, _command: nullcontext([])

    def policy_broken(self, error: PolicyError) -> None:
        """A broken policy file: logged, recorded, and the owner told (once per error)."""
        log.error("policy: %s (the last good policy stays in force)", error)
        self.store.audit("policy.error", str(error))
        self.tell_owner("mailagent: a policy file is broken",
                        f"A policy file does not validate: {error}\n\nThe last good policy "
                        "stays in force (or, if there was none, nothing is allowed). Fix the "
                        "file; the change takes effect without a restart. `mailagent check` "
                        "shows the problem too.")

    def tell_owner(self, subject: str, body: str) -> None:
        """A notice to the first owner address that answers no mail."""
        target = ReplyTarget(self.settings.owner.addresses[0], subject, None, (), None, None,
                             None)
        self.store.enqueue_mail(compose(self.settings.smtp, target, "notice", "command.md.j2",
                                        {"body": body}))
        self.on_mail()

    async def run(self, stop: asyncio.Event) -> None:
        for task_id in self.store.requeue_interrupted():
            log.info("task resumed after restart task_id=%s", task_id)
        if self.connectors is not None:  # tasks waiting since before the start need their tools
            await self.connectors.started(timeout=60)
        while not stop.is_set():
            quiet: float | None = None
            try:
                self.answer_commands()
                if not self.tools_stopped():
                    self.start_claimed()
            except StoreFullError as exc:  # the owner is told once; tried again shortly
                log.warning("worker waits for room: %s", exc)
                quiet = FULL_RETRY_SECONDS
            self.wake.clear()
            waits = [asyncio.create_task(self.wake.wait()), asyncio.create_task(stop.wait())]
            await asyncio.wait([*waits, *self.running.values()],
                               timeout=quiet if quiet is not None else self.quiet_seconds(),
                               return_when=asyncio.FIRST_COMPLETED)
            for waiter in waits:
                waiter.cancel()
        await self.shutdown()

    def quiet_seconds(self) -> float:
        """How long the loop sleeps unless woken (new task or command, a task ending): until a
        deferred task may run or an approval expires, and at most IDLE_LOOK_SECONDS, since the
        command line changes the queue from another process. An idle service wakes rarely."""
        return quiet_seconds(self.store.next_task_event_at(), datetime.now(UTC))

    def start_claimed(self) -> None:
        free = self.settings.agent.max_concurrent_tasks - len(self.running)
        busy = set(self.conversations.values())
        for work in self.store.claim_tasks(busy, free, datetime.now(UTC)):
            if not self.running:
                self.on_busy(True)
            self.conversations[work.task_id] = work.conversation_id
            task = asyncio.create_task(self.run_task(work), name=f"task-{work.task_id}")
            self.running[work.task_id] = task
            task.add_done_callback(functools.partial(self.forget, work.task_id))

    def forget(self, task_id: int, _done: object = None) -> None:
        if self.running.pop(task_id, None) is not None and not self.running:
            self.on_busy(False)
        self.conversations.pop(task_id, None)
        self.wake.set()

    def stop_tools(self, reason: str) -> None:
        """Stop every running task at once (tools are stopped): its command is killed, the
        calls it asked for do not run, and it ends cancelled with `reason`."""
        for runner in list(self.runners.values()):
            runner.kill()
        for task_id, task in list(self.running.items()):
            self.cancelling[task_id] = f"stopped: tools are stopped ({reason})"
            task.cancel()

    def requeue_stranded(self) -> None:
        """Room again after a full store: tasks whose step could not be recorded (left running
        in the store, run by nobody) go back to the queue and resume after their last step."""
        for task_id in self.store.requeue_interrupted(keep=self.running):
            log.info("task resumed after the store was full task_id=%s", task_id)
        self.wake.set()

    async def shutdown(self) -> None:
        """Stop running tasks; they stay `running` in the store and resume at the next start."""
        for task in list(self.running.values()):
            task.cancel()
        if self.running:
            await asyncio.wait(list(self.running.values()), timeout=10)

    async def run_task(self, work: TaskWork) -> None:
        """The catch-all around one task: whatever happens ends in a recorded state."""
        log.info("task running task_id=%s conversation=%s", work.task_id, work.conversation_name)
        try:
            async with asyncio.timeout(self.settings.agent.max_task_seconds):
                outcome = await self.agent.work(self.context(work))
        except TimeoutError:
            limit = self.settings.agent.max_task_seconds
            outcome = Outcome("failed", f"budget: the task ran longer than {limit:g} s "
                              "(agent.max_task_seconds)")
        except ModelError as exc:
            outcome = Outcome("deferred" if exc.transient else "failed", str(exc),
                              account_limit=exc.account_limit, retry_after=exc.retry_after)
        except asyncio.CancelledError:
            if work.task_id not in self.cancelling:
                raise  # shutdown: the task stays running and resumes at the next start
            outcome = Outcome("cancelled", self.cancelling.pop(work.task_id))
        except StoreFullError as exc:  # nothing can be recorded: it resumes once there is room
            log.warning("task_id=%s waits for room: %s", work.task_id, exc)
            return
        except Exception as exc:  # the one catch-all per task: record it and go on
            log.exception("task_id=%s failed", work.task_id)
            outcome = Outcome("failed", f"internal error: {type(exc).__name__}: {exc}")
        finally:  # however the task ended, a command it started does not outlive it (A3)
            runner = self.runners.pop(work.task_id, None)
            if runner is not None:
                runner.kill()
        try:
            self.record(work.task_id, outcome)
        except StoreFullError as exc:  # left running in the store: requeued once there is room
            log.warning("task_id=%s outcome not recorded: %s", work.task_id, exc)

    def record(self, task_id: int, outcome: Outcome) -> None:
        log.info("task %s task_id=%s reason=%s", outcome.state, task_id, outcome.reason)
        if outcome.state == "deferred" and outcome.account_limit:
            self.wait_for_account(task_id, outcome.reason)
        elif outcome.state == "deferred":
            # The endpoint's own retry-after when it gave one, within an hour; else ours.
            wait = min(outcome.retry_after or self.settings.agent.retry_after_seconds,
                       max(self.settings.agent.retry_after_seconds, 3600))
            later = datetime.now(UTC) + timedelta(seconds=wait)
            if self.store.defer_task(task_id, later, outcome.reason):
                self.tell_deferred(task_id, outcome.reason, wait)
        elif outcome.state == "waiting_approval" and outcome.call is not None:
            self.ask_approval(task_id, outcome)
            self.on_mail()
        elif outcome.state == "paused":
            self.ask_to_continue(task_id, outcome)
            self.on_mail()
        else:
            mail = None if outcome.state == "cancelled" else self.outcome_mail(task_id, outcome)
            self.store.finish_task(task_id, outcome.state, outcome.reason, outcome.text, mail)
            self.after_scheduled_run(task_id, outcome.state, mail)
            self.on_mail()

    def after_scheduled_run(self, task_id: int, state: str, mail: Outbound | None) -> None:
        """A schedule's run counts towards pausing it after failures in a row."""
        if self.schedules is None:
            return
        notice = self.schedules.after_run(task_id, state, mail.message_id if mail else None)
        if notice:
            self.store.enqueue_mail(compose(self.settings.smtp, self.store.reply_target(task_id),
                                            "notice", "command.md.j2", {"body": notice}))

    # ------------------------------------------------------------ mail about tasks

    def outcome_mail(self, task_id: int, outcome: Outcome) -> Outbound | None:
        """The completion or failure reply; None (recorded) if it cannot be composed."""
        try:
            work = self.store.task_work(task_id)
            changes = [_describe(c) for c in self.store.changes(task_id)]
            values = {"task_id": task_id, "tokens": work.tokens, "cost": work.cost_usd,
                      "changes": changes, **self.schedule_lines(work)}
            target = self.store.reply_target(task_id)
            if outcome.state == "done":
                return compose(self.settings.smtp, target, "completion", "completion.md.j2",
                               {**values, "answer": outcome.text or "Done.",
                                "undo_hint": bool(changes)},
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

    def sendable(self, work: TaskWork, paths: list[str]) -> list[Path]:
        """Attachments that policy still lets us read now, at send time (SECURITY.md E3)."""
        scope, allowed = self.scope(work), []
        for path in paths:
            decision = decide(self.policies.current(), "read", path, scope)
            if decision.verdict == "allow" and decision.path is not None:
                allowed.append(decision.path)
            else:
                self.store.audit("mail.attachment_refused", decision.reason,
                                 task_id=work.task_id, detail={"path": path})
        return allowed

    # ------------------------------------------------------------ approvals (SECURITY.md A1)

    def ask_approval(self, task_id: int, outcome: Outcome) -> None:
        """Record what waits, bound to a digest and a token, and mail the owner the question."""
        assert outcome.call is not None
        name, tool_input = outcome.call["name"], outcome.call.get("input") or {}
        work = self.store.task_work(task_id)
        decision = self.judge_call(self.scope(work), name, tool_input)
        existing = self.store.approval_for(task_id, outcome.call["id"])
        if existing is not None and existing.state == "pending":
            self.store.set_task_state(task_id, "waiting_approval", outcome.reason)
            return
        token = secrets.token_hex(16)
        operation = describe_operation(name, tool_input, decision)
        hours = self.settings.agent.approval_hours
        mail = compose(self.settings.smtp, self.store.reply_target(task_id), "approval",
                       "approval.md.j2", {"task_id": task_id, "operation": operation,
                                          "reason": decision.reason, "hours": hours},
                       message_id=approval_message_id(self.settings.smtp.from_address, token))
        self.store.request_approval(task_id, outcome.call["id"], token,
                                    operation_digest(decision, name, tool_input), operation,
                                    datetime.now(UTC) + timedelta(hours=hours),
                                    outcome.reason, mail)

    def ask_to_continue(self, task_id: int, outcome: Outcome) -> None:
        """A task at its budget waits for `continue`; the question is an approval too."""
        work = self.store.task_work(task_id)
        token, hours = secrets.token_hex(16), self.settings.agent.approval_hours
        mail = compose(self.settings.smtp, self.store.reply_target(task_id), "approval",
                       "budget.md.j2", {"task_id": task_id, "reason": outcome.reason,
                                        "tokens": work.tokens, "cost": work.cost_usd,
                                        "partial": outcome.text, "hours": hours},
                       message_id=approval_message_id(self.settings.smtp.from_address, token))
        self.store.request_approval(task_id, "", token, "", BUDGET_STEP,
                                    datetime.now(UTC) + timedelta(hours=hours),
                                    outcome.reason, mail)

    def settle(self, command: CommandWork) -> str:
        """An `approve`, `deny` or `continue` reply: it must answer the approval mail itself,
        whose Message-ID carries the token."""
        if command.task_id is None:
            return NOT_IN_THREAD
        for approval in self.store.approvals(command.task_id):
            is_budget = approval.operation == BUDGET_STEP
            kind_fits = command.name == "deny" or (command.name == "continue") == is_budget
            if approval.message_id not in command.reply.references or not kind_fits:
                continue
            if approval.schedule_id is not None and self.schedule_approvals is not None:
                return self.schedule_approvals.settle(approval, command.name)
            if approval.expires_at < datetime.now(UTC):
                self.expire(approval)
                return f"The question about {approval.operation} had expired; nothing was done."
            state = "denied" if command.name == "deny" else "approved"
            if not self.store.settle_approval(approval.approval_id, state,
                                              f"{state} by the owner"):
                break
            self.wake.set()
            if is_budget:
                return self.after_budget_answer(approval, state)
            if state == "approved":
                return f"Approved: {approval.operation}. Task #{approval.task_id} goes on."
            return f"Denied: {approval.operation}. Task #{approval.task_id} is stopped."
        return ("Nothing in this thread is waiting for your approval (it may have been settled "
                "already). Reply to the approval mail itself.")

    def after_budget_answer(self, approval: ApprovalView, state: str) -> str:
        if state == "approved":
            return f"Task #{approval.task_id} goes on with one more budget."
        self.end_paused(approval.task_id, "not continued")
        return f"Task #{approval.task_id} is ended; what it made so far comes in a separate mail."

    def end_paused(self, task_id: int, why: str) -> None:
        """A budget pause that is not continued ends the task, partial outputs attached."""
        work = self.store.task_work(task_id)
        partial = self.agent.partial_text(work.conversation_id, task_id)
        outcome = Outcome("failed", f"budget reached and {why}", partial)
        self.store.finish_task(task_id, "failed", outcome.reason, partial,
                               self.outcome_mail(task_id, outcome))
        self.on_mail()

    def expire(self, approval: ApprovalView) -> None:
        if approval.schedule_id is not None and self.schedule_approvals is not None:
            self.schedule_approvals.expire(approval)
            return
        if approval.operation == BUDGET_STEP:
            if self.store.settle_approval(approval.approval_id, "expired", "no answer in time"):
                self.end_paused(approval.task_id, "no `continue` came in time")
            return
        if self.store.settle_approval(approval.approval_id, "expired",
                                      "no answer before the approval expired"):
            mail = compose(self.settings.smtp, self.store.reply_target(approval.task_id),
                           "notice", "command.md.j2",
                           {"body": f"No answer came in time, so this was not done: "
                                    f"{approval.operation}. Task #{approval.task_id} is stopped."})
            self.store.enqueue_mail(mail)
            self.on_mail()

    def expire_approvals(self) -> None:
        now = datetime.now(UTC)
        for approval in self.store.approvals():
            if approval.expires_at < now:
                self.expire(approval)

    def answer_commands(self) -> None:
        self.expire_approvals()
        for command in self.store.pending_commands():
            try:
                text = answer(command, self.store, self.cancel, self.settle, self.may_write,
                              self.schedules)
                mail = compose(self.settings.smtp, command.reply, "command", "command.md.j2",
                               {"body": text})
            except Exception as exc:  # the catch-all per command: recorded, never retried
                log.exception("command_id=%s failed", command.command_id)
                self.store.finish_command(command.command_id, None,
                                          f"internal error: {type(exc).__name__}: {exc}")
                continue
            self.store.finish_command(command.command_id, mail, f"answered {command.name}")
            self.on_mail()

    def may_write(self, task_id: int, path: str) -> bool:
        scope = self.scope(self.store.task_work(task_id))
        return decide(self.policies.current(), "write", path, scope).verdict != "deny"

    def cancel(self, task_id: int) -> str:
        """Stop a task now (SECURITY.md A3): a running one is interrupted at its next await."""
        state = self.store.task_state(task_id)
        if task_id in self.running:
            self.cancelling[task_id] = "cancelled by the owner"
            self.running[task_id].cancel()
            return f"Task #{task_id} is being stopped; no further step of it will run."
        if state in ("queued", "waiting_approval"):
            self.store.finish_task(task_id, "cancelled", "cancelled by the owner")
            return f"Task #{task_id} is cancelled; it will not run."
        return f"Task #{task_id} is already {state}; there is nothing to cancel."

    # ------------------------------------------------------------ one task's tools and prompt

    def scope(self, work: TaskWork) -> Scope:
        s = self.settings
        workspace = workspace_dir(s.workspaces_dir, work.conversation_name)
        workspace.mkdir(parents=True, exist_ok=True)
        home = self.home
        protected = protected_paths(config_path=s.config_path, policies_dir=s.policies_dir,
                                    data_dir=s.data_dir, home=home)
        return Scope(workspace=workspace.resolve(), home=home, protected=protected)

    def context(self, work: TaskWork) -> TaskContext:
        scope = self.scope(work)
        files = FileTools(
            workspace=scope.workspace,
            judge=lambda action, path: decide(self.policies.current(), action, path, scope),  # type: ignore[arg-type]
            judge_move=lambda src, dst: decide_move(self.policies.current(), src, dst, scope),
            trash=self.settings.data_dir / "trash" / f"task-{work.task_id}",
            on_attach=lambda path: self.store.add_attachment(work.task_id, path),
            max_output_chars=self.settings.agent.max_tool_output_chars,
        )
        memory = MemoryTools(save=lambda note: self.store.remember(work.conversation_id, note),
                             notes=lambda: self.store.memory(work.conversation_id),
                             max_notes=self.settings.agent.max_memory_notes,
                             max_chars=self.settings.agent.max_memory_chars)
        tools = {name: getattr(files, name) for name in FILE_TOOLS}
        tools["remember"] = memory.remember
        if self.schedule_approvals is not None:  # who made it decides whether it waits (S5)
            tools["schedule_task"] = ScheduleTools(make=functools.partial(
                self.schedule_approvals.make, work.task_id)).schedule_task
        policy = self.policies.current()
        if self.offers_commands(policy):
            tools["run_command"] = self.command_tools(work, scope).run_command
        connector = self.connector_tools(work, scope)
        if connector is not None:
            tools.update(connector.tools())

        def approve(flag: bool) -> None:
            files.approved = flag
            if connector is not None:
                connector.approved = flag

        nonce = conversation_nonce(self.settings.data_dir, work.conversation_id)
        return TaskContext(
            work=work, system=self.system_prompt(work, scope, policy, nonce), tools=tools,
            check=lambda name, tool_input: self.judge_call(scope, name, tool_input),
            nonce=nonce,
            set_approved=approve,
            digest=lambda name, tool_input: operation_digest(
                self.judge_call(scope, name, tool_input), name, tool_input),
        )

    def judge_call(self, scope: Scope, name: str, tool_input: dict[str, Any]) -> Decision:
        """A tool call decided by the policy in force now, knowing whether commands are
        sandboxed: the one judgement behind the check, approvals and digests."""
        if self.tools_stopped():
            return Decision("deny", "integrity", "tools are stopped: an integrity check failed; "
                            "the owner was told and decides when they run again", None)
        return check_call(self.policies.current(), scope, name, tool_input,
                          sandboxed=self.sandbox.available)

    def connector_tools(self, work: TaskWork, scope: Scope) -> ConnectorTools | None:
        """The MCP tools of this task: decided again, by the policy in force, at each call."""
        if self.connectors is None:
            return None
        return ConnectorTools(
            self.connectors,
            judge=lambda name: self.judge_call(scope, name, {}),
            audit=lambda kind, reason, detail: self.store.audit(kind, reason,
                                                                task_id=work.task_id,
                                                                detail=detail))

    def offers_commands(self, policy: Policy) -> bool:
        rule = policy.commands
        return rule is not None and (self.sandbox.available or rule.unsafe_no_sandbox)

    def command_tools(self, work: TaskWork, scope: Scope) -> CommandTools:
        """run_command for one task: policy, view and limits are read again at every call."""
        runner = self.runners.setdefault(
            work.task_id, Runner(self.sandbox if self.sandbox.available else None))
        trash = self.settings.data_dir / "trash" / f"task-{work.task_id}"

        def setup() -> tuple[CommandsRule, View, Limits]:
            policy = self.policies.current()
            if policy.commands is None or not self.offers_commands(policy):
                raise ToolError("run_command is no longer allowed by the policy")
            return policy.commands, command_view(policy, scope), command_limits(policy.commands)

        return CommandTools(
            runner=runner, setup=setup,
            judge=lambda action, path: decide(self.policies.current(), action, path, scope),  # type: ignore[arg-type]
            remove_protected=lambda path: keep_in_trash(path, trash),
            watch=lambda command: self.watch(work, command))

    def system_prompt(self, work: TaskWork, scope: Scope, policy: Policy, nonce: str) -> str:
        """The task's standing orders. Memory notes were written by the model (`remember`), which
        may have been fooled when it wrote them, so they come fenced as data like any content."""
        folders = [{"path": str(f.path), "access": f.access, "delete": f.delete}
                   for f in policy.folders]
        commands = policy.commands if self.offers_commands(policy) else None
        return render("system.md.j2", today=datetime.now(UTC).date().isoformat(),
                      workspace=str(scope.workspace), folders=folders, commands=commands,
                      memory=[fence("memory-note", note, nonce, number=number)
                              for number, note in self.store.memory(work.conversation_id)])


def command_view(policy: Policy, scope: Scope) -> View:
    """What a command sees: the policy's folders, the workspace, and no protected path."""
    read = tuple(f.path for f in policy.folders if f.access == "read")
    write = tuple(f.path for f in policy.folders if f.access == "write")
    return View(read=read, write=write, hidden=scope.protected, workspace=scope.workspace,
                home=scope.workspace / ".home")


def command_limits(rule: CommandsRule) -> Limits:
    return Limits(timeout_seconds=rule.timeout_seconds, memory_bytes=rule.memory_mb * 1024**2,
                  max_processes=rule.max_processes, max_output_bytes=rule.max_output_bytes,
                  network=rule.network)


def keep_in_trash(path: Path, trash: Path) -> str:
    """Move a protected path a command created out of the way; say where it went."""
    trash.mkdir(parents=True, exist_ok=True)
    kept = trash / f"protected-{secrets.token_hex(4)}-{path.name}"
    os.replace(path, kept)
    log.warning("a command created the protected path %s; moved to %s", path, kept)
    return f"{path} (moved to {kept})"
