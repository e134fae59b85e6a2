"""mailagent as a user installs it: the wheel, installed with pipx outside the source tree.

Every test here runs the installed `mailagent` command only (the `installed` fixture), never the
sources, so a file missing from the package or a path computed from the source tree fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from tests.support.config import write_config
from tests.support.dovecot import Dovecot
from tests.support.installed import SOURCE, Installed, clean_env
from tests.support.model_server import ModelServer, error, text, tool_use
from tests.support.smtp import SmtpServer

OWNER = "you@mailagent.localhost"
COMMANDS = ("run", "check", "status", "resume", "init", "policy", "service", "demo", "example")


def shipped_files(folder: str) -> set[str]:
    root = SOURCE / "mailagent" / folder
    return {f"mailagent/{folder}/{p.relative_to(root)}" for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


@pytest.mark.parametrize("folder", ["templates", "deploy", "examples"])
def test_the_wheel_ships_every_file_of_the_packaged_folders(installed: Installed,
                                                            folder: str) -> None:
    expected = shipped_files(folder)
    assert expected, f"nothing found in mailagent/{folder}"
    missing = expected - set(installed.wheel_names())
    assert not missing, f"missing from the wheel: {sorted(missing)}"


def test_the_installed_program_imports_the_installed_package_not_the_sources(
        installed: Installed) -> None:
    python = installed.root / "pipx" / "venvs" / "mailagent" / "bin" / "python"
    result = subprocess.run([str(python), "-c", "import mailagent; print(mailagent.__file__)"],
                            capture_output=True, text=True, cwd=installed.home, timeout=60)
    where = Path(result.stdout.strip())
    assert "site-packages" in where.parts and not where.is_relative_to(SOURCE), where


def test_version_is_the_one_in_pyproject(installed: Installed) -> None:
    version = tomllib.loads((SOURCE / "pyproject.toml").read_text())["project"]["version"]
    result = installed.run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"mailagent {version}"


def test_help_speaks_to_a_user_with_an_example_for_every_command(installed: Installed) -> None:
    top = installed.run("--help")
    assert top.returncode == 0
    assert "Command line:" not in top.stdout and "MailagentError" not in top.stdout
    assert "mailagent demo" in top.stdout and "mailagent init" in top.stdout
    for command in COMMANDS:
        result = installed.run(command, "--help")
        assert result.returncode == 0, result.stderr
        example = result.stdout.partition("example:\n")[2]
        assert example.strip().startswith(f"mailagent {command}") or \
            f" mailagent {command}" in example, f"{command}: {result.stdout}"


def demo(installed: Installed, folder: Path, url: str, *extra: str,
         timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return installed.run("demo", "--dir", str(folder), "--base-url", url, "--model",
                         "claude-test-model", "--timeout", "120", *extra, timeout=timeout)


def test_the_installed_demo_answers_its_task_and_prints_the_completion_mail(
        installed: Installed, tmp_path: Path, model_server: ModelServer) -> None:
    folder = tmp_path / "demo"
    summary = folder / "sample" / "summary.md"
    model_server.script(
        tool_use("list_files", {"path": str(folder / "sample")}),
        tool_use("write_file", {"path": str(summary), "content": "- The release moves.\n"}),
        tool_use("attach_file", {"path": str(summary)}),
        text("I summarised your two notes into summary.md."))
    result = demo(installed, folder, model_server.base_url)
    log = (folder / "service.log").read_text() if (folder / "service.log").exists() else ""
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{log}"
    assert result.stderr == ""  # the service logs into its own file; nothing else to say
    mail = result.stdout.split("---- completion mail received by the embedded SMTP server ----")[1]
    assert "Subject: Re: Summarise my notes" in mail
    assert f"To: {OWNER}" in mail
    assert "I summarised your two notes into summary.md." in mail
    assert "Attached: summary.md" in mail
    assert re.findall(r"^Output: (.+)$", result.stdout, re.MULTILINE) == [str(summary)]
    assert summary.read_text() == "- The release moves.\n"
    assert 'verification = "none"' in result.stdout and "loopback" in result.stdout
    # The task reached the model as typed, and the sample folder was really listed.
    first = model_server.message_requests[0]
    assert str(folder / "sample") in first.last_text
    listing = str(model_server.message_requests[1].tool_results[0]["content"])
    assert "meeting-notes.md" in listing and "ideas.md" in listing
    # The mail came in over IMAP, after the embedded SMTP server delivered it there; the
    # system prompt rendered from the packaged templates.
    assert "received uid=" in log and "mail sent" in log and "shutting down" in log
    assert "TemplateNotFound" not in log
    assert "workspace" in str(first.body.get("system", "")).lower()


def test_the_demo_against_an_endpoint_that_is_down_exits_1_with_one_line(
        installed: Installed, tmp_path: Path) -> None:
    with ModelServer.start() as model:
        url = model.base_url  # a port that was just served and is closed now
    started = time.monotonic()
    result = demo(installed, tmp_path / "demo", url, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert time.monotonic() - started < 30
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("mailagent demo: cannot reach") and url in line
    assert "completion" not in result.stdout


def test_the_demo_whose_key_is_refused_says_so_in_one_line(
        installed: Installed, tmp_path: Path, model_server: ModelServer) -> None:
    model_server.api_key = "the-right-key"
    result = installed.run("demo", "--dir", str(tmp_path / "demo"), "--model",
                           "claude-test-model", env={"ANTHROPIC_API_KEY": "a-wrong-key",
                                                     "ANTHROPIC_BASE_URL": model_server.base_url},
                           timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "refused the API key" in line and "ANTHROPIC_API_KEY" in line
    assert "completion" not in result.stdout
    assert model_server.message_requests == []  # nothing was started


def test_a_demo_task_that_fails_is_labelled_a_failure_and_exits_1(
        installed: Installed, tmp_path: Path, model_server: ModelServer) -> None:
    model_server.script(error(403, "permission_error", "this key may not use this model"))
    result = demo(installed, tmp_path / "demo", model_server.base_url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "---- failure mail received by the embedded SMTP server ----" in result.stdout
    assert "completion mail" not in result.stdout
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("mailagent demo: the task failed") and "may not use this model" in line


def test_a_demo_task_the_model_cannot_serve_now_is_not_called_a_completion(
        installed: Installed, tmp_path: Path, model_server: ModelServer) -> None:
    model_server.default = error(529, "overloaded_error", "Overloaded", retry_after=0.01)
    result = demo(installed, tmp_path / "demo", model_server.base_url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "completion mail" not in result.stdout
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("mailagent demo: the task could not reach the model")


def test_the_installed_check_passes_on_a_good_config(
        installed: Installed, tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    config = write_config(tmp_path, dovecot.imap_port, smtp_server.port,
                          model_url=model_server.base_url)
    (tmp_path / "policies").mkdir(exist_ok=True)
    result = installed.run("check", "--config", str(config),
                           env={"TEST_IMAP_PASSWORD": "agent-secret"})
    assert result.returncode == 0, result.stdout + result.stderr
    templates = next(x for x in result.stdout.splitlines() if x.startswith("ok: templates:"))
    assert "system.md.j2" in templates and "completion.md.j2" in templates
    assert "ok: IMAP login as agent@example.com" in result.stdout
    assert "ok: model claude-test-model" in result.stdout
    # What the Models API says of the model, and what a token costs, under the model line.
    assert "  context window: 200,000 tokens" in result.stdout
    assert "  server-side compaction: offered by the model" in result.stdout
    assert "  price: $3 in, $15 out per million tokens (estimated" in result.stdout


def test_the_installed_policy_explain_names_the_rule(installed: Installed,
                                                      tmp_path: Path) -> None:
    config = write_config(tmp_path, 1, 1)
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "q3.csv").write_text("quarter,total\n")
    (policies / "reports.toml").write_text(f'[[folders]]\npath = "{reports}"\n'
                                           'access = "read"\n')
    # No mail secret in this shell: explaining the policy logs in nowhere and needs none.
    allowed = installed.run("policy", "explain", "--config", str(config), "read",
                            str(reports / "q3.csv"))
    denied = installed.run("policy", "explain", "--config", str(config), "write",
                           str(reports / "q3.csv"))
    status = installed.run("status", "--plain", "--config", str(config))
    assert status.returncode == 0, status.stderr
    assert allowed.returncode == 0 and allowed.stdout.startswith("allow"), allowed
    assert "reports.toml" in allowed.stdout
    assert denied.stdout.startswith("deny"), denied


def test_the_installed_service_install_dry_run_runs_the_installed_program(
        installed: Installed, tmp_path: Path) -> None:
    config = write_config(tmp_path, 1, 1)
    result = installed.run("service", "install", "--dry-run", "--platform", "linux",
                           "--config", str(config), env={"TEST_IMAP_PASSWORD": "x"})
    assert result.returncode == 0, result.stderr
    [exec_start] = [x for x in result.stdout.splitlines() if x.startswith("ExecStart=")]
    assert str(config) in exec_start
    program = exec_start.removeprefix("ExecStart=").split()[0].strip('"')
    assert not Path(program).is_relative_to(SOURCE), exec_start
    assert Path(program).exists(), exec_start


def test_the_installed_init_writes_a_config_that_loads(installed: Installed,
                                                       tmp_path: Path) -> None:
    config = tmp_path / "agent" / "mailagent.toml"
    result = installed.run(
        "init", "--non-interactive", "--config", str(config), "--provider", "fastmail",
        "--email", "agent@fastmail.com", "--owner", "me@example.com",
        "--password-env", "APP_PASSWORD", "--secret-in-env", "--no-check",
        "--policy-folder", str(tmp_path / "reports"), env={"APP_PASSWORD": "pw"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert config.exists()
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "a.txt").write_text("a")
    explain = installed.run("policy", "explain", "--config", str(config), "read",
                            str(tmp_path / "reports" / "a.txt"), env={"APP_PASSWORD": "pw"})
    assert explain.stdout.startswith("allow"), explain


def test_the_installed_examples_print_and_the_policy_loads(installed: Installed,
                                                          tmp_path: Path) -> None:
    config_text = installed.run("example", "config").stdout
    policy_text = installed.run("example", "policy").stdout
    assert "imap" in tomllib.loads(config_text) and tomllib.loads(policy_text)["folders"]
    config = write_config(tmp_path, 1, 1)
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "example.toml").write_text(policy_text)
    reports = installed.home / "Documents" / "reports"
    reports.mkdir(parents=True)
    (reports / "q3.csv").write_text("q,total\n")
    result = installed.run("policy", "explain", "--config", str(config), "read",
                           str(reports / "q3.csv"), env={"TEST_IMAP_PASSWORD": "x"})
    assert result.stdout.startswith("allow: example.toml"), result


def test_a_damaged_install_missing_a_template_refuses_to_run_and_check_names_it(
        installed: Installed, tmp_path: Path) -> None:
    venv = installed.root / "pipx" / "venvs" / "mailagent"
    [package] = venv.glob("lib/python*/site-packages/mailagent")
    damaged = tmp_path / "damaged"
    shutil.copytree(package, damaged / "mailagent")
    (damaged / "mailagent" / "templates" / "failure.md.j2").unlink()
    config = write_config(tmp_path, 1, 1)
    (tmp_path / "policies").mkdir(exist_ok=True)
    env = {"PYTHONPATH": str(damaged), "TEST_IMAP_PASSWORD": "x"}
    for command in ("run", "check"):
        result = subprocess.run([str(venv / "bin" / "python"), "-m", "mailagent", command,
                                 "--config", str(config)], capture_output=True, text=True,
                                env=clean_env(**env), cwd=tmp_path, timeout=120)
        assert result.returncode != 0, (command, result.stdout, result.stderr)
        assert "failure.md.j2" in result.stdout + result.stderr, (command, result)
        if command == "run":  # it stopped before it took any mail
            assert not (tmp_path / "data" / "mailagent.db").exists()
