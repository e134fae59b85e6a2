"""Worker: runs queued tasks with the agent, in order within a conversation, several at once.

In: the store's queue, the policy folder, the agent. Out: task state changes (done, failed,
waiting_approval, or back to queued after overload), each with its reason. Side effects: what the
tools do, always through the policy engine's decisions. Here is the catch-all around each task.
It must never run two tasks of one conversation at once, nor run a tool call policy did not allow.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailagent.agent.loop import Agent
from mailagent.agent.task import Outcome
from mailagent.bell import Bell
from mailagent.config import Settings
from mailagent.errors import ModelError, StoreFullError
from mailagent.mail.notices import Notices
from mailagent.mail.notify import compose
from mailagent.policy import Decision, PolicyWatcher, decide
from mailagent.policy.sandbox import Runner, SandboxInfo
from mailagent.store import Store, TaskWork
from mailagent.tasks.approvals import Approvals
from mailagent.tasks.commands import answer
from mailagent.tasks.schedule_approval import ScheduleApprovals
from mailagent.tasks.scheduler import Scheduler
from mailagent.tasks.stoppage import Stoppage
from mailagent.tasks.when import quiet_seconds
from mailagent.tools.mcp_servers import Connectors

log = logging.getLogger(__name__)


FULL_RETRY_SECONDS = 2.0  # a full disk or database: how soon the worker tries again


class Worker(Approvals):
    """Claims queued tasks, runs each with the agent and records how it ended; answers mail
    commands between tasks. Approvals, replies and each task's tools are its parts
    (tasks/approvals.py, tasks/replies.py, tasks/toolbox.py)."""

    def __init__(self, settings: Settings, store: Store, agent: Agent,
                 home: Path | None = None, *, bell: Bell | None = None,
                 mail_bell: Bell | None = None, policies: PolicyWatcher | None = None,
                 schedules: Scheduler | None = None,
                 sandbox: SandboxInfo | None = None,
                 connectors: Connectors | None = None,
                 on_busy: Callable[[bool], None] = lambda busy: None,
                 stoppage: Stoppage | None = None) -> None:
        self.settings, self.store, self.agent = settings, store, agent
        self.wake = bell or Bell()  # rung by whatever queues a task or a command
        mail_bell = mail_bell or Bell()  # the postman's
        self.on_mail = mail_bell.ring
        self.policies = policies or PolicyWatcher(
            settings.policies_dir, Notices(settings, store, mail_bell).policy_broken)
        self.connectors = connectors
        self.schedules = schedules
        self.schedule_approvals = None if schedules is None else ScheduleApprovals(
            settings, store, schedules, self.on_mail)
        self.home = home or Path.home()
        self.sandbox = sandbox or SandboxInfo("none", detail="not looked for")
        self.runners: dict[int, Runner] = {}  # task_id -> what runs its commands
        self.draft_approvals = self.make_draft_approvals()
        self.cancelling: dict[int, str] = {}  # task_id -> why it is being stopped
        self.account_told_at: float | None = None  # when the owner last heard of the account
        self.running: dict[int, asyncio.Task[None]] = {}
        self.conversations: dict[int, int] = {}  # task_id -> conversation_id
        self.on_busy = on_busy  # the first task started (True), the last one ended (False)
        # Whether tools are stopped (an integrity check failed), and the check around each
        # command (mailagent.policy.integrity); rings `bell` when either changes.
        self.stoppage = stoppage

    def tools_stopped(self) -> bool:
        return self.stoppage is not None and self.stoppage.halted.is_set()

    def watch(self, work: TaskWork, command: str) -> AbstractContextManager[list[str]]:
        if self.stoppage is None:
            return nullcontext([])
        return self.stoppage.guard.watching(work.task_id, work.conversation_name, command)

    async def run(self, stop: asyncio.Event) -> None:
        for task_id in self.store.requeue_interrupted():
            log.info("task resumed after restart task_id=%s", task_id)
        if self.connectors is not None:  # tasks waiting since before the start need their tools
            await self.connectors.started(timeout=60)
        while not stop.is_set():
            quiet: float | None = None
            try:
                self.obey_stoppage()
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
        self.wake.ring()

    def obey_stoppage(self) -> None:
        """Tools just stopped: every running task stops now, once per halt (none starts while
        they stay stopped). Room again after a full store: the tasks it stranded go on."""
        if self.stoppage is None:
            return
        if self.stoppage.just_halted.is_set():
            self.stoppage.just_halted.clear()
            self.stop_tools(self.stoppage.halt_reason)
        if self.stoppage.room_again.is_set():
            self.stoppage.room_again.clear()
            self.requeue_stranded()

    def stop_tools(self, reason: str) -> None:
        """Stop every running task at once (tools are stopped): its command is killed, the
        calls it asked for do not run, and it ends cancelled with `reason`."""
        for task_id, runner in list(self.runners.items()):
            if task_id not in self.cancelling:
                runner.kill()
        for task_id, task in list(self.running.items()):
            if task_id not in self.cancelling:
                self.cancelling[task_id] = f"stopped: tools are stopped ({reason})"
                task.cancel()

    def requeue_stranded(self) -> None:
        """Room again after a full store: tasks whose step could not be recorded (left running
        in the store, run by nobody) go back to the queue and resume after their last step."""
        for task_id in self.store.requeue_interrupted(keep=self.running):
            log.info("task resumed after the store was full task_id=%s", task_id)
        self.wake.ring()

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
            # Ours, or longer when the endpoint's retry-after asks for more (within an hour): a
            # short retry-after is the SDK's business, already spent on its own retries.
            ours = self.settings.agent.retry_after_seconds
            wait = max(ours, min(outcome.retry_after or 0.0, 3600.0))
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

    def answer_commands(self) -> None:
        self.expire_approvals()
        for command in self.store.pending_commands():
            try:
                text = answer(command, self.store, self.cancel, self.settle, self.judge_write,
                              self.schedules, self.settings)
                mail = compose(self.settings.smtp, command.reply, "command", "command.md.j2",
                               {"body": text})
            except Exception as exc:  # the catch-all per command: recorded, never retried
                log.exception("command_id=%s failed", command.command_id)
                self.store.finish_command(command.command_id, None,
                                          f"internal error: {type(exc).__name__}: {exc}")
                continue
            self.store.finish_command(command.command_id, mail, f"answered {command.name}")
            self.on_mail()

    def judge_write(self, task_id: int, path: str) -> Decision:
        """The policy's write decision for `path` now, in task `task_id`'s scope (for `undo`)."""
        scope = self.scope(self.store.task_work(task_id))
        return decide(self.policies.current(), "write", path, scope)

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
