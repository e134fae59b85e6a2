"""`mailagent check` as a doctor: what usually went wrong, said for the owner's provider.

In: settings and the error a check raised. Out: `hint:` lines naming the provider's own page
or setting (app passwords, IMAP switched off, an OAuth token revoked), and extra checks: the
keyring, the OAuth token endpoint, and whether the service is installed and running (it asks
the service manager).
It must never print a secret.
"""

from __future__ import annotations

import time

from mailagent import keystore
from mailagent.cli import install
from mailagent.config import Settings
from mailagent.errors import (
    ConnectError,
    LoginError,
    MailagentError,
    OAuthError,
    OAuthRevokedError,
)
from mailagent.mail import oauth
from mailagent.providers import PROVIDERS, provider_for_host

OAUTH_EXPIRY = ("Google expires refresh tokens after 7 days while the OAuth consent screen is "
                "in testing, and both Google and Microsoft revoke them after a password change "
                "or when access is removed in the account's security page")


def _is_refused(exc: MailagentError) -> bool:
    return isinstance(exc, LoginError) or ("login" in str(exc) and "refused" in str(exc))


def hints(settings: Settings, exc: MailagentError) -> list[str]:
    """What to try for this error, for the provider the IMAP host belongs to."""
    provider = (PROVIDERS.get(settings.provider or "") or provider_for_host(settings.imap.host)
                or PROVIDERS["generic"])
    if isinstance(exc.__cause__, OAuthError):
        exc = exc.__cause__  # SMTP's login wraps the token endpoint's answer
    if isinstance(exc, OAuthRevokedError):
        return [f"sign in again with `mailagent init --oauth --force --provider {provider.key}`"
                f" (and your other flags): {OAUTH_EXPIRY}"]
    if isinstance(exc, OAuthError):
        return ["the OAuth token endpoint could not be reached: check oauth.token_url and the "
                "network; mailagent retries by itself when running"]
    if _is_refused(exc):
        if settings.imap.oauth is not None:
            return ["the provider refused the access token: the OAuth client may lack the mail "
                    "scope; run `mailagent init --oauth` again"]
        return [provider.app_password, f"IMAP may be switched off: {provider.imap_setting}"]
    if isinstance(exc, ConnectError) or str(exc).startswith(("cannot reach IMAP",
                                                             "cannot reach SMTP")):
        return ["check the host name and port; the usual pairs are 993 with security = "
                "\"ssl\" and 143 with \"starttls\" (SMTP: 465 \"ssl\", 587 \"starttls\"); a "
                "firewall or a network that blocks mail ports gives the same error"]
    return []


WARNING = "warning: "  # a check result that starts so is printed as a warning, not as ok


def plaintext_keyring_warning() -> str | None:
    """What to say when the keyring keeps secrets unencrypted in a file, else None."""
    where = keystore.plaintext_file()
    if where is None:
        return None
    return (f"keyring: {keystore.backend_name()} keeps secrets UNENCRYPTED in {where}: anyone "
            "who can read that file has the password; use a Secret Service (e.g. "
            "gnome-keyring), keyrings.alt's EncryptedKeyring, or password_env")


def check_keyring(settings: Settings) -> str:
    """Which keyring backend holds the secrets, or that none is usable (then say so); a
    backend that keeps them in a plain file is a warning."""
    if keystore.is_available():
        plain = plaintext_keyring_warning()
        return WARNING + plain if plain else f"keyring: {keystore.backend_name()}"
    return "keyring: none usable (secrets must come from password_env or the config)"


def check_oauth(settings: Settings) -> str:
    """Trade the refresh token for an access token now, so a revoked one shows here."""
    if settings.imap.oauth is None:
        return "login: password"
    token_url = settings.imap.oauth.token_url
    oauth.access_token(settings.imap.oauth, settings.imap.username)
    return f"OAuth2: access token from {token_url} (refreshed before it expires)"


def check_service(settings: Settings) -> str:
    """Whether `mailagent service install` put a service file where this OS looks for it."""
    try:
        unit = install.unit_for(install.current_platform(), settings.config_path)
    except MailagentError:
        return "service: none (this OS has no service support in mailagent)"
    if not unit.path.exists():
        return "service: not installed (to run in the background: `mailagent service install`)"
    written = time.strftime("%Y-%m-%d", time.localtime(unit.path.stat().st_mtime))
    running = "running" if install.is_running(unit) else "not running now"
    return f"service: unit installed: {unit.path} (written {written}), {running}"
