"""Connectors: the MCP servers of the policy, kept running for the service's whole life.

In: the policy in force (its `[mcp.<server>]` tables, read again every few seconds so an edit
takes effect without a restart). Out: per server a connected `mcp.Client` and the tools it lists,
and `call`, which runs one tool call on it. Side effects: starts stdio servers as child processes
(with only the SDK's minimal environment plus the policy's `env`, secrets read from mailagent's
environment by reference), connects to streamable HTTP servers, and restarts a server that stops,
with a growing pause between tries; each stop is logged, recorded (`mcp.server` audit events,
which `mailagent status` shows) and mailed to the owner. Everything here runs on the service's
event loop; tools call in from worker threads through `call_from_thread`.
It must never: decide whether a call may run (the policy engine does, in the worker and again in
the tool adapter), hand a server mailagent's own secrets, or leave a server running at shutdown.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mailagent.config import environment
from mailagent.errors import MailagentError
from mailagent.policy.mcp import McpServerRule, exposed_name, server_env, server_headers
from mailagent.tools.files import ToolError

if TYPE_CHECKING:  # the SDK takes seconds to import: only where a server is configured
    from mcp import Client
    from mcp.types import CallToolResult, Tool

log = logging.getLogger(__name__)

HEALTH_SECONDS = 5.0  # how often an idle server's tools are listed, to notice one that died
MAX_SCHEMA_CHARS = 20_000  # an MCP tool's input schema; a longer one is not offered
PING_TIMEOUT = 5.0  # (the protocol's ping is gone from its 2026 revision; listing works in all)
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0
STABLE_SECONDS = 60.0  # a server that ran this long starts its backoff afresh after a stop
MAIL_EVERY_SECONDS = 600.0  # at most one mail per server in this time
SYNC_SECONDS = 2.0


@dataclass(frozen=True)
class Offered:
    """A tool the model may be offered: the server's own name, description and schema."""

    rule: McpServerRule
    name: str
    description: str
    input_schema: dict[str, Any]


MAX_RESULT_IMAGES = 8  # images of one call passed on; each is scaled and re-encoded later


@dataclass(frozen=True)
class McpResult:
    """What a call gave: its text, its images (declared type and decoded bytes, not yet
    checked) and whether the tool failed."""

    text: str
    is_error: bool
    images: tuple[tuple[str, bytes], ...] = ()


def _is_image(mime_type: str | None) -> bool:
    return (mime_type or "").lower().startswith("image/")


def _image_bytes(data: str) -> bytes | None:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def result_parts(result: CallToolResult) -> tuple[str, tuple[tuple[str, bytes], ...]]:
    """Text blocks and text resources as they are, and images (image blocks and image blob
    resources, at most MAX_RESULT_IMAGES) as bytes; other content named, not passed on."""
    from mcp.types import (
        BlobResourceContents,
        EmbeddedResource,
        ImageContent,
        TextContent,
        TextResourceContents,
    )

    parts: list[str] = []
    images: list[tuple[str, bytes]] = []
    for block in result.content:
        resource = block.resource if isinstance(block, EmbeddedResource) else None
        if isinstance(block, TextContent):
            parts.append(block.text)
        elif isinstance(resource, TextResourceContents):
            parts.append(resource.text)
        elif isinstance(block, ImageContent) or (isinstance(resource, BlobResourceContents)
                                                 and _is_image(resource.mime_type)):
            if isinstance(block, ImageContent):
                mime, data = block.mime_type, block.data
            else:
                assert isinstance(resource, BlobResourceContents)
                mime, data = str(resource.mime_type), resource.blob
            raw = _image_bytes(data)
            if raw is None:
                parts.append("[an image left out: its data is not valid base64]")
            elif len(images) >= MAX_RESULT_IMAGES:
                parts.append(f"[an image left out: at most {MAX_RESULT_IMAGES} are passed on]")
            else:
                images.append((mime, raw))
        else:
            parts.append(f"[{block.type} content left out: only text and images are passed on]")
    if not result.content and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts), tuple(images)


@dataclass
class Server:
    """One configured server: its rule, its connection while up, and why it is down."""

    rule: McpServerRule
    state: str = "starting"  # starting | running | down | stopped
    client: Client | None = None
    tools: dict[str, Tool] = field(default_factory=dict)
    error: str = ""
    restarts: int = 0
    dead: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    last_mail: float = float("-inf")
    told: bool = False  # the owner has a mail about this outage; cleared once it runs again


def make_client(rule: McpServerRule) -> Client:
    """An `mcp.Client` for the rule: a child process over stdio, or streamable HTTP."""
    import httpx2
    from mcp import Client, StdioServerParameters
    from mcp.client.streamable_http import streamable_http_client

    if rule.command:
        cwd = os.path.expanduser(rule.cwd) if rule.cwd else None
        params = StdioServerParameters(command=rule.command, args=list(rule.args),
                                       env=server_env(rule, environment()), cwd=cwd)
        return Client(params, read_timeout_seconds=rule.timeout_seconds)
    assert rule.url is not None
    http = httpx2.AsyncClient(headers=server_headers(rule, environment()),
                              timeout=httpx2.Timeout(30.0, read=rule.timeout_seconds + 30))
    transport = streamable_http_client(rule.url, http_client=http)
    return Client(transport, read_timeout_seconds=rule.timeout_seconds)


def describe_error(exc: BaseException) -> str:
    """One line for the owner: the innermost causes of an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(dict.fromkeys(describe_error(e) for e in exc.exceptions))
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


async def list_all_tools(client: Client) -> dict[str, Tool]:
    tools: dict[str, Tool] = {}
    cursor: str | None = None
    for _ in range(50):  # a server that pages forever is cut off, not waited for
        page = await client.list_tools(cursor=cursor, cache_mode="bypass")
        tools.update((tool.name, tool) for tool in page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def schema_problem(schema: Any) -> str | None:
    """Why the Messages API would refuse this input schema, or None: it must be a JSON Schema
    (draft 2020-12) of an object, and one bad tool would fail every request of every task
    (https://docs.claude.com/en/docs/agents-and-tools/tool-use/implement-tool-use)."""
    if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
        return f"its input schema is over {MAX_SCHEMA_CHARS} characters"
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return "its input schema does not describe an object"
    import jsonschema  # only where an MCP server is configured

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"its input schema is not valid JSON Schema: {exc.message}"
    return None


async def probe(rule: McpServerRule) -> dict[str, Tool]:
    """Start or reach the server once and list its tools (for `mailagent check`)."""
    try:
        async with asyncio.timeout(rule.timeout_seconds):
            async with make_client(rule) as client:
                return await list_all_tools(client)
    except MailagentError:
        raise
    except Exception as exc:
        raise MailagentError(f"MCP server {rule.name} ({rule.target}) does not start: "
                             f"{describe_error(exc)}") from None


class Connectors:
    """Owns every MCP server of the policy on the service's event loop."""

    def __init__(self, rules: Callable[[], tuple[McpServerRule, ...]],
                 tell_owner: Callable[[str, str], None],
                 audit: Callable[[str, str, dict[str, Any]], None]) -> None:
        self.rules, self.tell_owner, self.audit = rules, tell_owner, audit
        self.servers: dict[str, Server] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = asyncio.Event()

    # ------------------------------------------------------------ life cycle

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the servers in line with the policy until `stop`; then stop them all."""
        self.loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                self.sync()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), SYNC_SECONDS)
        finally:
            await self.shutdown()

    async def started(self, timeout: float) -> None:
        """Wait until every server was tried once, so that tasks waiting since before the
        start find their tools; a server slower than `timeout` is not waited for."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stopping.is_set() or (self.loop is not None and all(
                    s.state != "starting" for s in self.servers.values())):
                return
            await asyncio.sleep(0.1)

    def sync(self) -> None:
        """Start servers new in the policy, stop removed ones, restart changed ones."""
        wanted = {rule.name: rule for rule in self.rules()}
        for name, server in list(self.servers.items()):
            rule = wanted.get(name)
            if rule is None or rule.connection() != server.rule.connection():
                log.info("MCP server %s %s", name, "removed from the policy" if rule is None
                         else "changed in the policy: restarting it")
                self.servers.pop(name)
                if server.task is not None:
                    server.task.cancel()
            elif rule != server.rule:
                server.rule = rule  # only tool verdicts changed: no restart needed
        for name, rule in wanted.items():
            if name not in self.servers:
                server = Server(rule)
                self.servers[name] = server
                server.task = asyncio.create_task(self.supervise(server), name=f"mcp-{name}")

    async def shutdown(self) -> None:
        self.stopping.set()
        tasks = [s.task for s in self.servers.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        for server in self.servers.values():
            server.state = "stopped"
        log.info("MCP servers stopped")

    async def supervise(self, server: Server) -> None:
        """Run one server; when it stops, start it again after a pause that grows."""
        failures = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            reason = await self.serve(server)
            server.client, server.tools = None, {}
            if self.stopping.is_set():
                break
            failures = 1 if time.monotonic() - started > STABLE_SECONDS else failures + 1
            delay = min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
            server.state, server.error, server.restarts = "down", reason, server.restarts + 1
            self.report(server, reason, delay)
            await asyncio.sleep(delay)

    async def serve(self, server: Server) -> str:
        """Connect, list the tools, and stay until the server dies; why it ended."""
        rule = server.rule
        server.state, server.dead = "starting", asyncio.Event()
        try:
            async with contextlib.AsyncExitStack() as stack:
                async with asyncio.timeout(rule.timeout_seconds):  # a server that never answers
                    client = await stack.enter_async_context(make_client(rule))
                    tools = await list_all_tools(client)
                server.client, server.tools, server.state = client, tools, "running"
                server.told = False
                log.info("MCP server %s running (%s over %s): %d tools", rule.name,
                         rule.target, rule.transport, len(tools))
                self.audit("mcp.server", f"{rule.name} running", {
                    "server": rule.name, "state": "running", "tools": sorted(tools)})
                return await self.watch(server, client)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return describe_error(exc)

    async def watch(self, server: Server, client: Client) -> str:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.dead.wait(), HEALTH_SECONDS)
            if server.dead.is_set():
                return server.error or "it stopped answering"
            try:  # also picks up tools the server added or dropped
                async with asyncio.timeout(PING_TIMEOUT):
                    server.tools = await list_all_tools(client)
            except Exception as exc:
                return f"it stopped answering ({describe_error(exc)})"

    def report(self, server: Server, reason: str, delay: float) -> None:
        """Log, record and (at most every few minutes) mail that a server stopped."""
        name = server.rule.name
        log.warning("MCP server %s stopped: %s; restarting it in %g s (restart %d)", name,
                    reason, delay, server.restarts)
        self.audit("mcp.server", f"{name} stopped: {reason}; restarting in {delay:g} s",
                   {"server": name, "state": "down", "restarts": server.restarts})
        now = time.monotonic()
        if server.told or now - server.last_mail < MAIL_EVERY_SECONDS:
            return  # one mail per outage, and no more often than that if it keeps crashing
        server.last_mail, server.told = now, True
        self.tell_owner(
            f"mailagent: MCP server {name} stopped",
            f"The MCP server `{name}` ({server.rule.target}) stopped: {reason}.\n\nmailagent "
            f"restarts it by itself (next try in {delay:g} s, then at longer intervals, up to "
            f"{BACKOFF_MAX:g} s); this is the only mail about it until it runs again. Its "
            "tools are not offered while it is down. `mailagent status` shows how it stands; "
            "`mailagent check` starts it once and shows any error.")

    # ------------------------------------------------------------ for tasks

    def offered(self) -> list[Offered]:
        """Tools of running servers that the policy allows or asks for (never deny or
        unlisted ones: those are not offered, and refused if called anyway)."""
        found = []
        for server in self.servers.values():
            if server.state != "running":
                continue
            for name, tool in sorted(server.tools.items()):
                if server.rule.verdict(name) in ("allow", "ask"):
                    found.append(Offered(server.rule, name, tool.description or "",
                                         dict(tool.input_schema)))
        return found

    def call_from_thread(self, server: str, tool: str, arguments: dict[str, Any]) -> McpResult:
        """Run `call` on the service's loop from a worker thread and wait for it."""
        if self.loop is None:
            raise ToolError("MCP connectors are not running")
        rule = self.servers[server].rule if server in self.servers else None
        wait = (rule.timeout_seconds if rule else 60.0) + PING_TIMEOUT + 5
        future = asyncio.run_coroutine_threadsafe(self.call(server, tool, arguments), self.loop)
        try:
            return future.result(wait)
        except TimeoutError:
            future.cancel()
            raise ToolError(f"MCP server {server} gave no answer in {wait:g} s") from None

    async def call(self, name: str, tool: str, arguments: dict[str, Any]) -> McpResult:
        server = self.servers.get(name)
        if server is None or server.client is None or server.state != "running":
            why = f" ({server.error})" if server is not None and server.error else ""
            raise ToolError(f"MCP server {name} is not running{why}; mailagent is restarting "
                            "it: try again later or do without it")
        client = server.client
        try:
            result = await asyncio.wait_for(client.call_tool(tool, arguments),
                                            server.rule.timeout_seconds)
            text, images = result_parts(result)
            return McpResult(text, bool(result.is_error), images)
        except Exception as exc:
            reason = describe_error(exc)
        if not await self.answers(client):
            server.error = f"it stopped during a call of {tool} ({reason})"
            server.dead.set()
            raise ToolError(f"MCP server {name} stopped during the call ({reason}); "
                            "mailagent restarts it: the call may or may not have taken effect")
        raise ToolError(f"MCP server {name} refused the call: {reason}")

    @staticmethod
    async def answers(client: Client) -> bool:
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                await client.list_tools(cache_mode="bypass")
        except Exception:
            return False
        return True



def check_servers(rules: tuple[McpServerRule, ...]) -> tuple[list[str], list[str]]:
    """For `mailagent check`: per server whether it starts and each tool with its decision;
    and one error line per server that does not start."""
    lines: list[str] = []
    errors: list[str] = []
    for rule in rules:
        try:
            tools = asyncio.run(probe(rule))
        except MailagentError as exc:
            errors.append(str(exc))
            continue
        lines.append(f"MCP server {rule.name} ({rule.transport}: {rule.target}) starts, "
                     f"{len(tools)} tool(s):")
        for name in sorted(set(tools) | set(dict(rule.tools))):
            verdict = rule.verdict(name) or "deny (unlisted)"
            missing = "" if name in tools else " (listed, but the server has no such tool)"
            if name in tools and (problem := schema_problem(tools[name].input_schema)):
                missing = f" (not offered: {problem})"
            lines.append(f"    {exposed_name(rule.name, name)}: {verdict}{missing}")
    return lines, errors
