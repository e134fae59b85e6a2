"""`mailagent init`: connect a mailbox in a few minutes, by questions or by flags.

In: the command line (every answer has a flag; `--non-interactive` asks nothing and fails on a
missing answer) and, interactively, lines on stdin. Out: `Answers` for `init_config`, after an
OAuth sign-in when `--oauth` is given; the password and the model's key are tried as soon as they
are given (`init_secrets`, `init_model`). Provider presets fill servers, ports, security and the
suggested owner verification; each flag overrides its preset. It must never echo a password,
and never take one from the command line (where other users' `ps` can read it).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from pathlib import Path

from mailagent import keystore
from mailagent.cli import init_model, init_secrets
from mailagent.cli.init_config import Answers, OAuthAnswers, check_writable, write_files
from mailagent.config import (
    SECURITY_MODES,
    VERIFICATION_MODES,
    ModelSettings,
    env_value,
    find_config_path,
)
from mailagent.errors import ConfigError
from mailagent.mail.oauth import FlowSettings, device_flow
from mailagent.providers import PROVIDERS, Provider, get_provider, guess_provider


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `mailagent init`: one per answer."""
    add = parser.add_argument
    add("--config", help="where to write the config (default: $MAILAGENT_CONFIG, then the "
        "user config dir)")
    add("--non-interactive", action="store_true", help="ask nothing; every answer from flags")
    add("--force", action="store_true", help="replace an existing config file")
    add("--no-check", action="store_true", help="write the config without running check")
    add("--install-service", action="store_true", help="when check passes, install mailagent "
        "as a service of this computer (interactively: asked)")
    add("--provider", choices=list(PROVIDERS), help="preset for servers and verification")
    add("--email", help="the agent's mail address")
    add("--username", help="login name (default: the address)")
    for proto in ("imap", "smtp"):
        add(f"--{proto}-host")
        add(f"--{proto}-port", type=int)
        add(f"--{proto}-security", choices=SECURITY_MODES)
    add("--folder", help="IMAP folder to watch (default INBOX)")
    add("--owner", action="append", help="an address you send orders from (repeatable)")
    add("--verification", choices=VERIFICATION_MODES, help="how owner mail is authenticated")
    add("--authserv-id", action="append", help="trusted Authentication-Results authserv-id")
    add("--password-env", metavar="VAR", help="read the password from $VAR (and, with "
        "--secret-in-env, keep reading it from there)")
    add("--secret-in-env", action="store_true", help="write password_env = VAR (and "
        "api_key_env) in the config instead of storing the secrets in the keyring")
    add("--store-secret-in-config", action="store_true",
        help="write the secret in clear into the config (mode 0600) instead of the keyring")
    add("--oauth", action="store_true", help="sign in with OAuth2 (XOAUTH2) instead of a password")
    add("--client-id", help="OAuth2 client id registered with the provider")
    add("--client-secret-env", metavar="VAR", help="read the OAuth2 client secret from $VAR")
    add("--token-url", help="OAuth2 token endpoint (default: the provider's)")
    add("--device-url", help="OAuth2 device authorization endpoint (default: the provider's)")
    add("--auth-url", help="OAuth2 authorization page (default: the provider's)")
    add("--scope", help="OAuth2 scope (default: the provider's)")
    add("--no-browser", action="store_true", help="print the sign-in page, do not open it")
    add("--policy-folder", help="a folder the agent may use (starter policy)")
    add("--policy-access", choices=("read", "write"), help="read (default) or write")
    add("--data-dir", help="where mailagent keeps its database and workspaces")
    add("--model", help=f"Claude model name (default {ModelSettings.name})")
    add("--model-base-url", metavar="URL", help="a compatible local Messages API endpoint "
        "instead of Anthropic's (needs no key unless --api-key-env is given)")
    add("--api-key-env", metavar="VAR", help="read the model's API key from $VAR (and, with "
        "--secret-in-env, keep reading it from there); default: $ANTHROPIC_API_KEY if set")
    add("--wait-for-first-task", action="store_true", help="at the end, wait until the first "
        "task mailed in is answered and say how long it took")
    add("--wait-timeout-seconds", type=float, metavar="SECONDS",
        help="stop waiting for the first task after this long (default: no limit)")


class Asker:
    """Questions on stdin, or, with --non-interactive, the defaults or a clear error."""

    def __init__(self, interactive: bool, say: Callable[[str], None] = print) -> None:
        self.interactive, self.say = interactive, say

    def ask(self, question: str, default: str | None = None, flag: str = "") -> str:
        if not self.interactive:
            if default is None:
                raise ConfigError(f"mailagent init --non-interactive needs {flag}: {question}")
            return default
        shown = f" [{default}]" if default else ""
        while True:
            try:
                answer = input(f"{question}{shown}: ").strip()
            except EOFError:
                raise ConfigError(f"no answer to {question!r} (input ended)") from None
            if answer or default is not None:
                return answer or (default or "")
            self.say("  an answer is needed")

    def choose(self, question: str, choices: tuple[str, ...], default: str, flag: str) -> str:
        while True:
            answer = self.ask(f"{question} ({'/'.join(choices)})", default, flag)
            if answer in choices:
                return answer
            self.say(f"  choose one of {', '.join(choices)}")

    def yes(self, question: str, default: bool) -> bool:
        if not self.interactive:
            return default
        answer = self.ask(f"{question} (y/n)", "y" if default else "n")
        return answer.lower().startswith("y")

    def secret(self, question: str, flag: str) -> str:
        if not self.interactive:
            raise ConfigError(f"mailagent init --non-interactive needs {flag}")
        if sys.stdin.isatty():
            value = getpass.getpass(f"{question}: ")
        else:  # piped answers: show the question, read the line, echo nothing back
            print(f"{question}: ", end="", flush=True)
            value = sys.stdin.readline().rstrip("\n")
        if not value:
            raise ConfigError(f"no answer to {question!r}")
        return value


def _given(args: argparse.Namespace, name: str, asker: Asker, question: str,
           default: str | None, flag: str) -> str:
    value = getattr(args, name)
    return str(value) if value is not None else asker.ask(question, default, flag)


def collect(args: argparse.Namespace) -> Answers:
    """Every answer, from flags first and then from questions (or defaults)."""
    asker = Asker(not args.non_interactive)
    email = _given(args, "email", asker, "The agent's mail address", None, "--email")
    provider = _provider(args, asker, email)
    asker.say(f"Provider: {provider.name}")
    servers = _servers(args, asker, provider)
    answers = Answers(
        config_path=find_config_path(args.config), provider=provider.key, email=email,
        username=_given(args, "username", asker, "Login name", email, "--username"),
        imap_host="", imap_port=0, imap_security="", smtp_host="", smtp_port=0,
        smtp_security="", owners=[], verification="")
    for key, value in servers.items():
        setattr(answers, key, value)
    answers.folder = args.folder or "INBOX"
    verify = not args.no_check
    _credentials(args, asker, provider, answers, verify)
    _owner(args, asker, provider, answers)
    _policy(args, asker, answers)
    answers.data_dir = args.data_dir or ""
    if verify and not asker.interactive:
        init_secrets.check_password_later(args, asker, provider, answers)
    init_model.ask_model(args, asker, answers, verify)
    return answers


def _provider(args: argparse.Namespace, asker: Asker, email: str) -> Provider:
    if args.provider:
        return get_provider(args.provider)
    guess = guess_provider(email).key
    return get_provider(asker.choose("Mail provider", tuple(PROVIDERS), guess, "--provider"))


def _servers(args: argparse.Namespace, asker: Asker, p: Provider) -> dict[str, object]:
    """Hosts, ports and security: the preset's, unless overridden by flags or answers."""
    preset = {"imap_host": p.imap_host, "imap_port": p.imap_port,
              "imap_security": p.imap_security, "smtp_host": p.smtp_host,
              "smtp_port": p.smtp_port, "smtp_security": p.smtp_security}
    ask_all = not p.imap_host
    if p.imap_host:
        asker.say(f"Servers: IMAP {p.imap_host}:{p.imap_port} ({p.imap_security}), "
                  f"SMTP {p.smtp_host}:{p.smtp_port} ({p.smtp_security})")
        overridden = any(getattr(args, k) is not None for k in preset)
        ask_all = not overridden and asker.yes("Change these servers?", False)
    values: dict[str, object] = {}
    for key, default in preset.items():
        given = getattr(args, key)
        flag = "--" + key.replace("_", "-")
        if given is not None or not ask_all:
            values[key] = given if given is not None else default
        elif key.endswith("security"):
            values[key] = asker.choose(key.replace("_", " ").upper(), SECURITY_MODES,
                                       str(default), flag)
        else:
            values[key] = asker.ask(key.replace("_", " ").upper(), str(default or ""), flag)
    for key in ("imap_port", "smtp_port"):
        try:
            values[key] = int(str(values[key]))
        except ValueError:
            raise ConfigError(f"{key.replace('_', ' ')} must be a number, "
                              f"not {values[key]!r}") from None
    return values


def _secret_mode(args: argparse.Namespace) -> str:
    if args.store_secret_in_config:
        return "config"
    return "env" if args.secret_in_env else "keyring"


def _credentials(args: argparse.Namespace, asker: Asker, p: Provider, answers: Answers,
                 verify: bool) -> None:
    """The password (app password) or an OAuth2 sign-in, and where the secret is kept."""
    answers.secret_mode = _secret_mode(args)
    use_oauth = args.oauth or (p.oauth is not None and not args.password_env
                               and asker.yes("Sign in with OAuth2 instead of a password?", False))
    if use_oauth:
        if answers.secret_mode == "keyring" and not keystore.is_available():
            raise ConfigError("no usable keyring on this machine for the OAuth refresh token: "
                              "install one (e.g. `pip install keyrings.alt`) or, knowingly, "
                              "pass --store-secret-in-config")
        answers.oauth = _oauth_sign_in(args, asker, p)
        return
    init_secrets.keyring_route(asker, answers)
    init_secrets.ask_password(args, asker, p, answers, verify)


def _oauth_sign_in(args: argparse.Namespace, asker: Asker, p: Provider) -> OAuthAnswers:
    ends = p.oauth
    token_url = args.token_url or (ends.token_url if ends else None)
    if token_url is None:
        raise ConfigError(f"{p.name} has no OAuth2 preset: pass --token-url and --device-url "
                          "or --auth-url")
    if ends and ends.help_url and not args.client_id:
        asker.say(f"OAuth2 needs a client id registered at {ends.help_url}.")
    client_secret = env_value(args.client_secret_env) if args.client_secret_env else None
    flow = FlowSettings(
        client_id=_given(args, "client_id", asker, "OAuth2 client id", None, "--client-id"),
        token_url=token_url, scope=args.scope or (ends.scope if ends else ""),
        client_secret=client_secret,
        device_url=args.device_url or (ends.device_url if ends else ""),
        auth_url=args.auth_url or (ends.auth_url if ends else ""))
    if flow.device_url and not args.auth_url:
        grant = device_flow(flow, asker.say)
    else:
        from mailagent.cli.oauth_loopback import loopback_flow

        grant = loopback_flow(flow, asker.say, open_browser=not args.no_browser)
    if not grant.refresh_token:
        raise ConfigError(f"{token_url} gave no refresh token: the client must be allowed "
                          "offline access")
    asker.say("Signed in.")
    return OAuthAnswers(flow.client_id, token_url, flow.scope, grant.refresh_token,
                        client_secret)


def _owner(args: argparse.Namespace, asker: Asker, p: Provider, answers: Answers) -> None:
    """Who may give orders, and how their mail is authenticated (suggested by the provider)."""
    owners = args.owner or [a.strip() for a in asker.ask(
        "Addresses you will send orders from (comma-separated)", None, "--owner").split(",")]
    answers.owners = [a.lower() for a in owners if a]
    if not answers.owners or not all("@" in a for a in answers.owners):
        raise ConfigError(f"owner addresses must be mail addresses, not {owners!r}")
    verification = args.verification or asker.choose(
        "How owner mail is authenticated", VERIFICATION_MODES, p.verification, "--verification")
    answers.verification = verification
    if verification == "authentication-results":
        ids = args.authserv_id or [i.strip() for i in asker.ask(
            "Trusted authserv-id(s) of your provider's Authentication-Results",
            ",".join(p.authserv_ids), "--authserv-id").split(",")]
        answers.authserv_ids = [i.lower() for i in ids if i]
        if not answers.authserv_ids:
            raise ConfigError("authentication-results needs the authserv-id your provider "
                              "writes (--authserv-id), or choose --verification dkim")


def _policy(args: argparse.Namespace, asker: Asker, answers: Answers) -> None:
    folder = args.policy_folder if args.policy_folder is not None else asker.ask(
        "A folder the agent may use (empty: none, only its own workspace)", "", "")
    if folder:
        path = Path(folder).expanduser()
        answers.policy_folder = str(path if path.is_absolute() else path.resolve())
        answers.policy_access = args.policy_access or asker.choose(
            "Access to it", ("read", "write"), "read", "--policy-access")


def run_init(args: argparse.Namespace) -> Answers:
    """Collect the answers (trying each secret as it comes), write the files, and say where
    they went."""
    check_writable(find_config_path(args.config), args.force)
    answers = collect(args)
    for written in write_files(answers):
        print(f"wrote {written}")
    return answers
