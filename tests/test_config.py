"""Config: parsed once into frozen settings; every error names the file, the key and the fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import mailagent
from mailagent.config import find_config_path, load_settings
from mailagent.errors import ConfigError
from tests.support.config import write_config

ENV = {"TEST_IMAP_PASSWORD": "s3cret"}


def test_a_full_config_becomes_frozen_settings(tmp_path: Path) -> None:
    path = write_config(tmp_path, 1143, 1025)
    settings = load_settings(path, ENV)
    assert settings.imap.password == "s3cret"
    assert settings.imap.port == 1143 and settings.imap.security == "none"
    assert settings.smtp.from_address == "Mail Agent <agent@example.com>"
    assert settings.owner.trusted_authserv_ids == ("mx.example.com",)
    assert settings.data_dir == tmp_path / "data"
    assert settings.policies_dir == tmp_path / "policies"
    assert settings.database_url == f"sqlite:///{tmp_path / 'data' / 'mailagent.db'}"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.imap.host = "elsewhere"  # type: ignore[misc]


def edit(path: Path, old: str, new: str) -> Path:
    path.write_text(path.read_text().replace(old, new))
    return path


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('host = "127.0.0.1"\nport = 1143', "port = 1143", "imap.host is missing in"),
        ('security = "none"\nusername = "agent', 'security = "tls"\nusername = "agent',
         "imap.security is 'tls' in"),
        ("port = 1143", 'port = "1143"', "imap.port must be a int"),
        ('password_env = "TEST_IMAP_PASSWORD"', 'password_env = "NOT_SET_ANYWHERE"',
         "names the environment variable NOT_SET_ANYWHERE, which is not set"),
        ('trusted_authserv_ids = ["mx.example.com"]', "trusted_authserv_ids = []",
         "owner.trusted_authserv_ids is empty"),
        ("[owner]", "[owners]", "owner section is missing"),
        ("idle_renew_seconds = 30", "idle_renew_seconds = 0", "must be greater than zero"),
    ],
)
def test_errors_name_the_file_the_key_and_the_fix(tmp_path: Path, old: str, new: str,
                                                  message: str) -> None:
    path = edit(write_config(tmp_path, 1143, 1025), old, new)
    with pytest.raises(ConfigError) as error:
        load_settings(path, ENV)
    assert message in str(error.value)
    assert str(path) in str(error.value)
    assert "s3cret" not in str(error.value)


def test_broken_toml_and_missing_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no config file at"):
        load_settings(tmp_path / "absent.toml", ENV)
    bad = tmp_path / "bad.toml"
    bad.write_text("[imap\nhost=")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(bad, ENV)


def test_inline_secrets_and_base_url_from_the_environment(tmp_path: Path) -> None:
    path = edit(write_config(tmp_path, 1143, 1025), 'password_env = "TEST_IMAP_PASSWORD"',
                'password = "inline"')
    path = edit(edit(path, 'base_url = "http://127.0.0.1:9"', ""), 'api_key = "test"', "")
    settings = load_settings(path, {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
                                    "ANTHROPIC_API_KEY": "k"})
    assert settings.imap.password == "inline"
    assert settings.model.base_url == "http://127.0.0.1:9"
    assert settings.model.api_key == "k"


def test_config_path_comes_from_the_flag_then_the_environment(tmp_path: Path) -> None:
    assert find_config_path("x.toml", {"MAILAGENT_CONFIG": "y.toml"}) == Path("x.toml")
    assert find_config_path(None, {"MAILAGENT_CONFIG": "y.toml"}) == Path("y.toml")
    assert find_config_path(None, {}).name == "mailagent.toml"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('security = "none"\nusername = "agent', 'securty = "none"\nusername = "agent',
         "imap.securty: unknown key in {path}; did you mean imap.security?"),
        ('password_env = "TEST_IMAP_PASSWORD"',
         'password_env = "TEST_IMAP_PASSWORD"\npasword_env = "X"',
         "imap.pasword_env: unknown key in {path}; did you mean imap.password_env?"),
        ('from = "Mail', 'form = "x"\nfrom = "Mail',
         "smtp.form: unknown key in {path}; did you mean smtp.from?"),
        ("[owner]", "[canary]\ninterval_minute = 5\n\n[owner]",
         "canary.interval_minute: unknown key in {path}; did you mean canary.interval_minutes?"),
        ("[owner]", "[smpt]\nhost = \"x\"\n\n[owner]",
         "smpt: unknown table in {path}; did you mean smtp?"),
        ("[owner]", "[imap.tls]\nverify = false\n\n[owner]",
         "imap.tls: unknown table in {path}: remove it or fix its name; [imap] knows ca_file,"),
        ('data_dir = "', 'providr = "gmail"\ndata_dir = "',
         "providr: unknown key in {path}; did you mean provider?"),
        ('data_dir = "', 'polices_dir = "p"\ndata_dir = "',
         "polices_dir: unknown key in {path}; did you mean policies_dir?"),
        ("[owner]", '[oauth]\ntoken_url = "http://127.0.0.1:9/t"\nclient_id = "c"\n'
         'refresh_token = "r"\nclient_secret_evn = "S"\n\n[owner]',
         "oauth.client_secret_evn: unknown key in {path}; did you mean oauth.client_secret_env?"),
    ],
)
def test_an_unknown_key_is_an_error_naming_the_nearest_known_key(
        tmp_path: Path, old: str, new: str, message: str) -> None:
    path = edit(write_config(tmp_path, 1143, 1025), old, new)
    with pytest.raises(ConfigError) as error:
        load_settings(path, ENV)
    assert str(error.value).startswith(message.format(path=path))


def test_every_key_the_loader_reads_is_known(tmp_path: Path) -> None:
    optional = ('provider = "fastmail"\n'
                '[oauth]\ntoken_url = "http://127.0.0.1:9/t"\nclient_id = "c"\n'
                'refresh_token_env = "TEST_IMAP_PASSWORD"\nclient_secret = "s"\nscope = "x"\n'
                "refresh_margin_seconds = 60\ntimeout_seconds = 5\n"
                "[limits]\nmax_mails_per_hour = 5\n[agent]\nmax_turns = 3\n"
                '[schedules]\ncatch_up = "skip"\nfile = "s.toml"\n[service]\nkeep_awake = false\n'
                '[canary]\ninterval_minutes = 0\naddress = "agent@example.com"\n')
    path = write_config(tmp_path, 1143, 1025, extra=optional, imap_extra='ca_file = "ca.pem"',
                        model_extra="stream = true\ncompaction = \"client\"")
    settings = load_settings(path, ENV)
    assert settings.provider == "fastmail" and settings.imap.oauth is not None
    assert settings.schedules.catch_up == "skip" and settings.canary.interval_minutes == 0


def test_the_shipped_example_config_loads(tmp_path: Path) -> None:
    example = Path(mailagent.__file__).parent / "examples" / "mailagent.toml"
    path = tmp_path / "mailagent.toml"
    path.write_text(example.read_text(encoding="utf-8"), encoding="utf-8")
    settings = load_settings(path, {"MAILAGENT_IMAP_PASSWORD": "a", "MAILAGENT_SMTP_PASSWORD": "b"})
    assert settings.imap.host == "imap.example.com"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("owner@example.com, other@example.com", "holds 2 mailboxes, not one"),
        ("owner", "is not a well-formed address"),
        ("owner@example", "is not a plain address"),
    ],
)
def test_an_owner_address_that_is_not_one_address_is_an_error(tmp_path: Path, value: str,
                                                              why: str) -> None:
    path = edit(write_config(tmp_path, 1143, 1025), '["owner@example.com"]', f'["{value}"]')
    with pytest.raises(ConfigError) as error:
        load_settings(path, ENV)
    assert f"owner.addresses holds {value!r}, which {why}" in str(error.value)
    assert str(path) in str(error.value)


def test_an_owner_address_with_a_name_is_the_address_alone(tmp_path: Path) -> None:
    path = edit(write_config(tmp_path, 1143, 1025), '["owner@example.com"]',
                '["Owner <Owner@Example.com>"]')
    assert load_settings(path, ENV).owner.addresses == ("owner@example.com",)
def test_server_compaction_under_the_api_minimum_is_refused_in_one_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, 1143, 1025,
                        model_extra='compaction = "server"\nmax_context_tokens = 50000')
    with pytest.raises(ConfigError) as error:
        load_settings(path, ENV)
    message = str(error.value)
    assert 'model.compaction = "server" needs model.max_context_tokens of at least 55556' \
        in message and str(path) in message and "\n" not in message
    big = write_config(tmp_path, 1143, 1025,
                       model_extra='compaction = "server"\nmax_context_tokens = 200000')
    assert load_settings(big, ENV).model.compaction == "server"
