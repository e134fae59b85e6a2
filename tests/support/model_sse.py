"""The Server-Sent Events of a streamed answer from the Messages API double.

``"stream": true`` requests are answered with Server-Sent Events in the real
API's order (``message_start``, ``ping``, ``content_block_start``,
``content_block_delta`` with ``text_delta`` / ``citations_delta`` / ``input_json_delta``,
``content_block_stop``, ``message_delta``, ``message_stop``), chunked-encoded, so
``client.messages.stream(...)`` / ``get_final_message()`` and
``create(stream=True)`` work.  Errors on a streaming request are plain JSON with
the HTTP status, as with the real API (errors happen before the stream starts),
except an overload in the middle of a stream, which is an ``error`` event after
``message_start``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["sse_events", "stream_events"]


def stream_events(
    message: Mapping[str, Any], failure: Mapping[str, str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """The events sent for ``message``; with a ``failure`` (``{"type", "message"}``) the
    stream starts and then ends with that error event."""
    events = list(sse_events(message))
    if failure is not None:  # https://docs.claude.com/en/docs/build-with-claude/streaming
        events = [*events[:2], ("error", {"type": "error", "error": dict(failure)})]
    return events


def _chunks(value: str, size: int) -> list[str]:
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def sse_events(message: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The SSE events of a streamed ``message`` (real API order and shapes)."""
    usage = dict(message["usage"])
    usage.pop("iterations", None)
    start_usage = {**usage, "output_tokens": 1}
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "stop_details": None}
    start["usage"] = start_usage
    yield "message_start", {"type": "message_start", "message": start}
    yield "ping", {"type": "ping"}
    for index, block in enumerate(message["content"]):
        kind = block.get("type")
        if kind == "text":
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            for citation in block.get("citations") or []:  # before the text, as the API does
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "citations_delta", "citation": citation},
                    },
                )
            for piece in _chunks(str(block["text"]), 12):
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
        elif kind in ("tool_use", "server_tool_use"):
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {**block, "input": {}},
                },
            )
            for piece in ["", *_chunks(json.dumps(block["input"]), 10)]:
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    },
                )
        elif kind == "compaction":
            start_block = {
                k: v for k, v in block.items() if k not in ("content", "encrypted_content")
            }
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {**start_block, "content": None},
                },
            )
            yield (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {
                        "type": "compaction_delta",
                        "content": block.get("content"),
                        "encrypted_content": block.get("encrypted_content"),
                    },
                },
            )
        else:  # any other block: sent whole
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": block,
                },
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {
                "stop_reason": message["stop_reason"],
                "stop_sequence": message["stop_sequence"],
                "stop_details": message.get("stop_details"),
            },
            "usage": usage,
        },
    )
    yield "message_stop", {"type": "message_stop"}
