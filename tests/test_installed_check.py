"""`mailagent check` as a user runs it, installed from the wheel: it catches the usual mistakes
in the config and the policies, and its stdout holds only its own lines."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.support.config import write_config
from tests.support.dovecot import Dovecot
from tests.support.installed import SOURCE, Installed
from tests.support.model_server import ModelServer
from tests.support.smtp import SmtpServer

ENV = {"TEST_IMAP_PASSWORD": "agent-secret"}
OWN_LINE = re.compile(r"^(ok|error|hint|warning): |^\s+\S")


def servers_config(tmp_path: Path, dovecot: Dovecot, smtp: SmtpServer,
                   model: ModelServer) -> Path:
    return write_config(tmp_path, dovecot.imap_port, smtp.port, model_url=model.base_url)


def edit(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


def errors(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("error:")]


def test_a_misspelt_key_is_refused_by_check_and_run_naming_the_key_meant(
        tmp_path: Path, installed: Installed) -> None:
    config = edit(write_config(tmp_path, 1, 1), 'security = "none"\nusername = "agent',
                  'securty = "none"\nusername = "agent')
    for command in ("check", "run"):
        result = installed.run(command, "--config", str(config), env=ENV)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.strip().splitlines() == [
            f"mailagent: error: imap.securty: unknown key in {config}; did you mean "
            "imap.security?"]


def test_an_unknown_table_is_refused_naming_the_table_meant(tmp_path: Path,
                                                            installed: Installed) -> None:
    config = write_config(tmp_path, 1, 1, extra="[canery]\ninterval_minutes = 0\n")
    result = installed.run("check", "--config", str(config), env=ENV)
    assert result.returncode == 2
    assert f"canery: unknown table in {config}; did you mean canary?" in result.stderr


def test_an_owner_address_that_is_two_addresses_is_refused(tmp_path: Path,
                                                           installed: Installed) -> None:
    config = edit(write_config(tmp_path, 1, 1), '["owner@example.com"]',
                  '["owner@example.com, boss@example.com"]')
    result = installed.run("check", "--config", str(config), env=ENV)
    assert result.returncode == 2
    assert ("owner.addresses holds 'owner@example.com, boss@example.com', which holds 2 "
            f"mailboxes, not one in {config}") in result.stderr


def test_check_fails_when_the_policies_folder_is_missing(
        tmp_path: Path, installed: Installed, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    config = servers_config(tmp_path, dovecot, smtp_server, model_server)
    (tmp_path / "policies").rmdir()
    result = installed.run("check", "--config", str(config), env=ENV)
    assert result.returncode == 1, result.stdout + result.stderr
    assert errors(result.stdout) == [
        f"error: no policies folder at {tmp_path / 'policies'}, so every file is denied: "
        f"create it (and a *.toml file in it, see README.md), set policies_dir in {config}, "
        "or run `mailagent init`"]
    assert "ok: IMAP login" in result.stdout


def test_check_fails_for_a_folder_rule_whose_path_does_not_exist(
        tmp_path: Path, installed: Installed, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    config = servers_config(tmp_path, dovecot, smtp_server, model_server)
    (tmp_path / "reports").mkdir()
    policy = tmp_path / "policies" / "home.toml"
    policy.write_text(f'[[folders]]\npath = "{tmp_path / "reports"}"\naccess = "read"\n\n'
                      f'[[folders]]\npath = "{tmp_path / "Reprots"}"\naccess = "read"\n')
    result = installed.run("check", "--config", str(config), env=ENV)
    assert result.returncode == 1, result.stdout + result.stderr
    assert errors(result.stdout) == [
        f"error: {policy} line 5: the [[folders]] path {tmp_path / 'Reprots'} does not exist: "
        "create it, or fix the path in that file"]


def test_check_stdout_holds_only_its_own_lines_and_logs_go_to_stderr(
        tmp_path: Path, installed: Installed, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    config = servers_config(tmp_path, dovecot, smtp_server, model_server)
    (tmp_path / "policies" / "tools.toml").write_text(f"""
[commands]
allow = ["python3"]

[mcp.notes]
command = "{sys.executable}"
args = ["-m", "tests.support.mcp_server", "stdio"]
cwd = "{SOURCE}"
env = {{ NOTES_LOG = "{tmp_path / 'notes.log'}" }}
tools = {{ lookup = "allow" }}
""")
    result = installed.run("--verbose", "check", "--config", str(config),
                           env={**ENV, "ANTHROPIC_LOG": "debug"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "    mcp__notes__lookup: allow" in result.stdout.splitlines()
    strays = [line for line in result.stdout.splitlines() if not OWN_LINE.match(line)]
    assert strays == []
    for logger in ("mailagent.store", "httpx2", "anthropic"):  # they did log, to stderr
        assert f" {logger}" in result.stderr
