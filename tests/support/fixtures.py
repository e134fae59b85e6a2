"""pytest fixtures for the test servers.

Make them available in all tests by adding to ``tests/conftest.py``::

    from tests.support.fixtures import dovecot, smtp_server  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.dovecot import Dovecot
from tests.support.installed import Installed, installed_for_tests
from tests.support.model_server import ModelServer
from tests.support.smtp import SmtpServer

__all__ = ["dovecot", "installed", "model", "model_server", "smtp_server"]


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


@pytest.fixture(scope="session")
def installed() -> Installed:
    """mailagent built as a wheel and installed with pipx outside the source tree, once per
    session (the one scripts/test.sh made, when it runs the tests); `installed.run(...)` runs
    it as a user does."""
    return installed_for_tests()
