"""What a deployment of several agents did (`--configs DIR`): `status` shows every agent under
its name (lines, JSON and tables), `--agent NAME` narrows it to one, an agent whose config is
broken is shown with its error and makes the exit code non-zero; `show`, `history` and `logs`
read one agent's store or log and, without `--agent`, say which agents there are."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mailagent.cli.status_view import print_rich_agents, snapshot_of
from mailagent.config import load_settings
from mailagent.mail.mailbox import Fetched
from mailagent.service import Service
from mailagent.store import Store
from mailagent.store.halts import active_halt, halt
from tests.support.deployment import AGENT_B, OWNER_B, USERS, addressed_to, write_agent_config
from tests.support.mail import AGENT, OWNER, owner_mail

ALICE_TASK = "[home] water the plants"
BOB_TASK = "[garden] mow the lawn"
STATUS_KEYS = {"conversations", "tasks", "schedules", "approvals", "outbox", "commands",
               "connectors", "refusals", "inbound", "held", "halt", "duplicates", "gave_up",
               "running", "today", "service"}


def take_in(config: Path, raw: bytes) -> None:
    """The agent of `config` takes in one owner mail, as its service does: a task is queued."""
    settings = load_settings(config, secrets=False)
    with contextlib.closing(Store.open(settings.database_url)) as store:
        service = Service(settings, store)
        service.receive(Fetched("INBOX", 7, 1, raw, len(raw)))
        service.process_pending()
        assert [t.state for t in store.tasks()] == ["queued"]


@pytest.fixture
def agents(tmp_path: Path) -> Path:
    """Two agents, Alice's and Bob's, each with one task of its own owner's in its store."""
    root = tmp_path / "agents"
    alice = write_agent_config(root / "alice", imap_port=1, smtp_port=1,
                               model_url="http://127.0.0.1:9", agent=AGENT, owner=OWNER,
                               password=USERS[AGENT],
                               extra=f'[service]\nlog_file = "{root / "alice" / "alice.log"}"')
    bob = write_agent_config(root / "bob", imap_port=1, smtp_port=1,
                             model_url="http://127.0.0.1:9", agent=AGENT_B, owner=OWNER_B,
                             password=USERS[AGENT_B])
    take_in(alice, owner_mail(ALICE_TASK))
    take_in(bob, addressed_to(owner_mail(BOB_TASK, sender=f"Bob <{OWNER_B}>"), AGENT_B))
    return root


def mailagent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailagent", *args], capture_output=True,
                          text=True, timeout=60)


def parts(stdout: str) -> dict[str, str]:
    """Plain status lines split by their `agent NAME:` headings."""
    found: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        if line.startswith("agent ") and line.endswith(":"):
            current = found.setdefault(line.removeprefix("agent ").removesuffix(":"), [])
        else:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in found.items()}


def test_status_of_a_deployment_shows_each_agent_under_its_name(agents: Path) -> None:
    result = mailagent("status", "--configs", str(agents), "--plain")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("agent alice:\n")
    shown = parts(result.stdout)
    assert list(shown) == ["alice", "bob"]
    assert ALICE_TASK in shown["alice"] and BOB_TASK not in shown["alice"]
    assert BOB_TASK in shown["bob"] and ALICE_TASK not in shown["bob"]
    assert f"(from {OWNER_B}," in shown["bob"] and "Service: not running" in shown["bob"]

    result = mailagent("status", "--configs", str(agents), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert list(data) == ["agents"] and list(data["agents"]) == ["alice", "bob"]
    for name, subject, owner in (("alice", ALICE_TASK, OWNER), ("bob", BOB_TASK, OWNER_B)):
        status = data["agents"][name]
        assert set(status) == STATUS_KEYS  # each agent's usual status object
        assert [(t["subject"], t["owner"], t["state"]) for t in status["tasks"]] == [
            (subject, owner, "queued")]


def test_status_agent_narrows_to_one_agent_and_an_unknown_one_names_them(
        agents: Path) -> None:
    result = mailagent("status", "--configs", str(agents), "--agent", "bob", "--plain")
    assert result.returncode == 0, result.stderr
    assert list(parts(result.stdout)) == ["bob"] and BOB_TASK in result.stdout
    assert ALICE_TASK not in result.stdout
    result = mailagent("status", "--configs", str(agents), "--agent", "bob", "--json")
    assert list(json.loads(result.stdout)["agents"]) == ["bob"]
    result = mailagent("status", "--configs", str(agents), "--agent", "carol")
    assert result.returncode == 2 and result.stdout == ""
    assert "--agent carol" in result.stderr and "are alice, bob" in result.stderr
    result = mailagent("status", "--agent", "bob")
    assert result.returncode == 2 and "--configs DIR" in result.stderr


def test_a_broken_agent_config_is_shown_with_its_error_and_status_exits_1(
        agents: Path) -> None:
    config = agents / "bob" / "mailagent.toml"
    config.write_text(config.read_text().replace("poll_seconds", "pol_seconds"))
    result = mailagent("status", "--configs", str(agents), "--plain")
    assert result.returncode == 1, result.stderr
    shown = parts(result.stdout)
    assert ALICE_TASK in shown["alice"]  # the others are still shown
    [error] = shown["bob"].strip().splitlines()
    assert error.startswith("error: imap.pol_seconds: unknown key in ") and str(config) in error
    assert "Traceback" not in result.stderr

    result = mailagent("status", "--configs", str(agents), "--json")
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)["agents"]
    assert set(data["alice"]) == STATUS_KEYS
    assert list(data["bob"]) == ["error"] and "imap.pol_seconds" in data["bob"]["error"]
    result = mailagent("status", "--configs", str(agents), "--agent", "alice", "--json")
    assert result.returncode == 0, result.stderr  # Bob's config is not Alice's concern
    config.write_text(config.read_text() + "\n[smtp]\nport = 26\n")  # [smtp] twice: not TOML
    result = mailagent("status", "--configs", str(agents), "--plain")
    assert result.returncode == 1 and "is not valid TOML" in parts(result.stdout)["bob"]


def test_status_on_a_terminal_heads_each_agents_tables_with_its_name(agents: Path) -> None:
    alice = snapshot_of(load_settings(agents / "alice" / "mailagent.toml", secrets=False))
    from rich.console import Console

    out = io.StringIO()
    print_rich_agents({"alice": alice, "bob": "bob's config is broken"},
                      Console(file=out, width=160, no_color=True))
    text = out.getvalue()
    assert text.index("agent alice") < text.index(ALICE_TASK) < text.index("agent bob")
    assert "│" in text or "┃" in text  # Alice's part drawn as tables
    assert text.index("agent bob") < text.index("error: bob's config is broken")


def test_show_history_and_logs_of_a_deployment_need_the_agent_and_name_them(
        agents: Path) -> None:
    for command in (["show", "1"], ["history"], ["logs"]):
        result = mailagent(*command, "--configs", str(agents))
        assert result.returncode == 2, (command, result.stderr)
        [line] = result.stderr.splitlines()
        assert line == (f"mailagent: error: --configs {agents} has several agents: say which "
                        "with --agent NAME, one of alice, bob")
    result = mailagent("show", "1", "--configs", str(agents), "--agent", "bob")
    assert result.returncode == 0, result.stderr
    assert BOB_TASK in result.stdout and ALICE_TASK not in result.stdout
    result = mailagent("history", "--configs", str(agents), "--agent", "alice", "--json")
    assert result.returncode == 0, result.stderr
    assert [t["subject"] for t in json.loads(result.stdout)] == [ALICE_TASK]
    (agents / "alice" / "alice.log").write_text("INFO [alice] mailagent.service: started\n")
    result = mailagent("logs", "--configs", str(agents), "--agent", "alice")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "INFO [alice] mailagent.service: started\n"
    assert "alice.log ([service] log_file)" in result.stderr
    result = mailagent("logs", "--configs", str(agents), "--agent", "bob")
    assert result.returncode == 2 and "agent bob keeps no log of its own" in result.stderr
    assert "set [service] log_file" in result.stderr  # not the journal of another service
    result = mailagent("show", "1", "--configs", str(agents), "--agent", "carol")
    assert result.returncode == 2 and "the agents of" in result.stderr
    assert "are alice, bob" in result.stderr


def test_resume_ends_the_halt_of_the_agent_it_names_and_no_other(agents: Path) -> None:
    for name in ("alice", "bob"):
        settings = load_settings(agents / name / "mailagent.toml", secrets=False)
        with contextlib.closing(Store.open(settings.database_url)) as store:
            assert halt(store, f"{name}'s policy changed", {"problems": ["p.toml"]}, None)
    result = mailagent("resume", "--configs", str(agents))
    assert result.returncode == 2 and "say which with --agent NAME, one of alice, bob" in \
        result.stderr
    result = mailagent("resume", "--configs", str(agents), "--agent", "bob")
    assert result.returncode == 0, result.stderr
    assert "bob's policy changed" in result.stdout and "Resumed" in result.stdout
    for name, stopped in (("alice", True), ("bob", False)):
        settings = load_settings(agents / name / "mailagent.toml", secrets=False)
        with contextlib.closing(Store.open(settings.database_url)) as store:
            assert (active_halt(store) is not None) is stopped, name
