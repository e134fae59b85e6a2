"""The Messages API's rules for its computer-use tool, as the test double enforces them.

The tool is one the API defines: its type names the version, its name is always ``computer``,
it takes only its own fields (the display's size required, in whole pixels) and it is offered
only with the beta header of its version
(https://docs.claude.com/en/docs/agents-and-tools/tool-use/computer-use-tool: "computer_20250124
... Beta header: computer-use-2025-01-24", "computer_20251124 ... computer-use-2025-11-24"; the
fields are the SDK's ``BetaToolComputerUse20250124Param``). Without its beta the type is an
unknown tag, as for any unknown input.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from tests.support.model_replies import MessageReply, tool_use

FIELDS = frozenset({"type", "name", "display_width_px", "display_height_px", "display_number",
                    "allowed_callers", "cache_control", "defer_loading", "input_examples",
                    "strict"})
# type -> (the beta it needs, the fields it takes)
COMPUTER_TOOLS: dict[str, tuple[str, frozenset[str]]] = {
    "computer_20241022": ("computer-use-2024-10-22", FIELDS),
    "computer_20250124": ("computer-use-2025-01-24", FIELDS),
    "computer_20251124": ("computer-use-2025-11-24", FIELDS | {"enable_zoom"}),
}
ACTIONS_20250124 = frozenset({
    "key", "hold_key", "type", "cursor_position", "mouse_move", "left_mouse_down",
    "left_mouse_up", "left_click", "left_click_drag", "right_click", "middle_click",
    "double_click", "triple_click", "scroll", "wait", "screenshot"})


def is_computer_tool(tool: object) -> bool:
    kind = tool.get("type") if isinstance(tool, dict) else None
    return isinstance(kind, str) and kind.startswith("computer_")


def computer_tool_is_valid(body: Mapping[str, Any], betas: Collection[str]) -> str | None:
    """The first computer-use tool definition the API refuses, worded as the API words it."""
    for index, tool in enumerate(body.get("tools") or []):
        if not is_computer_tool(tool):
            continue
        kind = tool["type"]
        known = COMPUTER_TOOLS.get(kind)
        if known is None or known[0] not in betas:
            return (f"tools.{index}: Input tag '{kind}' found using 'type' does not match any "
                    "of the expected tags")
        for key in tool:
            if key not in known[1]:
                return f"tools.{index}.{kind}.{key}: Extra inputs are not permitted"
        if tool.get("name") != "computer":
            return f"tools.{index}.{kind}.name: Input should be 'computer'"
        for key in ("display_width_px", "display_height_px"):
            value = tool.get(key)
            if value is None:
                return f"tools.{index}.{kind}.{key}: Field required"
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                return f"tools.{index}.{kind}.{key}: Input should be a valid integer"
    return None


def computer(action: str, **fields: Any) -> MessageReply:
    """An assistant message using the computer-use tool as the model does: one of the
    documented actions of computer_20250124, with its fields (``coordinate=[x, y]``,
    ``text=...``, ``scroll_direction=...``)."""
    if action not in ACTIONS_20250124:
        raise ValueError(f"the model does not send the computer action {action!r}")
    return tool_use("computer", {"action": action, **fields})
