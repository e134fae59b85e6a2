"""A private PostgreSQL server for tests, started as tests/support/dovecot.py starts Dovecot.

``Postgres.start()`` makes a cluster with ``initdb`` in a fresh temporary directory, starts
``postgres`` on a free loopback port (its socket in that directory too) in its own session,
and waits until it accepts connections. PostgreSQL refuses to run as root: as root, the cluster
belongs to the ``postgres`` system user (Debian's package makes it) and both commands run as
that user through ``runuser``. ``create_database()`` gives each test a database of its own.

The server's time zone is deliberately not UTC, so that a datetime stored without its offset
shows up as a test failure rather than as a shift of hours in production.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

from sqlalchemy import create_engine, text

from tests.support.dovecot_config import HOST, free_ports

__all__ = ["Postgres", "PostgresError", "find_bin_dir"]

START_TIMEOUT = 30.0
USER = "mailagent"
SERVER_TIME_ZONE = "America/New_York"


class PostgresError(RuntimeError):
    pass


def find_bin_dir() -> Path | None:
    """Debian keeps initdb and postgres in /usr/lib/postgresql/<major>/bin, off the PATH."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def _as_server_user(command: list[str]) -> list[str]:
    """`command` as the user that may run PostgreSQL: ourselves, or `postgres` when root."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


class Postgres:
    """A running (or stopped) private PostgreSQL; see the module docstring."""

    def __init__(self) -> None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise PostgresError("initdb not found (is Debian's postgresql package installed?)")
        self.bin_dir = bin_dir
        self.host = HOST
        [self.port] = free_ports(1)
        self.directory = Path(tempfile.mkdtemp(prefix="mailagent-postgres-"))
        self.data = self.directory / "cluster"
        self.log_path = self.directory / "postgres.log"
        self._process: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            server = pwd.getpwnam("postgres")
            os.chown(self.directory, server.pw_uid, server.pw_gid)
        os.chmod(self.directory, 0o755)

    @classmethod
    def start(cls) -> Postgres:
        instance = cls()
        try:
            instance._initdb()
            instance._spawn()
        except BaseException:
            instance.close()
            raise
        return instance

    def _initdb(self) -> None:
        result = subprocess.run(
            _as_server_user([str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", USER,
                             "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"]),
            capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise PostgresError(f"initdb failed: {result.stdout}{result.stderr}")

    def _spawn(self) -> None:
        settings = {"listen_addresses": self.host, "port": str(self.port),
                    "unix_socket_directories": str(self.directory), "fsync": "off",
                    "timezone": SERVER_TIME_ZONE, "max_connections": "200"}
        options = [part for key, value in settings.items() for part in ("-c", f"{key}={value}")]
        with open(self.log_path, "ab") as output:
            os.chmod(self.log_path, 0o666)
            self._process = subprocess.Popen(
                _as_server_user([str(self.bin_dir / "postgres"), "-D", str(self.data),
                                 *options]),
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True)
        self._wait_ready(time.monotonic() + START_TIMEOUT)

    def _wait_ready(self, deadline: float) -> None:
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise PostgresError(f"postgres exited with {self._process.returncode}:\n"
                                    + self.log())
            try:
                self._admin("SELECT 1")
                return
            except Exception as exc:  # not up yet: keep trying until the deadline
                last_error = str(exc)
            time.sleep(0.1)
        raise PostgresError(f"postgres did not answer on {self.host}:{self.port} "
                            f"({last_error})\n{self.log()}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@{self.host}:{self.port}/{database}"

    def _admin(self, statement: str) -> None:
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(text(statement))
        finally:
            engine.dispose()

    def create_database(self) -> str:
        """A new empty database; its URL, as `database_url` takes it."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGINT)  # "fast" shutdown
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._process = None
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Postgres:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
