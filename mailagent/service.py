"""The service: builds the stages, owns the event loop, and handles each message end to end.

The whole path of one mail is three legs, each a function that ends in a commit, joined by the
store's durable queue (so a crash between two legs resumes where it stopped):

- in: `Service.receive` (here). The mailbox watcher (mail/mailbox.py) hands over each fetched
  message; its raw bytes are committed first, then `Service.process` runs intake (limits, loop
  guard, sender authentication, replay window; mail/intake.py), threads (mail/threads.py) and
  the hourly limit (mail/holding.py), and records a rejection, held mail, a mail command or a
  queued task. "Why was my mail not picked up?" starts here.
- task: `Worker.run_task` (tasks/worker.py). A claimed task runs with the agent (agent/loop.py),
  every tool call judged by the policy first (policy/calls.py); its outcome is recorded with
  its reply, approval question or deferral in the outbox. "Why did it refuse?" starts at the
  policy's decision, which is a row of the task's tool calls.
- send: `Postman.deliver` (mail/notify.py). One outbox row goes out over SMTP, exactly once:
  the row and its Message-ID are written before the send, and an unknown outcome is settled
  against the Sent folder.

In: `Settings`. Out: the running daemon until SIGINT/SIGTERM. Side effects: the data directory's
lock (one instance per data directory, SECURITY.md L5), the store, the IMAP connection (through
the mailbox watcher), attachment files in workspaces. Here and only here is the catch-all around
each message: whatever goes wrong is recorded with its reason and the service goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Any

from mailagent.agent.loop import Agent
from mailagent.bell import Bell
from mailagent.config import Settings
from mailagent.errors import MailagentError, StoreError, StoreFullError, as_full
from mailagent.failpoints import failpoint
from mailagent.instance import instance_lock
from mailagent.mail.canary import Canary
from mailagent.mail.holding import Hold, Holding
from mailagent.mail.intake import Inbound, IntakeRules, Rejection, content_key, read_inbound
from mailagent.mail.mailbox import Fetched, Watcher, in_folder
from mailagent.mail.notices import Notices
from mailagent.mail.notify import Postman, compose
from mailagent.mail.render import check_templates
from mailagent.mail.threads import CommandRoute, TaskRoute, route
from mailagent.policy import PolicyWatcher
from mailagent.policy.sandbox import find_sandbox
from mailagent.store import NewCommand, NewTask, Outbound, ReplyTarget, Store, mailbox_of
from mailagent.tasks.keepawake import KeepAwake
from mailagent.tasks.scheduler import Scheduler
from mailagent.tasks.stoppage import Stoppage
from mailagent.tasks.worker import Worker
from mailagent.tasks.workspace import save_attachments, workspace_dir
from mailagent.tools.mcp_servers import Connectors

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
HELD_POLL_SECONDS = 2.0  # how soon `release`, `resume` and a freed hour let held mail run
RESTART_SECONDS = 5.0  # a stage's loop that a database error ended starts again after this


class Service:
    """The daemon. Its stages are built here once, in the order of the flow, each given what it
    needs; it is also the mailbox's sink: every fetched message comes through here."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings, self.store = settings, store
        # The postman and the worker sleep until there is work; whoever gives them work rings.
        self.mail_bell, self.work_bell = Bell(), Bell()
        self.notices = Notices(settings, store, self.mail_bell)
        # Tools stopped after a failed integrity check; a full store (SECURITY.md L6, L7).
        self.stoppage = Stoppage(settings, store, mail_bell=self.mail_bell,
                                 work_bell=self.work_bell)
        store.on_full = self.stoppage.full
        # in: the mailbox, the liveness probes, the hourly limit
        self.watcher = Watcher(settings.imap, store, self, settings.limits.max_message_bytes,
                               settings.limits.max_age_days)
        self.canary = Canary(settings, store, self.notices)
        self.holding = Holding(store, settings.limits, settings.smtp)
        # task: the policy, the schedules, the connectors, the agent, the worker
        self.policies = PolicyWatcher(settings.policies_dir, self.notices.policy_broken)
        self.scheduler = Scheduler(settings.schedules, settings.owner.timezone, store,
                                   on_new_task=self.work_bell.ring, tell_owner=self.notices.tell,
                                   owner_address=settings.owner.addresses[0])
        self.connectors = Connectors(lambda: self.policies.current().mcp, self.notices.tell,
                                     self.audit)
        self.keep_awake = KeepAwake(settings.service.keep_awake)
        self.agent = Agent(settings.model, settings.agent, store, settings.failpoint)
        self.sandbox = find_sandbox(settings.commands.srt, settings.commands.upstream_proxy)
        self.worker = Worker(settings, store, self.agent, bell=self.work_bell,
                             mail_bell=self.mail_bell, policies=self.policies,
                             schedules=self.scheduler, sandbox=self.sandbox,
                             connectors=self.connectors, on_busy=self.keep_awake.set_busy,
                             stoppage=self.stoppage)
        # send: the outbox, with the Sent folder as the record of what went out
        self.postman = Postman(settings.smtp, store, self.mail_bell,
                               own_addresses=self.own_addresses(),
                               find_in_sent=self.find_in_sent, save_to_sent=self.save_to_sent,
                               failpoint_name=settings.failpoint)
        self.stopping = threading.Event()

    def audit(self, kind: str, reason: str, detail: dict[str, Any]) -> None:
        self.store.audit(kind, reason, detail=detail)

    # ------------------------------------------------------------ running

    async def run(self) -> None:
        if self.settings.owner.verification == "none":
            log.warning("owner.verification is \"none\": ANYONE who writes From: your address "
                        "can give orders; use authentication-results or dkim")
        if self.sandbox.available:
            log.info("commands run in %s (%s)", self.sandbox.kind, self.sandbox.detail)
        else:
            log.warning("no sandbox for run_command: %s", self.sandbox.detail)
        self.stoppage.load()
        with contextlib.suppress(StoreFullError):  # the watcher takes them up later
            self.process_pending()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
        stages = [
            asyncio.create_task(self.keep_running("connectors", self.connectors.run, stop)),
            asyncio.create_task(self.worker.run(stop)),
            asyncio.create_task(self.scheduler.run(stop)),
            asyncio.create_task(self.keep_running("postman", self.postman.run, stop)),
            asyncio.create_task(self.keep_running("canary", self.canary.run, stop)),
            asyncio.create_task(self.stoppage.run(stop)),
            asyncio.create_task(self.run_held_mail(stop)),
        ]
        watching = asyncio.create_task(asyncio.to_thread(self.watch))
        log.info("mailagent running data_dir=%s", self.settings.data_dir)
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({watching, stopped}, return_when=asyncio.FIRST_COMPLETED)
        log.info("shutting down")
        self.stop()
        stop.set()
        await watching
        for stage in stages:
            await stage
        await self.agent.close()
        self.keep_awake.release()
        stopped.cancel()

    async def keep_running(self, name: str, run: Callable[[asyncio.Event], Awaitable[None]],
                           stop: asyncio.Event) -> None:
        """Run one stage's loop until `stop`; a database error (a full disk, say) starts it
        again after a pause instead of ending it for good."""
        while not stop.is_set():
            try:
                await run(stop)
                return
            except StoreError as exc:
                log.warning("%s stopped: %s; it starts again in %g s", name, exc,
                            RESTART_SECONDS)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RESTART_SECONDS)

    def watch(self) -> None:
        """Run the mailbox watcher; a bug in it is logged and the watcher restarted."""
        while not self.stopping.is_set():
            try:
                self.watcher.run()
            except Exception:  # keep the service alive; the error is in the log with its trace
                log.exception("mailbox watcher failed; restarting it in 5 s")
                self.stopping.wait(5)

    def stop(self) -> None:
        self.stopping.set()
        self.watcher.stop()

    def own_addresses(self) -> frozenset[str]:
        """Who may get mail that is no draft the owner approved: the owners, and the agent
        itself (the liveness probe)."""
        s = self.settings
        ours = [*s.owner.addresses, parseaddr(s.smtp.from_address)[1], s.canary.address or ""]
        return frozenset(a.lower() for a in ours if a)

    # ------------------------------------------------------------ the Sent folder, for the outbox

    async def find_in_sent(self, message_id: str) -> bool | None:
        """Whether the Sent folder has this mail; None when there is no Sent folder to ask."""
        folder = self.settings.imap.sent_folder
        if folder is None:
            return None
        try:
            return await asyncio.to_thread(in_folder, self.settings.imap, folder,
                                           lambda box: box.has_message_id(message_id))
        except MailagentError as exc:
            log.warning("cannot look in %s for %s: %s", folder, message_id, exc)
            return None

    async def save_to_sent(self, raw: bytes) -> None:
        folder = self.settings.imap.sent_folder
        if folder is None or not self.settings.smtp.save_copy:
            return
        try:
            await asyncio.to_thread(in_folder, self.settings.imap, folder,
                                    lambda box: box.append(raw))
        except MailagentError as exc:
            log.warning("cannot save a copy in %s: %s", folder, exc)

    # ------------------------------------------------------------ the mailbox sink

    def catching_up(self) -> None:
        self.process_pending()

    def receive(self, fetched: Fetched) -> None:
        """A message counts as received once its raw bytes are committed (SECURITY.md L1)."""
        key, message_id = content_key(fetched.raw)
        failpoint(self.settings.failpoint, "after-fetch")
        saved = self.store.save_raw(
            folder=fetched.folder, uidvalidity=fetched.uidvalidity, uid=fetched.uid,
            raw=fetched.raw, size=fetched.size, content_key=key, message_id=message_id,
        )
        failpoint(self.settings.failpoint, "after-save")
        if not saved.is_new:
            log.info("duplicate uid=%s message_id=%s", fetched.uid, message_id)
            self.store.audit("intake.duplicate", "same content seen before: not acted on again",
                             raw_message_id=saved.raw_message_id, detail={"uid": fetched.uid})
            return
        log.info("received uid=%s raw_message_id=%s", fetched.uid, saved.raw_message_id)
        self.process(saved.raw_message_id)
        failpoint(self.settings.failpoint, "after-process")

    # ------------------------------------------------------------ one message, top to bottom

    def process_pending(self) -> None:
        """Finish messages stored before a crash but never processed."""
        for raw_message_id in self.store.unprocessed_raw_ids():
            self.process(raw_message_id)

    async def run_held_mail(self, stop: asyncio.Event) -> None:
        """Run held mail as `release` and the hour allow, until `stop`."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.stoppage.poll)
                if not self.stoppage.halted.is_set():
                    await asyncio.to_thread(self.run_held, datetime.now(UTC))
            except MailagentError as exc:  # the database is busy or gone: try again shortly
                log.warning("cannot run held mail: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HELD_POLL_SECONDS)

    def run_held(self, now: datetime) -> int:
        """Process the held mail that may run at `now`, oldest first; how many ran."""
        ran = 0
        for raw_message_id, how in self.holding.due(now):
            log.info("held mail runs raw_message_id=%s released=%s", raw_message_id, how)
            self.process(raw_message_id, released=how)
            ran += 1
        return ran

    def process(self, raw_message_id: int, released: str | None = None) -> None:
        """Intake, threads, and the durable outcome of one stored message; never raises but
        StoreFullError: with no room to record an outcome, the message stays as it was (not
        processed, not marked done in the mailbox) and is tried again. `released` says how
        held mail was let go (`by_owner`, `by_itself`): it is not held again by the limit."""
        raw, size, attempts = self.store.begin_processing(raw_message_id)
        if attempts > MAX_ATTEMPTS:
            self.store.record_rejection(raw_message_id, "intake.gave_up",
                                        f"gave up after {MAX_ATTEMPTS} attempts", {})
            return
        try:
            if self.canary.take(raw_message_id, raw):
                return  # our own liveness probe, back: recorded, never a task
            now = datetime.now(UTC)
            rules = IntakeRules(self.settings.owner, self.settings.limits, now,
                                is_ours=self.store.is_our_message_id)
            outcome = read_inbound(raw, size, rules)
            if isinstance(outcome, Rejection):
                self.reject(raw_message_id, outcome)
            else:
                self.accept(raw_message_id, outcome, now, released)
        except Exception as exc:  # the one catch-all per message: record it and go on
            if (full := as_full(exc)) is not None:
                self.wait_for_room(raw_message_id, full)
                raise full from exc
            log.exception("processing raw_message_id=%s failed", raw_message_id)
            self.store.record_rejection(raw_message_id, "intake.error",
                                        f"internal error: {type(exc).__name__}: {exc}", {})

    def wait_for_room(self, raw_message_id: int, full: StoreFullError) -> None:
        """No room to record what became of a message: it is left to be tried again, and the
        attempt does not count (nothing was wrong with the message)."""
        log.warning("raw_message_id=%s waits for room: %s", raw_message_id, full)
        self.stoppage.full(full)  # a full disk that the store did not see (attachments)
        with contextlib.suppress(StoreError):
            self.store.uncount_attempt(raw_message_id)

    def reject(self, raw_message_id: int, rejection: Rejection) -> None:
        log.info("rejected raw_message_id=%s kind=%s reason=%s", raw_message_id,
                 rejection.kind, rejection.reason)
        detail: dict[str, Any] = {**rejection.detail, "tell_owner": rejection.tell_owner}
        mail = None
        if rejection.tell_owner and rejection.owner_address:
            target = ReplyTarget(rejection.owner_address, rejection.subject,
                                 rejection.message_id, rejection.references, None, None, None)
            mail = compose(self.settings.smtp, target, "notice", "refused.md.j2",
                           {"reason": rejection.reason, "kind": rejection.kind})
        self.store.record_rejection(raw_message_id, f"intake.{rejection.kind}",
                                    rejection.reason, detail, mail)
        if mail is not None:
            self.mail_bell.ring()

    def accept(self, raw_message_id: int, inbound: Inbound, now: datetime | None = None,
               released: str | None = None) -> None:
        if self.stoppage.halted.is_set():  # kept, not lost, until the owner resumes (L6)
            if self.stoppage.keep(raw_message_id, inbound):
                self.mail_bell.ring()
            return
        thread = self.store.find_thread([*inbound.references, *inbound.in_reply_to])
        destination = route(inbound, thread)
        if released is None:
            hold = self.holding.check(inbound, thread, destination, now or datetime.now(UTC))
            if hold is not None:
                self.hold(raw_message_id, inbound, hold, now or datetime.now(UTC))
                return
        if isinstance(destination, CommandRoute):
            self.accept_command(raw_message_id, inbound, destination)
        else:
            self.accept_task(raw_message_id, inbound, destination, released)

    def hold(self, raw_message_id: int, inbound: Inbound, hold: Hold, now: datetime) -> None:
        """Keep owner mail back, never drop it (SECURITY.md S4, L6); tell the owner at most
        once an hour."""
        notice = self.holding.notice(inbound, hold, now)
        self.store.hold(raw_message_id, inbound.owner_address, hold.reason, hold.runs_by_itself,
                        notice)
        log.info("held raw_message_id=%s runs_by_itself=%s reason=%s", raw_message_id,
                 hold.runs_by_itself, hold.reason)
        if notice is not None:
            self.mail_bell.ring()

    def accept_command(self, raw_message_id: int, inbound: Inbound,
                       destination: CommandRoute) -> None:
        references = (*inbound.references, *inbound.in_reply_to)
        command_id = self.store.record_command(raw_message_id, NewCommand(
            name=destination.name, argument=destination.argument,
            conversation_name=destination.conversation_name, task_id=destination.task_id,
            owner_address=inbound.owner_address, subject=inbound.subject,
            message_id=inbound.message_id, references=references, sent_at=inbound.date,
            answers_us=inbound.answers_us,
        ), reason=f"command from {inbound.owner_address} ({inbound.authenticated_by})")
        log.info("command raw_message_id=%s command_id=%s name=%s", raw_message_id,
                 command_id, destination.name)
        self.work_bell.ring()

    def accept_task(self, raw_message_id: int, inbound: Inbound, destination: TaskRoute,
                    released: str | None) -> None:
        references = (*inbound.references, *inbound.in_reply_to)
        workspace = workspace_dir(self.settings.workspaces_dir, destination.conversation_name)
        attachments = save_attachments(workspace, raw_message_id, inbound.attachments)
        receipt = self.receipt(inbound, references) if self.settings.smtp.send_receipts else None
        task_id = self.store.record_task(raw_message_id, NewTask(
            conversation_name=destination.conversation_name,
            owner_address=inbound.owner_address, subject=inbound.subject,
            message_id=inbound.message_id, references=references,
            instruction=inbound.typed_text,
            data={"quoted_text": inbound.quoted_text, "forwarded": list(inbound.forwarded),
                  "attachments": attachments, "continues_task_id": destination.continues_task_id,
                  "date": inbound.date.isoformat() if inbound.date else None,
                  "released": released},
            sent_at=inbound.date, answers_us=inbound.answers_us,
        ), reason=f"task from {inbound.owner_address} ({inbound.authenticated_by})",
            receipt=receipt)
        log.info("task queued raw_message_id=%s task_id=%s conversation=%s", raw_message_id,
                 task_id, destination.conversation_name)
        self.work_bell.ring()
        if receipt is not None:
            self.mail_bell.ring()

    def receipt(self, inbound: Inbound,
                references: tuple[str, ...]) -> Callable[[int, int], Outbound]:
        """A "got it" reply, built once the task has its number (smtp.send_receipts)."""
        def build(task_id: int, conversation_id: int) -> Outbound:
            target = ReplyTarget(inbound.owner_address, inbound.subject, inbound.message_id,
                                 references, conversation_id, None, task_id)
            return compose(self.settings.smtp, target, "receipt", "command.md.j2",
                           {"body": f"Got it: this is task #{task_id}. I will reply in this "
                                    "thread when it is done."})
        return build


def run_service(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM; raises AlreadyRunningError if the data dir or the mailbox is
    taken (by a service of another data dir on the same database), and
    RenderError if a shipped template is missing (every task would fail to be answered)."""
    check_templates()
    with instance_lock(settings.data_dir):
        store = Store.open(settings.database_url)
        imap = settings.imap
        mailbox = mailbox_of(imap)
        try:
            with store.claim_mailbox(mailbox, settings.data_dir, on_lost=stop_for_lost_claim):
                asyncio.run(Service(settings, store).run())
        finally:
            store.close()


def stop_for_lost_claim(reason: str) -> None:
    """Another service may have the mailbox now: stop as SIGTERM stops (from the claim's
    thread, where the service's loop cannot be reached otherwise)."""
    log.error("%s; stopping", reason)
    os.kill(os.getpid(), signal.SIGTERM)
