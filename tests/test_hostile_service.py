"""Resource limits end to end (SECURITY.md R1): hostile mail and a hostile model against the real
service process, Dovecot, SMTP and the scripted model server.

Each attack ends in a recorded refusal or failure and an owner mail naming the limit; the
service's peak memory (VmHWM from /proc) and the data folder stay bounded; and a normal task
still runs afterwards.
"""

from __future__ import annotations

import email
import json
import os
import time
from pathlib import Path

import pytest

from tests.hostile import (
    MiB,
    archives_mail,
    folder_bytes,
    huge_header,
    many_parts,
    nested_mime,
    peak_rss_bytes,
)
from tests.support.config import write_config
from tests.support.dovecot import Dovecot
from tests.support.mail import OWNER, message_id_of, owner_mail
from tests.support.model_server import (
    ModelServer,
    RecordedRequest,
    Reply,
    delayed,
    text,
    tool_use,
)
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import RecordedMail, SmtpServer

MAX_PEAK_RSS = 400 * MiB  # the service idles near 100 MiB; a parsed bomb would be far above
MAX_DATA_DIR = 40 * MiB  # the mails below are about 2 MiB together


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    (folder / "in").mkdir(parents=True)
    os.mkfifo(folder / "in" / "pipe")
    (folder / "in" / "long.txt").write_text(("x" * 4000 + "\n") * 3)
    return folder


def start_service(tmp_path: Path, dovecot: Dovecot, smtp: SmtpServer, model: ModelServer,
                  home: Path, agent: str = "", commands: str = "") -> ServiceProcess:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "main.toml").write_text(
        f'[[folders]]\npath = "{home / "in"}"\naccess = "read"\n\n{commands}')
    config = write_config(tmp_path, dovecot.imap_port, smtp.port, model_url=model.base_url,
                          extra=f'policies_dir = "{policies}"\n')
    config.write_text(config.read_text().replace("[owner]", f"[agent]\n{agent}\n\n[owner]"))
    service = ServiceProcess(config)
    service.env["HOME"] = str(home)
    return service.start()


def body(mail: RecordedMail) -> str:
    return mail.text()


def replies_to(mails: list[RecordedMail], raw: bytes) -> list[str]:
    """The bodies of the mails that answer `raw`."""
    wanted = message_id_of(raw)
    return [body(m) for m in mails
            if email.message_from_bytes(m.raw).get("In-Reply-To") == wanted]


def assert_bounded(service: ServiceProcess, data_dir: Path) -> None:
    assert service.process is not None and service.process.poll() is None, service.log()
    peak = peak_rss_bytes(service.process.pid)
    assert peak < MAX_PEAK_RSS, f"peak RSS {peak / MiB:.0f} MiB"
    size = folder_bytes(data_dir)
    assert size < MAX_DATA_DIR, f"data folder {size / MiB:.1f} MiB"
    print(f"\npeak RSS {peak / MiB:.0f} MiB, data folder {size / MiB:.1f} MiB")


def test_hostile_mail_is_refused_by_name_and_a_normal_task_still_runs(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        home: Path) -> None:
    hostile = {
        "limits.max_mime_parts": [many_parts(3000), nested_mime(5000)],
        "limits.max_mime_depth": [nested_mime(60)],
        "limits.max_header_bytes": [huge_header(1.5)],
    }
    stranger = huge_header(1.5, "stranger", auth=False)
    for raws in hostile.values():
        for raw in raws:
            dovecot.append(raw)
    dovecot.append(stranger)
    service = start_service(tmp_path, dovecot, smtp_server, model_server, home)
    try:
        notices = smtp_server.wait_for(4, timeout=60)
        for limit, raws in hostile.items():
            for raw in raws:
                [notice] = replies_to(notices, raw)
                assert f"({limit})" in notice or limit in notice, notice
                assert "nothing was done with it" in notice
        assert all(m.rcpt_tos == [OWNER] for m in notices)
        normal = owner_mail("[normal] Say hello", "Say hello.")
        model_server.script(text("Hello from the normal task."))
        dovecot.append(normal)
        mails = smtp_server.wait_for(5, timeout=60)
        assert "Hello from the normal task." in replies_to(mails, normal)[0]
        store = service.store()
        outcomes = store.raw_outcomes()
        assert len(outcomes) == 6
        rejected = [reason for _, state, outcome, reason in outcomes if outcome == "rejected"]
        assert len(rejected) == 5 and all(state == "processed" for _, state, *_ in outcomes)
        assert sum("max_header_bytes" in (r or "") for r in rejected) == 2  # stranger's too
        assert not replies_to(mails, stranger)
        assert [t.state for t in store.tasks()] == ["done"]
        assert len(model_server.message_requests) == 1
        assert_bounded(service, tmp_path / "data")
        assert service.stop() == 0
    finally:
        service.kill()


def scenario_reply(fifo: Path, long_file: Path) -> Reply:
    """What the hijacked model does in each conversation: found from its first task message."""
    def reply(request: RecordedRequest) -> Reply:
        first = json.dumps(request.messages[:1])
        turn = len(request.messages) // 2  # 0 on the first request of a task
        if "SCENARIO-LOOP" in first:
            return tool_use("list_files", {"path": "."})
        if "SCENARIO-USAGE" in first:
            return tool_use("list_files", {"path": f"./{turn}"},
                            usage={"input_tokens": 3_000_000, "output_tokens": 10})
        if "SCENARIO-HANG" in first:
            return delayed(300, text("far too late"))
        if "SCENARIO-SLEEP" in first:
            return tool_use("run_command", {"command": "sleep 4242"}) if turn == 0 else text("?")
        if "SCENARIO-TOOLS" in first:
            steps: list[Reply] = [
                tool_use("read_file", {"path": str(fifo)}),
                tool_use("search_files", {"pattern": "(x+x+)+y", "path": str(long_file.parent)}),
                tool_use("read_file", {"path": "attachments/mail-1/a1.docx"}),
                tool_use("read_file", {"path": "attachments/mail-1/a2.xlsx"}),
                tool_use("read_file", {"path": "attachments/mail-1/a3.zip"}),
            ]
            return steps[turn] if turn < len(steps) else text("The tools refused.")
        return text("Hello from the normal task.")
    return reply


def sleeping_processes() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == b"sleep\x004242\x00":
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_hostile_model_and_tools_that_never_return_end_by_name_and_the_service_goes_on(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        home: Path) -> None:
    model_server.default = scenario_reply(home / "in" / "pipe", home / "in" / "long.txt")
    tools = archives_mail("[tools] Read these SCENARIO-TOOLS")
    mails = {
        "tools": tools,
        "loop": owner_mail("[loop] List", "SCENARIO-LOOP"),
        "usage": owner_mail("[usage] Count", "SCENARIO-USAGE"),
        "hang": owner_mail("[hang] Think", "SCENARIO-HANG"),
        "sleep": owner_mail("[sleep] Wait", "SCENARIO-SLEEP"),
    }
    for raw in mails.values():
        dovecot.append(raw)
    started = time.monotonic()
    service = start_service(
        tmp_path, dovecot, smtp_server, model_server, home,
        agent="max_task_seconds = 45\nmax_concurrent_tasks = 8",
        commands='[commands]\nallow = ["sleep"]\ntimeout_seconds = 600\n')
    try:
        sent = smtp_server.wait_for(5, timeout=150)
        answers = {name: replies_to(sent, raw) for name, raw in mails.items()}
        assert "(agent.max_identical_calls)" in answers["loop"][0]
        assert "(agent.max_task_tokens)" in answers["usage"][0]
        assert "(agent.max_task_seconds)" in answers["hang"][0]
        assert "(agent.max_task_seconds)" in answers["sleep"][0]
        assert "The tools refused." in answers["tools"][0]
        assert time.monotonic() - started < 140
        assert wait_until(lambda: not sleeping_processes(), 10, "the sleep to be killed") is True
        store = service.store()
        states = {t.conversation_name: (t.state, t.reason or "") for t in store.tasks()}
        assert states["loop"][0] == states["hang"][0] == states["sleep"][0] == "failed"
        assert states["usage"][0] == "waiting_approval"  # paused: `continue` would go on
        assert states["tools"][0] == "done"
        results = [str(r["content"]) for req in model_server.message_requests
                   for r in req.tool_results if r.get("is_error")]
        expected = ["is not a regular file (a FIFO", "was stopped; use a simpler pattern",
                    "would unpack", "a2.xlsx", "a binary file"]
        for fragment in expected:
            assert any(fragment in result for result in results), (fragment, results)
        normal = owner_mail("[normal] Say hello", "Say hello.")
        dovecot.append(normal)
        after = smtp_server.wait_for(6, timeout=60)
        assert "Hello from the normal task." in replies_to(after, normal)[0]
        # The command the time budget cut off is answered in the history: the conversation
        # goes on, and the model is told the call was interrupted.
        dovecot.append(owner_mail("[sleep] Again", "Say hello."))
        wait_until(lambda: [t.state for t in store.tasks() if t.conversation_name == "sleep"]
                   == ["failed", "done"], 60, "the next task of the stopped conversation")
        interrupted = [r for req in model_server.message_requests for r in req.tool_results
                       if "interrupted" in str(r["content"]) and r.get("is_error")]
        assert interrupted
        assert_bounded(service, tmp_path / "data")
        assert service.stop() == 0
    finally:
        service.kill()
