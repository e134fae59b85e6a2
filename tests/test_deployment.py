"""Several people, one deployment (`mailagent run --configs DIR`): each agent answers only its
own owner, from its own mailbox, with its own memory; no agent's tools reach another's files,
even where its own policy makes their parent folder writable; two agents that would share a
data directory, a database, a mailbox or a policies folder refuse to start."""

from __future__ import annotations

import email
import os
import re
import signal
import subprocess
import sys
from email.policy import default as default_policy
from pathlib import Path

import pytest

from mailagent.config import load_settings
from mailagent.deployment import load_deployment
from mailagent.errors import ConfigError
from mailagent.store import Store
from tests.support.deployment import (
    AGENT_B,
    OWNER_B,
    USERS,
    DeploymentProcess,
    addressed_to,
    run_configs,
    write_agent_config,
)
from tests.support.dovecot import Dovecot
from tests.support.mail import AGENT, OWNER, owner_mail
from tests.support.model_server import ModelServer, text, tool_use
from tests.support.service import wait_until
from tests.support.smtp import RecordedMail, SmtpServer

DIARY = "Bob's diary: the surprise party is on Friday."
NOTE = "Alice keeps her spare key under the blue flowerpot."


def two_agents(root: Path, imap_port: int = 1, smtp_port: int = 1,
               model_a: str = "http://127.0.0.1:9",
               model_b: str = "http://127.0.0.1:9") -> tuple[Path, Path]:
    alice, bob = root / "alice", root / "bob"
    write_agent_config(alice, imap_port=imap_port, smtp_port=smtp_port, model_url=model_a,
                       agent=AGENT, owner=OWNER, password=USERS[AGENT])
    write_agent_config(bob, imap_port=imap_port, smtp_port=smtp_port, model_url=model_b,
                       agent=AGENT_B, owner=OWNER_B, password=USERS[AGENT_B])
    return alice, bob


def set_key(config: Path, line: str) -> None:
    """Set a top-level key of a config (above its first table), in place of its old value."""
    key = line.split("=", 1)[0].strip()
    kept = [old for old in config.read_text().splitlines()
            if old.split("=", 1)[0].strip() != key]
    config.write_text("\n".join([line, *kept]) + "\n")


def sender_of(mail: RecordedMail) -> str:
    message = email.message_from_bytes(mail.raw, policy=default_policy)
    return str(message["From"].addresses[0].addr_spec)


def mails(smtp_server: SmtpServer, sender: str, to: str) -> list[RecordedMail]:
    return [m for m in smtp_server.messages if to in m.rcpt_tos and sender_of(m) == sender]


# ------------------------------------------------------------ what two agents may not share


@pytest.mark.parametrize(("change", "named"), [
    ('data_dir = "{alice}/data"', "overlap"),
    ('database_url = "sqlite:///{alice}/data/mailagent.db"', "share the database"),
    ('policies_dir = "{alice}/policies"', "overlap"),
    ('data_dir = "{alice}/data/bob"', "overlap"),
])
def test_two_agents_that_would_share_their_files_refuse_to_start_naming_both(
        tmp_path: Path, change: str, named: str) -> None:
    alice, bob = two_agents(tmp_path / "agents")
    set_key(bob / "mailagent.toml", change.format(alice=alice))
    with pytest.raises(ConfigError, match=named) as refused:
        load_deployment(tmp_path / "agents", secrets=False)
    assert "agents alice and bob" in str(refused.value) or (
        "agent alice" in str(refused.value) and "agent bob" in str(refused.value))


def test_two_agents_on_one_mailbox_or_one_postgres_database_refuse_to_start(
        tmp_path: Path) -> None:
    alice, bob = two_agents(tmp_path / "agents")
    bob_config = bob / "mailagent.toml"
    bob_config.write_text(bob_config.read_text().replace(f'username = "{AGENT_B}"',
                                                         f'username = "{AGENT.upper()}"'))
    with pytest.raises(ConfigError, match=f"same mailbox {AGENT}"):
        load_deployment(tmp_path / "agents", secrets=False)
    # The same mailbox on another port (993 and 143 of one server) is still the same mailbox.
    bob_config.write_text(bob_config.read_text().replace("port = 1\n", "port = 2\n", 1))
    assert "port = 2" in bob_config.read_text()
    with pytest.raises(ConfigError, match=f"same mailbox {AGENT}"):
        load_deployment(tmp_path / "agents", secrets=False)
    two_agents(tmp_path / "agents")
    set_key(alice / "mailagent.toml",
            'database_url = "postgresql+psycopg://alice:s3cret@db:5432/mail"')
    set_key(bob / "mailagent.toml", 'database_url = "postgresql://bob:other@DB/mail"')
    with pytest.raises(ConfigError, match="share the database") as refused:
        load_deployment(tmp_path / "agents", secrets=False)
    assert "s3cret" not in str(refused.value)  # a password never reaches the message
    set_key(bob / "mailagent.toml", 'database_url = "postgresql://bob:other@db/mail_bob"')
    agents = load_deployment(tmp_path / "agents", secrets=False)  # databases of their own
    assert sorted(agents) == ["alice", "bob"]


def test_each_agent_protects_what_the_others_own(tmp_path: Path) -> None:
    alice, bob = two_agents(tmp_path / "agents")
    agents = load_deployment(tmp_path / "agents", secrets=False)
    assert {bob, bob / "data", bob / "policies", bob / "skills"} <= set(
        agents["alice"].others_protected)
    assert alice / "data" not in agents["alice"].others_protected
    assert alice / "data" in agents["bob"].others_protected
    assert agents["bob"].data_dir == load_settings(bob / "mailagent.toml").data_dir


def test_run_configs_refuses_a_clash_with_one_line_and_exit_2(tmp_path: Path) -> None:
    alice, bob = two_agents(tmp_path / "agents")
    set_key(bob / "mailagent.toml", f'data_dir = "{alice}/data"')
    result = run_configs(tmp_path / "agents")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("mailagent: error: agents alice and bob share the database")
    assert "the data_dir of agent alice" in line and "the data_dir of agent bob" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_configs(empty)
    assert result.returncode == 2 and "no agent in it" in result.stderr


# ------------------------------------------------------------ two agents running


def test_two_agents_answer_their_own_owners_and_never_reach_each_other(
        tmp_path: Path, smtp_server: SmtpServer, model_server: ModelServer) -> None:
    root = tmp_path / "agents"
    with Dovecot.start(USERS) as dovecot, ModelServer.start() as model_b:
        alice, bob = two_agents(root, dovecot.imap_port, smtp_server.port,
                                model_server.base_url, model_b.base_url)
        # Alice's policy opens the folder that holds both agents: only the deployment's
        # protection stands between her tools and Bob's files.
        (alice / "policies" / "wide.toml").write_text(
            f'[[folders]]\npath = "{tmp_path}"\naccess = "write"\n\n'
            '[commands]\nallow = ["sh", "cat"]\ntimeout_seconds = 30\n')
        diary = bob / "data" / "workspaces" / "main" / "diary.txt"
        diary.parent.mkdir(parents=True)
        diary.write_text(DIARY)
        model_server.script(
            tool_use("read_file", {"path": str(diary)}),
            tool_use("write_file", {"path": str(diary.parent / "planted.txt"), "content": "x"}),
            tool_use("write_file", {"path": str(bob / "policies" / "open.toml"),
                                    "content": '[[folders]]\npath = "/"\naccess = "write"\n'}),
            tool_use("read_file", {"path": str(bob / "mailagent.toml")}),
            tool_use("move_file", {"source": str(bob / "data"), "destination": str(tmp_path)}),
            tool_use("run_command", {"command": f"cat {diary}; ls {bob}"}),
            tool_use("remember", {"note": NOTE}),
            tool_use("write_file", {"path": str(tmp_path / "ours.txt"), "content": "ok"}),
            text("Done for Alice."))
        model_b.script(text("Done for Bob."))
        dovecot.append(owner_mail("Tidy up", "Tidy up my folders."))
        deployment = DeploymentProcess(root)
        deployment.start()
        try:
            wait_until(lambda: mails(smtp_server, AGENT, OWNER), 60,
                       f"Alice's answer; log:\n{deployment.log()}")
            dovecot.append(addressed_to(owner_mail("Plan the week", "Plan my week.",
                                                   sender=f"Bob <{OWNER_B}>"), AGENT_B),
                           user=AGENT_B)
            dovecot.append(addressed_to(owner_mail("What is Bob doing?", "Tell me his plans."),
                                        AGENT_B), user=AGENT_B)
            [answer_b] = wait_until(lambda: mails(smtp_server, AGENT_B, OWNER_B), 60,
                                    f"Bob's answer; log:\n{deployment.log()}")
            bob_store = Store.open(load_settings(bob / "mailagent.toml").database_url)
            wait_until(lambda: [r for _, _, o, r in bob_store.raw_outcomes()
                                if o == "rejected" and r == "sender is not an owner address"], 30,
                       f"Bob's refusal of Alice's owner; log:\n{deployment.log()}")
            assert deployment.stop() == 0
        finally:
            deployment.kill()

    # Each owner was answered by their own agent, and by no other.
    [answer_a] = mails(smtp_server, AGENT, OWNER)
    assert "Done for Alice." in answer_a.text() and "Done for Bob." in answer_b.text()
    assert mails(smtp_server, AGENT_B, OWNER) == [] and mails(smtp_server, AGENT, OWNER_B) == []
    # Alice's tools were refused everything of Bob's, and allowed what her policy allows.
    results = [r for req in model_server.message_requests for r in req.tool_results]
    assert len(results) == 8, results
    for refused in results[:5]:
        assert refused.get("is_error") and "protected" in str(refused["content"]), refused
    assert not results[7].get("is_error") and (tmp_path / "ours.txt").read_text() == "ok"
    everything_alice_saw = " ".join(str(req.body) for req in model_server.message_requests)
    assert "surprise party" not in everything_alice_saw
    assert "mailagent.toml" not in str(results[5]["content"])  # Bob's folder is hidden
    assert diary.read_text() == DIARY and not (diary.parent / "planted.txt").exists()
    assert not (bob / "policies" / "open.toml").exists()
    # Alice's memory is hers: in her store, nowhere in Bob's store or his model's requests.
    alice_store = Store.open(load_settings(alice / "mailagent.toml").database_url)
    [conversation] = alice_store.conversations()
    assert [note for _, note in alice_store.memory(conversation.conversation_id)] == [NOTE]
    assert all(bob_store.memory(c.conversation_id) == [] for c in bob_store.conversations())
    assert all("flowerpot" not in str(req.body) for req in model_b.message_requests)
    # Bob's model saw Bob's task only: the mail from Alice's owner was a stranger's.
    assert [t.subject for t in bob_store.tasks()] == ["Plan the week"]
    assert not any("his plans" in str(req.body) for req in model_b.message_requests)
    # Each log line names its agent.
    assert re.search(r"\[alice\] mailagent\.service: mailagent running", deployment.log())
    assert re.search(r"\[bob\] mailagent\.service: mailagent running", deployment.log())


def test_an_agent_that_crashes_is_started_again_and_the_others_run_on(tmp_path: Path) -> None:
    root = tmp_path / "agents"
    two_agents(root)  # no mail server: each agent waits, reconnecting, until it is stopped
    deployment = DeploymentProcess(root)
    deployment.start()
    try:
        deployment.wait_for_log("[alice] mailagent.service: mailagent running")
        deployment.wait_for_log("[bob] mailagent.service: mailagent running")
        [alice_pid] = re.findall(r"agent alice started pid=(\d+)", deployment.log())
        [bob_pid] = re.findall(r"agent bob started pid=(\d+)", deployment.log())
        os.kill(int(alice_pid), signal.SIGKILL)
        deployment.wait_for_log("agent alice ended with exit code -9; it starts again in 2 s")
        deployment.wait_for_log("agent alice started", count=2)
        deployment.wait_for_log("[alice] mailagent.service: mailagent running", count=2)
        assert re.findall(r"agent bob started pid=(\d+)", deployment.log()) == [bob_pid]
        os.kill(int(bob_pid), 0)  # still the same process
        assert deployment.stop() == 0
        assert "agent alice stopped" in deployment.log() and "agent bob stopped" in deployment.log()
    finally:
        deployment.kill()


def test_check_configs_names_each_agent_and_fails_when_one_fails(tmp_path: Path) -> None:
    alice, bob = two_agents(tmp_path / "agents")
    result = subprocess.run([sys.executable, "-m", "mailagent", "check", "--configs",
                             str(tmp_path / "agents")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok: 2 agents in ") and "agent alice:" in lines
    assert "agent bob:" in lines
    assert f"ok: config {alice / 'mailagent.toml'}" in lines
    assert f"ok: config {bob / 'mailagent.toml'}" in lines
    assert any(line.startswith("error:") for line in lines)  # no IMAP server on port 1


def test_policy_explain_for_one_agent_of_a_deployment_denies_the_others_files(
        tmp_path: Path) -> None:
    alice, bob = two_agents(tmp_path / "agents")
    (alice / "policies" / "wide.toml").write_text(
        f'[[folders]]\npath = "{tmp_path}"\naccess = "write"\n')

    def explain(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "mailagent", "policy", "explain",
                                 *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    deployment = ("--configs", str(tmp_path / "agents"), "--agent", "alice")
    target = str(bob / "data" / "workspaces" / "main" / "diary.txt")
    assert explain(*deployment, "write", target).startswith("deny")
    assert "protected" in explain(*deployment, "read", str(bob / "mailagent.toml"))
    assert explain(*deployment, "write", str(tmp_path / "ours.txt")).startswith("allow")
    # Alone, Alice's config knows nothing of Bob: her rule would let her write there.
    assert explain("--config", str(alice / "mailagent.toml"), "write", target).startswith(
        "allow")


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_agents_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    root = tmp_path / "agents"
    two_agents(root)
    deployment = DeploymentProcess(root)
    deployment.start()
    try:
        deployment.wait_for_log("[alice] mailagent.service: mailagent running")
        deployment.wait_for_log("[bob] mailagent.service: mailagent running")
        pids = [int(p) for p in re.findall(r"agent \w+ started pid=(\d+)", deployment.log())]
        assert deployment.process is not None and len(pids) == 2
        os.kill(deployment.process.pid, signal.SIGKILL)
        deployment.process.wait(10)

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False
        wait_until(lambda: all(map(gone, pids)), 20, f"the agents to stop:\n{deployment.log()}")
        assert deployment.log().count("shutting down") == 2  # each stopped cleanly
    finally:
        deployment.kill()
