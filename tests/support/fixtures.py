"""pytest fixtures for the test servers and the service under test.

``tests/conftest.py`` imports them, so every test can ask for them by name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeAlias

import pytest

from tests.support.config import write_config
from tests.support.dovecot import Dovecot
from tests.support.installed import Installed, installed_for_tests
from tests.support.model_server import ModelServer
from tests.support.postgres import Postgres
from tests.support.service import ServiceProcess
from tests.support.smtp import SmtpServer

__all__ = ["DATABASES", "MakeService", "database", "database_url", "dovecot", "installed",
           "make_service", "model", "model_server", "on_both_databases", "postgres", "service",
           "smtp_server"]

MakeService: TypeAlias = Callable[..., ServiceProcess]

DATABASES = ("sqlite", "postgresql")
# A test so marked runs twice: on SQLite in the data folder, and on a database of its own in
# the session's private PostgreSQL, the same migrations making both.
on_both_databases = pytest.mark.parametrize("database", DATABASES, indirect=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A private PostgreSQL on loopback for the whole session (tests/support/postgres.py)."""
    server = Postgres.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def database(request: pytest.FixtureRequest) -> str:
    """Which database the test runs on: "sqlite" unless `on_both_databases` says otherwise."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def database_url(request: pytest.FixtureRequest, database: str, tmp_path: Path) -> str:
    """The `database_url` of this test: SQLite in `tmp_path/data` (the default of the
    config), or a new database in the session's PostgreSQL."""
    if database == "postgresql":
        server: Postgres = request.getfixturevalue("postgres")
        return server.create_database()
    return f"sqlite:///{tmp_path / 'data' / 'mailagent.db'}"


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """A freshly started private Dovecot (users agent@/owner@example.com); closed afterwards."""
    server = Dovecot.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """An aiosmtpd server requiring AUTH as agent@example.com / agent-secret."""
    server = SmtpServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    """A scripted Messages API on loopback; unscripted requests get the reply "done"."""
    server = ModelServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def model(model_server: ModelServer) -> ModelServer:
    """The model double under the short name of the in-process worker tests."""
    return model_server


@pytest.fixture
def make_service(tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
                 model_server: ModelServer, database: str,
                 database_url: str) -> Iterator[MakeService]:
    """Makes `mailagent run` processes, not started, configured for this test's Dovecot, SMTP
    server and model double; each is killed at teardown.

    ``make_service(**config)`` passes ``config`` to `write_config` (``extra``, ``imap_extra``,
    ``model_extra``, ...); ``sent_folder="Sent"`` sets ``imap.sent_folder``; ``env`` adds to
    the process environment; ``smtp_port`` points SMTP elsewhere (1: nowhere).  Each call
    writes ``tmp_path/mailagent.toml`` anew; on PostgreSQL (`on_both_databases`) it names the
    test's database; ``folder`` writes the config there instead of ``tmp_path``."""
    with contextlib.ExitStack() as kills:

        def make(*, smtp_port: int | None = None, sent_folder: str | None = None,
                 env: Mapping[str, str] | None = None, folder: Path | None = None,
                 **config: Any) -> ServiceProcess:
            if sent_folder is not None:
                lines = [f'sent_folder = "{sent_folder}"', config.get("imap_extra", "")]
                config["imap_extra"] = "\n".join(line for line in lines if line)
            port = smtp_server.port if smtp_port is None else smtp_port
            if database == "postgresql":
                config.setdefault("database_url", database_url)
            process = ServiceProcess(write_config(folder or tmp_path, dovecot.imap_port, port,
                                                  model_url=model_server.base_url, **config))
            process.env.update(env or {})
            kills.callback(process.kill)
            return process

        yield make


@pytest.fixture
def service(make_service: MakeService) -> ServiceProcess:
    """`mailagent run` configured for this test's servers, not started; killed at teardown."""
    return make_service()


@pytest.fixture(scope="session")
def installed() -> Installed:
    """mailagent built as a wheel and installed with pipx outside the source tree, once per
    session (the one scripts/test.sh made, when it runs the tests); `installed.run(...)` runs
    it as a user does."""
    return installed_for_tests()
