"""Stoppage: what the service does when it cannot go on, and how it goes on again.

Two causes, one rule: the owner gets one mail saying so, and nothing is lost.
- An integrity check failed after a command (mailagent.policy.integrity): every tool stops at once,
  in every conversation (the worker cancels the running tasks and kills their commands; no task
  starts), and the halt is recorded, so that a restart keeps the tools stopped until the owner
  runs `mailagent resume`. Owner mail that comes meanwhile is held, and the owner is told once.
- The database or the disk is full: nothing can be stored, so mail stays in the mailbox, not
  marked done, and tasks wait. The owner's mail about it cannot go through the outbox, which
  lives in the full database: it goes straight to SMTP (and into the outbox's record once there
  is room). The service tries again by itself and goes on when there is room again.

In: a `Breach` from the integrity guard (which it owns: `guard`) and a `StoreFullError` from the
store, from any thread. Out: `halted` (a threading.Event the worker reads before every tool call
and every claim) with `halt_reason`; and two one-time signals for the worker, `just_halted` (set
once per halt: stop every running task) and `room_again` (resume the stranded ones), each
cleared by the worker as it obeys; the worker's bell rings when any of them changes.
Side effects: halt rows, held rows of kept mail, and mail to the first owner address.
It must never send more than one mail per halt or per time the store is full, and never let a
halt end but by the owner's `resume`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from mailagent.bell import Bell
from mailagent.config import Settings
from mailagent.errors import StoreError, StoreFullError
from mailagent.mail.intake import Inbound
from mailagent.mail.notify import Courier, SendOutcome, compose
from mailagent.policy.integrity import Breach, Guard
from mailagent.store import Outbound, OutboxView, ReplyTarget, Store, halts

log = logging.getLogger(__name__)

MIN_FREE_BYTES = 4 * 1024**2  # room enough that storing the next mail will not fail at once
FULL_NOTICE_SECONDS = 3600.0  # room that comes and goes brings one mail an hour at most
ROOM_CHECK_SECONDS = 1.0
SMTP_RETRY_SECONDS = 30.0


class Stoppage:
    """The halt and the full store, their one mail each, and the way back."""

    def __init__(self, settings: Settings, store: Store, *, mail_bell: Bell,
                 work_bell: Bell) -> None:
        self.settings, self.store = settings, store
        self.mail_bell, self.work_bell = mail_bell, work_bell
        self.halted = threading.Event()
        self.halt_reason = ""
        self.just_halted = threading.Event()  # for the worker: stop the running tasks, once
        self.room_again = threading.Event()  # for the worker: stranded tasks may go on
        self._lock = threading.Lock()
        self.unrecorded: Breach | None = None  # a halt the store could not take yet
        self.full_since: datetime | None = None
        self.full_told_at: float | None = None  # time.monotonic() of the last mail about it
        self.straight: list[Outbound] = []  # for the owner, past the outbox
        self.sent_straight: list[Outbound] = []  # sent so, not recorded in the outbox yet
        self.courier = Courier(settings.smtp)
        # The integrity record is taken now, and its breaches halt (SECURITY.md L6).
        self.guard = Guard(settings, store.file_path(), self.halt)

    # ------------------------------------------------------------ halts

    def load(self) -> None:
        """At start: a halt recorded before keeps the tools stopped."""
        view = halts.active_halt(self.store)
        if view is not None:
            self.halted.set()
            self.halt_reason = view.reason
            log.error("tools are STOPPED since %s UTC: %s; look at what changed, then run "
                      "`mailagent resume`", f"{view.halted_at:%Y-%m-%d %H:%M}", view.reason)

    def halt(self, breach: Breach) -> None:
        """Stop every tool now, record the halt and tell the owner once; from any thread."""
        with self._lock:
            first = not self.halted.is_set()
            if first:
                self.halt_reason = breach.reason
                self.just_halted.set()
            self.halted.set()
        if not first:
            with contextlib.suppress(StoreError):
                self.store.audit("halt.again", breach.reason, task_id=breach.task_id,
                                 detail={"problems": list(breach.problems)})
            return
        self.work_bell.ring()  # the worker stops every running task now
        try:
            running = [t.task_id for t in self.store.tasks(["running"])]
        except StoreError:
            running = []
        mail = self.notice("mailagent: tools are stopped: an integrity check failed",
                           halt_text(breach, running, str(self.settings.config_path)))
        if not self.record(breach, mail):
            self.straight.append(mail)
        self.mail_bell.ring()

    def record(self, breach: Breach, mail: Outbound | None) -> bool:
        """Record the halt (with its mail); False when the store cannot take it now."""
        detail = {"problems": list(breach.problems), "task_id": breach.task_id,
                  "conversation": breach.conversation, "command": breach.command[:2000]}
        try:
            halts.halt(self.store, breach.reason, detail, mail)
        except StoreError as exc:
            log.error("cannot record the halt (tools stay stopped all the same): %s", exc)
            self.unrecorded = breach
            return False
        self.unrecorded = None
        return True

    def poll(self) -> None:
        """Notice a `mailagent resume` made while the service runs; called every few seconds,
        in a thread of its own."""
        if not self.halted.is_set():
            return
        if self.unrecorded is not None:
            self.record(self.unrecorded, None)  # its mail went straight to SMTP
            return
        if halts.active_halt(self.store) is not None:
            return
        self.guard.rebase()  # the new record first: no command runs before it is taken
        self.halted.clear()
        self.work_bell.ring()
        log.info("tools run again: the owner resumed them")

    def keep(self, raw_message_id: int, inbound: Inbound) -> bool:
        """Hold owner mail that came while tools are stopped; the first one of a halt gets a
        reply that says so. Whether a mail was queued."""
        view = halts.active_halt(self.store)
        why = view.reason if view is not None else "an integrity check failed"
        notice = None
        if view is not None and view.kept_notice_at is None:
            target = ReplyTarget(inbound.owner_address, inbound.subject, inbound.message_id,
                                 (*inbound.references, *inbound.in_reply_to), None, None, None)
            notice = compose(self.settings.smtp, target, "notice", "command.md.j2",
                             {"body": kept_text(view.halted_at, why)})
        halts.keep(self.store, raw_message_id, inbound.owner_address,
                   f"tools are stopped: {why}", notice)
        log.info("kept while tools are stopped raw_message_id=%s", raw_message_id)
        return notice is not None

    # ------------------------------------------------------------ a full store

    def full(self, error: StoreFullError) -> None:
        """Nothing can be stored: tell the owner, once until there is room again (and once an
        hour at most); from any thread (the store calls it as it raises)."""
        with self._lock:
            if self.full_since is not None:
                return
            self.full_since = datetime.now(UTC)
            now = time.monotonic()
            tell = self.full_told_at is None or now - self.full_told_at >= FULL_NOTICE_SECONDS
            if tell:
                self.full_told_at = now
        log.error("cannot store anything: %s; mail stays in the mailbox and tasks wait until "
                  "there is room", error)
        if not tell:
            return  # told within the hour: the room found since did not last
        where = ", ".join(str(p) for p in self.folders())
        self.straight.append(self.notice("mailagent: the disk or the database is full",
                                         full_text(str(error), where)))

    def folders(self) -> list[Path]:
        database = self.store.file_path()
        return list(dict.fromkeys([self.settings.data_dir,
                                   *([database.parent] if database else [])]))

    def has_room(self) -> bool:
        """Whether the disks of the data directory and the database have room again."""
        try:
            return all(shutil.disk_usage(f).free >= MIN_FREE_BYTES for f in self.folders())
        except OSError:
            return False

    def try_room(self) -> None:
        """Once the disks have room: one write proves that the store takes data again (and
        records for how long it did not); then everything that waited goes on."""
        since = self.full_since
        if since is None or not self.has_room():
            return
        try:
            self.store.audit("store.room", f"room again after being full since "
                             f"{since:%Y-%m-%d %H:%M:%S} UTC")
            for mail in list(self.sent_straight):
                halts.record_sent_straight(self.store, mail, "sent straight to SMTP: the "
                                           "database had no room")
                self.sent_straight.remove(mail)
        except StoreError:
            return
        with self._lock:
            self.full_since = None
        log.info("there is room again: storing, intake and tasks go on")
        self.room_again.set()
        self.work_bell.ring()

    # ------------------------------------------------------------ mail past the outbox

    def notice(self, subject: str, body: str) -> Outbound:
        target = ReplyTarget(self.settings.owner.addresses[0], subject, None, (), None, None,
                             None)
        return compose(self.settings.smtp, target, "notice", "command.md.j2", {"body": body})

    async def run(self, stop: asyncio.Event) -> None:
        """Send what cannot wait for the outbox, and look for room while the store is full."""
        retry_at = 0.0
        try:
            while not stop.is_set():
                if self.straight and time.monotonic() >= retry_at:
                    retry_at = time.monotonic() + await self.send_straight()
                if self.full_since is not None:
                    await asyncio.to_thread(self.try_room)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), ROOM_CHECK_SECONDS)
        finally:
            await self.courier.close()

    async def send_straight(self) -> float:
        """Hand the waiting mails to SMTP; seconds until the next try (0 when none waits)."""
        for mail in list(self.straight):
            view = OutboxView(0, mail.message_id, mail.kind, mail.recipient, mail.subject,
                              mail.raw, "queued", 0, "", None)
            outcome, detail = await self.courier.send(view)
            if outcome == SendOutcome.RETRY:
                log.warning("mail to the owner not sent yet (%s); trying again", detail)
                return SMTP_RETRY_SECONDS
            self.straight.remove(mail)
            if outcome == SendOutcome.FAILED:
                log.error("mail to the owner refused: %s", detail)
                continue
            # Sent, or unknown after DATA: never sent twice (one mail, as promised).
            log.info("mail to the owner sent straight to SMTP (%s) message_id=%s", outcome,
                     mail.message_id)
            self.sent_straight.append(mail)
        return 0.0


def halt_text(breach: Breach, running: list[int], config_path: str) -> str:
    """The owner's mail about a halt: what changed, after which command, and what to do."""
    where = f"task #{breach.task_id} in the conversation **{breach.conversation}**" \
        if breach.task_id is not None else f"the conversation **{breach.conversation}**"
    stopped = ", ".join(f"#{n}" for n in running) or "none"
    command = " ".join(breach.command.split())[:500]
    return "\n".join([
        f"I have stopped every tool. After a command of {where}, the files that govern me "
        "were no longer where and what they were:", "",
        *[f"- {problem}" for problem in breach.problems], "",
        "The command was:", "", f"    {command}", "",
        f"What I did: every running task is stopped (tasks {stopped}), its commands killed and "
        "the tool calls it had asked for not run; no task runs its tools, and no mail you "
        "send is worked on, until you say so. This holds across restarts. Mail you send "
        "meanwhile is kept, not lost.", "",
        "What to do, on the computer:", "",
        "1. Look at what changed. If it was not you, take that task's input as hostile: put the "
        "file back from a backup (or write it anew), and look at what else the folders its "
        "commands may write hold.",
        "2. `mailagent status` shows this again; `mailagent check` checks the config and the "
        "policies as they are now.",
        f"3. Then run `mailagent resume --config {config_path}`: tools run again, from what "
        "is there now, and the mail kept meanwhile is worked on.",
    ])


def kept_text(halted_at: datetime, reason: str) -> str:
    return (f"Tools are stopped since {halted_at:%Y-%m-%d %H:%M} UTC: {reason}.\n\nI keep "
            "this mail, and any other you send, and work on them once you run `mailagent "
            "resume` on the computer; the mail I sent when they stopped says what changed and "
            "what to look at. I will not write about this again until then.")


def full_text(error: str, where: str) -> str:
    return (f"I cannot store anything any more: {error}.\n\nNothing is lost: mail stays in "
            "the mailbox, not marked done, and tasks wait where they are. I try again by "
            "myself and go on as soon as there is room, without another mail about it.\n\n"
            f"What to do: make room on the disk that holds {where} (the data directory and the "
            "database), or raise the database's size limit. `mailagent status` on the computer "
            "shows what waits.")
