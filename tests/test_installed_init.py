"""`mailagent init` as installed from the wheel, against real servers: the model's key, logins
tried as the password is typed, machines without a keyring, plain-file keyrings, what to send
from the phone, and waiting for the first task to be answered."""

from __future__ import annotations

import base64
import re
import signal
import subprocess
import time
import tomllib
from pathlib import Path

from tests.support.dovecot import Dovecot
from tests.support.installed import Installed
from tests.support.mail import owner_mail
from tests.support.model_server import ModelServer
from tests.support.service import wait_until
from tests.support.smtp import SmtpServer

PASSWORD = "agent-secret"
MODEL_KEY = "model-key-123"
PLAINTEXT = "keyrings.alt.file.PlaintextKeyring"


def keyring_env(tmp_path: Path, backend: str = PLAINTEXT, **extra: str) -> dict[str, str]:
    """A private keyring file (or none), the password and the model key in variables."""
    return {"PYTHON_KEYRING_BACKEND": backend, "XDG_DATA_HOME": str(tmp_path / "keyring"),
            "TEST_AGENT_PASSWORD": PASSWORD, "TEST_MODEL_KEY": MODEL_KEY, **extra}


def keyring_file(tmp_path: Path) -> Path:
    return tmp_path / "keyring" / "python_keyring" / "keyring_pass.cfg"


def base_flags(config: Path, dovecot: Dovecot, smtp: SmtpServer, model: ModelServer,
               tmp_path: Path) -> list[str]:
    return ["--config", str(config), "--provider", "generic", "--email", "agent@example.com",
            "--username", "agent@example.com",
            "--imap-host", "127.0.0.1", "--imap-port", str(dovecot.imap_port),
            "--imap-security", "none", "--smtp-host", "127.0.0.1", "--smtp-port",
            str(smtp.port), "--smtp-security", "none", "--data-dir", str(tmp_path / "data"),
            "--verification", "authentication-results", "--authserv-id", "mx.example.com",
            "--policy-folder", "", "--model", "claude-test-model",
            "--model-base-url", model.base_url]


def test_installed_init_keeps_the_model_key_in_the_keyring_and_check_reads_it(
        installed: Installed, tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    model_server.api_key = MODEL_KEY
    config = tmp_path / "mailagent.toml"
    env = keyring_env(tmp_path)
    result = installed.run("init", "--non-interactive", "--owner", "owner@example.com",
                           "--password-env", "TEST_AGENT_PASSWORD", "--api-key-env",
                           "TEST_MODEL_KEY", *base_flags(config, dovecot, smtp_server,
                                                         model_server, tmp_path), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"  model claude-test-model at {model_server.base_url}: ok" in result.stdout
    data = tomllib.loads(config.read_text())
    assert data["model"]["api_key"] == "keyring:mailagent-model/agent@example.com"
    assert MODEL_KEY not in config.read_text() + result.stdout + result.stderr
    stored = base64.b64encode(MODEL_KEY.encode()).decode()  # the plain file's only disguise
    assert stored in keyring_file(tmp_path).read_text()

    without_variable = {k: v for k, v in env.items() if k != "TEST_MODEL_KEY"}
    checked = installed.run("check", "--config", str(config), env=without_variable)
    assert checked.returncode == 0, checked.stdout
    assert f"ok: model claude-test-model at {model_server.base_url}" in checked.stdout


def test_installed_init_refuses_a_refused_model_key_and_writes_nothing(
        installed: Installed, tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    model_server.api_key = MODEL_KEY
    config = tmp_path / "mailagent.toml"
    result = installed.run("init", "--non-interactive", "--owner", "owner@example.com",
                           "--password-env", "TEST_AGENT_PASSWORD", "--api-key-env",
                           "TEST_MODEL_KEY", *base_flags(config, dovecot, smtp_server,
                                                         model_server, tmp_path),
                           env=keyring_env(tmp_path, TEST_MODEL_KEY="wrong-key"))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("mailagent: error: the model endpoint refused the API key")
    assert line.endswith("(the key from $TEST_MODEL_KEY); then run `mailagent init` again "
                         "(nothing was written)")
    assert not config.exists()
    assert "wrong-key" not in result.stdout + result.stderr


def test_installed_init_asks_again_for_a_model_key_the_endpoint_refuses(
        installed: Installed, tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    model_server.api_key = MODEL_KEY
    config = tmp_path / "mailagent.toml"
    answers = ["y", "wrong-key", MODEL_KEY, "n"]  # needs a key; a wrong one, the right one
    result = installed.run("init", "--owner", "owner@example.com", "--password-env",
                           "TEST_AGENT_PASSWORD", *base_flags(config, dovecot, smtp_server,
                                                              model_server, tmp_path),
                           env=keyring_env(tmp_path), input="\n".join(answers) + "\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  the model endpoint refused the API key" in result.stdout
    assert "API key again (not shown;" in result.stdout
    assert f"model claude-test-model at {model_server.base_url}: ok" in result.stdout
    assert tomllib.loads(config.read_text())["model"]["api_key"].startswith("keyring:")
    assert "wrong-key" not in result.stdout and MODEL_KEY not in result.stdout


def test_installed_init_logs_in_as_the_password_is_typed_and_asks_again_when_refused(
        installed: Installed, tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    config = tmp_path / "mailagent.toml"
    answers = ["my-normal-password", PASSWORD, "owner@example.com", "n", "n"]
    result = installed.run("init", *base_flags(config, dovecot, smtp_server, model_server,
                                               tmp_path),
                           env=keyring_env(tmp_path), input="\n".join(answers) + "\n")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    refused = out.index("  IMAP login as agent@example.com on 127.0.0.1 was refused")
    logged_in = out.index("  IMAP login as agent@example.com on 127.0.0.1: ok")
    owner_question = out.index("Addresses you will send orders from")
    assert refused < logged_in < owner_question  # tried before the rest is asked
    assert "  SMTP login as agent@example.com on 127.0.0.1: ok" in out[:owner_question]
    assert "my-normal-password" not in out and PASSWORD not in out


def test_installed_init_stops_at_a_refused_login_and_writes_nothing(
        installed: Installed, tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    config = tmp_path / "mailagent.toml"
    result = installed.run("init", "--non-interactive", "--owner", "owner@example.com",
                           "--password-env", "TEST_AGENT_PASSWORD",
                           *base_flags(config, dovecot, smtp_server, model_server, tmp_path),
                           env=keyring_env(tmp_path, TEST_AGENT_PASSWORD="wrong"))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("mailagent: error: IMAP login as agent@example.com on 127.0.0.1 "
                           "was refused: check imap.username and the password (the password "
                           "from $TEST_AGENT_PASSWORD)")
    assert line.endswith("then run `mailagent init` again (nothing was written)")
    assert not config.exists() and not keyring_file(tmp_path).exists()


def test_installed_init_without_a_keyring_offers_environment_variables_before_any_secret(
        installed: Installed, tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    config = tmp_path / "mailagent.toml"
    env = keyring_env(tmp_path, backend="keyring.backends.fail.Keyring")
    flags = ["--owner", "owner@example.com", "--api-key-env", "TEST_MODEL_KEY",
             *base_flags(config, dovecot, smtp_server, model_server, tmp_path)]
    refused = installed.run("init", "--non-interactive", "--password-env",
                            "TEST_AGENT_PASSWORD", *flags, env=env)
    assert refused.returncode == 2
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("mailagent: error: no usable keyring on this machine: pass "
                           "--secret-in-env with --password-env VAR and --api-key-env VAR")
    assert not config.exists()

    answers = ["y", "TEST_AGENT_PASSWORD", "n"]  # environment route, its variable, no service
    result = installed.run("init", *flags, env=env, input="\n".join(answers) + "\n")
    assert result.returncode == 0, result.stdout + result.stderr
    offered = result.stdout.index("No usable keyring on this machine")
    assert offered < result.stdout.index("Password:")
    assert "Environment variable that will hold the mail password [MAILAGENT_PASSWORD]" \
        in result.stdout
    assert "  IMAP login as agent@example.com on 127.0.0.1: ok" in result.stdout
    data = tomllib.loads(config.read_text())
    assert data["imap"]["password_env"] == "TEST_AGENT_PASSWORD"
    assert data["model"]["api_key_env"] == "TEST_MODEL_KEY"
    assert "password" not in data["imap"] and "api_key" not in data["model"]


def test_installed_init_and_check_warn_that_the_keyring_is_a_plain_file(
        installed: Installed, tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    config = tmp_path / "mailagent.toml"
    env = keyring_env(tmp_path)
    result = installed.run("init", "--non-interactive", "--owner", "owner@example.com",
                           "--password-env", "TEST_AGENT_PASSWORD",
                           *base_flags(config, dovecot, smtp_server, model_server, tmp_path),
                           env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    warning = (f"keyring: {PLAINTEXT} keeps secrets UNENCRYPTED in {keyring_file(tmp_path)}")
    assert result.stdout.index(f"Warning: {warning}") < result.stdout.index("Password:")
    checked = installed.run("check", "--config", str(config), env=env)
    assert checked.returncode == 0, checked.stdout  # a warning does not fail check
    assert next(x for x in checked.stdout.splitlines() if "keyring:" in x).startswith(
        f"warning: {warning}")
    assert "ok: keyring:" not in checked.stdout


def test_installed_init_says_what_to_send_from_the_phone_and_how_to_start(
        installed: Installed, tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    config = tmp_path / "mailagent.toml"
    docs = tmp_path / "Reports"
    docs.mkdir()
    result = installed.run("init", "--non-interactive", "--owner", "me@example.com",
                           "--owner", "other@example.com", "--password-env",
                           "TEST_AGENT_PASSWORD",
                           *base_flags(config, dovecot, smtp_server, model_server, tmp_path),
                           "--policy-folder", str(docs), env=keyring_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    start = lines.index("Now send it a task, from your phone or any mail client:")
    assert lines[start + 1:start + 5] == [
        "  from:    me@example.com (or other@example.com)",
        "  to:      agent@example.com",
        "  subject: What is in Reports?",
        f"  body:    List the files in {docs} and tell me in two lines what they are about."]
    assert "mailagent checks its provider's Authentication-Results" in lines[start + 5]
    assert f"  mailagent run --config {config}" in lines
    assert f"  mailagent service install --config {config}" in lines


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_installed_init_waits_for_the_first_task_and_says_how_long_it_took(
        installed: Installed, tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    config, init_out, run_out = (tmp_path / "mailagent.toml", tmp_path / "init.out",
                                 tmp_path / "run.out")
    env = keyring_env(tmp_path)
    init = installed.popen("init", "--non-interactive", "--owner", "owner@example.com",
                           "--password-env", "TEST_AGENT_PASSWORD", "--wait-for-first-task",
                           "--wait-timeout-seconds", "120",
                           *base_flags(config, dovecot, smtp_server, model_server, tmp_path),
                           env=env, output=init_out)
    service: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: "No mailagent service is running" in read(init_out), 90,
                   "init to say no service runs")
        assert f"mailagent run --config {config}" in read(init_out)
        service = installed.popen("run", "--config", str(config), env=env, output=run_out)
        wait_until(lambda: "A mailagent service is running" in read(init_out), 60,
                   "init to see the service")
        wait_until(lambda: "IMAP connected" in read(run_out), 60, "the service to connect")
        mailed_at = time.monotonic()
        dovecot.append(owner_mail("Summarise the reports"))
        assert init.wait(90) == 0, read(init_out)
        waited = time.monotonic() - mailed_at
    finally:
        for process in (init, service):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(20)
    out = read(init_out)
    match = re.search(r"First task answered: #(\d+) 'Summarise the reports' took "
                      r"([\d.]+) seconds from its mail's arrival to the reply being sent\.", out)
    assert match, out
    assert 0 < float(match.group(2)) <= waited
    assert re.search(r"  task #\d+ 'Summarise the reports': (queued|running|done)", out), out
    assert any("Summarise the reports" in str(m.message()["Subject"])
               for m in smtp_server.messages), "the answer went out by SMTP"


def test_installed_init_stops_waiting_on_ctrl_c_or_after_the_timeout(
        installed: Installed, tmp_path: Path) -> None:
    flags = ["--non-interactive", "--no-check", "--provider", "generic", "--email",
             "agent@example.com", "--owner", "owner@example.com", "--password-env",
             "TEST_AGENT_PASSWORD", "--imap-host", "127.0.0.1", "--smtp-host", "127.0.0.1",
             "--policy-folder", "", "--api-key-env", "TEST_MODEL_KEY", "--data-dir",
             str(tmp_path / "data"), "--wait-for-first-task"]
    env = keyring_env(tmp_path)
    timed_out = installed.run("init", "--config", str(tmp_path / "a.toml"), *flags,
                              "--wait-timeout-seconds", "2", env=env)
    assert timed_out.returncode == 1
    assert "No task was answered within 2.0 seconds" in timed_out.stdout

    output = tmp_path / "init.out"
    init = installed.popen("init", "--config", str(tmp_path / "b.toml"), *flags, env=env,
                           output=output)
    wait_until(lambda: "still waiting" in read(output), 60, "init to wait")
    init.send_signal(signal.SIGINT)
    assert init.wait(20) == 0
    assert "Stopped waiting." in read(output)
    assert "Traceback" not in read(output)
