"""Connector rules: the `[mcp.<server>]` tables of the policy files, and allow / ask / deny for
one call of an MCP server's tool.

In: the parsed TOML of one policy file (its `mcp` table) and its text, to name lines. Out: frozen
`McpServerRule`s, and per call a verdict with the rule that decided. Side effects: none; secrets
are kept as references (`env:NAME`) and read from mailagent's environment only when a server
starts (`server_env`, `server_headers`), so no policy file ever needs to hold one in clear.
It must never: allow a tool the policy does not list (unlisted tools are denied), accept a table
it does not fully understand (a misspelt key would silently drop a rule, SECURITY.md A4), or
let a tool name be read two ways (server names hold no `__`, the separator of exposed names).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from mailagent.errors import PolicyError, unknown_key

Verdict = Literal["allow", "ask", "deny"]

PREFIX = "mcp__"  # exposed tool names are mcp__<server>__<tool>
SERVER_KEYS = ("command", "args", "cwd", "env", "url", "headers", "tools", "timeout_seconds",
               "max_output_chars")
VERDICTS = ("allow", "ask", "deny")
SERVER_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,30})$")
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "AUTH", "CREDENTIAL", "COOKIE")
MAX_EXPOSED_NAME = 64  # the Messages API's limit on a tool name
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_OUTPUT = 20_000


@dataclass(frozen=True)
class McpServerRule:
    """One `[mcp.<name>]` table: how to reach the server and what each of its tools may do."""

    name: str
    source: str  # "notes.toml:4", where the table starts
    command: str | None = None  # stdio: the program to start
    args: tuple[str, ...] = ()
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = ()  # NAME -> literal or "env:VAR" reference
    url: str | None = None  # streamable HTTP endpoint
    headers: tuple[tuple[str, str], ...] = ()  # header -> "env:VAR" reference
    tools: tuple[tuple[str, Verdict], ...] = ()
    timeout_seconds: float = DEFAULT_TIMEOUT
    max_output_chars: int = DEFAULT_MAX_OUTPUT

    @property
    def transport(self) -> str:
        return "stdio" if self.command else "http"

    @property
    def target(self) -> str:
        """What is started or reached, for logs and `check` (never a secret: those are refs)."""
        if self.command:
            return " ".join([self.command, *self.args])
        return str(self.url)

    def verdict(self, tool: str) -> Verdict | None:
        return dict(self.tools).get(tool)

    def connection(self) -> tuple[object, ...]:
        """What, when it changes, needs the server restarted (tool verdicts do not)."""
        return (self.command, self.args, self.cwd, self.env, self.url, self.headers,
                self.timeout_seconds)


@dataclass(frozen=True)
class McpDecision:
    verdict: Verdict
    rule: str
    reason: str
    path: Path | None = None  # nothing on disk is judged; kept for the Decision shape


def exposed_name(server: str, tool: str) -> str:
    return f"{PREFIX}{server}__{tool}"


def split_name(name: str) -> tuple[str, str] | None:
    """(server, tool) of an exposed name, or None; server names hold no `__`."""
    if not name.startswith(PREFIX):
        return None
    server, sep, tool = name[len(PREFIX):].partition("__")
    return (server, tool) if sep and server and tool else None


def decide_mcp(servers: tuple[McpServerRule, ...], name: str) -> McpDecision:
    """allow / ask / deny for calling the exposed tool `name`; unlisted tools are denied."""
    parts = split_name(name)
    if parts is None:
        return McpDecision("deny", "default: deny", f"{name!r} is not an MCP tool name")
    server, tool = parts
    rule = next((s for s in servers if s.name == server), None)
    if rule is None:
        return McpDecision("deny", "default: deny (no such MCP server)",
                           f"calling {tool!r} is denied: no [mcp.{server}] table in the "
                           "policies; the owner has not connected that server")
    verdict = rule.verdict(tool)
    if verdict is None:
        return McpDecision("deny", f"{rule.source} [mcp.{server}] unlisted",
                           f"calling {tool!r} of MCP server {server!r} is denied: it is not "
                           f"listed in [mcp.{server}.tools], and unlisted tools are denied")
    label = f'{rule.source} [mcp.{server}.tools] {tool} = "{verdict}"'
    why = {"allow": "is allowed", "ask": "needs the owner's approval", "deny": "is denied"}
    return McpDecision(verdict, label, f"calling {tool!r} of MCP server {server!r} "
                                       f"{why[verdict]} ({label})")


# ---------------------------------------------------------------------------------------------
# Loading


def parse_servers(table: object, text: str, file: Path) -> list[McpServerRule]:
    """The `mcp` table of one policy file; PolicyError naming the file, line and fix."""
    if table is None:
        return []
    if not isinstance(table, dict):
        raise _error(file, text, None, None, "mcp must be written as [mcp.<server>] tables")
    return [_server(name, entry, text, file) for name, entry in table.items()]


def _server(name: str, entry: object, text: str, file: Path) -> McpServerRule:
    def fail(message: str, key: str | None = None) -> PolicyError:
        return _error(file, text, name, key, message)

    if not SERVER_NAME.match(name):
        raise fail(f"MCP server name {name!r} must be letters, digits and '-' (up to 31), so "
                   "that tool names stay unambiguous")
    if not isinstance(entry, dict):
        raise fail(f"[mcp.{name}] must be a table with command or url, and tools")
    for key in entry:
        if key not in SERVER_KEYS:
            raise fail(unknown_key(key, SERVER_KEYS, f"[mcp.{name}]"), key)
    command, url = entry.get("command"), entry.get("url")
    if (command is None) == (url is None):
        raise fail(f"[mcp.{name}] needs exactly one of command (a program started over stdio) "
                   "or url (a streamable HTTP endpoint)")
    if command is not None and (not isinstance(command, str) or not command.strip()):
        raise fail("command must be the program to start, e.g. \"python3\"", "command")
    if url is not None:
        _check_url(url, fail)
    args = entry.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise fail('args must be a list of strings, e.g. ["-m", "notes_server"]', "args")
    cwd = entry.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or not cwd):
        raise fail("cwd must be a folder path in quotes", "cwd")
    if url is not None and (args or cwd or "env" in entry):
        raise fail("args, cwd and env belong to a command; a url server takes headers", "args")
    if command is not None and "headers" in entry:
        raise fail("headers belong to a url server; a command takes env", "headers")
    timeout = entry.get("timeout_seconds", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise fail(f"timeout_seconds = {timeout!r} must be a number above 0", "timeout_seconds")
    cap = entry.get("max_output_chars", DEFAULT_MAX_OUTPUT)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 100:
        raise fail(f"max_output_chars = {cap!r} must be a whole number from 100",
                   "max_output_chars")
    return McpServerRule(
        name=name, source=f"{file.name}:{_header_line(text, name)}", command=command,
        args=tuple(args), cwd=cwd, env=_env(entry.get("env", {}), fail),
        url=url, headers=_headers(entry.get("headers", {}), fail),
        tools=_tools(name, entry.get("tools", {}), fail), timeout_seconds=float(timeout),
        max_output_chars=cap)


def _check_url(url: object, fail: Any) -> None:
    if not isinstance(url, str):
        raise fail("url must be a string, e.g. \"http://127.0.0.1:8000/mcp\"", "url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise fail(f"url {url!r} must start with http:// or https:// and name a host", "url")
    if parts.username or parts.password:
        raise fail("url must not hold a user or password; give a header by reference instead, "
                   'e.g. headers = { Authorization = "env:NOTES_AUTH" }', "url")


def _env(table: object, fail: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(table, dict):
        raise fail('env must be a table, e.g. env = { TOKEN = "env:NOTES_TOKEN" }', "env")
    pairs = []
    for key, value in table.items():
        if not ENV_NAME.match(key) or not isinstance(value, str):
            raise fail(f"env.{key} must be a variable name with a string value", "env")
        if not value.startswith("env:") and any(w in key.upper() for w in SECRET_WORDS):
            raise fail(f"env.{key} looks like a secret written in clear; write "
                       f'{key} = "env:SOME_VARIABLE" and export SOME_VARIABLE for mailagent',
                       "env")
        _check_reference(value, f"env.{key}", fail)
        pairs.append((key, value))
    return tuple(pairs)


def _headers(table: object, fail: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(table, dict):
        raise fail('headers must be a table, e.g. { Authorization = "env:NOTES_AUTH" }',
                   "headers")
    pairs = []
    for key, value in table.items():
        if not isinstance(value, str) or not value.startswith("env:"):
            raise fail(f"headers.{key} must be a reference \"env:VARIABLE\": headers carry "
                       "credentials, which never go into a policy file in clear", "headers")
        _check_reference(value, f"headers.{key}", fail)
        pairs.append((str(key), value))
    return tuple(pairs)


def _check_reference(value: str, where: str, fail: Any) -> None:
    if value.startswith("env:") and not ENV_NAME.match(value[4:]):
        raise fail(f"{where} = {value!r}: after env: comes an environment variable name", "env")


def _tools(server: str, table: object, fail: Any) -> tuple[tuple[str, Verdict], ...]:
    if not isinstance(table, dict):
        raise fail(f'tools must be a table [mcp.{server}.tools] of tool = "allow" | "ask" | '
                   '"deny"', "tools")
    pairs: list[tuple[str, Verdict]] = []
    for tool, verdict in table.items():
        if not TOOL_NAME.match(tool) or len(exposed_name(server, tool)) > MAX_EXPOSED_NAME:
            raise fail(f"tool name {tool!r} must be letters, digits, '_' and '-', and "
                       f"mcp__{server}__{tool} at most {MAX_EXPOSED_NAME} characters", tool)
        if verdict not in VERDICTS:
            raise fail(f'tools.{tool} = {verdict!r} is not one of "allow" | "ask" | "deny"',
                       tool)
        pairs.append((tool, verdict))
    return tuple(pairs)


def _header_line(text: str, name: str) -> int:
    pattern = re.compile(rf"""^\s*\[\s*mcp\s*\.\s*["']?{re.escape(name)}["']?\s*\]""")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return 1


def _error(file: Path, text: str, name: str | None, key: str | None,
           message: str) -> PolicyError:
    line = _header_line(text, name) if name else 1
    if name and key:
        lines = text.splitlines()
        keyed = re.compile(rf"""^\s*["']?{re.escape(key)}["']?\s*[=.]""")
        for number in range(line + 1, len(lines) + 1):
            if lines[number - 1].lstrip().startswith("[") and not \
                    lines[number - 1].lstrip().startswith(f"[mcp.{name}."):
                break
            if keyed.match(lines[number - 1]):
                line = number
                break
    return PolicyError(f"{file} line {line}: {message}")


# ---------------------------------------------------------------------------------------------
# Secrets by reference, read when a server starts


def _value(value: str, where: str, environ: Mapping[str, str]) -> str:
    if not value.startswith("env:"):
        return value
    name = value[4:]
    if name not in environ:
        raise PolicyError(f"{where} refers to ${name}, which is not set in mailagent's "
                          f"environment; export {name} before starting mailagent")
    return environ[name]


def server_env(rule: McpServerRule, environ: Mapping[str, str]) -> dict[str, str]:
    """The extra environment of a stdio server (the SDK adds only PATH, HOME and the like)."""
    return {k: _value(v, f"[mcp.{rule.name}] env.{k}", environ) for k, v in rule.env}


def server_headers(rule: McpServerRule, environ: Mapping[str, str]) -> dict[str, str]:
    return {k: _value(v, f"[mcp.{rule.name}] headers.{k}", environ) for k, v in rule.headers}
