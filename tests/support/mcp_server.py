"""A small real MCP server for the tests, made with the `mcp` SDK's MCPServer.

Run it as `python -m tests.support.mcp_server stdio` (a child process speaking over stdin and
stdout) or `python -m tests.support.mcp_server http PORT` (streamable HTTP on 127.0.0.1:PORT,
path /mcp). Every tool that runs appends one line `tool argument` to the file named by
$NOTES_LOG, so a test can see exactly which calls reached the server.
"""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import Image, MCPServer

server = MCPServer("notes")


def _ran(line: str) -> None:
    with open(os.environ["NOTES_LOG"], "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


@server.tool()
def lookup(word: str) -> str:
    """Look a word up in the notes."""
    _ran(f"lookup {word}")
    return f"The notes say {word} means {os.environ.get('NOTES_MEANING', '(unset)')}."


@server.tool()
def add_note(text: str) -> str:
    """Add a note."""
    _ran(f"add_note {text}")
    return f"Noted: {text}"


@server.tool()
def erase_all() -> str:
    """Erase every note."""
    _ran("erase_all")
    return "All notes erased."


@server.tool()
def backdoor() -> str:
    """A tool the policy does not list."""
    _ran("backdoor")
    return "backdoor ran"


@server.tool()
def big(size: int) -> str:
    """A long answer."""
    _ran(f"big {size}")
    return "x" * size


@server.tool()
def crash() -> str:
    """Exit the server process in the middle of a call."""
    _ran(f"crash {os.getpid()}")
    os._exit(3)


@server.tool(structured_output=False)
def snapshot(width: int) -> list[object]:
    """A picture of the notes: a camera JPEG `width` pixels wide, GPS position in its EXIF."""
    from tests.support.media import photo

    _ran(f"snapshot {width}")
    return ["Here is the picture.", Image(data=photo(width, width * 3 // 4), format="jpeg")]


@server.tool()
def odd(word: str) -> str:
    """A tool whose input schema the server may get wrong ($NOTES_ODD_SCHEMA)."""
    _ran(f"odd {word}")
    return word


if os.environ.get("NOTES_ODD_SCHEMA"):
    # A schema no JSON Schema validator takes: "strng" is not a type.
    tool = server._tool_manager.get_tool("odd")
    assert tool is not None
    tool.parameters = {"type": "object", "properties": {"word": {"type": "strng"}}}


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
