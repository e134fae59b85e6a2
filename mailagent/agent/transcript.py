"""Transcript: a conversation's history as plain text, for the model that writes its summary.

In: history entries. Out: text with tool calls and results shortened. No side effects.
"""

from __future__ import annotations

import json

from mailagent.store import HistoryItem


def render_transcript(items: list[HistoryItem]) -> str:
    """History as plain text for the summariser; tool output shortened."""
    lines = []
    for item in items:
        if item.kind == "summary":
            lines.append(f"[earlier summary]\n{item.content}")
            continue
        for block in item.content:
            kind = block.get("type")
            if kind == "text":
                lines.append(f"[{item.role}] {block['text']}")
            elif kind == "tool_use":
                lines.append(f"[tool call] {block['name']} {json.dumps(block.get('input'))[:500]}")
            elif kind == "tool_result":
                lines.append(f"[tool result] {str(block.get('content'))[:1000]}")
    return "\n".join(lines)
