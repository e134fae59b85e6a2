"""Transcript: a conversation's history as plain text, for the model that writes its summary.

In: history entries. Out: text with tool calls and results shortened (the API's web searches and
fetches by their query or address; what they found is left out, as the answer cites it).
No side effects.
"""

from __future__ import annotations

import json
from typing import Any

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
            elif kind == "server_tool_use":  # the API's web search or fetch
                lines.append(f"[{block.get('name')}] {json.dumps(block.get('input'))[:500]}")
            elif kind == "tool_result":
                lines.append(f"[tool result] {_result_text(block.get('content'))[:1000]}")
            elif kind in ("image", "document"):
                lines.append(f"[{item.role}] [{'an image' if kind == 'image' else 'a PDF'}]")
    return "\n".join(lines)


def _result_text(content: Any) -> str:
    """A tool result's text; its images and PDFs named, never their base64 data."""
    if not isinstance(content, list):
        return str(content)
    names = {"image": "[an image]", "document": "[a PDF]"}
    return "\n".join(str(b.get("text", "")) if b.get("type") == "text" else
                     names.get(str(b.get("type")), f"[{b.get('type')}]")
                     for b in content if isinstance(b, dict))
