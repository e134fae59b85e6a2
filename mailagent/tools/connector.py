"""MCP tools for one task: each offered tool of a running server as a tool the model can call.

In: the service's `Connectors`, a `judge` (the policy decision for an exposed name, now) and an
`audit` sink. Out: functions named `mcp__<server>__<tool>` carrying a `tool_spec` (the server's
description and input schema), which the agent turns into tool definitions. Results are plain
text: the agent fences every tool output as data, and here it is cut to the server's
`max_output_chars` with a note saying so; its images go on as image blocks, each scaled and
re-encoded without metadata (tools/media.py), or a note saying why one could not be.
Side effects: the call on the server; one `mcp.call` audit event per call with its decision and
outcome.
It must never: run a call the policy does not allow at the moment it runs (an `ask` runs only
while the agent marks it approved), pass the server's text on unbounded, or let a server's
description or schema grow the prompt without bound.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailagent.content import neutralise
from mailagent.policy.mcp import exposed_name
from mailagent.tools.files import Judged, ToolError
from mailagent.tools.mcp_servers import Connectors, McpResult, Offered, schema_problem
from mailagent.tools.media import Media, MediaError, image_media

log = logging.getLogger(__name__)

MAX_DESCRIPTION_CHARS = 1_000


def capped(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    return (text[:limit] + f"\n[... cut at {limit} of {len(text)} characters: the rest of the "
            "MCP tool's result was left out (max_output_chars in its [mcp] table)]"), True


def describe(tool: Offered) -> str:
    """The server's description, marked as the server's and bounded: it is not ours."""
    text = neutralise(" ".join(tool.description.split()))[:MAX_DESCRIPTION_CHARS]
    return f"[MCP server {tool.rule.name}, tool {tool.name}] {text}".strip()


@dataclass
class ConnectorTools:
    connectors: Connectors
    judge: Callable[[str], Judged]
    audit: Callable[[str, str, dict[str, Any]], None]
    approved: bool = False  # set by the agent while it runs a call the owner approved

    def tools(self) -> dict[str, Callable[..., str | Media]]:
        offered: dict[str, Callable[..., str | Media]] = {}
        for tool in self.connectors.offered():
            if (problem := schema_problem(tool.input_schema)) is not None:
                log.warning("MCP tool %s of %s not offered: %s", tool.name, tool.rule.name,
                            problem)
                continue
            name = exposed_name(tool.rule.name, tool.name)
            offered[name] = self.caller(tool, name)
        return offered

    def caller(self, tool: Offered, name: str) -> Callable[..., str | Media]:
        server, tool_name, limit = tool.rule.name, tool.name, tool.rule.max_output_chars

        def call(**arguments: Any) -> str | Media:
            return self.call(server, tool_name, arguments, limit)
        # What the agent builds the definition from, instead of a signature and docstring.
        call.__dict__["tool_spec"] = {"name": name, "description": describe(tool),
                                      "input_schema": tool.input_schema}
        return call

    def call(self, server: str, tool: str, arguments: dict[str, Any],
             limit: int) -> str | Media:
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
        text, cut = capped(result.text, limit)
        outcome = "error" if result.is_error else "ok"
        self.audit("mcp.call", f"{server}/{tool} {outcome}" + (" (cut)" if cut else ""),
                   {**detail, "outcome": outcome, "chars": len(text), "cut": cut,
                    "images": len(result.images)})
        if result.is_error:
            raise ToolError(f"the MCP tool {tool} reported an error: {text}")
        return with_images(text, result, f"{server}/{tool}")


def with_images(text: str, result: McpResult, source: str) -> str | Media:
    """The text alone, or with the result's images as blocks (each one that cannot be shown
    named in the text instead)."""
    if not result.images:
        return text
    lines = [text] if text else []
    blocks: list[dict[str, Any]] = []
    for number, (mime, data) in enumerate(result.images, start=1):
        try:
            shown = image_media(data, f"{number} from {source} ({neutralise(mime)[:40]})")
        except MediaError as exc:
            lines.append(f"[an image left out: {exc}]")
            continue
        lines.append(shown.text)
        blocks.extend(shown.blocks)
    return Media("\n".join(lines), tuple(blocks)) if blocks else "\n".join(lines)
