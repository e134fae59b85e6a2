"""The secrets of `mailagent init`, each tried as soon as it is given.

In: the flags, an `Asker` and the `Answers` so far. Out: the same `Answers` with the mail
password (or the variable that will hold it) and the model (an API key or a local endpoint, and
its name). Side effects: IMAP and SMTP logins and one request to the model endpoint, so that a
mistyped password or key is caught while the owner is still at the keyboard. It must never echo,
log or print a secret, and never take one from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Protocol

from mailagent import keystore
from mailagent.cli import doctor
from mailagent.cli.init_config import Answers
from mailagent.config import ImapSettings, SmtpSettings, env_value
from mailagent.errors import ConfigError, LoginError, MailagentError, SmtpError
from mailagent.mail.mailbox import Mailbox
from mailagent.mail.notify import check_smtp
from mailagent.providers import Provider

ATTEMPTS = 3  # a typed password or key is asked again this many times in all
NOTHING_WRITTEN = "then run `mailagent init` again (nothing was written)"
KEY_PAGE = "https://console.anthropic.com/settings/keys"


class Asker(Protocol):
    interactive: bool

    def say(self, text: str) -> None: ...
    def ask(self, question: str, default: str | None = None, flag: str = "") -> str: ...
    def yes(self, question: str, default: bool) -> bool: ...
    def secret(self, question: str, flag: str) -> str: ...


def keyring_route(asker: Asker, answers: Answers) -> None:
    """Before any secret is asked: with no usable keyring, offer environment variables; with a
    keyring that keeps secrets in a plain file, say which file."""
    if answers.secret_mode != "keyring":
        return
    if keystore.is_available():
        plain = doctor.plaintext_keyring_warning()
        if plain:
            asker.say(f"Warning: {plain}")
        return
    if not asker.interactive:
        raise ConfigError("no usable keyring on this machine: pass --secret-in-env with "
                          "--password-env VAR and --api-key-env VAR to read the secrets from "
                          "environment variables, or install a keyring (`pip install "
                          "keyrings.alt`), or, knowingly, --store-secret-in-config")
    asker.say("No usable keyring on this machine: mailagent can read its secrets from "
              "environment variables instead (or stop here, install a keyring such as "
              "keyrings.alt, and run `mailagent init` again).")
    if not asker.yes("Keep the secrets in environment variables?", True):
        raise ConfigError("no usable keyring on this machine: install one (e.g. `pip install "
                          f"keyrings.alt`), {NOTHING_WRITTEN}")
    answers.secret_mode = "env"


def env_name(asker: Asker, what: str, default: str, flag: str) -> str:
    name = asker.ask(f"Environment variable that will hold {what}", default, flag)
    if not name.replace("_", "").isalnum():
        raise ConfigError(f"{name!r} is not an environment variable name: use letters, digits "
                          f"and _, e.g. {default}")
    return name


def _from_env(name: str, flag: str) -> str:
    value = env_value(name)
    if value is None:
        raise ConfigError(f"{flag} names ${name}, which is not set: export it, or leave "
                          f"{flag} out to be asked")
    return value


def ask_password(args: argparse.Namespace, asker: Asker, p: Provider, answers: Answers,
                 verify: bool) -> None:
    """The password, or the variable that will hold it; interactively, logged in with at once
    and asked again (up to ATTEMPTS times) when the servers refuse it."""
    asker.say(f"Password: {p.app_password}.")
    if answers.secret_mode == "env":
        answers.password_env = args.password_env or env_name(
            asker, "the mail password", "MAILAGENT_PASSWORD", "--password-env VAR")
        given = env_value(answers.password_env)
        if given is None:
            asker.say(f"Note: ${answers.password_env} is not set here: export it where "
                      "mailagent runs (the login is tested once it is set).")
        elif verify and asker.interactive:
            check_password(asker, answers, p, given, answers.password_env)
        return
    if args.password_env:
        answers.password = _from_env(args.password_env, "--password-env")
        if verify and asker.interactive:
            check_password(asker, answers, p, answers.password, args.password_env)
        return
    for _ in range(ATTEMPTS):
        answers.password = asker.secret("Password (not shown)", "--password-env VAR")
        refused = try_logins(asker, answers, answers.password) if verify else None
        if refused is None:
            return
        asker.say(f"  {refused}\n  hint: {p.app_password}")
    raise ConfigError(f"the mail server refused the password {ATTEMPTS} times: "
                      f"{p.app_password}; {NOTHING_WRITTEN}")


def check_password(asker: Asker, answers: Answers, p: Provider, password: str,
                   source: str) -> None:
    """Log in with a password taken from the environment; a refusal ends init."""
    refused = try_logins(asker, answers, password)
    if refused is not None:
        raise ConfigError(f"{refused} (the password from ${source}); {p.app_password}; "
                          f"{NOTHING_WRITTEN}")


def try_logins(asker: Asker, answers: Answers, password: str) -> str | None:
    """None unless IMAP or SMTP refuses the login (then why); a server that cannot be reached
    is said and left for `check`, since a wrong host is not a wrong password."""
    imap = ImapSettings(host=answers.imap_host, port=answers.imap_port,
                        security=answers.imap_security, username=answers.username,
                        password=password, folder=answers.folder, timeout_seconds=20)
    smtp = SmtpSettings(host=answers.smtp_host, port=answers.smtp_port,
                        security=answers.smtp_security, from_address=answers.email,
                        username=answers.username, password=password, timeout_seconds=20)
    try:
        mailbox = Mailbox(imap)
        mailbox.connect()
        mailbox.close()
        asker.say(f"  IMAP login as {answers.username} on {answers.imap_host}: ok")
    except LoginError as exc:
        return str(exc)
    except MailagentError as exc:
        asker.say(f"  IMAP login not tested: {exc}")
    try:
        asyncio.run(check_smtp(smtp))
        asker.say(f"  SMTP login as {answers.username} on {answers.smtp_host}: ok")
    except SmtpError as exc:
        if not exc.transient:
            return str(exc)
        asker.say(f"  SMTP login not tested: {exc}")
    return None


def check_password_later(args: argparse.Namespace, asker: Asker, p: Provider,
                         answers: Answers) -> None:
    """Non-interactively the logins wait until every flag is known to be valid."""
    if answers.oauth is not None:
        return
    name = answers.password_env if answers.secret_mode == "env" else args.password_env
    password = env_value(name) if answers.secret_mode == "env" else answers.password
    if password:
        check_password(asker, answers, p, password, name)
