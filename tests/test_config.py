"""Config: parsed once into frozen settings; every error names the file, the key and the fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

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
