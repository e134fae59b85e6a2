"""The bench's moving parts: the servers, the service process, the floor listener, clocks.

Every time is `time.monotonic()` of this process: the model server and the SMTP server run in
it, so a delivery, the model request it causes and the reply it ends in are on one clock.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import imapclient

from tests.support.config import write_config
from tests.support.dovecot import Dovecot
from tests.support.mail import AGENT
from tests.support.model_server import ModelServer
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import RecordedMail, SmtpServer


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class FloorListener:
    """A bare IMAP IDLE client: when does the server tell anyone that mail arrived?

    This is the floor of pickup latency: no service can learn of new mail sooner than an idle
    client on the same server.
    """

    def __init__(self, dovecot: Dovecot) -> None:
        self.client = imapclient.IMAPClient(dovecot.host, port=dovecot.imap_port, ssl=False,
                                            timeout=10)
        self.client.login(AGENT, dovecot.users[AGENT])
        self.client.select_folder("INBOX")
        self.notified: list[float] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._listen, name="floor", daemon=True)
        self.client.idle()
        self.thread.start()

    def _listen(self) -> None:
        while not self.stopping.is_set():
            responses = self.client.idle_check(timeout=0.2)
            if any(len(r) > 1 and r[1] == b"EXISTS" for r in responses):
                self.notified.append(time.monotonic())

    def first_after(self, moment: float, timeout: float = 10.0) -> float:
        return wait_until(lambda: next((t for t in self.notified if t >= moment), None),
                          timeout, "the floor listener's EXISTS")

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        with contextlib.suppress(Exception):
            self.client.idle_done()
            self.client.logout()


@dataclass
class Rig:
    """Fresh servers and a service for one scenario; `close` tears everything down."""

    folder: Path
    dovecot: Dovecot
    smtp: SmtpServer
    model: ModelServer
    service: ServiceProcess
    replies: list[tuple[float, RecordedMail]] = field(default_factory=list)

    def reply_times(self) -> list[float]:
        return [t for t, _ in list(self.replies)]

    def wait_replies(self, count: int, timeout: float) -> list[float]:
        wait_until(lambda: len(self.replies) >= count, timeout,
                   f"{count} replies; log:\n{self.service.log()[-3000:]}")
        return self.reply_times()[:count]

    def deliver(self, raw: bytes) -> float:
        """Hand a mail to Dovecot by LMTP, as an MTA would; the moment it was handed over."""
        started = time.monotonic()
        self.dovecot.deliver(raw)
        return started

    def close(self) -> None:
        self.service.kill()
        keep = os.environ.get("BENCH_KEEP_LOGS")
        if keep and self.service.log_path.exists():
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(self.service.log_path, Path(keep) / f"{self.folder.name}.log")
        self.model.stop()
        self.smtp.stop()
        self.dovecot.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def rig(*, model_extra: str = "", extra: str = "") -> Iterator[Rig]:
    folder = Path(tempfile.mkdtemp(prefix="mailagent-bench-"))
    dovecot = Dovecot.start()
    smtp = SmtpServer.start()
    model = ModelServer.start()
    # Hundreds of mails from one address within minutes is what the rate limit stops as a loop.
    extra = "[limits]\nmax_mails_per_hour = 100000\n" + extra
    config = write_config(folder, dovecot.imap_port, smtp.port, model_url=model.base_url,
                          model_extra=model_extra, extra=extra)
    setup = Rig(folder, dovecot, smtp, model, ServiceProcess(config))

    def arrived(mail: RecordedMail) -> None:
        setup.replies.append((time.monotonic(), mail))

    smtp.on_message = arrived
    try:
        yield setup
    finally:
        setup.close()


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (share in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(share * len(ordered))) - 1]
