"""The Messages API's rules for its web tools, as the test double enforces them.

The server tools ``web_search_20250305`` and ``web_fetch_20250910`` are taken only in their
documented shape: their own name, only their fields, each of its type; web fetch only with its
beta header; one domain list, not both
(https://docs.claude.com/en/docs/agents-and-tools/tool-use/web-search-tool,
https://docs.claude.com/en/docs/agents-and-tools/tool-use/web-fetch-tool; the field list is the
SDK's ``WebSearchTool20250305Param`` and ``WebFetchTool20250910Param``). Search results and
their citations come back to the API as it sent them: their ``encrypted_content`` and
``encrypted_index`` are opaque, and one the API did not issue is refused (the web search page:
"the encrypted_content must be passed back in multi-turn conversations for citations").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping
from typing import Any

WEB_FETCH_BETA = "web-fetch-2025-09-10"
COMMON = {"name", "type", "allowed_callers", "allowed_domains", "blocked_domains",
          "cache_control", "defer_loading", "max_uses", "strict"}
# type -> (its name, its fields, the beta it needs)
WEB_TOOLS: dict[str, tuple[str, frozenset[str], str | None]] = {
    "web_search_20250305": ("web_search", frozenset(COMMON | {"user_location"}), None),
    "web_fetch_20250910": ("web_fetch", frozenset(COMMON | {"citations", "max_content_tokens",
                                                            "url_sources"}), WEB_FETCH_BETA),
}
LOCATION_FIELDS = {"type", "city", "region", "country", "timezone"}

_issued_lock = threading.Lock()
_issued: set[str] = set()


def issue(value: str) -> str:
    """Record an encrypted value the double sends, so that it is known when it comes back."""
    with _issued_lock:
        _issued.add(value)
    return value


def _is_issued(value: object) -> bool:
    with _issued_lock:
        return isinstance(value, str) and value in _issued


def is_web_tool(tool: object) -> bool:
    kind = tool.get("type") if isinstance(tool, dict) else None
    return isinstance(kind, str) and kind.startswith(("web_search_", "web_fetch_"))


def web_tools_are_valid(body: Mapping[str, Any], betas: Collection[str]) -> str | None:
    """The first web tool definition the API refuses, worded as the API words it."""
    for index, tool in enumerate(body.get("tools") or []):
        if not is_web_tool(tool):
            continue
        kind = tool["type"]
        known = WEB_TOOLS.get(kind)
        if known is None or (known[2] is not None and known[2] not in betas):
            return (f"tools.{index}: Input tag '{kind}' found using 'type' does not match any "
                    "of the expected tags")
        problem = _tool_problem(tool, *known[:2])
        if problem is not None:
            return f"tools.{index}.{kind}.{problem}"
    return None


def _tool_problem(tool: dict[str, Any], name: str, fields: frozenset[str]) -> str | None:
    for key in tool:
        if key not in fields:
            return f"{key}: Extra inputs are not permitted"
    if tool.get("name") != name:
        return f"name: Input should be '{name}'"
    for key in ("allowed_domains", "blocked_domains"):
        value = tool.get(key)
        if value is not None and not (isinstance(value, list)
                                      and all(isinstance(d, str) for d in value)):
            return f"{key}: Input should be a valid list of strings"
    if tool.get("allowed_domains") and tool.get("blocked_domains"):
        return "Only one of allowed_domains or blocked_domains may be specified, not both"
    for key in ("max_uses", "max_content_tokens"):
        value = tool.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return f"{key}: Input should be a valid integer"
        if value is not None and value <= 0:
            return f"{key}: Input should be greater than 0"
    checks: dict[str, Callable[[Any], str | None]] = {
        "citations": _citations_problem, "user_location": _location_problem}
    for key, check in checks.items():
        if tool.get(key) is not None and (problem := check(tool[key])) is not None:
            return f"{key}{problem}"
    return None


def _citations_problem(value: Any) -> str | None:
    if not isinstance(value, dict) or set(value) - {"enabled"}:
        return ": Input should be an object with only enabled"
    if "enabled" in value and not isinstance(value["enabled"], bool):
        return ".enabled: Input should be a valid boolean"
    return None


def _location_problem(value: Any) -> str | None:
    if not isinstance(value, dict) or value.get("type") != "approximate":
        return ".type: Input should be 'approximate'"
    extra = set(value) - LOCATION_FIELDS
    if extra:
        return f".{sorted(extra)[0]}: Extra inputs are not permitted"
    return None


def web_results_come_back_unchanged(body: Mapping[str, Any]) -> str | None:
    """Every search result's ``encrypted_content`` and every citation's ``encrypted_index`` in
    the history is one the API sent."""
    for index, message in enumerate(body.get("messages") or []):
        content = message.get("content") if isinstance(message, dict) else None
        for number, block in enumerate(content if isinstance(content, list) else []):
            if not isinstance(block, dict):
                continue
            where = f"messages.{index}.content.{number}"
            if block.get("type") == "web_search_tool_result" and isinstance(
                    block.get("content"), list):
                for result in block["content"]:
                    if not _is_issued(result.get("encrypted_content")):
                        return f"{where}: Invalid encrypted_content in search result"
            for citation in block.get("citations") or [] if block.get("type") == "text" else []:
                if citation.get("type") == "web_search_result_location" and not _is_issued(
                        citation.get("encrypted_index")):
                    return f"{where}.citations: Invalid encrypted_index in citation"
    return None
