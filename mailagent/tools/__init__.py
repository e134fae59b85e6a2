"""Tools offered to the model: one module per family, each tool a typed, documented method."""


class ToolError(Exception):
    """A tool call that cannot be done; the message goes back to the model as an error."""
