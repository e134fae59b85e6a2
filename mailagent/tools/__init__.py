"""Tools offered to the model: one module per family, each tool a typed, documented method."""

from mailagent.errors import ToolError

__all__ = ["ToolError"]
