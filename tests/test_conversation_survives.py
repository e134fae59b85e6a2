"""Every way a task ends leaves its conversation valid for the real Messages API (SECURITY.md
L7): the next task of the conversation is answered by the strict double, and the model is told
which calls of the ended task ran and which did not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.dovecot import Dovecot
from tests.support.fixtures import on_both_databases
from tests.support.mail import owner_mail
from tests.support.model_server import (
    ModelServer,
    RecordedRequest,
    cut_tool_use,
    pause_turn,
    refusal,
    text,
    tool_use,
    tool_uses,
)
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import SmtpServer


def ask_to_delete(tmp_path: Path, dovecot: Dovecot, model_server: ModelServer,
                  service: ServiceProcess, agent: str) -> Path:
    """A task whose model asks to delete old.txt, which waits for the owner's approval."""
    folder = configure(tmp_path, agent)
    model_server.script(tool_use("delete_file", {"path": str(folder / "old.txt")}, "toolu_del"))
    dovecot.append(owner_mail("Clean up", "Delete the old records file."))
    service.start()
    return folder


def configure(tmp_path: Path, agent: str) -> Path:
    """A write folder whose deletions need approval, and `agent` settings."""
    folder = tmp_path / "records"
    folder.mkdir(exist_ok=True)
    (folder / "old.txt").write_text("old records\n")
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "records.toml").write_text(
        f'[[folders]]\npath = "{folder}"\naccess = "write"\ndelete = "ask"\n')
    config = tmp_path / "mailagent.toml"
    config.write_text(config.read_text().replace("[owner]", f"[agent]\n{agent}\n\n[owner]"))
    return folder


def results_sent_with(request: RecordedRequest, tool_use_id: str) -> dict[str, Any]:
    """The tool_result for `tool_use_id` in a request's history."""
    for message in request.messages:
        for block in message["content"] if isinstance(message["content"], list) else []:
            if block.get("type") == "tool_result" and block.get("tool_use_id") == tool_use_id:
                return dict(block)
    raise AssertionError(f"no result for {tool_use_id} in the request")


def next_task_is_answered(dovecot: Dovecot, service: ServiceProcess,
                          model_server: ModelServer) -> RecordedRequest:
    """A new task in the same conversation: answered, its first request valid for the API."""
    model_server.script(text("The second task is done."))
    before = len(model_server.message_requests)
    dovecot.append(owner_mail("Another task", "Tell me what happened before."))
    store = service.store()
    wait_until(lambda: len(store.tasks()) == 2 and store.tasks()[1].state in ("done", "failed"),
               20, f"the second task; log:\n{service.log()}")
    second = store.tasks()[1]
    assert second.state == "done", second.reason
    return model_server.message_requests[before]


@on_both_databases
def test_after_a_denied_approval_the_next_task_is_answered_knowing_it_did_not_run(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    folder = ask_to_delete(tmp_path, dovecot, model_server, service, "approval_hours = 24")
    [question] = smtp_server.wait_for(1, timeout=20)
    dovecot.append(owner_mail("Re: Clean up", "deny", in_reply_to=question.message()["Message-ID"]))
    store = service.store()
    wait_until(lambda: store.tasks()[0].state == "cancelled", 20, "the denied task")
    request = next_task_is_answered(dovecot, service, model_server)
    result = results_sent_with(request, "toolu_del")
    assert result["is_error"] and "the owner denied it" in str(result["content"])
    assert (folder / "old.txt").exists()
    service.stop()


def test_after_a_cancel_while_waiting_the_next_task_is_answered(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    ask_to_delete(tmp_path, dovecot, model_server, service, "approval_hours = 24")
    [question] = smtp_server.wait_for(1, timeout=20)
    dovecot.append(owner_mail("Re: Clean up", "cancel",
                              in_reply_to=question.message()["Message-ID"]))
    store = service.store()
    wait_until(lambda: store.tasks()[0].state == "cancelled", 20, "the cancelled task")
    request = next_task_is_answered(dovecot, service, model_server)
    result = results_sent_with(request, "toolu_del")
    assert result["is_error"] and "cancelled" in str(result["content"])
    service.stop()


def test_after_a_budget_stop_mid_turn_the_next_task_knows_which_call_ran(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    configure(tmp_path, "max_tool_calls = 1")
    model_server.script(tool_uses([("write_file", {"path": "a.txt", "content": "a"}, "toolu_a"),
                                   ("write_file", {"path": "b.txt", "content": "b"}, "toolu_b")]))
    dovecot.append(owner_mail("Two files", "Write a.txt and b.txt."))
    service.start()
    store = service.store()
    wait_until(lambda: store.tasks() and store.tasks()[0].state == "failed", 20,
               f"the stopped task; log:\n{service.log()}")
    assert "agent.max_tool_calls" in (store.tasks()[0].reason or "")
    request = next_task_is_answered(dovecot, service, model_server)
    ran, stopped = results_sent_with(request, "toolu_a"), results_sent_with(request, "toolu_b")
    assert not ran.get("is_error") and "a.txt" in str(ran["content"])
    assert stopped["is_error"] and "stopped at its budget" in str(stopped["content"])
    workspace = tmp_path / "data" / "workspaces" / "main"
    assert (workspace / "a.txt").exists() and not (workspace / "b.txt").exists()
    service.stop()


def test_after_a_kill_mid_tool_the_next_task_is_answered(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    model_server.script(tool_use("write_file", {"path": "once.txt", "content": "v1"}, "toolu_w"),
                        text("Written."))
    dovecot.append(owner_mail("Write once.txt"))
    service.start(failpoint="mid-tool")
    assert service.wait_exit() == -9
    service.start()
    store = service.store()
    wait_until(lambda: store.tasks()[0].state == "done", 20, f"the resumed task:\n{service.log()}")
    request = next_task_is_answered(dovecot, service, model_server)
    result = results_sent_with(request, "toolu_w")
    assert result["is_error"] and "interrupted" in str(result["content"])
    service.stop()


def test_a_write_file_cut_at_the_output_limit_writes_nothing_and_the_model_retries(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    model_server.script(
        cut_tool_use("write_file", {"path": "big.txt", "content": "the first half of"},
                     text="Writing it all at once."),
        tool_use("write_file", {"path": "part1.txt", "content": "the first part"}),
        text("Written in parts."))
    dovecot.append(owner_mail("Write a long file"))
    service.start()
    store = service.store()
    wait_until(lambda: store.tasks() and store.tasks()[0].state == "done", 20,
               f"the task; log:\n{service.log()}")
    workspace = tmp_path / "data" / "workspaces" / "main"
    assert not (workspace / "big.txt").exists()
    assert (workspace / "part1.txt").read_text() == "the first part"
    [told] = model_server.message_requests[1].tool_results
    assert told["is_error"] and "cut off (max_tokens)" in str(told["content"])
    next_task_is_answered(dovecot, service, model_server)
    service.stop()


def test_a_refusal_is_mailed_as_declined_with_its_reason_and_nothing_of_it_runs(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    partial = [{"type": "text", "text": "Sure, writing it"},
               {"type": "tool_use", "id": "toolu_evil", "name": "write_file",
                "input": {"path": "evil.txt", "content": "x"}}]
    model_server.script(refusal(partial, category="cyber",
                                explanation="This request looks like malware development."))
    dovecot.append(owner_mail("Write a worm"))
    service.start()
    [mail] = smtp_server.wait_for(1, timeout=20)
    assert "declined" in mail.text()
    assert "This request looks like malware development." in mail.text()
    store = service.store()
    assert store.tasks()[0].state == "failed"
    assert not (tmp_path / "data" / "workspaces" / "main" / "evil.txt").exists()
    request = next_task_is_answered(dovecot, service, model_server)
    assert "toolu_evil" not in str(request.messages)
    service.stop()


def test_a_paused_turn_is_continued_and_answered(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    model_server.script(pause_turn("Searching the files"), text("Found it."))
    dovecot.append(owner_mail("Find the file"))
    service.start()
    [mail] = smtp_server.wait_for(1, timeout=20)
    assert "Found it." in mail.text()
    second = model_server.message_requests[1]
    assert second.last_message["role"] == "assistant"
    assert second.last_text == "Searching the files"
    service.stop()


def test_after_an_approval_expires_the_next_task_is_answered_knowing_it_did_not_run(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    ask_to_delete(tmp_path, dovecot, model_server, service, "approval_hours = 0.0005")
    smtp_server.wait_for(2, timeout=20)  # the question, then the notice that it expired
    store = service.store()
    wait_until(lambda: store.tasks()[0].state == "cancelled", 20, "the expired task")
    request = next_task_is_answered(dovecot, service, model_server)
    result = results_sent_with(request, "toolu_del")
    assert result["is_error"] and "did not come in time" in str(result["content"])
    service.stop()
