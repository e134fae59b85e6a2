"""The whole service with the agent: a mail becomes work on disk, and a crash repeats nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.config import write_config
from tests.support.dovecot import Dovecot
from tests.support.mail import owner_mail
from tests.support.model_server import ModelServer, text, tool_use
from tests.support.service import ServiceProcess, wait_until


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
