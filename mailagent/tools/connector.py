"""MCP tools for one task: each offered tool of a running server as a tool the model can call.

In: the service's `Connectors`, a `judge` (the policy decision for an exposed name, now) and an
`audit` sink. Out: tools named `mcp__<server>__<tool>` (the anthropic SDK's `beta_tool`, with the
server's own input schema), whose results are plain text: the agent fences every tool output as
data, and here it is cut to the server's `max_output_chars` with a note saying so. Conversion of
MCP content goes through the anthropic SDK's MCP helpers; only text reaches the model.
Side effects: the call on the server; one `mcp.call` audit event per call with its decision and
outcome.
It must never: run a call the policy does not allow at the moment it runs (an `ask` runs only
while the agent marks it approved), pass the server's text on unbounded, or let a server's
description or schema grow the prompt without bound.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from anthropic import beta_tool
from anthropic.lib.tools import BetaFunctionTool
from anthropic.lib.tools.mcp import UnsupportedMCPValueError, mcp_content
from mcp.types import CallToolResult, Tool

from mailagent.connector_rules import McpServerRule, exposed_name
from mailagent.connectors import Connectors
from mailagent.content import neutralise
from mailagent.tools.files import Judged, ToolError

log = logging.getLogger(__name__)

MAX_DESCRIPTION_CHARS = 1_000
MAX_SCHEMA_CHARS = 20_000


def result_text(result: CallToolResult) -> str:
    """The text of a tool result; other content is named, not passed on."""
    parts: list[str] = []
    for block in result.content:
        try:
            converted = cast(dict[str, Any], mcp_content(block))
        except UnsupportedMCPValueError as exc:
            parts.append(f"[content left out: {exc}]")
            continue
        source = converted.get("source") or {}
        if converted["type"] == "text":
            parts.append(str(converted["text"]))
        elif converted["type"] == "document" and source.get("type") == "text":
            parts.append(str(source.get("data", "")))
        else:
            parts.append(f"[{converted['type']} content left out: only text is passed on]")
    if not result.content and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def capped(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    return (text[:limit] + f"\n[... cut at {limit} of {len(text)} characters: the rest of the "
            "MCP tool's result was left out (max_output_chars in its [mcp] table)]"), True


def describe(rule: McpServerRule, tool: Tool) -> str:
    """The server's description, marked as the server's and bounded: it is not ours."""
    text = neutralise(" ".join((tool.description or "").split()))[:MAX_DESCRIPTION_CHARS]
    return f"[MCP server {rule.name}, tool {tool.name}] {text}".strip()


@dataclass
class ConnectorTools:
    connectors: Connectors
    judge: Callable[[str], Judged]
    audit: Callable[[str, str, dict[str, Any]], None]
    approved: bool = False  # set by the agent while it runs a call the owner approved

    def tools(self) -> dict[str, BetaFunctionTool[Any]]:
        offered: dict[str, BetaFunctionTool[Any]] = {}
        for rule, tool in self.connectors.offered():
            schema = dict(tool.input_schema)
            if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
                log.warning("MCP tool %s of %s not offered: its input schema is over %d "
                            "characters", tool.name, rule.name, MAX_SCHEMA_CHARS)
                continue
            name = exposed_name(rule.name, tool.name)
            offered[name] = beta_tool(self.caller(rule.name, tool.name), name=name,
                                      description=describe(rule, tool), input_schema=schema)
        return offered

    def caller(self, server: str, tool: str) -> Callable[..., str]:
        def call(**arguments: Any) -> str:
            return self.call(server, tool, arguments)
        return call

    def call(self, server: str, tool: str, arguments: dict[str, Any]) -> str:
        """Decide again, call, and record: the decision and the outcome of this call."""
        decision = self.judge(exposed_name(server, tool))
        detail: dict[str, Any] = {"server": server, "tool": tool, "rule": decision.rule,
                                  "decision": decision.verdict}
        if not (decision.verdict == "allow" or (decision.verdict == "ask" and self.approved)):
            self.audit("mcp.call", f"{server}/{tool} refused: {decision.reason}",
                       {**detail, "outcome": "refused"})
            raise ToolError(f"denied by {decision.rule}: {decision.reason}")
        if decision.verdict == "ask":
            detail["decision"] = "ask (approved by the owner)"
        try:
            result = self.connectors.call_from_thread(server, tool, arguments)
        except ToolError as exc:
            self.audit("mcp.call", f"{server}/{tool} failed: {exc}",
                       {**detail, "outcome": "failed"})
            raise
        rule = self.connectors.servers.get(server)
        limit = rule.rule.max_output_chars if rule is not None else 20_000
        text, cut = capped(result_text(result), limit)
        outcome = "error" if result.is_error else "ok"
        self.audit("mcp.call", f"{server}/{tool} {outcome}" + (" (cut)" if cut else ""),
                   {**detail, "outcome": outcome, "chars": len(text), "cut": cut})
        if result.is_error:
            raise ToolError(f"the MCP tool {tool} reported an error: {text}")
        return text
