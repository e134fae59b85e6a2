"""The model of `mailagent init`: an API key, or a compatible local endpoint, and the name.

In: the flags (`--api-key-env VAR`, `--model-base-url URL`, `--model NAME`), an `Asker` and the
`Answers` so far. Out: `Answers.model_*` and `api_key` / `api_key_env`, kept as the mail
password is (keyring, variable, or in clear only with `--store-secret-in-config`). Side effect:
one `models.retrieve` request, so that a refused key or an unknown model shows now; a refused
key typed by hand is asked again. It must never echo, log or print the key.
"""

from __future__ import annotations

import argparse
import asyncio

from mailagent.cli.init_config import Answers
from mailagent.cli.init_secrets import ATTEMPTS, KEY_PAGE, NOTHING_WRITTEN, Asker, env_name
from mailagent.config import ModelSettings, env_value
from mailagent.errors import ConfigError, ModelError

DEFAULT_KEY_ENV = "ANTHROPIC_API_KEY"
REFUSED, UNKNOWN = 401, 404
TYPED = "typed"


def ask_model(args: argparse.Namespace, asker: Asker, answers: Answers, verify: bool) -> None:
    """Where the model is, which one, and the key; checked at once unless `verify` is off."""
    answers.model_base_url = _base_url(args, asker)
    source = _key(args, asker, answers)
    answers.model_name = args.model or asker.ask(
        "Model name", ModelSettings.name, "--model")
    if not verify:
        return
    for _ in range(ATTEMPTS):
        failure = try_model(asker, answers)
        if failure is None:
            return
        code, message = failure
        if code == REFUSED and source != TYPED:
            message += f" (the key from {source})"
        if not asker.interactive or (code == REFUSED and source != TYPED) or \
                (code == UNKNOWN and args.model):
            raise ConfigError(f"{message}; {NOTHING_WRITTEN}")
        asker.say(f"  {message}")
        if code == REFUSED:
            answers.api_key = asker.secret(f"API key again (not shown; see {KEY_PAGE})",
                                           "--api-key-env VAR")
        else:
            answers.model_name = asker.ask("Model name", ModelSettings.name, "--model")
    raise ConfigError(f"the model endpoint still says no after {ATTEMPTS} tries: "
                      f"{NOTHING_WRITTEN}")


def _base_url(args: argparse.Namespace, asker: Asker) -> str:
    if args.model_base_url is not None or args.api_key_env or not asker.interactive:
        return str(args.model_base_url or "")
    return asker.ask("Model endpoint: empty for Anthropic's API (you need an API key), or "
                     "the base URL of a compatible local endpoint", "", "--model-base-url")


def _key(args: argparse.Namespace, asker: Asker, answers: Answers) -> str:
    """Fill the key (or the variable that holds it); say where it came from: TYPED, $VAR,
    or "no key"."""
    if answers.secret_mode == "env":
        answers.api_key_env = args.api_key_env or (
            env_name(asker, "the model's API key", DEFAULT_KEY_ENV, "--api-key-env VAR")
            if not answers.model_base_url else DEFAULT_KEY_ENV)
        if not env_value(answers.api_key_env) and not answers.model_base_url:
            asker.say(f"Note: ${answers.api_key_env} is not set here: export it where "
                      "mailagent runs.")
        answers.api_key = env_value(answers.api_key_env) or ""
        return f"${answers.api_key_env}"
    if args.api_key_env:
        answers.api_key = env_value(args.api_key_env) or ""
        if not answers.api_key:
            raise ConfigError(f"--api-key-env names ${args.api_key_env}, which is not set: "
                              "export it, or leave --api-key-env out to be asked")
        return f"${args.api_key_env}"
    if answers.model_base_url:
        if asker.interactive and asker.yes("Does this endpoint need an API key?", False):
            answers.api_key = asker.secret("Its API key (not shown)", "--api-key-env VAR")
            return TYPED
        return "no key"
    if env_value(DEFAULT_KEY_ENV) and (not asker.interactive or asker.yes(
            f"Use the API key in ${DEFAULT_KEY_ENV}?", True)):
        asker.say(f"Model key: from ${DEFAULT_KEY_ENV}.")
        answers.api_key = env_value(DEFAULT_KEY_ENV) or ""
        return f"${DEFAULT_KEY_ENV}"
    if not asker.interactive:
        raise ConfigError("mailagent init --non-interactive needs --api-key-env VAR (the "
                          f"variable holding your Anthropic API key, from {KEY_PAGE}) or "
                          "--model-base-url URL (a compatible local endpoint)")
    answers.api_key = asker.secret(f"Anthropic API key (not shown; make one at {KEY_PAGE})",
                                   "--api-key-env VAR")
    return TYPED


def try_model(asker: Asker, answers: Answers) -> tuple[int, str] | None:
    """None when the endpoint knows the model (or cannot be reached: that is said and left
    for `check`); else (401 or 404, why)."""
    from mailagent.agent.api import check_model  # the SDK takes seconds to import

    model = ModelSettings(name=answers.model_name, base_url=answers.model_base_url or None,
                          api_key=answers.api_key or None, timeout_seconds=30)
    try:
        first, *details = asyncio.run(check_model(model)).splitlines()
        asker.say("\n".join([f"  {first}: ok", *details]))
    except ModelError as exc:
        if exc.status_code in (REFUSED, UNKNOWN):
            return exc.status_code, str(exc)
        asker.say(f"  model not checked: {exc}")
    return None
