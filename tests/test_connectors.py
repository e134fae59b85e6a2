"""MCP connectors end to end: a real MCP server (tests/support/mcp_server.py, made with the `mcp`
SDK) over stdio and over streamable HTTP, the service, Dovecot, SMTP and the scripted model.
Each tool call is governed by the [mcp.<server>] table of a policy file."""

from __future__ import annotations

import email
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from email.policy import default as default_policy
from pathlib import Path

import pytest

from tests.support.config import write_config
from tests.support.dovecot import Dovecot
from tests.support.fixtures import MakeService
from tests.support.mail import owner_mail
from tests.support.model_server import (
    MessageReply,
    ModelServer,
    RecordedRequest,
    text,
    tool_use,
)
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import RecordedMail, SmtpServer

REPO = Path(__file__).resolve().parents[1]
MEANING = "a small green fruit"
TOOLS = '[mcp.notes.tools]\nlookup = "allow"\nadd_note = "ask"\nerase_all = "deny"\n' \
        'big = "allow"\ncrash = "allow"\n'


def stdio_table(log: Path, extra: str = "") -> str:
    return (f'[mcp.notes]\ncommand = "{sys.executable}"\n'
            f'args = ["-m", "tests.support.mcp_server", "stdio"]\ncwd = "{REPO}"\n'
            f'env = {{ NOTES_LOG = "{log}", NOTES_MEANING = "env:TEST_NOTES_MEANING" }}\n'
            f"{extra}\n{TOOLS}")


def write_policy(tmp_path: Path, table: str) -> None:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "notes.toml").write_text(table, encoding="utf-8")


def ran(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def body(mail: RecordedMail) -> str:
    return mail.text()


def subject(mail: RecordedMail) -> str:
    return str(email.message_from_bytes(mail.raw, policy=default_policy)["Subject"])


def message_id(mail: RecordedMail) -> str:
    return str(email.message_from_bytes(mail.raw, policy=default_policy)["Message-ID"])


def unfenced(result: dict[str, object]) -> str:
    """The text inside the <data kind="tool-output"> fence the agent puts around every result."""
    content = str(result["content"])
    assert content.startswith('<data kind="tool-output" id="'), content[:80]
    return content.split("\n", 1)[1].rsplit("\n", 1)[0]


def echo_results(request: RecordedRequest) -> MessageReply:
    """The model's last answer: every tool result it was given in this task, one per line."""
    results = [block for message in request.messages if message["role"] == "user"
               and isinstance(message["content"], list) for block in message["content"]
               if block.get("type") == "tool_result"]
    lines = [("ERROR " if r.get("is_error") else "OK ") + unfenced(r) for r in results]
    return text("Results:\n\n" + "\n\n".join(lines))


@pytest.fixture
def service(make_service: MakeService) -> ServiceProcess:
    return make_service(env={"TEST_NOTES_MEANING": MEANING})


def offered_tools(model_server: ModelServer) -> set[str]:
    return {t["name"] for t in model_server.message_requests[0].body.get("tools", [])}


def test_an_allowed_tool_over_stdio_answers_in_the_reply_and_denied_or_unlisted_ones_never_run(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    log = tmp_path / "ran.log"
    write_policy(tmp_path, stdio_table(log, "max_output_chars = 500"))
    model_server.script(
        tool_use("mcp__notes__lookup", {"word": "kiwi"}),
        tool_use("mcp__notes__erase_all", {}),
        tool_use("mcp__notes__backdoor", {}),
        tool_use("mcp__notes__big", {"size": 5000}),
        echo_results)
    service.start()
    service.wait_for_log("MCP server notes running", timeout=60)
    dovecot.append(owner_mail("What is a kiwi?", "Look it up in my notes."))
    [reply] = smtp_server.wait_for(1, timeout=60)
    assert f"The notes say kiwi means {MEANING}." in body(reply)
    results = [r.tool_results[0] for r in model_server.message_requests[1:5]]
    assert not results[0].get("is_error")
    assert results[1]["is_error"] and unfenced(results[1]).startswith(
        'denied by notes.toml:1 [mcp.notes.tools] erase_all = "deny"')
    assert results[2]["is_error"] and "[mcp.notes] unlisted" in unfenced(results[2])
    assert "unlisted tools are denied" in unfenced(results[2])
    cut = unfenced(results[3])
    assert cut.startswith("x" * 500) and "x" * 501 not in cut
    assert "cut at 500 of 5000 characters" in cut
    # Only allow and ask tools are offered; the denied, unlisted and crashing ones...
    assert {"mcp__notes__lookup", "mcp__notes__add_note", "mcp__notes__big"} <= \
        offered_tools(model_server)
    assert not offered_tools(model_server) & {"mcp__notes__erase_all", "mcp__notes__backdoor"}
    # ...and only the allowed calls reached the server.
    assert ran(log) == ["lookup kiwi", "big 5000"]
    store = service.store()
    calls = store.audit_events("mcp.call")
    assert {(e.detail["tool"], e.detail["decision"], e.detail["outcome"]) for e in calls} == {
        ("lookup", "allow", "ok"), ("big", "allow", "ok")}
    refusals = [e for e in store.audit_events("policy.deny") if "mcp" in e.detail["rule"]]
    assert {e.detail["tool"] for e in refusals} == {"mcp__notes__erase_all",
                                                    "mcp__notes__backdoor"}
    assert service.stop() == 0
    assert "MCP servers stopped" in service.log()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The same MCP server, run by the test over streamable HTTP on loopback."""
    port, log = free_port(), tmp_path / "ran-http.log"
    env = {**os.environ, "NOTES_LOG": str(log), "NOTES_MEANING": "sent over HTTP"}
    process = subprocess.Popen([sys.executable, "-m", "tests.support.mcp_server", "http",
                                str(port)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(listening, 60, "the MCP server over HTTP")
        yield f"http://127.0.0.1:{port}/mcp", log
    finally:
        process.kill()
        process.wait(10)


def test_an_allowed_tool_over_streamable_http_answers_in_the_reply(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess, http_server: tuple[str, Path]) -> None:
    url, log = http_server
    service.env["TEST_NOTES_AUTH"] = "Bearer not-in-any-file"
    write_policy(tmp_path, f'[mcp.notes]\nurl = "{url}"\n'
                           'headers = { Authorization = "env:TEST_NOTES_AUTH" }\n\n' + TOOLS)
    model_server.script(tool_use("mcp__notes__lookup", {"word": "plum"}), echo_results)
    service.start()
    service.wait_for_log("MCP server notes running", timeout=60)
    dovecot.append(owner_mail("What is a plum?", "Look it up."))
    [reply] = smtp_server.wait_for(1, timeout=60)
    assert "OK The notes say plum means sent over HTTP." in body(reply)
    assert ran(log) == ["lookup plum"]
    assert "Bearer not-in-any-file" not in (tmp_path / "policies" / "notes.toml").read_text()
    service.stop()


def test_a_tool_whose_schema_the_api_would_refuse_is_left_out_and_the_others_work(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    # The double refuses a tool schema that is not JSON Schema, as the API does: offering it
    # would fail every request of every task.
    log = tmp_path / "ran.log"
    table = stdio_table(log).replace('NOTES_LOG = "', 'NOTES_ODD_SCHEMA = "1", NOTES_LOG = "')
    write_policy(tmp_path, table + 'odd = "allow"\n')
    model_server.script(tool_use("mcp__notes__lookup", {"word": "fig"}), echo_results)
    service.start()
    service.wait_for_log("MCP server notes running", timeout=60)
    dovecot.append(owner_mail("What is a fig?", "Look it up."))
    [reply] = smtp_server.wait_for(1, timeout=60)
    assert f"OK The notes say fig means {MEANING}." in body(reply)
    assert "mcp__notes__lookup" in offered_tools(model_server)
    assert "mcp__notes__odd" not in offered_tools(model_server)
    service.wait_for_log("MCP tool odd of notes not offered: its input schema is not valid")


def ask_setup(tmp_path: Path, model_server: ModelServer, dovecot: Dovecot,
              smtp_server: SmtpServer, service: ServiceProcess) -> tuple[Path, RecordedMail]:
    log = tmp_path / "ran.log"
    write_policy(tmp_path, stdio_table(log))
    model_server.script(tool_use("mcp__notes__add_note", {"text": "buy milk"}), echo_results)
    service.start()
    service.wait_for_log("MCP server notes running", timeout=60)
    dovecot.append(owner_mail("Note", "Add a note: buy milk."))
    [question] = smtp_server.wait_for(1, timeout=60)
    return log, question


def test_an_ask_tool_waits_for_approve_by_mail_and_only_then_runs(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    log, question = ask_setup(tmp_path, model_server, dovecot, smtp_server, service)
    text_of_question = body(question)
    assert "add_note of the MCP server notes" in text_of_question
    assert '{"text": "buy milk"}' in text_of_question
    store = service.store()
    assert store.tasks()[0].state == "waiting_approval"
    assert ran(log) == []
    dovecot.append(owner_mail("Re: Note", "approve", in_reply_to=message_id(question)))
    mails = smtp_server.wait_for(3, timeout=60)
    texts = [body(m) for m in mails[1:]]
    assert any("Approved: call the tool add_note" in t for t in texts)
    assert any("OK Noted: buy milk" in t for t in texts)
    assert ran(log) == ["add_note buy milk"]
    [call] = store.audit_events("mcp.call")
    assert call.detail["decision"] == "ask (approved by the owner)"
    assert call.detail["outcome"] == "ok"
    service.stop()


def test_a_deny_reply_leaves_the_ask_tool_unrun(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    log, question = ask_setup(tmp_path, model_server, dovecot, smtp_server, service)
    dovecot.append(owner_mail("Re: Note", "deny", in_reply_to=message_id(question)))
    reply = smtp_server.wait_for(2, timeout=60)[1]
    assert "Denied: call the tool add_note of the MCP server notes" in body(reply)
    store = service.store()
    wait_until(lambda: store.tasks()[0].state == "cancelled", 10, "the stopped task")
    assert ran(log) == []
    assert store.audit_events("mcp.call") == []
    service.stop()


def test_a_crashing_server_is_restarted_and_the_owner_told(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    log = tmp_path / "ran.log"
    write_policy(tmp_path, stdio_table(log))
    model_server.script(tool_use("mcp__notes__crash", {}), echo_results,
                        tool_use("mcp__notes__lookup", {"word": "fig"}), echo_results)
    service.start()
    service.wait_for_log("MCP server notes running", timeout=60)
    dovecot.append(owner_mail("Crash", "Try the crash tool."))
    mails = smtp_server.wait_for(2, timeout=60)
    notice = next(m for m in mails if "MCP server notes stopped" in subject(m))
    assert "restarts it by itself" in body(notice)
    answer = next(m for m in mails if m is not notice)
    assert "ERROR MCP server notes stopped during the call" in body(answer)
    service.wait_for_log("MCP server notes running", timeout=60, count=2)
    assert "MCP server notes stopped: it stopped during a call of crash" in service.log()
    status = subprocess.run([sys.executable, "-m", "mailagent", "status", "--config",
                             str(service.config_path)], capture_output=True, text=True,
                            env=service.env, timeout=60)
    connectors = status.stdout.split("Connectors (MCP):")[1].split("Recent refusals:")[0]
    assert "notes running" in connectors, status.stdout
    # The restarted server answers the next task.
    dovecot.append(owner_mail("Fig", "Look up fig."))
    third = smtp_server.wait_for(3, timeout=60)[2]
    assert f"OK The notes say fig means {MEANING}." in body(third)
    assert ran(log)[-1] == "lookup fig" and ran(log)[0].startswith("crash ")
    service.stop()


def test_check_lists_each_server_and_its_tools_with_their_decisions(tmp_path: Path) -> None:
    log = tmp_path / "ran.log"
    write_policy(tmp_path, stdio_table(log))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = int(closed.getsockname()[1])
    config = write_config(tmp_path, port, port)
    env = {**os.environ, "TEST_IMAP_PASSWORD": "x", "TEST_NOTES_MEANING": MEANING}
    result = subprocess.run([sys.executable, "-m", "mailagent", "check", "--config",
                             str(config)], capture_output=True, text=True, env=env, timeout=120)
    out = result.stdout
    assert "ok: MCP server notes (stdio: " in out and "starts, 8 tool(s):" in out, out
    for line in ("mcp__notes__lookup: allow", "mcp__notes__add_note: ask",
                 "mcp__notes__erase_all: deny", "mcp__notes__backdoor: deny (unlisted)"):
        assert f"    {line}\n" in out, out
    (tmp_path / "policies" / "broken.toml").write_text(
        '[mcp.gone]\ncommand = "/nonexistent/mcp-server"\n[mcp.gone.tools]\nx = "allow"\n')
    del env["TEST_NOTES_MEANING"]
    result = subprocess.run([sys.executable, "-m", "mailagent", "check", "--config",
                             str(config)], capture_output=True, text=True, env=env, timeout=120)
    assert "error: MCP server gone (/nonexistent/mcp-server) does not start" in result.stdout
    assert "refers to $TEST_NOTES_MEANING, which is not set" in result.stdout
    assert result.returncode == 1
