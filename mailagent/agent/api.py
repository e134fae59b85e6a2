"""The Messages API as the agent reads it: tool schemas, what an error means, the model's details.

In: the task's tools; an `anthropic` error; the Models API's answer about the model. Out: the
tools' JSON schemas (built once per function), whether and how long to wait after an error,
whether the account's spend limit or credit is used up, and the lines `check` prints about the
model. Side effects: `check_model` makes one request to the endpoint. Like the rest of agent/,
it imports the SDK only when a task or a check first needs it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mailagent.agent.prices import price_line
from mailagent.config import ModelSettings
from mailagent.errors import ModelError
from mailagent.tools.desktop import COMPUTER_BETA, COMPUTER_TYPE

if TYPE_CHECKING:
    import anthropic


UNSUPPORTED_COMPACTION = re.compile(r"compact|context_management|anthropic-beta|beta", re.I)


_DEFINITIONS: dict[tuple[object, str], dict[str, Any]] = {}


def tool_definition(name: str, function: Callable[..., Any]) -> dict[str, Any]:
    """A tool's schema, built once per function: building it from the signature takes tens of
    milliseconds, and every task of every conversation offers the same tools."""
    from anthropic import beta_tool

    owned = getattr(getattr(function, "__self__", None), "api_definitions", {}).get(name)
    if owned is not None:  # a tool the API defines (computer use): sent as it is
        return dict(owned)
    spec = getattr(function, "tool_spec", None)
    if spec is not None:  # an MCP tool: its schema comes from its server, made per connection
        return dict(beta_tool(function, **spec).to_dict())
    key = (getattr(function, "__func__", function), name)
    if key not in _DEFINITIONS:
        _DEFINITIONS[key] = dict(beta_tool(function).to_dict())
    return dict(json.loads(json.dumps(_DEFINITIONS[key])))


def tool_definitions(tools: dict[str, Callable[..., Any]]) -> list[dict[str, Any]]:
    """Schemas from the tools' signatures and docstrings (or the `tool_spec` an MCP tool
    carries), in a stable order, last one cached."""
    definitions = [tool_definition(name, tools[name]) for name in sorted(tools)]
    if definitions:
        definitions[-1]["cache_control"] = {"type": "ephemeral"}
    return definitions


def tool_betas(definitions: list[dict[str, Any]]) -> list[str]:
    """The betas the task's own tools need: the computer-use tool's, when it is offered."""
    return [COMPUTER_BETA] if any(d.get("type") == COMPUTER_TYPE for d in definitions) else []


def retry_after(exc: anthropic.APIStatusError) -> float | None:
    """The wait a busy endpoint asks for in its `retry-after` header, in seconds, if any
    (https://docs.claude.com/en/api/rate-limits: a 429 says how long to wait)."""
    try:
        seconds = float(exc.response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if seconds > 0 else None


def is_compaction_unsupported(exc: ModelError) -> bool:
    """Whether a refusal says the endpoint does not take server-side compaction, as opposed
    to any other 400 (a bad history, a bad parameter), which must not switch it off."""
    return exc.status_code == 400 and UNSUPPORTED_COMPACTION.search(str(exc)) is not None


SPEND_LIMIT_CODE = "enforced_spend_limit_reached"


SPEND_LIMIT_TEXT = ("you have reached your specified", "credit balance is too low")


# Error types worth a retry whatever the status: an `error` event in a stream that began with
# 200 (overloaded mid-stream) comes as a status error of 200 (https://docs.claude.com/en/api/errors).
TRANSIENT_ERRORS = frozenset({"overloaded_error", "api_error", "rate_limit_error"})


def _error_type(exc: anthropic.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error")
    return str(inner.get("type", "")) if isinstance(inner, dict) else ""


def _count(part: Any, name: str) -> int:
    """A token count of a usage object or dict; below zero would buy budget back, so 0."""
    value = part.get(name) if isinstance(part, dict) else getattr(part, name, 0)
    return max(0, int(value or 0))


def account_limit(exc: anthropic.APIStatusError) -> str | None:
    """What to tell the owner when the account, not the request, is the problem: the tier's
    monthly cap (429 with details.error_code enforced_spend_limit_reached), a spend limit the
    owner set or credit used up (400 whose message says so), a billing error (402). See
    https://docs.claude.com/en/api/errors. None for any other error."""
    body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error")
    error: dict[str, Any] = inner if isinstance(inner, dict) else body
    found = error.get("details")
    details: dict[str, Any] = found if isinstance(found, dict) else {}
    message = str(error.get("message") or exc.message)
    if exc.status_code == 402 or details.get("error_code") == SPEND_LIMIT_CODE or (
            exc.status_code == 400 and any(t in message.lower() for t in SPEND_LIMIT_TEXT)):
        return (f"the Anthropic account has reached its spend limit or is out of credit "
                f"({exc.status_code}: {message})")
    return None


async def check_model(model: ModelSettings) -> str:
    """Reach the model endpoint and look the model up; raise ModelError naming what to fix."""
    if not model.api_key and not model.base_url:
        raise ModelError("no API key for the model: export ANTHROPIC_API_KEY (or name another "
                         "variable in model.api_key_env)")
    import anthropic

    async with anthropic.AsyncAnthropic(
        api_key=model.api_key or "not-needed", base_url=model.base_url,
        timeout=min(model.timeout_seconds, 30), max_retries=1,
    ) as client:
        try:
            info = await client.models.retrieve(model.name)
        except anthropic.AuthenticationError as exc:
            raise ModelError("the model endpoint refused the API key: check "
                             "ANTHROPIC_API_KEY (model.api_key_env)", status_code=401) from exc
        except anthropic.NotFoundError as exc:
            raise ModelError(f"the model endpoint does not know model {model.name!r}: "
                             "check model.name", status_code=404) from exc
        except anthropic.APIConnectionError as exc:
            where = model.base_url or "the Anthropic API"
            raise ModelError(f"cannot reach {where}: {exc}") from exc
        except anthropic.AnthropicError as exc:
            raise ModelError(f"model check failed: {exc}") from exc
    return "\n".join([f"model {info.id} at {model.base_url or 'the Anthropic API'}",
                      *model_details(info, model)])


def model_details(info: Any, model: ModelSettings) -> list[str]:
    """What the Models API says of the model's window and compaction, and what a token costs:
    indented lines under check's model line."""
    window = getattr(info, "max_input_tokens", None)
    lines = [f"  context window: {window:,} tokens; requests are kept under "
             f"{model.max_context_tokens:,} (model.max_context_tokens)" if window else
             f"  context window: not reported; requests are kept under "
             f"{model.max_context_tokens:,} (model.max_context_tokens)"]
    if window and window < model.max_context_tokens:
        lines.append(f"warning: model.max_context_tokens ({model.max_context_tokens:,}) is "
                     f"above the model's window ({window:,}): lower it")
    management = getattr(getattr(info, "capabilities", None), "context_management", None)
    supported = getattr(getattr(management, "compact_20260112", None), "supported", None)
    said = ("offered by the model" if supported is True else "not offered by the model"
            if supported is False else "not reported (tried on the first request)")
    lines.append(f"  server-side compaction: {said}; model.compaction = {model.compaction!r}")
    lines.append(f"  price: {price_line(model)}")
    return lines
