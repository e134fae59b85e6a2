"""`mailagent logs [-f] [--lines N]`: the service's log wherever the installed service writes
it. With `[service] log_file` the running service logs to that file as well as stderr, and
`logs` reads it (and follows it across a rotation); without it, the journal of the systemd
user unit that `service install` writes, or the launchd agent's log file. The log holds no
password and no mail body."""

from __future__ import annotations

import plistlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mailagent.cli.install import launchd_unit, service_command, systemd_unit
from mailagent.cli.reports import follow_file, log_source
from mailagent.config import load_settings
from mailagent.errors import ConfigError, MailagentError
from tests.support.dovecot import Dovecot
from tests.support.fixtures import MakeService
from tests.support.mail import owner_mail
from tests.support.service import wait_until

BODY_WORDS = "the combination of the garden safe is 7-3-9"


def test_logs_reads_and_follows_the_log_file_of_the_running_service(
        tmp_path: Path, dovecot: Dovecot, make_service: MakeService) -> None:
    service = make_service(extra='[service]\nlog_file = "logs/mailagent.log"\n')
    service.start()
    follower = reader = None
    try:
        service.wait_connected()
        log_file = tmp_path / "logs" / "mailagent.log"
        wait_until(lambda: log_file.exists() and "IMAP connected" in log_file.read_text(), 20,
                   "the service's own log file")
        command = [sys.executable, "-m", "mailagent", "logs", "--config",
                   str(service.config_path)]
        shown = subprocess.run([*command, "--lines", "500"], capture_output=True, text=True,
                               env=service.env, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert "IMAP connected" in shown.stdout and "mailagent running data_dir=" in shown.stdout
        assert f"# {log_file} ([service] log_file)" in shown.stderr
        last = subprocess.run([*command, "--lines", "1"], capture_output=True, text=True,
                              env=service.env, timeout=60)
        assert last.stdout == log_file.read_text().splitlines(keepends=True)[-1]

        follower = subprocess.Popen([*command, "-f", "--lines", "0"], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True, env=service.env)
        lines: list[str] = []
        output = follower.stdout
        assert output is not None
        reader = threading.Thread(target=lambda: lines.extend(iter(output.readline, "")),
                                  daemon=True)
        reader.start()
        while not any("follower ready" in line for line in lines):  # it reads from the end
            with log_file.open("a") as handle:
                handle.write("follower ready?\n")
            time.sleep(0.3)
        dovecot.append(owner_mail("Garden", BODY_WORDS))
        wait_until(lambda: any("task done task_id=1" in line for line in lines), 40,
                   f"the task's end, followed; log:\n{service.log()}")
        assert any("task queued" in line for line in lines)
        text = log_file.read_text()
        assert "agent-secret" not in text and BODY_WORDS not in text
        stderr = service.log_path.read_text()  # stderr has every line too
        assert all(line in stderr for line in text.splitlines() if "follower ready" not in line)
    finally:
        if follower is not None:
            follower.kill()
            follower.wait(10)
            if reader is not None:
                reader.join(10)
            assert follower.stdout is not None
            follower.stdout.close()
        service.stop()


def test_logs_of_the_installed_systemd_unit_are_its_journal(tmp_path: Path) -> None:
    unit = systemd_unit(service_command(tmp_path / "mailagent.toml"), tmp_path / "mailagent.toml")
    source = log_source(None, "linux", 30, follow=True)
    assert source.command == ("journalctl", "--user", "-u", unit.path.name, "-n", "30",
                              "--no-pager", "-o", "short-iso", "-f")
    assert "SyslogIdentifier=mailagent" in unit.text
    assert log_source(None, "linux", 5, follow=False).command[-1] == "short-iso"


def test_logs_on_macos_are_the_file_the_launchd_agent_writes(tmp_path: Path) -> None:
    unit = launchd_unit(service_command(tmp_path / "mailagent.toml"), 501)
    plist = plistlib.loads(unit.text.encode())
    source = log_source(None, "darwin", 30, follow=False)
    assert str(source.path) == plist["StandardErrorPath"] == plist["StandardOutPath"]


def test_a_configured_log_file_comes_first_and_windows_needs_one(tmp_path: Path) -> None:
    path = tmp_path / "mailagent.toml"
    path.write_text('[imap]\nhost = "h"\nusername = "u"\npassword = "p"\n'
                    '[smtp]\nhost = "h"\nfrom = "a@example.com"\n'
                    '[owner]\naddresses = ["me@example.com"]\nverification = "dkim"\n'
                    '[service]\nlog_file = "~/mailagent-logs/agent.log"\n')
    settings = load_settings(path, secrets=False)
    assert settings.service.log_file == Path("~/mailagent-logs/agent.log").expanduser()
    for platform in ("linux", "darwin", "windows"):
        assert log_source(settings, platform, 10, False).path == settings.service.log_file
    with pytest.raises(MailagentError, match=r"set \[service\] log_file"):
        log_source(None, "windows", 10, False)
    path.write_text(path.read_text().replace('"~/mailagent-logs/agent.log"', '" "'))
    with pytest.raises(ConfigError, match=r"service\.log_file is empty"):
        load_settings(path, secrets=False)


def test_following_a_log_goes_on_after_it_is_rotated(tmp_path: Path) -> None:
    log_file = tmp_path / "mailagent.log"
    log_file.write_text("before\n")
    seen: list[str] = []
    done = threading.Event()
    follower = threading.Thread(target=follow_file,
                                args=(log_file, seen.append, len(b"before\n"),
                                      lambda: not done.is_set()))
    follower.start()
    try:
        with log_file.open("a") as handle:
            handle.write("first\n")
        wait_until(lambda: seen == ["first\n"], 10, "the line written after the start")
        log_file.rename(tmp_path / "mailagent.log.1")  # as RotatingFileHandler rotates
        log_file.write_text("after the rotation\n")
        wait_until(lambda: seen == ["first\n", "after the rotation\n"], 10,
                   "the first line of the new file")
    finally:
        done.set()
        follower.join(10)
