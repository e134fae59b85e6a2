"""Each agent's secrets are read once, and only where they are needed: `check --configs DIR`
loads every agent once for the deployment's checks and its own; an agent's process of
`run --configs DIR` knows what the other agents own without reading their secrets, so it starts
even where another agent's keyring entry is missing (and a desktop keyring asks once per agent,
not once per agent per agent)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keyring
import keyring.backend
import keyring.errors
import pytest
from keyrings.alt.file import PlaintextKeyring

from mailagent.cli import check_command
from mailagent.deployment import load_agent
from mailagent.errors import ConfigError
from tests.support.deployment import AGENT_B, OWNER_B, USERS, write_agent_config
from tests.support.dovecot import Dovecot
from tests.support.mail import AGENT, OWNER
from tests.support.model_server import ModelServer
from tests.support.service import wait_until
from tests.support.setup_cli import keyring_env
from tests.support.smtp import SmtpServer


class RecordingKeyring(keyring.backend.KeyringBackend):
    """A keyring (keyring's backend interface) holding `secrets`, noting every lookup: where a
    desktop keyring would ask the person at the screen."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[tuple[str, str], str] = {}
        self.asked: list[tuple[str, str]] = []

    def get_password(self, service: str, username: str) -> str | None:
        self.asked.append((service, username))
        return self.secrets.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.secrets[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        raise keyring.errors.PasswordDeleteError("not kept here")


@pytest.fixture
def recording_keyring() -> Iterator[RecordingKeyring]:
    previous = keyring.get_keyring()
    backend = RecordingKeyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)


def agents_with_keyring_passwords(root: Path, imap_port: int = 1, smtp_port: int = 1,
                                  model_url: str = "http://127.0.0.1:9") -> dict[str, str]:
    """Two agents, alice and bob, whose IMAP and SMTP passwords are keyring references
    (keyring:mailagent/<agent>-imap, -smtp); the reference -> the password each stands for."""
    secrets = {}
    for name, agent, owner in (("alice", AGENT, OWNER), ("bob", AGENT_B, OWNER_B)):
        config = write_agent_config(root / name, imap_port=imap_port, smtp_port=smtp_port,
                                    model_url=model_url, agent=agent, owner=owner,
                                    password=USERS[agent])
        lines, parts = config.read_text().splitlines(), iter(("imap", "smtp"))
        for i, line in enumerate(lines):  # [imap]'s password comes first, then [smtp]'s
            if (found := re.fullmatch(r'password = "(.*)"', line)) is not None:
                ref = f"{name}-{next(parts)}"
                secrets[ref] = found[1]
                lines[i] = f'password = "keyring:mailagent/{ref}"'
        config.write_text("\n".join(lines) + "\n")
        assert next(parts, None) is None  # both found
    return secrets


def test_check_configs_reads_each_agents_secrets_once(
        tmp_path: Path, recording_keyring: RecordingKeyring,
        capsys: pytest.CaptureFixture[str]) -> None:
    secrets = agents_with_keyring_passwords(tmp_path / "agents")
    recording_keyring.secrets = {("mailagent", ref): value for ref, value in secrets.items()}
    code = check_command(argparse.Namespace(config=None, configs=str(tmp_path / "agents")))
    lines = capsys.readouterr().out.splitlines()
    assert code == 1  # no IMAP server on port 1
    assert lines[0].startswith("ok: 2 agents in ") and "agent alice:" in lines
    assert f"ok: config {tmp_path / 'agents' / 'bob' / 'mailagent.toml'}" in lines
    assert sorted(recording_keyring.asked) == [("mailagent", ref) for ref in sorted(secrets)]


def test_an_agent_of_a_deployment_loads_without_the_others_secrets(
        tmp_path: Path, recording_keyring: RecordingKeyring) -> None:
    agents = tmp_path / "agents"
    secrets = agents_with_keyring_passwords(agents)
    recording_keyring.secrets = {("mailagent", ref): value for ref, value in secrets.items()
                                 if ref.startswith("alice-")}  # bob's entries are missing
    alice = load_agent(agents, "alice")
    assert (alice.imap.password, alice.smtp.password) == (secrets["alice-imap"],
                                                          secrets["alice-smtp"])
    bob = agents / "bob"
    assert {bob, bob / "data", bob / "policies"} <= set(alice.others_protected)
    assert recording_keyring.asked == [("mailagent", "alice-imap"), ("mailagent", "alice-smtp")]
    with pytest.raises(ConfigError, match="keyring has no secret for keyring:mailagent/bob-imap"):
        load_agent(agents, "bob")  # bob's own process does need them
    with pytest.raises(ConfigError, match=r"--agent carol: no .* the agents of .* are alice, bob"):
        load_agent(agents, "carol")


def test_the_process_of_one_agent_starts_while_another_agents_keyring_entry_is_missing(
        tmp_path: Path, smtp_server: SmtpServer, model_server: ModelServer) -> None:
    env = keyring_env(tmp_path)
    backend = PlaintextKeyring()  # the file the agent's process reads, as keyring_env chose it
    backend.file_path = str(tmp_path / "keyring" / "python_keyring" / "keyring_pass.cfg")
    root = tmp_path / "agents"
    with Dovecot.start(USERS) as dovecot:
        secrets = agents_with_keyring_passwords(root, dovecot.imap_port, smtp_server.port,
                                                model_server.base_url)
        for ref in ("alice-imap", "alice-smtp"):  # none for bob
            backend.set_password("mailagent", ref, secrets[ref])
        log_path = tmp_path / "alice.log"
        with log_path.open("wb") as log:
            child = subprocess.Popen([sys.executable, "-m", "mailagent", "run", "--configs",
                                      str(root), "--agent", "alice"], stdout=log, stderr=log,
                                     env=env)
        try:
            def connected() -> bool:
                assert child.poll() is None, log_path.read_text()
                return "IMAP connected" in log_path.read_text()
            wait_until(connected, 30, "alice's IMAP login")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; log:\n{log_path.read_text()}") from None
        finally:
            child.terminate()
            child.wait(30)
    assert "bob-imap" not in log_path.read_text()
