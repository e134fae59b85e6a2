"""XOAUTH2: access tokens refreshed before they expire from a loopback OAuth2 token endpoint,
presented to a real Dovecot (oauth2 passdb checking them by introspection) and to aiosmtpd
(an auth_XOAUTH2 handler); a revoked refresh token is one clear error; `mailagent init --oauth`
signs in by the device flow and the loopback redirect flow and keeps the refresh token in the
keyring."""

from __future__ import annotations

import asyncio
import stat
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from keyrings.alt.file import PlaintextKeyring

from mailagent.config import OAuthSettings, load_settings
from mailagent.errors import MailagentError
from mailagent.mail import oauth
from mailagent.mail.mailbox import Mailbox
from mailagent.mail.notify import check_smtp
from tests.support.model_server import ModelServer
from tests.support.oauth import CLIENT_ID, OAuthDovecot, OAuthServer, OAuthSmtpServer
from tests.support.setup_cli import keyring_env, keyring_get, run

AGENT = "agent@example.com"


@pytest.fixture
def oauth_server() -> Iterator[OAuthServer]:
    server = OAuthServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def oauth_dovecot(oauth_server: OAuthServer) -> Iterator[OAuthDovecot]:
    server = OAuthDovecot.start_with(oauth_server)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def oauth_smtp(oauth_server: OAuthServer) -> Iterator[OAuthSmtpServer]:
    server = OAuthSmtpServer.start_with(oauth_server)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def fresh_tokens() -> Iterator[None]:
    oauth.forget_tokens()
    yield
    oauth.forget_tokens()


def oauth_config(tmp_path: Path, token_url: str, imap_port: int, smtp_port: int,
                 model_url: str = "http://127.0.0.1:9") -> Path:
    (tmp_path / "policies").mkdir(exist_ok=True)
    path = tmp_path / "mailagent.toml"
    path.write_text(f"""
data_dir = "{tmp_path / 'data'}"

[imap]
host = "127.0.0.1"
port = {imap_port}
security = "none"
username = "{AGENT}"
timeout_seconds = 5

[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
username = "{AGENT}"
from = "Mail Agent <{AGENT}>"

[owner]
addresses = ["owner@example.com"]
verification = "dkim"

[model]
name = "claude-test-model"
base_url = "{model_url}"
api_key = "test"
max_retries = 0

[oauth]
token_url = "{token_url}"
client_id = "{CLIENT_ID}"
refresh_token_env = "TEST_REFRESH_TOKEN"
refresh_margin_seconds = 60
""", encoding="utf-8")
    return path


def log_in_to_both(config: Path) -> None:
    settings = load_settings(config, {"TEST_REFRESH_TOKEN": "refresh-1"})
    mailbox = Mailbox(settings.imap)
    mailbox.connect()
    mailbox.close()
    asyncio.run(check_smtp(settings.smtp))


def test_access_token_is_refreshed_before_expiry_and_the_new_one_logs_in(
        tmp_path: Path, oauth_server: OAuthServer, oauth_dovecot: OAuthDovecot,
        oauth_smtp: OAuthSmtpServer) -> None:
    oauth_server.add_refresh_token("refresh-1")
    oauth_server.state.expires_in = 63  # 3 s before the 60 s refresh margin is reached
    config = oauth_config(tmp_path, oauth_server.token_url, oauth_dovecot.imap_port,
                          oauth_smtp.port)

    log_in_to_both(config)
    assert oauth_server.state.grants == ["refresh_token"]  # one refresh serves both logins
    assert oauth_server.state.introspected == ["access-1"]  # Dovecot checked it
    assert oauth_smtp.xoauth2.tokens == ["access-1"]

    log_in_to_both(config)
    assert oauth_server.state.grants == ["refresh_token"]  # still fresh: no new refresh

    time.sleep(3.5)  # now within the margin, though the token has not expired yet
    assert oauth_server.is_valid_access("access-1", AGENT)
    log_in_to_both(config)
    assert oauth_server.state.grants == ["refresh_token", "refresh_token"]
    assert oauth_server.state.introspected[-1] == "access-2"
    assert oauth_smtp.xoauth2.tokens[-1] == "access-2"


def test_a_refused_access_token_is_a_login_error_naming_init(
        tmp_path: Path, oauth_server: OAuthServer, oauth_dovecot: OAuthDovecot) -> None:
    """Dovecot really checks the token: one that introspection calls inactive is refused."""
    oauth_server.add_refresh_token("refresh-1")
    oauth_server.state.expires_in = -1  # every access token it issues is already dead
    config = oauth_config(tmp_path, oauth_server.token_url, oauth_dovecot.imap_port, 1)
    settings = load_settings(config, {"TEST_REFRESH_TOKEN": "refresh-1"})
    with pytest.raises(MailagentError) as caught:
        Mailbox(settings.imap).connect()
    assert "XOAUTH2 login as agent@example.com on 127.0.0.1 was refused" in str(caught.value)
    assert "mailagent init --oauth" in str(caught.value)
    assert oauth_server.state.introspected == ["access-1"]


def test_a_revoked_refresh_token_makes_check_say_run_init_again(
        tmp_path: Path, oauth_server: OAuthServer, oauth_dovecot: OAuthDovecot,
        oauth_smtp: OAuthSmtpServer, model_server: ModelServer) -> None:
    oauth_server.add_refresh_token("refresh-1")
    oauth_server.revoke("refresh-1")
    config = oauth_config(tmp_path, oauth_server.token_url, oauth_dovecot.imap_port,
                          oauth_smtp.port, model_server.base_url)
    env = keyring_env(tmp_path, TEST_REFRESH_TOKEN="refresh-1")
    result = run(env, "check", "--config", str(config))
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    expected = (f"the OAuth refresh token for {AGENT} was refused by {oauth_server.token_url} "
                "(invalid_grant: Token has been expired or revoked.): it was revoked or has "
                "expired; run `mailagent init --oauth` again to sign in anew")
    assert errors[0] == f"error: {expected}"
    assert any(line.startswith("hint: sign in again with `mailagent init --oauth")
               for line in result.stdout.splitlines())
    assert "Traceback" not in result.stderr
    assert oauth_server.state.introspected == []  # no token ever reached Dovecot


def test_init_oauth_device_flow_keeps_the_refresh_token_in_the_keyring(
        tmp_path: Path, oauth_server: OAuthServer, oauth_dovecot: OAuthDovecot,
        oauth_smtp: OAuthSmtpServer, model_server: ModelServer) -> None:
    env = keyring_env(tmp_path)
    config = tmp_path / "mailagent.toml"
    result = run(env, "init", "--non-interactive", "--oauth", "--config", str(config),
                 "--provider", "outlook", "--email", AGENT, "--owner", "owner@example.com",
                 "--client-id", CLIENT_ID, "--token-url", oauth_server.token_url,
                 "--device-url", f"{oauth_server.base_url}/devicecode",
                 "--imap-host", "127.0.0.1", "--imap-port", str(oauth_dovecot.imap_port),
                 "--imap-security", "none", "--smtp-host", "127.0.0.1",
                 "--smtp-port", str(oauth_smtp.port), "--smtp-security", "none",
                 "--data-dir", str(tmp_path / "data"), "--policy-folder", "",
                 "--model", "claude-test-model", "--model-base-url", model_server.base_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "enter the code WDJB-MJHT" in result.stdout
    assert f"ok: OAuth2: access token from {oauth_server.token_url}" in result.stdout
    assert "ok: IMAP login as agent@example.com" in result.stdout
    data = tomllib.loads(config.read_text())
    assert data["oauth"]["refresh_token"] == f"keyring:mailagent-oauth/{AGENT}"
    assert "password" not in data["imap"] and "password" not in data["smtp"]
    stored = keyring_get(env, "mailagent-oauth", AGENT)
    assert stored.startswith("refresh-") and stored not in config.read_text()
    assert oauth_smtp.xoauth2.tokens  # SMTP took an access token from the new grant
    assert oauth_server.state.grants[:2] == [
        "urn:ietf:params:oauth:grant-type:device_code"] * 2  # pending, then granted


def test_init_oauth_loopback_flow_with_pkce(tmp_path: Path, oauth_server: OAuthServer) -> None:
    """Google's flow: the browser (here a script named by $BROWSER) follows the consent page's
    redirect to mailagent's loopback listener, which trades the code for tokens."""
    browser = tmp_path / "browser"
    browser.write_text(f"#!{sys.executable}\nimport sys, urllib.request\n"
                       "urllib.request.urlopen(sys.argv[1], timeout=30).read()\n")
    browser.chmod(browser.stat().st_mode | stat.S_IXUSR)
    env = keyring_env(tmp_path, BROWSER=str(browser))
    config = tmp_path / "mailagent.toml"
    result = run(env, "init", "--non-interactive", "--oauth", "--no-check", "--config",
                 str(config), "--provider", "gmail", "--email", "me@gmail.com", "--owner",
                 "me@example.org", "--client-id", CLIENT_ID, "--token-url",
                 oauth_server.token_url, "--auth-url", f"{oauth_server.base_url}/authorize",
                 "--policy-folder", "")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Open this page to let mailagent use your mailbox" in result.stdout
    assert "code_challenge_method=S256" in result.stdout
    assert oauth_server.state.grants == ["authorization_code"]
    data = tomllib.loads(config.read_text())
    assert data["imap"]["host"] == "imap.gmail.com"
    assert data["oauth"]["scope"] == "https://mail.google.com/"
    assert keyring_get(env, "mailagent-oauth", "me@gmail.com").startswith("refresh-")


def test_a_rotated_refresh_token_is_written_back_to_its_keyring_entry(
        tmp_path: Path, oauth_server: OAuthServer) -> None:
    backend = PlaintextKeyring()
    backend.file_path = str(tmp_path / "keyring.cfg")
    previous = keyring.get_keyring()
    keyring.set_keyring(backend)
    try:
        keyring.set_password("mailagent-oauth", AGENT, "refresh-1")
        oauth_server.add_refresh_token("refresh-1")
        oauth_server.state.rotate = True  # each refresh retires the token it was given
        settings = OAuthSettings(token_url=oauth_server.token_url, client_id=CLIENT_ID,
                                 refresh_token="refresh-1",
                                 refresh_token_ref=f"keyring:mailagent-oauth/{AGENT}",
                                 refresh_margin_seconds=10_000)  # refresh at every login
        first = oauth.access_token(settings, AGENT)
        rotated = keyring.get_password("mailagent-oauth", AGENT)
        second = oauth.access_token(settings, AGENT)  # refresh-1 is dead: needs the new one
        assert (first, second) == ("access-1", "access-2")
        assert rotated is not None and rotated != "refresh-1"
        assert keyring.get_password("mailagent-oauth", AGENT) in oauth_server.state.refresh_tokens
    finally:
        keyring.set_keyring(previous)
