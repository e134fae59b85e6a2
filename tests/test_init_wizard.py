"""`mailagent init` as a newcomer runs it: by flags for every provider preset, and by answers
typed on stdin; each run writes a config that `check` accepts against real servers, with the
password in the keyring (a file-backed keyring, chosen through keyring's own environment
variable) and never in clear in the config."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from mailagent.providers import PROVIDERS
from tests.support.config import write_config
from tests.support.dovecot import Dovecot
from tests.support.model_server import ModelServer
from tests.support.setup_cli import PASSWORD, fake_home, keyring_env, keyring_get, run
from tests.support.smtp import SmtpServer


def server_flags(dovecot: Dovecot, smtp: SmtpServer, model: ModelServer, tmp_path: Path
                 ) -> list[str]:
    """The preset's hosts pointed at the loopback test servers."""
    return ["--imap-host", "127.0.0.1", "--imap-port", str(dovecot.imap_port),
            "--imap-security", "none", "--smtp-host", "127.0.0.1", "--smtp-port",
            str(smtp.port), "--smtp-security", "none", "--data-dir", str(tmp_path / "data"),
            "--model", "claude-test-model", "--model-base-url", model.base_url]


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_init_by_flags_writes_a_config_that_check_accepts_for_every_preset(
        provider: str, tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    env = keyring_env(tmp_path)
    config = tmp_path / "conf" / "mailagent.toml"
    docs = tmp_path / "Documents"
    docs.mkdir()
    result = run(env, "init", "--non-interactive", "--config", str(config),
                 "--provider", provider, "--email", "agent@example.com",
                 "--owner", "Owner@Example.com", "--password-env", "TEST_AGENT_PASSWORD",
                 "--policy-folder", str(docs),
                 *server_flags(dovecot, smtp_server, model_server, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: IMAP login as agent@example.com on 127.0.0.1" in result.stdout
    assert "ok: SMTP 127.0.0.1" in result.stdout
    assert "ok: policies in" in result.stdout and "1 folder rule(s)" in result.stdout
    assert "mailagent service install --config" in result.stdout

    text = config.read_text()
    assert PASSWORD not in text
    assert config.stat().st_mode & 0o077 == 0
    data = tomllib.loads(text)
    assert data["imap"]["password"] == "keyring:mailagent/agent@example.com"
    assert data["smtp"]["password"] == "keyring:mailagent/agent@example.com"
    assert keyring_get(env, "mailagent", "agent@example.com") == PASSWORD
    preset = PROVIDERS[provider]
    assert data["owner"]["addresses"] == ["owner@example.com"]
    assert data["owner"]["verification"] == preset.verification
    assert data["owner"].get("trusted_authserv_ids", []) == list(preset.authserv_ids)
    policy = tomllib.loads((config.parent / "policies" / "documents.toml").read_text())
    assert policy["folders"] == [{"path": str(docs), "access": "read", "delete": "never"}]


def test_init_presets_fill_the_provider_servers(tmp_path: Path) -> None:
    """Without overrides, a preset's hosts, ports and security land in the config."""
    env = keyring_env(tmp_path)
    config = tmp_path / "mailagent.toml"
    result = run(env, "init", "--non-interactive", "--config", str(config), "--provider",
                 "outlook", "--email", "me@outlook.com", "--owner", "me@example.org",
                 "--password-env", "TEST_AGENT_PASSWORD", "--policy-folder", "", "--no-check")
    data = tomllib.loads(config.read_text())
    assert (data["imap"]["host"], data["imap"]["port"], data["imap"]["security"]) == \
        ("outlook.office365.com", 993, "ssl")
    assert (data["smtp"]["host"], data["smtp"]["port"], data["smtp"]["security"]) == \
        ("smtp.office365.com", 587, "starttls")
    assert data["owner"]["verification"] == "dkim"
    assert "Password: Microsoft accounts with two-step verification need an app password " \
           "from https://account.live.com/proofs/AppPassword" in result.stdout
    assert list((tmp_path / "policies").iterdir()) == []  # no rule: every file is denied


def test_init_asks_its_questions_on_stdin(tmp_path: Path, dovecot: Dovecot,
                                          smtp_server: SmtpServer,
                                          model_server: ModelServer) -> None:
    env = keyring_env(tmp_path)
    config = tmp_path / "mailagent.toml"
    projects = tmp_path / "Projects"
    projects.mkdir()
    answers = [
        "agent@example.com",  # the agent's address
        "fastmail",  # provider (example.com suggests "generic")
        "y",  # change the preset's servers
        "127.0.0.1", str(dovecot.imap_port), "none",
        "127.0.0.1", str(smtp_server.port), "none",
        "",  # login name: the address
        PASSWORD,  # the password, read without echo
        "owner@example.com, Other@Example.com",
        "authentication-results",  # instead of the suggested dkim
        "mx.example.com",
        str(projects), "write",
        "n",  # the local model endpoint needs no API key
        "n",  # install the service now? not here
    ]
    result = run(env, "init", "--config", str(config), "--data-dir", str(tmp_path / "data"),
                 "--model", "claude-test-model", "--model-base-url", model_server.base_url,
                 stdin="\n".join(answers) + "\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Provider: Fastmail" in result.stdout
    assert "Servers: IMAP imap.fastmail.com:993 (ssl)" in result.stdout
    assert "Manage app passwords" in result.stdout
    assert "Install mailagent as a service of this computer now?" in result.stdout
    assert "mailagent service install --config" in result.stdout  # declined: the command shown
    assert "ok: IMAP login as agent@example.com on 127.0.0.1" in result.stdout
    assert result.stdout.index("  IMAP login as agent@example.com on 127.0.0.1: ok") < \
        result.stdout.index("Addresses you will send orders from")
    assert PASSWORD not in result.stdout + result.stderr
    text = config.read_text()
    assert PASSWORD not in text
    data = tomllib.loads(text)
    assert data["imap"]["port"] == dovecot.imap_port
    assert data["owner"] == {"addresses": ["owner@example.com", "other@example.com"],
                             "verification": "authentication-results",
                             "trusted_authserv_ids": ["mx.example.com"]}
    assert keyring_get(env, "mailagent", "agent@example.com") == PASSWORD
    policy = tomllib.loads((tmp_path / "policies" / "projects.toml").read_text())
    assert policy["folders"] == [{"path": str(projects), "access": "write", "delete": "ask",
                                  "overwrite": "ask"}]


def test_init_keeps_the_password_in_an_environment_variable_when_asked(
        tmp_path: Path) -> None:
    env = keyring_env(tmp_path)
    config = tmp_path / "mailagent.toml"
    run(env, "init", "--non-interactive", "--config", str(config), "--provider", "yahoo",
        "--email", "me@yahoo.com", "--owner", "me@example.org", "--secret-in-env",
        "--password-env", "TEST_AGENT_PASSWORD", "--policy-folder", "", "--no-check")
    data = tomllib.loads(config.read_text())
    assert data["imap"]["password_env"] == "TEST_AGENT_PASSWORD"
    assert "password" not in data["imap"]
    assert keyring_get(env, "mailagent", "me@yahoo.com") == ""


def test_init_writes_the_secret_in_clear_only_when_explicitly_asked(tmp_path: Path) -> None:
    env = keyring_env(tmp_path)
    config = tmp_path / "mailagent.toml"
    run(env, "init", "--non-interactive", "--config", str(config), "--provider", "icloud",
        "--email", "me@icloud.com", "--owner", "me@example.org", "--store-secret-in-config",
        "--password-env", "TEST_AGENT_PASSWORD", "--policy-folder", "", "--no-check")
    assert tomllib.loads(config.read_text())["imap"]["password"] == PASSWORD
    assert config.stat().st_mode & 0o077 == 0


def test_init_refuses_to_replace_a_config_and_a_missing_answer_writes_nothing(
        tmp_path: Path) -> None:
    env = keyring_env(tmp_path)
    config = tmp_path / "mailagent.toml"
    config.write_text("# mine\n")
    replaced = run(env, "init", "--non-interactive", "--config", str(config))
    assert replaced.returncode == 2
    assert f"{config} already exists" in replaced.stderr and "--force" in replaced.stderr
    assert config.read_text() == "# mine\n"

    other = tmp_path / "other.toml"
    missing = run(env, "init", "--non-interactive", "--config", str(other), "--provider",
                  "gmail", "--email", "me@gmail.com", "--password-env", "TEST_AGENT_PASSWORD")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "mailagent: error: mailagent init --non-interactive needs --owner: Addresses you will "
        "send orders from (comma-separated)"]
    assert not other.exists()
    assert keyring_get(env, "mailagent", "me@gmail.com") == ""


def test_check_names_the_providers_app_password_page_when_login_fails(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    env = keyring_env(tmp_path, TEST_AGENT_PASSWORD="my-normal-password",
                      HOME=str(tmp_path / "home"))
    config = tmp_path / "mailagent.toml"
    written = run(env, "init", "--non-interactive", "--no-check", "--config", str(config),
                  "--provider", "gmail", "--email", "agent@example.com", "--owner",
                  "owner@example.com", "--password-env", "TEST_AGENT_PASSWORD",
                  "--policy-folder", "", *server_flags(dovecot, smtp_server, model_server,
                                                       tmp_path))
    assert written.returncode == 0, written.stderr
    result = run(env, "check", "--config", str(config))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    refused = lines.index("error: IMAP login as agent@example.com on 127.0.0.1 was refused: "
                          "check imap.username and the password")
    assert lines[refused + 1].startswith("hint: Gmail refuses your normal password here")
    assert "https://myaccount.google.com/apppasswords" in lines[refused + 1]
    assert lines[refused + 2].startswith("hint: IMAP may be switched off: Gmail settings")
    assert "warning: keyring: keyrings.alt.file.PlaintextKeyring keeps secrets UNENCRYPTED " \
        f"in {tmp_path / 'keyring'}" in result.stdout
    assert "ok: service: not installed (to run in the background: `mailagent service " \
           "install`)" in result.stdout or "/etc/systemd/system/" in result.stdout


def test_check_says_where_the_service_unit_is(tmp_path: Path) -> None:
    home = tmp_path / "home"
    unit = home / ".config" / "systemd" / "user" / "mailagent.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=mailagent run\n")
    config = write_config(tmp_path, 1, 1)
    result = run(keyring_env(tmp_path, HOME=str(home), TEST_IMAP_PASSWORD="x"), "check",
                 "--config", str(config))
    [line] = [x for x in result.stdout.splitlines() if x.startswith("ok: service:")]
    assert line.startswith(f"ok: service: unit installed: {unit} (written 20")


def test_init_installs_the_service_once_check_passes(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    home_env, systemctl_log = fake_home(tmp_path)
    env = keyring_env(tmp_path, **{k: home_env[k] for k in ("HOME", "XDG_CONFIG_HOME", "PATH")})
    config = tmp_path / "mailagent.toml"
    result = run(env, "init", "--non-interactive", "--install-service", "--config", str(config),
                 "--provider", "generic", "--email", "agent@example.com",
                 "--owner", "owner@example.com", "--password-env", "TEST_AGENT_PASSWORD",
                 *server_flags(dovecot, smtp_server, model_server, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    unit = tmp_path / "xdg" / "systemd" / "user" / "mailagent.service"
    assert f"wrote {unit}" in result.stdout
    exec_start = next(line for line in unit.read_text().splitlines()
                      if line.startswith("ExecStart="))
    assert '"-m" "mailagent" "run" "--config"' in exec_start and str(config) in exec_start
    assert "--user enable --now mailagent.service" in systemctl_log.read_text()


def test_init_does_not_install_a_service_whose_check_failed(tmp_path: Path) -> None:
    home_env, systemctl_log = fake_home(tmp_path)
    env = keyring_env(tmp_path, **{k: home_env[k] for k in ("HOME", "XDG_CONFIG_HOME", "PATH")})
    result = run(env, "init", "--non-interactive", "--install-service",
                 "--config", str(tmp_path / "mailagent.toml"), "--provider", "generic",
                 "--email", "agent@example.com", "--owner", "owner@example.com",
                 "--password-env", "TEST_AGENT_PASSWORD", "--imap-host", "127.0.0.1",
                 "--imap-port", "1", "--imap-security", "none", "--smtp-host", "127.0.0.1",
                 "--smtp-port", "1", "--smtp-security", "none",
                 "--data-dir", str(tmp_path / "data"), "--model-base-url", "http://127.0.0.1:1")
    assert result.returncode == 1
    assert "error: cannot reach IMAP server 127.0.0.1:1" in result.stdout
    assert not (tmp_path / "xdg" / "systemd").exists()
    assert not systemctl_log.exists()
