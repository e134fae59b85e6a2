"""A private Dovecot 2.3 instance for tests.

``Dovecot.start()`` writes a configuration into a fresh temporary directory
(created with :func:`tempfile.mkdtemp` and made world-traversable, because the
login processes run as ``dovenull`` when we are root), starts ``dovecot -F``
in its own session and waits until the IMAP port answers with a greeting.

What the configuration holds (``imap_port``, ``imaps_port``, ``lmtp_port``, TLS, the maildir
layout) is described in ``tests/support/dovecot_config.py``; the helpers that put mail in and
read it back (``append``, ``uids``, ``flags``..., and how to change UIDVALIDITY) in
``tests/support/dovecot_mail.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.support.dovecot_config import (
    HOST,
    DovecotError,
    free_ports,
    generate_self_signed_cert,
    write_config,
)
from tests.support.dovecot_mail import MailboxHelpers

__all__ = ["DEFAULT_USERS", "Dovecot", "DovecotError", "generate_self_signed_cert"]

DEFAULT_USERS: dict[str, str] = {
    "agent@example.com": "agent-secret",
    "owner@example.com": "owner-secret",
}

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def _find_binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        raise DovecotError(f"{name} not found (is dovecot-imapd/dovecot-lmtpd installed?)")
    return found


def _port_bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


class Dovecot(MailboxHelpers):
    """A running (or stopped) private Dovecot; see the module docstring."""

    host: str
    imap_port: int
    imaps_port: int | None
    lmtp_port: int
    users: dict[str, str]
    directory: Path
    log_path: Path
    config_path: Path
    cert_path: Path | None
    key_path: Path | None

    def __init__(self, users: dict[str, str] | None = None) -> None:
        """Prepare directory and configuration; does not start (use :meth:`start`)."""
        self.host = HOST
        self.users = dict(DEFAULT_USERS if users is None else users)
        self._dovecot = _find_binary("dovecot")
        self._doveadm = _find_binary("doveadm")
        self._process: subprocess.Popen[bytes] | None = None
        self.directory = Path(tempfile.mkdtemp(prefix="mailagent-dovecot-"))
        try:
            os.chmod(self.directory, 0o755)
            self.log_path = self.directory / "dovecot.log"
            self.config_path = self.directory / "dovecot.conf"
            self._stdout_path = self.directory / "dovecot.stdout"
            certs = generate_self_signed_cert(self.directory)
            self.cert_path, self.key_path = certs if certs else (None, None)
            ports = free_ports(3)
            self.imap_port, self.lmtp_port = ports[0], ports[1]
            self.imaps_port = ports[2] if certs else None
            self._write_config()
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    # ------------------------------------------------------------------ setup

    def _write_config(self) -> None:
        """Write the configuration (``tests/support/dovecot_config.py``); a subclass may
        extend it, as tests/support/oauth.py does."""
        write_config(self.directory, self.config_path, self.log_path, self.users,
                     imap_port=self.imap_port, lmtp_port=self.lmtp_port,
                     imaps_port=self.imaps_port, cert_path=self.cert_path,
                     key_path=self.key_path)

    # -------------------------------------------------------------- lifecycle

    @classmethod
    def start(cls, users: dict[str, str] | None = None) -> Dovecot:
        """Create a new instance in a fresh temp dir, start it, wait until ready."""
        instance = cls(users)
        try:
            instance._spawn()
        except BaseException:
            instance.close()
            raise
        return instance

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _spawn(self) -> None:
        if self.running:
            raise DovecotError("Dovecot is already running")
        deadline = time.monotonic() + START_TIMEOUT
        ports = [p for p in (self.imap_port, self.imaps_port, self.lmtp_port) if p is not None]
        while not all(_port_bindable(p) for p in ports):
            if time.monotonic() > deadline:
                raise DovecotError(f"ports {ports} still in use, cannot (re)start Dovecot")
            time.sleep(0.05)
        with open(self._stdout_path, "ab") as output:
            self._process = subprocess.Popen(
                [self._dovecot, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready(deadline)

    def _wait_ready(self, deadline: float) -> None:
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise DovecotError(
                    f"Dovecot exited with status {self._process.returncode} during start-up\n"
                    + self._diagnostics()
                )
            try:
                with socket.create_connection((HOST, self.imap_port), timeout=1.0) as sock:
                    greeting = sock.recv(1024)
                if greeting.startswith(b"* OK"):
                    return
                last_error = f"unexpected greeting {greeting!r}"
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.05)
        self._terminate_group(signal.SIGKILL)
        raise DovecotError(
            f"Dovecot did not answer on {HOST}:{self.imap_port} within {START_TIMEOUT:.0f}s "
            f"({last_error})\n" + self._diagnostics()
        )

    def _diagnostics(self) -> str:
        parts = []
        for path in (self.log_path, self._stdout_path):
            try:
                content = path.read_text(errors="replace")
            except OSError:
                content = "(missing)"
            parts.append(f"--- {path} ---\n{content}")
        return "\n".join(parts)

    def log(self) -> str:
        """Return the content of the Dovecot log (empty string if none yet)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _terminate_group(self, sig: signal.Signals) -> None:
        process = self._process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        """Whether any non-zombie process is left in process group ``pgid``."""
        proc = Path("/proc")
        if not proc.is_dir():
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid pgrp ..." -- comm may contain spaces/parens.
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) >= 3 and fields[2] == str(pgid) and fields[0] != "Z":
                return True
        return False

    def _wait_group_gone(self, pgid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._group_alive(pgid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM to the master); waits for all processes.

        Takes about 1.1 s: after the services have exited, the Dovecot master
        sends SIGQUIT to its log process and then sleeps a hard-coded second.
        """
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._terminate_group(signal.SIGKILL)
        if not self._wait_group_gone(process.pid, 2.0):
            # Left-over children (or unreaped zombies): make sure they are dead.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    def kill(self) -> None:
        """Crash simulation: SIGKILL the master and all its children at once."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT)
        self._wait_group_gone(process.pid, 2.0)

    def start_again(self) -> None:
        """Restart after stop()/kill() on the same ports and the same mail."""
        if self.running:
            raise DovecotError("Dovecot is still running; stop() or kill() it first")
        if not self.directory.exists():
            raise DovecotError("Dovecot was closed; its directory is gone")
        self._spawn()

    def restart(self) -> None:
        """Graceful stop followed by start_again()."""
        self.stop()
        self.start_again()

    def close(self) -> None:
        """Stop if running and remove the temporary directory.

        Uses :meth:`kill`, not :meth:`stop`: everything is deleted right
        after, and a graceful stop always costs ~1.1 s (see :meth:`stop`).
        """
        try:
            self.kill()
        finally:
            self._process = None
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"<Dovecot {state} imap={self.host}:{self.imap_port} imaps={self.imaps_port} "
            f"lmtp={self.lmtp_port} dir={self.directory}>"
        )

    # ---------------------------------------------------------------- doveadm

    def doveadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``doveadm -c <our config> ARGS`` and return the completed process."""
        result = subprocess.run(
            [self._doveadm, "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check and result.returncode != 0:
            raise DovecotError(
                f"doveadm {' '.join(args)} failed with {result.returncode}: "
                f"{result.stdout}{result.stderr}"
            )
        return result

    def connected_users(self) -> list[str]:
        """Users with IMAP connections, according to ``doveadm who``."""
        result = self.doveadm("who", "-1", check=False)
        users = []
        for line in result.stdout.splitlines()[1:]:
            fields = line.split()
            if fields:
                users.append(fields[0])
        return users

    def drop_connections(self, timeout: float = 5.0) -> None:
        """Kick every IMAP client (``doveadm kick '*'``) while the server keeps running.

        The kicked imap processes get SIGTERM, send ``* BYE`` and close the
        connection; this waits until ``doveadm who`` reports no connections, so
        a client's next command will fail.
        """
        if not self.running:
            raise DovecotError("Dovecot is not running")
        result = self.doveadm("kick", "*", check=False)
        # Exit code 68 (EX_NOUSER) only means "nobody was connected".
        if result.returncode not in (0, 68):
            raise DovecotError(
                f"doveadm kick failed with {result.returncode}: {result.stdout}{result.stderr}"
            )
        deadline = time.monotonic() + timeout
        while self.connected_users():
            if time.monotonic() > deadline:
                raise DovecotError(f"clients still connected after kick: {self.connected_users()}")
            time.sleep(0.05)

