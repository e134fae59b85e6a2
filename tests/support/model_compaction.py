"""Server-side compaction in the Messages API double (anthropic SDK 2.x, beta API).

Two request shapes exist,

* ``context_management={"edits": [{"type": "compact_20260112", "trigger":
  {"type": "input_tokens", "value": N}, "pause_after_compaction": bool,
  "instructions": str}]}`` with beta ``compact-2026-01-12`` -- automatic
  compaction once the input exceeds the trigger (default 150 000 tokens);
* ``compaction={"type": "summarize", "instructions": str}`` with beta
  ``compact-2026-09-04`` -- an explicit compaction request whose answer is only
  the compaction block, ``stop_reason`` ``"compaction"``.

With :attr:`ModelServer.supports_compaction` ``False`` (default) both are ignored,
like an endpoint that does not know them.  With ``True``: an explicit
``compaction`` request (or an edit whose trigger is exceeded and that has
``pause_after_compaction``) is answered with ``[{"type": "compaction", "content":
<summary>, ...}]`` and ``stop_reason`` ``"compaction"`` *without* consuming a
scripted reply (the model did not sample); an exceeded trigger without pause
prepends that block to the scripted message.  ``usage.iterations`` then holds a
``compaction`` and a ``message`` entry.  Message blocks before a ``compaction``
block in the request are dropped from the token estimate, as the API drops them.
Without the beta header ``compact-2026-01-12`` a ``context_management`` field or a
``compaction`` block in the history is refused, as the API refuses unknown input.  The
summary text is :attr:`ModelServer.compaction_summary` (a string or a callable of the
request).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from tests.support.model_accounting import count_tokens
from tests.support.model_replies import RecordedRequest

__all__ = [
    "DEFAULT_COMPACTION_TRIGGER",
    "Summary",
    "compaction_conflict",
    "iterations",
    "plan_compaction",
]

DEFAULT_COMPACTION_TRIGGER = 150_000
"""Input tokens above which ``compact_20260112`` compacts when no trigger is given."""

Summary: TypeAlias = str | Callable[[RecordedRequest], str]


def compaction_conflict(body: Mapping[str, Any]) -> str | None:
    """The API's message when ``body`` asks for both shapes of compaction at once."""
    if body.get("compaction") is not None and body.get("context_management") is not None:
        return "compaction: cannot be combined with context_management"
    return None


def plan_compaction(
    request: RecordedRequest, summary: Summary
) -> tuple[dict[str, Any] | None, bool]:
    """The compaction block ``request`` is answered with (``None`` when none) and whether it
    is the whole answer (the model does not sample)."""
    body = request.body
    if isinstance(body.get("compaction"), dict):
        return _compaction_block(request, summary, True), True
    edit = _compaction_edit(body)
    if edit is not None:
        trigger = edit.get("trigger") or {}
        threshold = int(trigger.get("value", DEFAULT_COMPACTION_TRIGGER))
        if count_tokens(body, drop_before_compaction=True) > threshold:
            return _compaction_block(request, summary, False), bool(
                edit.get("pause_after_compaction")
            )
    return None, False


def iterations(
    body: Mapping[str, Any], usage: Mapping[str, Any], compaction_out: int, message_out: int
) -> list[dict[str, Any]]:
    """``usage.iterations`` of an answer with a compaction block: the compaction's own
    sampling, then the message's (``usage`` holds the message's input and cache fields)."""
    return [
        {
            "type": "compaction",
            "input_tokens": count_tokens(body, drop_before_compaction=True),
            "output_tokens": compaction_out,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
        {
            "type": "message",
            "input_tokens": usage["input_tokens"],
            "output_tokens": message_out,
            "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
            "cache_read_input_tokens": usage["cache_read_input_tokens"],
        },
    ]


def _compaction_edit(body: Mapping[str, Any]) -> dict[str, Any] | None:
    management = body.get("context_management")
    if not isinstance(management, dict):
        return None
    for edit in management.get("edits") or []:
        if isinstance(edit, dict) and edit.get("type") == "compact_20260112":
            return edit
    return None


def _compaction_block(request: RecordedRequest, summary: Summary, signed: bool) -> dict[str, Any]:
    content = summary(request) if callable(summary) else summary
    block: dict[str, Any] = {
        "type": "compaction",
        "content": content,
        "encrypted_content": None,
    }
    if signed:
        block["signature"] = "sig_" + secrets.token_hex(16)
    return block
