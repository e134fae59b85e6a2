"""The whole service with the agent: a mail becomes work on disk, and a crash repeats nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.config import write_config
from tests.support.dovecot import Dovecot
from tests.support.mail import owner_mail
from tests.support.model_server import ModelServer, text, tool_use
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import SmtpServer


def service_for(tmp_path: Path, dovecot: Dovecot, model: ModelServer) -> ServiceProcess:
    return ServiceProcess(write_config(tmp_path, dovecot.imap_port, 1, model_url=model.base_url))


def test_a_task_mail_is_worked_on_and_its_file_written(
        tmp_path: Path, dovecot: Dovecot, model_server: ModelServer) -> None:
    service = service_for(tmp_path, dovecot, model_server)
    model_server.script(tool_use("write_file", {"path": "report.txt", "content": "Q3: fine"}),
                        tool_use("attach_file", {"path": "report.txt"}),
                        text("The report is attached."))
    dovecot.append(owner_mail("[reports] Write the Q3 report", "Write a one-line Q3 report."))
    service.start()
    try:
        store = service.store()
        [task] = wait_until(lambda: [t for t in store.tasks() if t.state == "done"], 15,
                            f"a done task; log:\n{service.log()}")
        report = tmp_path / "data" / "workspaces" / "reports" / "report.txt"
        assert report.read_text() == "Q3: fine"
        assert store.attachments(task.task_id) == [str(report)]
        first = model_server.message_requests[0]
        assert "Write a one-line Q3 report." in first.last_text
        assert service.stop() == 0
    finally:
        service.kill()


@pytest.mark.parametrize("failpoint", ["after-tool", "mid-tool"])
def test_a_kill_mid_task_resumes_without_repeating_the_write(
        tmp_path: Path, dovecot: Dovecot, model_server: ModelServer, failpoint: str) -> None:
    service = service_for(tmp_path, dovecot, model_server)
    model_server.script(tool_use("write_file", {"path": "once.txt", "content": "v1"}),
                        text("Written."))
    dovecot.append(owner_mail("Write once.txt"))
    service.start(failpoint=failpoint)
    assert service.wait_exit() == -9
    target = tmp_path / "data" / "workspaces" / "main" / "once.txt"
    assert target.read_text() == "v1"
    written_at = target.stat().st_mtime_ns
    service.start()
    try:
        store = service.store()
        [task] = wait_until(lambda: [t for t in store.tasks() if t.state == "done"], 15,
                            f"the resumed task; log:\n{service.log()}")
        assert task.reason == "answered"
        assert target.stat().st_mtime_ns == written_at
        assert not (tmp_path / "data" / "trash").exists()  # nothing was replaced
        requests = model_server.message_requests
        assert len(requests) == 2
        [result] = requests[1].tool_results
        if failpoint == "after-tool":
            assert "created" in str(result["content"]) and not result.get("is_error")
        else:
            assert "interrupted by a restart" in str(result["content"]) and result["is_error"]
        assert "task resumed after restart" in service.log()
        service.stop()
    finally:
        service.kill()


def test_the_endpoints_compaction_is_counted_in_the_cost_line_of_the_reply(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    # Over the API's minimum trigger (50,000 input tokens), the endpoint compacts before it
    # answers: usage.iterations bills both samplings, and the owner sees both in the cost line.
    config = write_config(tmp_path, dovecot.imap_port, smtp_server.port,
                          model_url=model_server.base_url,
                          model_extra="max_context_tokens = 100000")
    service = ServiceProcess(config)
    model_server.supports_compaction = True
    model_server.script(text("Noted."))
    dovecot.append(owner_mail("Remember this", "Keep this in mind: "
                              + "a long remark about the garden. " * 7_000))
    service.start()
    try:
        [reply] = smtp_server.wait_for(1, timeout=60)
        [response] = model_server.responses
        iterations = response["usage"]["iterations"]
        assert [i["type"] for i in iterations] == ["compaction", "message"]
        billed = sum(i[k] for i in iterations for k in (
            "input_tokens", "output_tokens", "cache_read_input_tokens",
            "cache_creation_input_tokens"))
        assert f"Task #1 · {billed} tokens · $" in reply.text(), reply.text()[-300:]
    finally:
        service.kill()
