"""Secrets in the operating system's keyring: the only importer of `keyring`.

In: a reference written in the config as `keyring:SERVICE/USER` (for instance
`keyring:mailagent/agent@example.com`). Out: the secret, or a `SecretStoreError` saying what is
missing and how to put it back. Writes only when `mailagent init` stores a password, the model's
API key or an OAuth refresh token, or when a provider hands out a new refresh token. It must never
log or print a secret, and never fall back to a file of its own: which backend holds the secrets
is keyring's choice (and the owner's, through keyring's own configuration); it can say when that
backend keeps them unencrypted in a file.
"""

from __future__ import annotations

import keyring
import keyring.backends.fail
from keyring.errors import KeyringError

from mailagent.errors import SecretStoreError

PREFIX = "keyring:"
SERVICE = "mailagent"
OAUTH_SERVICE = "mailagent-oauth"
MODEL_SERVICE = "mailagent-model"


def is_reference(value: str) -> bool:
    return value.startswith(PREFIX)


def reference(service: str, user: str) -> str:
    """The config value that names this keyring entry."""
    return f"{PREFIX}{service}/{user}"


def split_reference(value: str) -> tuple[str, str]:
    """`keyring:SERVICE/USER` -> (SERVICE, USER); the user part may itself contain '/'."""
    service, slash, user = value.removeprefix(PREFIX).partition("/")
    if not (service and slash and user):
        raise SecretStoreError(f"{value!r} is not a keyring reference: write it as "
                               "keyring:SERVICE/USER, e.g. keyring:mailagent/me@example.com")
    return service, user


def backend_name() -> str:
    backend = keyring.get_keyring()
    return f"{type(backend).__module__}.{type(backend).__name__}"


def is_available() -> bool:
    """Whether a real backend is there (keyring's `fail` backend means none was found)."""
    return not isinstance(keyring.get_keyring(), keyring.backends.fail.Keyring)


def plaintext_file() -> str | None:
    """The file a backend keeps secrets in unencrypted (keyrings.alt's PlaintextKeyring and the
    like), or None when the backend encrypts them or keeps them elsewhere."""
    backend = keyring.get_keyring()
    for candidate in getattr(backend, "backends", None) or [backend]:
        if "plaintext" in type(candidate).__name__.lower():
            return str(getattr(candidate, "file_path", "") or "a file of its own")
    return None


def _unavailable() -> SecretStoreError:
    return SecretStoreError(
        "no usable keyring was found: start a Secret Service (e.g. gnome-keyring) or, on a "
        "machine without a desktop, `pip install keyrings.alt`; or keep the secret in an "
        "environment variable with password_env")


def read_secret(value: str) -> str:
    """The secret a `keyring:SERVICE/USER` reference names."""
    service, user = split_reference(value)
    if not is_available():
        raise _unavailable()
    try:
        secret = keyring.get_password(service, user)
    except KeyringError as exc:
        raise SecretStoreError(f"the keyring refused to give {value}: {exc}") from exc
    if secret is None:
        raise SecretStoreError(f"the keyring has no secret for {value}: run `mailagent init` "
                               f"again, or store it with `keyring set {service} {user}`")
    return secret


def store_secret(service: str, user: str, secret: str) -> str:
    """Save `secret` and return the reference to write in the config."""
    if not is_available():
        raise _unavailable()
    try:
        keyring.set_password(service, user, secret)
    except KeyringError as exc:
        raise SecretStoreError(f"the keyring refused to store {service}/{user}: {exc}") from exc
    return reference(service, user)


def replace_secret(value: str, secret: str) -> None:
    """Overwrite the entry a reference names (a provider rotated a refresh token)."""
    service, user = split_reference(value)
    store_secret(service, user, secret)
