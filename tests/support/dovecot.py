"""A private Dovecot 2.3 instance for tests.

``Dovecot.start()`` writes a configuration into a fresh temporary directory
(created with :func:`tempfile.mkdtemp` and made world-traversable, because the
login processes run as ``dovenull`` when we are root), starts ``dovecot -F``
in its own session and waits until the IMAP port answers with a greeting.

Everything listens on 127.0.0.1 only, on ports picked by binding port 0:

* ``imap_port``  -- plain IMAP; plaintext LOGIN/AUTHENTICATE PLAIN allowed.
  When a certificate could be generated, ``ssl = yes`` is set, so the port
  also *offers* STARTTLS, but using it is never required
  (``disable_plaintext_auth = no``).
* ``imaps_port`` -- implicit TLS with a self-signed certificate for
  ``localhost``/``127.0.0.1`` (``cert_path``/``key_path``), generated with the
  ``openssl`` CLI.  ``None`` (and ``cert_path is None``) if openssl is missing.
* ``lmtp_port``  -- LMTP over TCP, for :meth:`Dovecot.deliver`.

Mail is stored as maildir under ``<directory>/mail/<user>`` with the
"fs" layout and ``/`` as hierarchy separator (so ``Archive/2024`` is a
subfolder and ``a.b`` is an ordinary name).  Special-use attributes are
declared for Sent, Drafts, Trash, Junk and Archive, but these folders are not
created automatically.

The helper methods (``append``, ``uids``, ``flags``...) deliberately use the
standard library ``imaplib``/``smtplib`` so that the fixture does not depend on
the IMAP library used by the code under test.

UIDVALIDITY: Dovecot keeps a per-user ``dovecot-uidvalidity`` counter in the
mail root and gives every newly created mailbox ``max(now, last + 1)``.  So
deleting a folder and creating it again (``delete_folder`` + ``create_folder``,
or simply ``append`` after the delete; APPEND does not auto-create, so create it
first) always yields a *different* UIDVALIDITY, even within the same second,
and UIDs start again at 1.  That is the supported way for tests to simulate a
"UIDVALIDITY changed" event.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import grp
import imaplib
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["DEFAULT_USERS", "Dovecot", "DovecotError", "generate_self_signed_cert"]

DEFAULT_USERS: dict[str, str] = {
    "agent@example.com": "agent-secret",
    "owner@example.com": "owner-secret",
}

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class DovecotError(RuntimeError):
    """The test Dovecot could not be started, stopped or talked to."""


def _find_binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        raise DovecotError(f"{name} not found (is dovecot-imapd/dovecot-lmtpd installed?)")
    return found


def _free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free TCP ports on 127.0.0.1 (bind to port 0)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def generate_self_signed_cert(directory: Path, name: str = "server") -> tuple[Path, Path] | None:
    """Create ``<name>.crt``/``<name>.key`` (CN/SAN localhost + 127.0.0.1).

    Returns ``(cert_path, key_path)``, or ``None`` if the ``openssl`` CLI is
    missing or fails.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert = directory / f"{name}.crt"
    key = directory / f"{name}.key"
    command = [
        openssl, "req", "-x509", "-nodes", "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", str(key), "-out", str(cert), "-days", "2",
        "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, timeout=30, check=False)
    if result.returncode != 0 or not cert.exists() or not key.exists():
        return None
    return cert, key


def _imap_utf7_encode(name: str) -> str:
    """Encode a mailbox name as IMAP modified UTF-7 (RFC 3501 5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.append(
                "&" + base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",") + "-"
            )
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def _quote(name: str) -> str:
    encoded = _imap_utf7_encode(name)
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check(typ: str, data: Sequence[object], what: str) -> None:
    if typ != "OK":
        raise DovecotError(f"IMAP {what} failed: {typ} {data!r}")


class Dovecot:
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
            ports = _free_ports(3)
            self.imap_port, self.lmtp_port = ports[0], ports[1]
            self.imaps_port = ports[2] if certs else None
            self._write_config()
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    # ------------------------------------------------------------------ setup

    def _write_config(self) -> None:
        d = self.directory
        for sub in ("run", "state", "mail"):
            (d / sub).mkdir(mode=0o755)
        if os.geteuid() == 0:
            internal_user, login_user = "dovecot", "dovenull"
            internal_group = "dovecot"
            mail_uid = pwd.getpwnam("dovecot").pw_uid
            mail_gid = grp.getgrgid(pwd.getpwnam("dovecot").pw_gid).gr_gid
            os.chown(d / "mail", mail_uid, mail_gid)
            non_root = ""
        else:
            entry = pwd.getpwuid(os.getuid())
            internal_user = login_user = entry.pw_name
            internal_group = grp.getgrgid(os.getgid()).gr_name
            mail_uid, mail_gid = os.getuid(), os.getgid()
            # No chroot() and no privilege changes are possible as non-root.
            non_root = "\n".join(
                f"service {name} {{\n  chroot =\n}}" for name in ("anvil", "ipc", "imap-login")
            )
        passwd = "".join(
            f"{user}:{{PLAIN}}{password}::::::\n" for user, password in self.users.items()
        )
        if any(":" in user or ":" in pw or "\n" in user + pw for user, pw in self.users.items()):
            raise DovecotError("user names and passwords must not contain ':' or newlines")
        passwd_path = d / "passwd"
        passwd_path.write_text(passwd)
        os.chmod(passwd_path, 0o644)

        ssl = "ssl = no"
        imaps = ""
        if self.cert_path is not None and self.key_path is not None and self.imaps_port is not None:
            ssl = f"ssl = yes\nssl_cert = <{self.cert_path}\nssl_key = <{self.key_path}"
            imaps = (
                "  inet_listener imaps {\n"
                f"    address = {HOST}\n"
                f"    port = {self.imaps_port}\n"
                "    ssl = yes\n"
                "  }\n"
            )

        config = f"""\
# Generated by tests/support/dovecot.py
base_dir = {d}/run
state_dir = {d}/state
log_path = {self.log_path}
info_log_path = {self.log_path}
debug_log_path = {self.log_path}
instance_name = mailagent-test-{os.getpid()}-{self.imap_port}
protocols = imap lmtp
listen = {HOST}
default_internal_user = {internal_user}
default_login_user = {login_user}
default_internal_group = {internal_group}
first_valid_uid = 0
last_valid_uid = 0
first_valid_gid = 0
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_verbose = yes
{ssl}
mail_location = maildir:{d}/mail/%u:LAYOUT=fs
mail_fsync = never
mailbox_idle_check_interval = 1 secs
shutdown_clients = yes
namespace inbox {{
  inbox = yes
  separator = /
  prefix =
  mailbox Sent {{
    special_use = \\Sent
  }}
  mailbox Drafts {{
    special_use = \\Drafts
  }}
  mailbox Trash {{
    special_use = \\Trash
  }}
  mailbox Junk {{
    special_use = \\Junk
  }}
  mailbox Archive {{
    special_use = \\Archive
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd_path}
}}
userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_gid} home={d}/mail/%u
}}
protocol imap {{
  mail_max_userip_connections = 200
}}
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {self.imap_port}
  }}
{imaps}}}
service lmtp {{
  inet_listener lmtp {{
    address = {HOST}
    port = {self.lmtp_port}
  }}
}}
{non_root}
"""
        self.config_path.write_text(config)

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

    # ------------------------------------------------------------ IMAP helpers

    @contextlib.contextmanager
    def imap(self, user: str = "agent@example.com") -> Iterator[imaplib.IMAP4]:
        """A logged-in stdlib ``imaplib.IMAP4`` connection (plain port)."""
        if user not in self.users:
            raise DovecotError(f"unknown test user {user!r}")
        conn = imaplib.IMAP4(self.host, self.imap_port, timeout=10)
        try:
            conn.login(user, self.users[user])
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def append(
        self,
        raw: bytes,
        folder: str = "INBOX",
        user: str = "agent@example.com",
        flags: tuple[str, ...] = (),
        internal_date: datetime.datetime | None = None,
    ) -> int:
        """APPEND ``raw`` to ``folder`` (must exist) and return its UID; ``internal_date``
        (aware) is the arrival time the server records, now when absent."""
        with self.imap(user) as conn:
            flag_list = "(" + " ".join(flags) + ")" if flags else None
            typ, data = conn.append(_quote(folder), flag_list, internal_date, raw)
            _check(typ, data, f"APPEND to {folder!r}")
            text = b" ".join(d for d in data if isinstance(d, bytes)).decode(errors="replace")
            match = re.search(r"APPENDUID (\d+) (\d+)", text)
            if match is None:
                raise DovecotError(f"no APPENDUID in APPEND response {data!r}")
            return int(match.group(2))

    def deliver(
        self,
        raw: bytes,
        recipient: str = "agent@example.com",
        sender: str = "owner@example.com",
    ) -> None:
        """Deliver ``raw`` to ``recipient``'s INBOX via LMTP (like an MTA would)."""
        with smtplib.LMTP(self.host, self.lmtp_port, timeout=10) as lmtp:
            refused = lmtp.sendmail(sender, [recipient], raw)
        if refused:
            raise DovecotError(f"LMTP refused {refused!r}")

    def create_folder(self, name: str, user: str = "agent@example.com") -> None:
        with self.imap(user) as conn:
            typ, data = conn.create(_quote(name))
            _check(typ, data, f"CREATE {name!r}")

    def delete_folder(self, name: str, user: str = "agent@example.com") -> None:
        with self.imap(user) as conn:
            typ, data = conn.delete(_quote(name))
            _check(typ, data, f"DELETE {name!r}")

    def folders(self, user: str = "agent@example.com") -> list[str]:
        """Names (modified UTF-7 as on the wire) of all folders of ``user``."""
        with self.imap(user) as conn:
            typ, data = conn.list()
            _check(typ, data, "LIST")
        names = []
        for item in data:
            if not isinstance(item, bytes):
                continue
            match = re.match(rb'\((?P<attrs>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.*)$', item)
            if match:
                name = match.group("name").decode()
                if name.startswith('"') and name.endswith('"'):
                    name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
                names.append(name)
        return names

    def uids(self, folder: str = "INBOX", user: str = "agent@example.com") -> list[int]:
        """All UIDs in ``folder``, ascending."""
        with self.imap(user) as conn:
            _check(*conn.select(_quote(folder), readonly=True), f"EXAMINE {folder!r}")
            typ, data = conn.uid("SEARCH", "ALL")
            _check(typ, data, "UID SEARCH")
        first = data[0] if data else None
        if not isinstance(first, bytes):
            return []
        return sorted(int(uid) for uid in first.split())

    def uidvalidity(self, folder: str = "INBOX", user: str = "agent@example.com") -> int:
        with self.imap(user) as conn:
            typ, data = conn.status(_quote(folder), "(UIDVALIDITY)")
            _check(typ, data, f"STATUS {folder!r}")
        text = b" ".join(d for d in data if isinstance(d, bytes)).decode(errors="replace")
        match = re.search(r"UIDVALIDITY (\d+)", text)
        if match is None:
            raise DovecotError(f"no UIDVALIDITY in {data!r}")
        return int(match.group(1))

    def flags(self, uid: int, folder: str = "INBOX", user: str = "agent@example.com") -> set[str]:
        """System flags and keywords of message ``uid``, e.g. ``{"\\\\Seen", "$Label1"}``.

        ``\\Recent`` is left out: it is session state, not a stored flag.
        """
        with self.imap(user) as conn:
            _check(*conn.select(_quote(folder), readonly=True), f"EXAMINE {folder!r}")
            typ, data = conn.uid("FETCH", str(uid), "(FLAGS)")
            _check(typ, data, "UID FETCH FLAGS")
        for item in data:
            if isinstance(item, bytes) and re.search(rb"UID %d\b" % uid, item):
                flags = {flag.decode() for flag in imaplib.ParseFlags(item)}
                return flags - {"\\Recent"}
        raise DovecotError(f"message UID {uid} not found in {folder!r}")

    def fetch(self, uid: int, folder: str = "INBOX", user: str = "agent@example.com") -> bytes:
        """The full raw message (``BODY.PEEK[]``, does not set \\Seen)."""
        with self.imap(user) as conn:
            _check(*conn.select(_quote(folder), readonly=True), f"EXAMINE {folder!r}")
            typ, data = conn.uid("FETCH", str(uid), "(BODY.PEEK[])")
            _check(typ, data, "UID FETCH BODY.PEEK[]")
        for item in data:
            if isinstance(item, tuple) and len(item) == 2:
                return bytes(item[1])
        raise DovecotError(f"message UID {uid} not found in {folder!r}")

    def set_flags(
        self,
        uid: int,
        flags: tuple[str, ...],
        folder: str = "INBOX",
        user: str = "agent@example.com",
        mode: str = "+FLAGS",
    ) -> None:
        """STORE ``mode`` (``+FLAGS``/``-FLAGS``/``FLAGS``) on message ``uid``."""
        with self.imap(user) as conn:
            _check(*conn.select(_quote(folder)), f"SELECT {folder!r}")
            typ, data = conn.uid("STORE", str(uid), mode, "(" + " ".join(flags) + ")")
            _check(typ, data, "UID STORE")
