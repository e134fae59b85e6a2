"""Tools offered to the model: one module per family, each tool a typed, documented method."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from anthropic import beta_tool
from anthropic.lib.tools import BetaFunctionTool


class ToolError(Exception):
    """A tool call that cannot be done; the message goes back to the model as an error."""


def as_tool(function: Callable[..., Any]) -> BetaFunctionTool[Any]:
    """A tool from a method's signature and docstring, or one made already: MCP tools come
    with their server's input schema."""
    return function if isinstance(function, BetaFunctionTool) else beta_tool(function)
