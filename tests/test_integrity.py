"""The files that govern mailagent are known by identity and checked after every command
(SECURITY.md F3): when the config, a policy file or the data directory is no longer where and
what it was, every tool stops, the owner gets one mail, a restart keeps the tools stopped, and
`mailagent resume` lets them run again. Mail that comes meanwhile is kept (L6)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailagent.policy.integrity import Guard, Mark, compare_policies, policy_marks
from tests.support.config import settings_for_tests, write_config
from tests.support.dovecot import Dovecot
from tests.support.mail import OWNER, message_id_of, owner_mail
from tests.support.model_server import (
    ModelServer,
    RecordedRequest,
    Reply,
    ReplyFunction,
    text,
    tool_use,
    tool_uses,
)
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import RecordedMail, SmtpServer

# ------------------------------------------------------------------ the check, on real files


def swap_for_copy(path: Path) -> None:
    """Replace a file by a copy of itself: the same bytes, another inode."""
    copy = path.with_name(path.name + ".copy")
    shutil.copy2(path, copy)
    os.replace(copy, path)


@pytest.fixture
def guarded(tmp_path: Path) -> tuple[Guard, list[object]]:
    settings = settings_for_tests(tmp_path)
    settings.policies_dir.mkdir()
    (settings.policies_dir / "main.toml").write_text('[[folders]]\npath = "/srv"\n')
    settings.config_path.write_text("[imap]\nhost = 'x'\n")
    settings.data_dir.mkdir()
    database = settings.data_dir / "mailagent.db"
    database.write_bytes(b"db")
    breaches: list[object] = []
    return Guard(settings, database, breaches.append), breaches


def test_a_config_replaced_by_a_copy_with_the_same_bytes_is_seen(
        guarded: tuple[Guard, list[object]], tmp_path: Path) -> None:
    guard, breaches = guarded
    with guard.watching(1, "main", "true") as found:
        pass
    assert found == [] and breaches == []
    swap_for_copy(tmp_path / "mailagent.toml")
    with guard.watching(2, "evil", "sh -c 'swap'") as found:
        pass
    [problem] = found
    assert "the config file" in problem and "replaced or moved" in problem
    [breach] = breaches
    assert "task #2 in conversation evil" in breach.reason  # type: ignore[attr-defined]


@pytest.mark.parametrize("change", ["content", "copy", "removed", "added"])
def test_a_policy_file_changed_while_a_command_runs_is_seen_and_between_commands_is_not(
        guarded: tuple[Guard, list[object]], tmp_path: Path, change: str) -> None:
    guard, breaches = guarded
    policy = tmp_path / "policies" / "main.toml"
    policy.write_text('[[folders]]\npath = "/srv/owner-edit"\n')  # the owner, between commands
    swap_for_copy(policy)
    with guard.watching(1, "main", "true") as found:
        pass
    assert found == [] and breaches == []
    with guard.watching(2, "main", "sh -c 'edit'") as found:
        if change == "content":
            policy.write_text('[[folders]]\npath = "/"\naccess = "write"\n')
        elif change == "copy":
            swap_for_copy(policy)
        elif change == "removed":
            policy.unlink()
        else:
            (policy.parent / "more.toml").write_text("")
    [problem] = found
    assert "while the command ran" in problem and "policy file" in problem
    assert len(breaches) == 1


def test_a_command_that_raises_is_checked_all_the_same(
        guarded: tuple[Guard, list[object]], tmp_path: Path) -> None:
    guard, breaches = guarded
    (tmp_path / "data").rename(tmp_path / "data.moved")
    (tmp_path / "data").mkdir()  # a look-alike where the data directory was
    with pytest.raises(TimeoutError), guard.watching(3, "main", "sleep 99"):
        raise TimeoutError
    assert len(breaches) == 1
    problems = breaches[0].problems  # type: ignore[attr-defined]
    assert any("the data directory" in p for p in problems)
    assert any("the database" in p and "is gone" in p for p in problems)


def test_policy_marks_know_files_by_identity_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("x")
    (tmp_path / ".#a.toml").write_text("lock")  # an editor's lock file: not a policy
    before = policy_marks(tmp_path)
    assert [m.path.name for m in before] == ["a.toml"]
    assert compare_policies(before, policy_marks(tmp_path)) == []
    gone = (Mark("the policy file a.toml", tmp_path / "a.toml", None, error="removed"),)
    assert compare_policies(before, gone)[0].endswith("while the command ran")


# ------------------------------------------------------------------ the service, end to end


def scenario(config: Path, work: Path) -> ReplyFunction:
    """A hijacked model: in [evil] it tries to move the config and the policies away (the
    sandbox refuses), then waits while the test swaps the config as if it had managed; in
    [other] a long command runs at the same time; after the resume, [third] runs a command."""
    def reply(request: RecordedRequest) -> Reply:
        first = json.dumps(request.messages[:1])
        turn = len(request.messages) // 2
        if "SCENARIO-EVIL" in first and turn == 0:
            return tool_uses([
                ("run_command", {"command": f"sh -c 'mv {config} {config}.x; mv "
                                            f"{work}/policies {work}/p2; touch started; sleep 3'"}),
                ("write_file", {"path": "evil-pending.txt", "content": "pending call ran"})])
        if "SCENARIO-OTHER" in first and turn == 0:
            return tool_use("run_command", {"command": "sh -c 'touch started; sleep 41'"})
        if "SCENARIO-THIRD" in first and turn == 0:
            return tool_use("run_command", {"command": "sh -c 'echo fine > fine.txt'"})
        if turn == 1 and "SCENARIO-THIRD" not in first:
            return tool_use("write_file", {"path": "after.txt", "content": "next call ran"})
        return text("Finished.")
    return reply


def halt_mails(smtp: SmtpServer) -> list[RecordedMail]:
    return [m for m in smtp.messages if "tools are stopped: an integrity" in
            str(m.message()["Subject"])]


def finished(smtp: SmtpServer) -> list[RecordedMail]:
    return [m for m in smtp.messages if "Finished." in m.text()]


def cli(service: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailagent", *args, "--config",
                           str(service.config_path)], capture_output=True, text=True,
                          env=service.env, timeout=90)


def sleeping(marker: bytes) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False


def test_a_config_swapped_during_a_command_stops_every_tool_until_resume_even_across_a_restart(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    work = tmp_path / "work"  # a folder the policy lets commands write: config, policies, data
    work.mkdir()
    config = write_config(work, dovecot.imap_port, smtp_server.port,
                          model_url=model_server.base_url)
    (work / "policies" / "main.toml").write_text(
        f'[[folders]]\npath = "{work}"\naccess = "write"\n\n'
        '[commands]\nallow = ["sh"]\ntimeout_seconds = 60\n')
    workspaces = work / "data" / "workspaces"
    model_server.default = scenario(config, work)
    service = ServiceProcess(config)
    service.env["HOME"] = str(tmp_path / "home")
    service.start()
    try:
        dovecot.append(owner_mail("[other] Wait a while", "SCENARIO-OTHER"))
        wait_until(lambda: (workspaces / "other" / "started").exists(), 30,
                   f"the other command; log:\n{service.log()}")
        dovecot.append(owner_mail("[evil] Tidy up the settings", "SCENARIO-EVIL"))
        wait_until(lambda: (workspaces / "evil" / "started").exists(), 30,
                   f"the evil command; log:\n{service.log()}")
        swap_for_copy(config)  # as if the sandbox had let the command replace it
        wait_until(lambda: halt_mails(smtp_server), 30, f"the halt mail; log:\n{service.log()}")
        store = service.store()
        wait_until(lambda: {t.state for t in store.tasks()} == {"cancelled"}, 15,
                   "both tasks stopped")
        assert wait_until(lambda: not sleeping(b"sleep\x0041"), 10, "the other command killed")
        assert all("stopped: tools are stopped" in (t.reason or "") for t in store.tasks())
        for name in ("evil/evil-pending.txt", "evil/after.txt", "other/after.txt"):
            assert not (workspaces / name).exists(), f"a call ran after the halt: {name}"
        assert config.exists() and (work / "policies").is_dir()  # the sandbox held
        [halt] = halt_mails(smtp_server)
        body = halt.text()
        assert halt.rcpt_tos == [OWNER]
        assert f"the config file {config}" in body and "replaced or moved" in body
        assert "conversation evil" in body and "touch started; sleep 3" in body
        assert f"mailagent resume --config {config}" in body

        third = owner_mail("[third] Check the result", "SCENARIO-THIRD")
        fourth = owner_mail("[fourth] And this", "Say hello.")
        dovecot.append(third)
        dovecot.append(fourth)
        wait_until(lambda: len(store.held()) == 2, 15, "both mails kept")
        [kept_notice] = wait_until(lambda: [m for m in smtp_server.messages
                                            if "I keep this mail" in m.text()], 15,
                                   "the notice that mail is kept")
        assert kept_notice.message()["In-Reply-To"] == message_id_of(third)
        status = cli(service, "status", "--plain")
        assert "Tools: STOPPED since" in status.stdout and "replaced or moved" in status.stdout
        assert service.stop() == 0

        service.start()  # a restart keeps the tools stopped
        service.wait_connected()
        assert "tools are STOPPED since" in service.log()
        checked = cli(service, "check")
        assert checked.returncode == 1
        assert "error: tools are stopped since" in checked.stdout, checked.stdout
        assert len(service.store().held()) == 2 and len(service.store().tasks()) == 2
        assert [m for m in smtp_server.messages if "I keep this mail" in m.text()] == \
            [kept_notice]
        assert all("$MailagentDone" not in dovecot.flags(uid) for uid in dovecot.uids()[2:])
        assert not (workspaces / "third" / "fine.txt").exists()

        resumed = cli(service, "resume")
        assert resumed.returncode == 0 and "2 kept mail(s) run now" in resumed.stdout, resumed
        wait_until(lambda: (workspaces / "third" / "fine.txt").exists(), 30,
                   f"the command after the resume; log:\n{service.log()}")
        answers = wait_until(lambda: len(finished(smtp_server)) == 2 and finished(smtp_server),
                             30, "both kept mails answered")
        assert {m.message()["In-Reply-To"] for m in answers} == \
            {message_id_of(third), message_id_of(fourth)}
        assert len(halt_mails(smtp_server)) == 1  # the new record accepts what is there now
        assert "Tools: STOPPED" not in cli(service, "status", "--plain").stdout
        assert cli(service, "resume").stdout.startswith("Tools are not stopped")
        assert service.stop() == 0
    finally:
        service.kill()
