"""What `mailagent init` writes: the config file, a starter policy, and secrets in the keyring.

In: the wizard's `Answers`. Out: `mailagent.toml` (mode 0600) and `policies/<name>.toml` beside
it; the password, the model's API key or the OAuth refresh token stored in the keyring and
named in the config by a `keyring:` reference; the example skills in a new skills folder. It
never writes a secret into the config unless the owner asked for it
(`--store-secret-in-config`), and never overwrites an existing config without `--force`.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path

from mailagent import keystore
from mailagent.errors import ConfigError


@dataclass
class OAuthAnswers:
    client_id: str
    token_url: str
    scope: str
    refresh_token: str = ""
    client_secret: str | None = None


@dataclass
class Answers:
    config_path: Path
    provider: str
    email: str
    username: str
    imap_host: str
    imap_port: int
    imap_security: str
    smtp_host: str
    smtp_port: int
    smtp_security: str
    owners: list[str]
    verification: str
    authserv_ids: list[str] = field(default_factory=list)
    folder: str = "INBOX"
    secret_mode: str = "keyring"
    password: str = ""
    password_env: str = ""
    oauth: OAuthAnswers | None = None
    policy_folder: str = ""
    policy_access: str = "read"
    data_dir: str = ""
    model_name: str = ""
    model_base_url: str = ""
    api_key_env: str = "ANTHROPIC_API_KEY"
    api_key: str = ""  # the model's key, kept as the password is (secret_mode)


def toml_str(value: str) -> str:
    """A TOML basic string: JSON's escapes are all valid TOML escapes."""
    return json.dumps(value, ensure_ascii=False)


def _secret_lines(answers: Answers) -> list[str]:
    """How [imap] and [smtp] name the password: a keyring reference, a variable, or inline."""
    if answers.oauth is not None:
        return []
    if answers.secret_mode == "env":
        return [f"password_env = {toml_str(answers.password_env)}"]
    if answers.secret_mode == "config":
        return [f"password = {toml_str(answers.password)}"]
    ref = keystore.store_secret(keystore.SERVICE, answers.username, answers.password)
    return [f"password = {toml_str(ref)}"]


def _model_key_lines(answers: Answers) -> list[str]:
    """How [model] names the API key: a variable, inline, a keyring reference, or not at all
    (a local endpoint that needs none)."""
    if answers.secret_mode == "env":
        return [f"api_key_env = {toml_str(answers.api_key_env)}"]
    if not answers.api_key:
        return []
    if answers.secret_mode == "config":
        return [f"api_key = {toml_str(answers.api_key)}"]
    ref = keystore.store_secret(keystore.MODEL_SERVICE, answers.username, answers.api_key)
    return [f"api_key = {toml_str(ref)}"]


def _oauth_lines(answers: Answers) -> list[str]:
    o = answers.oauth
    if o is None:
        return []
    if answers.secret_mode == "config":
        token = o.refresh_token
    else:
        token = keystore.store_secret(keystore.OAUTH_SERVICE, answers.username, o.refresh_token)
    lines = ["", "[oauth]", f"token_url = {toml_str(o.token_url)}",
             f"client_id = {toml_str(o.client_id)}", f"scope = {toml_str(o.scope)}",
             f"refresh_token = {toml_str(token)}"]
    if o.client_secret:
        secret = o.client_secret if answers.secret_mode == "config" else keystore.store_secret(
            keystore.OAUTH_SERVICE + "-client", o.client_id, o.client_secret)
        lines.append(f"client_secret = {toml_str(secret)}")
    return lines


def render_config(answers: Answers) -> str:
    """The config text; stores the secrets it refers to in the keyring on the way."""
    a = answers
    secret = _secret_lines(a)
    head = ["# Written by `mailagent init`; every key is explained in README.md.",
            f"provider = {toml_str(a.provider)}"]
    if a.data_dir:
        head.append(f"data_dir = {toml_str(a.data_dir)}")
    sections = [
        "", "[imap]", f"host = {toml_str(a.imap_host)}", f"port = {a.imap_port}",
        f"security = {toml_str(a.imap_security)}", f"username = {toml_str(a.username)}",
        *secret, f"folder = {toml_str(a.folder)}",
        "", "[smtp]", f"host = {toml_str(a.smtp_host)}", f"port = {a.smtp_port}",
        f"security = {toml_str(a.smtp_security)}", f"username = {toml_str(a.username)}",
        *secret, f"from = {toml_str(f'Mail Agent <{a.email}>')}",
        "", "[owner]", f"addresses = {json.dumps(a.owners)}",
        f"verification = {toml_str(a.verification)}",
    ]
    if a.authserv_ids:
        sections.append(f"trusted_authserv_ids = {json.dumps(a.authserv_ids)}")
    sections += ["", "[model]", *_model_key_lines(a)]
    if a.model_name:
        sections.append(f"name = {toml_str(a.model_name)}")
    if a.model_base_url:
        sections.append(f"base_url = {toml_str(a.model_base_url)}")
    return "\n".join([*head, *sections, *_oauth_lines(a)]) + "\n"


def render_policy(folder: str, access: str) -> str:
    """A starter policy for one folder: read-only unless the owner chose write."""
    if access == "write":
        rules = 'access = "write"\ndelete = "ask"\noverwrite = "ask"\n'
        what = "read and change files in this folder; deleting or replacing one needs your " \
               "approval by mail"
    else:
        rules = 'access = "read"\ndelete = "never"\n'
        what = "read (never change) this folder"
    return (f"# Written by `mailagent init`: the agent may {what}.\n"
            "# Every key: `mailagent example policy`.\n\n"
            f"[[folders]]\npath = {toml_str(folder)}\n{rules}")


def policy_file_name(folder: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(folder).name).strip("-").lower()
    return f"{stem or 'folder'}.toml"


def check_writable(path: Path, force: bool) -> None:
    """Refuse before anything is asked or stored if the config exists and --force is absent."""
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists: keep it, choose another --config, or pass "
                          "--force to replace it")


def write_files(answers: Answers) -> list[Path]:
    """Write the config (0600) and the starter policy; return what was written."""
    path = answers.config_path
    text = render_config(answers)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(path, 0o600)
    written = [path]
    if answers.policy_folder:
        policies = path.parent / "policies"
        policies.mkdir(exist_ok=True)
        policy = policies / policy_file_name(answers.policy_folder)
        policy.write_text(render_policy(answers.policy_folder, answers.policy_access),
                          encoding="utf-8")
        written.append(policy)
    return written


EXAMPLE_SKILLS = ("expenses",)


def copy_example_skills(skills_dir: Path) -> list[Path]:
    """The example skills (mailagent/examples/skills/) copied into a new skills folder. Only
    into one that does not exist yet, so nothing of the owner's is ever replaced; none is
    allowed until a policy file names it in `skills = [...]`."""
    if os.path.lexists(skills_dir):
        return []
    shipped = importlib.resources.files("mailagent").joinpath("examples", "skills")
    copied = []
    for name in EXAMPLE_SKILLS:
        _copy_tree(shipped.joinpath(name), skills_dir / name)
        copied.append(skills_dir / name)
    return copied


def _copy_tree(source: Traversable, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_dir():
            if item.name != "__pycache__":
                _copy_tree(item, target / item.name)
        else:
            (target / item.name).write_bytes(item.read_bytes())
