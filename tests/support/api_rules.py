"""The request rules of the real Messages API that the test double enforces.

Each rule is a pure function of a request body returning the API's error message, or None.
A request the real API refuses must be refused here too, or a test would pass against the
double while the service fails against the API. Each rule cites the page that states it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import jsonschema

from tests.support.api_computer import computer_tool_is_valid
from tests.support.api_media import media_is_valid
from tests.support.api_web import web_results_come_back_unchanged, web_tools_are_valid

COMPACTION_MIN_TRIGGER = 50_000
MAX_CACHE_BREAKPOINTS = 4
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
COMPACT_BETA = "compact-2026-01-12"
# Tool types of the server and client tools the API defines itself; every other tool is a
# custom one with an input_schema (https://docs.claude.com/en/docs/agents-and-tools/tool-use/overview).
CUSTOM = "custom"

Rule = Callable[[Mapping[str, Any]], "str | None"]


def _blocks(message: object) -> list[Any]:
    if not isinstance(message, dict):
        return []
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content) if isinstance(content, list) else []


def _ids(blocks: list[Any], kind: str, key: str) -> list[str]:
    return [str(b.get(key)) for b in blocks if isinstance(b, dict) and b.get("type") == kind]


def tool_results_follow_tool_uses(body: Mapping[str, Any]) -> str | None:
    """Every tool_use is answered by a tool_result with its id at the start of the very next
    user message; no tool_result answers a tool_use the previous assistant message lacks.
    https://docs.claude.com/en/docs/agents-and-tools/tool-use/implement-tool-use
    ("Tool result blocks must immediately follow their corresponding tool use blocks ...
    tool_result blocks must come FIRST in the content array")."""
    messages = list(body.get("messages") or [])
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        blocks = _blocks(message)
        previous = messages[index - 1] if index else {}
        offered = set(_ids(_blocks(previous), "tool_use", "id")) \
            if isinstance(previous, dict) and previous.get("role") == "assistant" else set()
        stray = [i for i in _ids(blocks, "tool_result", "tool_use_id") if i not in offered]
        if stray:
            return (f"messages.{index}.content.0: unexpected `tool_use_id` found in "
                    f"`tool_result` blocks: {stray[0]}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message.")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        wanted = _ids(_blocks(message), "tool_use", "id")
        if not wanted:
            continue
        following = messages[index + 1] if index + 1 < len(messages) else None
        if following is None:
            continue  # a prefill: the model continues this turn
        leading: list[str] = []
        for block in _blocks(following):
            if not (isinstance(block, dict) and block.get("type") == "tool_result"):
                break
            leading.append(str(block.get("tool_use_id")))
        missing = [i for i in wanted if i not in leading]
        if missing:
            return (f"messages.{index + 1}: `tool_use` ids were found without `tool_result` "
                    f"blocks immediately after: {', '.join(missing)}. Each `tool_use` block "
                    "must have a corresponding `tool_result` block in the next message.")
    return None


def no_empty_text(body: Mapping[str, Any]) -> str | None:
    """Text blocks carry text: an empty one (or only white space) is refused.
    https://docs.claude.com/en/api/messages ("text content blocks must be non-empty")."""
    for index, message in enumerate(body.get("messages") or []):
        for number, block in enumerate(_blocks(message)):
            if isinstance(block, dict) and block.get("type") == "text" \
                    and not str(block.get("text", "")).strip():
                return (f"messages.{index}.content.{number}.text: text content blocks must "
                        "contain non-whitespace text")
    return None


def at_most_four_breakpoints(body: Mapping[str, Any]) -> str | None:
    """At most 4 blocks (tools, system and messages together) carry cache_control.
    https://docs.claude.com/en/docs/build-with-claude/prompt-caching ("You can define up to
    4 cache breakpoints")."""
    blocks: list[Any] = list(body.get("tools") or [])
    system = body.get("system")
    if isinstance(system, list):
        blocks += system
    for message in body.get("messages") or []:
        blocks += _blocks(message)
    found = sum(1 for b in blocks if isinstance(b, dict) and b.get("cache_control") is not None)
    if found > MAX_CACHE_BREAKPOINTS:
        return (f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be "
                f"provided. Found {found}.")
    return None


def tool_names_match_the_pattern(body: Mapping[str, Any]) -> str | None:
    """Tool names are 1 to 64 letters, digits, `_` or `-`.
    https://docs.claude.com/en/docs/agents-and-tools/tool-use/implement-tool-use
    ("name: The name of the tool. Must match the regex ^[a-zA-Z0-9_-]{1,64}$")."""
    for index, tool in enumerate(body.get("tools") or []):
        name = tool.get("name") if isinstance(tool, dict) else None
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            return (f"tools.{index}.custom.name: String should match pattern "
                    f"'{TOOL_NAME.pattern}'")
    return None


def tool_names_are_unique(body: Mapping[str, Any]) -> str | None:
    """No two tools share a name.
    https://docs.claude.com/en/docs/agents-and-tools/tool-use/implement-tool-use (a tool is
    called by its name, so names identify tools: "Tool names must be unique")."""
    names = [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
    twice = sorted({str(n) for n in names if names.count(n) > 1})
    if twice:
        return f"tools: Tool names must be unique. Found duplicate: {twice[0]}"
    return None


def tool_schemas_are_json_schema_objects(body: Mapping[str, Any]) -> str | None:
    """A custom tool's input_schema is a JSON Schema (draft 2020-12) of an object.
    https://docs.claude.com/en/docs/agents-and-tools/tool-use/implement-tool-use
    ("input_schema: A JSON Schema object defining the expected parameters for the tool");
    the API checks it against draft 2020-12 and names that draft in its refusal."""
    for index, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or tool.get("type", CUSTOM) != CUSTOM:
            continue
        schema = tool.get("input_schema")
        if schema is None:
            return f"tools.{index}.custom.input_schema: Field required"
        if not isinstance(schema, dict) or schema.get("type") != "object":
            return f"tools.{index}.custom.input_schema.type: Input should be 'object'"
        if not _is_json_schema(json.dumps(schema, sort_keys=True)):
            return (f"tools.{index}.custom.input_schema: JSON schema is invalid. It must match "
                    "JSON Schema draft 2020-12 (https://json-schema.org/draft/2020-12).")
    return None


@functools.lru_cache(maxsize=1024)
def _is_json_schema(text: str) -> bool:
    """Checked once per distinct schema: every request of a task offers the same tools, and
    checking a schema against the metaschema takes milliseconds."""
    try:
        jsonschema.Draft202012Validator.check_schema(json.loads(text))
    except jsonschema.SchemaError:
        return False
    return True


def compaction_trigger_is_high_enough(body: Mapping[str, Any]) -> str | None:
    """The compact_20260112 edit's trigger is at least 50,000 input tokens.
    https://docs.claude.com/en/docs/build-with-claude/compaction ("trigger ... Must be at
    least 50,000 tokens")."""
    management = body.get("context_management")
    edits = management.get("edits") if isinstance(management, dict) else None
    for index, edit in enumerate(edits or []):
        if not isinstance(edit, dict) or edit.get("type") != "compact_20260112":
            continue
        trigger = edit.get("trigger") or {}
        value = trigger.get("value") if isinstance(trigger, dict) else None
        if isinstance(value, int) and value < COMPACTION_MIN_TRIGGER:
            return (f"context_management.edits.{index}.trigger.value: Input should be greater "
                    f"than or equal to {COMPACTION_MIN_TRIGGER}")
    return None


def beta_fields_need_their_beta(body: Mapping[str, Any], betas: Collection[str]) -> str | None:
    """Server-side compaction is a beta: without `anthropic-beta: compact-2026-01-12` the
    request's `context_management` is an unknown field and a `compaction` block in the history
    an unknown block type, both refused like any other unknown input.
    https://docs.claude.com/en/docs/build-with-claude/compaction ("requires the beta header
    compact-2026-01-12"; the compaction block must be passed back in later requests);
    https://docs.claude.com/en/api/beta-headers (features in beta need their header)."""
    if COMPACT_BETA in betas:
        return None
    if "context_management" in body:
        return "context_management: Extra inputs are not permitted"
    for index, message in enumerate(body.get("messages") or []):
        for number, block in enumerate(_blocks(message)):
            if isinstance(block, dict) and block.get("type") == "compaction":
                return (f"messages.{index}.content.{number}: Input tag 'compaction' found "
                        "using 'type' does not match any of the expected tags")
    return None


RULES: tuple[Rule, ...] = (
    tool_names_match_the_pattern,
    tool_names_are_unique,
    tool_schemas_are_json_schema_objects,
    at_most_four_breakpoints,
    compaction_trigger_is_high_enough,
    no_empty_text,
    tool_results_follow_tool_uses,
    media_is_valid,
    web_results_come_back_unchanged,
)


def first_violation(body: Mapping[str, Any], betas: Collection[str] = ()) -> str | None:
    """The message of the first rule the request breaks, as the API words it; None if valid.
    `betas` are the request's `anthropic-beta` values. Errors come back as
    https://docs.claude.com/en/api/errors shapes: a 400 with
    {"type": "error", "error": {"type": "invalid_request_error", "message": ...}}."""
    if (message := beta_fields_need_their_beta(body, betas)) is not None:
        return message
    if (message := web_tools_are_valid(body, betas)) is not None:
        return message
    if (message := computer_tool_is_valid(body, betas)) is not None:
        return message
    for rule in RULES:
        message = rule(body)
        if message is not None:
            return message
    return None
