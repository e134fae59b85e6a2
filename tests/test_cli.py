"""The commands as a user runs them: one readable line per problem, exit codes that mean it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.config import write_config
from tests.support.dovecot import Dovecot
from tests.support.mail import owner_mail
from tests.support.model_server import ModelServer
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import SmtpServer
from tests.support.upstream import SRT


def mailagent(*args: str, password: str = "agent-secret") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TEST_IMAP_PASSWORD": password}
    return subprocess.run([sys.executable, "-m", "mailagent", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_check_passes_on_a_good_config(tmp_path: Path, dovecot: Dovecot,
                                       smtp_server: SmtpServer) -> None:
    with ModelServer.start() as model:
        url = model.base_url
        config = write_config(tmp_path, dovecot.imap_port, smtp_server.port, model_url=url)
        result = mailagent("check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: IMAP login as agent@example.com" in result.stdout
    assert "IDLE" in result.stdout
    assert "ok: SMTP" in result.stdout
    assert f"ok: model claude-test-model at {url}" in result.stdout
    assert "ok: templates:" in result.stdout and "system.md.j2" in result.stdout
    assert "ok: run_command: not offered (no [commands] table" in result.stdout
    assert "error" not in result.stdout


def test_check_names_the_sandbox_that_commands_run_in(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port(), closed_port())
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "c.toml").write_text('[commands]\nallow = ["python3"]\n')
    result = mailagent("check", "--config", str(config))
    [line] = [x for x in result.stdout.splitlines() if "run_command" in x]
    assert line.startswith("ok: run_command: python3 in bubblewrap"), line
    assert "no network" in line and "process count bounded by" in line


def test_check_names_an_unreachable_model_endpoint(tmp_path: Path, dovecot: Dovecot,
                                                   smtp_server: SmtpServer) -> None:
    port = closed_port()
    config = write_config(tmp_path, dovecot.imap_port, smtp_server.port,
                          model_url=f"http://127.0.0.1:{port}")
    result = mailagent("check", "--config", str(config))
    assert result.returncode == 1
    assert f"error: cannot reach http://127.0.0.1:{port}" in result.stdout
    assert "ok: IMAP" in result.stdout


def test_check_reports_a_broken_policy_file_with_its_line(tmp_path: Path, dovecot: Dovecot,
                                                          smtp_server: SmtpServer) -> None:
    config = write_config(tmp_path, dovecot.imap_port, smtp_server.port)
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "home.toml").write_text(
        '[[folders]]\npath = "/tmp"\naccess = "wrte"\n')
    result = mailagent("check", "--config", str(config))
    assert result.returncode == 1
    [line] = [x for x in result.stdout.splitlines() if x.startswith("error:") and "home.toml" in x]
    assert "line 3" in line and "wrte" in line


def test_check_reports_a_broken_schedules_file_with_its_line(tmp_path: Path, dovecot: Dovecot,
                                                             smtp_server: SmtpServer) -> None:
    config = write_config(tmp_path, dovecot.imap_port, smtp_server.port)
    (tmp_path / "schedules.toml").write_text(
        '[[schedule]]\nwhen = "every day at 07:00"\ntask = "Weather"\n\n'
        '[[schedule]]\nwhen = "now and then"\ntask = "Inbox"\n')
    result = mailagent("check", "--config", str(config))
    assert result.returncode == 1
    [line] = [x for x in result.stdout.splitlines() if x.startswith("error:")
              and "schedules.toml" in x]
    assert "line 5" in line and "now and then" in line and "every day at 08:00" in line


def test_policy_explain_says_the_verdict_and_the_rule(tmp_path: Path) -> None:
    config = write_config(tmp_path, 1, 1)
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "q3.txt").write_text("numbers")
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "reports.toml").write_text(
        f'[[folders]]\npath = "{reports}"\naccess = "read"\n')
    allowed = mailagent("policy", "explain", "--config", str(config), "read",
                        str(reports / "q3.txt"))
    denied = mailagent("policy", "explain", "--config", str(config), "write",
                       str(reports / "q3.txt"))
    assert allowed.returncode == 0 and denied.returncode == 0
    assert allowed.stdout.startswith("allow: reports.toml:1")
    assert denied.stdout.startswith("deny: reports.toml:1")
    assert "read-only" in denied.stdout


def test_check_names_a_wrong_password_in_one_line(tmp_path: Path, dovecot: Dovecot,
                                                  smtp_server: SmtpServer,
                                                  model_server: ModelServer) -> None:
    config = write_config(tmp_path, dovecot.imap_port, smtp_server.port,
                          model_url=model_server.base_url)
    result = mailagent("check", "--config", str(config), password="Pa55-wr0ng-x")
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert errors == ["error: IMAP login as agent@example.com on 127.0.0.1 was refused: check "
                      "imap.username and the password"]
    assert "Pa55-wr0ng-x" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_check_names_an_unreachable_host(tmp_path: Path, smtp_server: SmtpServer,
                                         model_server: ModelServer) -> None:
    port = closed_port()
    config = write_config(tmp_path, port, smtp_server.port, model_url=model_server.base_url)
    result = mailagent("check", "--config", str(config))
    assert result.returncode == 1
    assert f"error: cannot reach IMAP server 127.0.0.1:{port}" in result.stdout
    assert "Traceback" not in result.stderr


def test_check_reports_a_wrong_smtp_password(tmp_path: Path, dovecot: Dovecot) -> None:
    smtp = SmtpServer.start(password="other")
    try:
        config = write_config(tmp_path, dovecot.imap_port, smtp.port)
        result = mailagent("check", "--config", str(config))
    finally:
        smtp.stop()
    assert result.returncode == 1
    assert "error: SMTP login as agent@example.com" in result.stdout
    assert "ok: IMAP" in result.stdout


def test_a_bad_config_is_one_line_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "mailagent.toml"
    config.write_text("[imap]\nport = 993\n")
    for command in ("check", "run", "status"):
        result = mailagent(command, "--config", str(config))
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"mailagent: error: imap.host is missing in {config}: set it"]


def test_status_lists_conversations_tasks_and_refusals(tmp_path: Path, dovecot: Dovecot,
                                                      model_server: ModelServer) -> None:
    service = ServiceProcess(write_config(tmp_path, dovecot.imap_port, 1,
                                          model_url=model_server.base_url))
    dovecot.append(owner_mail("[home] fix the boiler schedule"))
    dovecot.append(owner_mail("hi", sender="Stranger <stranger@example.net>"))
    service.start().wait_connected()
    try:
        store = service.store()
        wait_until(lambda: len(store.raw_outcomes()) == 2
                   and all(s == "processed" for _, s, _, _ in store.raw_outcomes())
                   and [t.state for t in store.tasks()] == ["done"], 20, "intake and the task")
    finally:
        service.stop()
    result = mailagent("status", "--config", str(service.config_path))
    assert result.returncode == 0
    assert "home: 1 done" in result.stdout
    assert "[home] done: [home] fix the boiler schedule" in result.stdout
    assert "intake.unauthenticated: sender is not an owner address" in result.stdout


def test_config_path_may_come_from_the_environment(tmp_path: Path) -> None:
    env = {**os.environ, "MAILAGENT_CONFIG": str(tmp_path / "nowhere.toml")}
    result = subprocess.run([sys.executable, "-m", "mailagent", "status"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert f"no config file at {tmp_path / 'nowhere.toml'}" in result.stderr


def test_check_says_srt_filters_a_host_list_and_why(tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port(), closed_port())
    with config.open("a") as file:
        file.write(f'\n[commands]\nsrt = "{SRT}"\n')
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "c.toml").write_text(
        '[commands]\nallow = ["python3"]\nnetwork = ["pypi.org"]\n')
    result = mailagent("check", "--config", str(config))
    [line] = [x for x in result.stdout.splitlines() if "run_command" in x]
    assert line.startswith("ok: run_command: python3 in bubblewrap"), line
    assert "inside sandbox-runtime" in line and "network only to pypi.org" in line
    assert "because c.toml:1 lists hosts" in line


def test_check_says_a_host_list_is_refused_without_srt_and_how_to_install_it(
        tmp_path: Path) -> None:
    config = write_config(tmp_path, closed_port(), closed_port())
    with config.open("a") as file:
        file.write(f'\n[commands]\nsrt = "{tmp_path / "no-srt"}"\n')
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "c.toml").write_text(
        '[commands]\nallow = ["python3"]\nnetwork = ["pypi.org"]\n')
    result = mailagent("check", "--config", str(config))
    [line] = [x for x in result.stdout.splitlines() if "run_command" in x]
    assert line.startswith("error: run_command is refused at every call"), line
    assert "only pypi.org" in line and "npm install" in line and "not executable" in line
    assert result.returncode == 1


def test_output_cut_short_by_its_reader_ends_quietly() -> None:
    # `mailagent example policy | head -1`: the reader goes away before mailagent writes.
    process = subprocess.Popen([sys.executable, "-m", "mailagent", "example", "policy"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    with process.stderr:
        stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
