"""The exception tree of mailagent.

    MailagentError                 transient = False unless a subclass says otherwise
    ├── ConfigError                the config file is missing, unreadable or invalid
    ├── AlreadyRunningError        another instance holds the data directory (L5)
    ├── StoreError                 the database cannot be opened or migrated
    │   └── StoreFullError         the database or the disk is full (transient: room may come)
    ├── PolicyError                a policy file does not validate (names file and line)
    ├── ModelError                 the model endpoint failed (transient: overload, rate limit)
    ├── RenderError                a shipped template is missing or does not render
    ├── SmtpError                  the SMTP server is unreachable or refused (transient or not)
    ├── OAuthError                 the token endpoint failed or refused the grant (transient)
    │   └── OAuthRevokedError      the refresh token is no longer valid: run init again
    ├── SecretStoreError           the keyring is unusable or lacks the named secret
    ├── ToolError                  a tool call that cannot be done; its message goes to the model
    ├── WhenError                  a schedule text mailagent cannot run (also a ValueError)
    └── MailboxError               IMAP trouble, translated from imapclient/socket errors
        ├── ConnectError           host unreachable, TLS failure, timeout (transient)
        ├── LoginError             the server refused the credentials
        ├── ConnectionLostError    the connection died while in use (transient)
        └── FolderError            the configured folder does not exist or cannot be selected

Every error carries a message that names the failure, the value involved and the next step;
`nearest` gives the "did you mean" of a misspelt key or value.
"""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable


def nearest(word: str, known: Iterable[str]) -> str | None:
    """The known word `word` is most likely a misspelling of, or None if none is close."""
    close = difflib.get_close_matches(word, list(known), n=1)
    return close[0] if close else None


def unknown_key(key: str, known: Iterable[str], where: str) -> str:
    """The words for a key a table does not take: the likely misspelling, and what it takes."""
    known = list(known)
    close = nearest(key, known)
    hint = f' (did you mean "{close}"?)' if close else ""
    return f"unknown key {key!r} in {where}{hint}; allowed keys: {', '.join(known)}"


class MailagentError(Exception):
    """Base of every error mailagent raises on purpose."""

    transient: bool = False


class ConfigError(MailagentError):
    """The configuration cannot be used as it is."""


class AlreadyRunningError(MailagentError):
    """Another mailagent process is using the same data directory."""


class StoreError(MailagentError):
    """The database cannot be opened, migrated or written."""


class StoreFullError(StoreError):
    """Nothing more can be stored: the database or the disk that holds it is full (SQLite's
    SQLITE_FULL, PostgreSQL's disk_full, or ENOSPC while writing a file of the data directory).
    Transient: it goes away once there is room again."""

    transient = True


def as_full(exc: BaseException) -> StoreFullError | None:
    """`exc` as a StoreFullError if it says that there is no room left (a full database, or a
    file write that found the disk or the quota full), else None."""
    if isinstance(exc, StoreFullError):
        return exc
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(f"the disk is full: {exc}")
    return None


class PolicyError(MailagentError):
    """A policy file cannot be read or does not validate."""


class RenderError(MailagentError):
    """A template shipped with mailagent is missing or does not render with these values."""


class ModelError(MailagentError):
    """The model endpoint refused or failed a request."""

    def __init__(self, message: str, transient: bool = False,
                 status_code: int | None = None, account_limit: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status_code = status_code
        self.retry_after = retry_after  # seconds the endpoint asked to wait (retry-after)
        # The account's spend limit or credit is used up: no retry helps until the owner acts
        # (or the limit resets), so tasks wait long and the owner is told once.
        self.account_limit = account_limit


class MailboxError(MailagentError):
    """Talking to the IMAP server failed."""


class ConnectError(MailboxError):
    """The IMAP server could not be reached or the secure channel failed."""

    transient = True


class LoginError(MailboxError):
    """The IMAP server refused the login."""


class ConnectionLostError(MailboxError):
    """An established IMAP connection broke or stopped answering."""

    transient = True


class FolderError(MailboxError):
    """The configured folder cannot be selected."""


class SmtpError(MailagentError):
    """The SMTP server could not be reached or refused us; `transient` when a retry may help."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class OAuthError(MailagentError):
    """The token endpoint could not be reached, or refused the grant."""

    transient = True


class OAuthRevokedError(OAuthError):
    """The refresh token is no longer valid: only a new consent helps."""

    transient = False


class SecretStoreError(MailagentError):
    """The keyring is unusable, or holds no secret under the name the config gives."""


class ToolError(MailagentError):
    """A tool call that cannot be done; the message goes back to the model as an error."""


class WhenError(MailagentError, ValueError):
    """A `when` text that is not a schedule mailagent can run; the message lists what is."""
