"""What the Messages API double receives and what it is scripted to answer.

:meth:`ModelServer.script <tests.support.model_server.ModelServer.script>` appends replies
to a FIFO queue (:class:`Script`) and each ``POST /v1/messages`` that makes the model sample
consumes one; when the queue is empty :attr:`ModelServer.default` (``text("done")``) is used.
A reply is

* :func:`text` / :func:`tool_use` / :func:`tool_uses` -- an assistant message;
* :func:`error` -- an Anthropic error body with an HTTP status (and ``retry-after``);
* :func:`hang` -- "the next scripted reply comes ``seconds`` late" (one request
  consumes the hang *and* the reply after it); :func:`delayed` is the wrapping form;
* any callable ``(RecordedRequest) -> Reply`` for answers that depend on the request.

:func:`cut_tool_use`, :func:`refusal`, :func:`pause_turn` and :func:`context_window_exceeded`
answer as the API does at those stop reasons; :func:`overloaded_mid_stream` and
:func:`spend_limit` as it does when overloaded during a stream or out of spend.
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

__all__ = [
    "DelayedReply",
    "ErrorReply",
    "Hang",
    "MessageReply",
    "ModelServerError",
    "RecordedRequest",
    "Reply",
    "ReplyFunction",
    "Script",
    "ScriptItem",
    "context_window_exceeded",
    "cut_tool_use",
    "delayed",
    "error",
    "hang",
    "overloaded_mid_stream",
    "pause_turn",
    "refusal",
    "resolve",
    "spend_limit",
    "text",
    "tool_use",
    "tool_uses",
]


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request received by :class:`ModelServer`."""

    method: str
    path: str
    """The path without the query string, e.g. ``/v1/messages``."""
    headers: dict[str, str]
    """Header names are lower-case."""
    body: dict[str, Any]
    """The parsed JSON body (``{}`` for a request without a JSON object body)."""
    stream: bool
    received_at: float
    """``time.monotonic()`` when the request was read."""
    query: str = ""

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or [])

    @property
    def last_message(self) -> dict[str, Any]:
        """The last entry of ``messages`` (``KeyError``-free: ``{}`` when there is none)."""
        messages = self.messages
        return messages[-1] if messages else {}

    @property
    def last_text(self) -> str:
        """All text of the last message joined (string content or its ``text`` blocks)."""
        return _content_text(self.last_message.get("content"))

    @property
    def tool_results(self) -> list[dict[str, Any]]:
        """The ``tool_result`` blocks of the last message."""
        content = self.last_message.get("content")
        if not isinstance(content, list):
            return []
        return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]

    @property
    def betas(self) -> list[str]:
        """The ``anthropic-beta`` header split on commas."""
        raw = self.headers.get("anthropic-beta", "")
        return [part.strip() for part in raw.split(",") if part.strip()]

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(b.get("text", ""))
            for b in content
            if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True)
class MessageReply:
    """An assistant message.  ``content`` blocks are API-shaped dicts."""

    content: tuple[dict[str, Any], ...]
    stop_reason: str = "end_turn"
    usage: Mapping[str, Any] | None = None
    """Overrides for the computed usage fields (any subset)."""
    stop_sequence: str | None = None
    model: str | None = None
    """The ``model`` reported back; default: the request's model."""
    stop_details: Mapping[str, Any] | None = None
    """E.g. ``{"type": "refusal", "category": "cyber", "explanation": "..."}``."""
    stream_error: Mapping[str, str] | None = None
    """An ``error`` event after ``message_start`` (the stream then ends), as the API sends
    when it is overloaded mid-stream; a request that does not stream gets it as a 529."""


@dataclass(frozen=True)
class ErrorReply:
    """An Anthropic-style error: ``{"type": "error", "error": {"type", "message"}}``."""

    status: int
    error_type: str
    message: str
    retry_after: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Any] | None = None  # error.details, e.g. a spend limit's error_code


@dataclass(frozen=True)
class DelayedReply:
    """``reply``, answered after ``seconds``."""

    seconds: float
    reply: Reply


@dataclass(frozen=True)
class Hang:
    """Queue marker: the request that consumes it waits ``seconds`` and is then
    answered with the next queued reply (or :attr:`ModelServer.default`)."""

    seconds: float


ReplyFunction: TypeAlias = Callable[[RecordedRequest], "Reply"]
Reply: TypeAlias = MessageReply | ErrorReply | DelayedReply | ReplyFunction
ScriptItem: TypeAlias = Reply | Hang


def _tool_use_id() -> str:
    return "toolu_" + secrets.token_hex(12)


def text(
    value: str,
    *,
    stop_reason: str = "end_turn",
    usage: Mapping[str, int] | None = None,
    stop_sequence: str | None = None,
    model: str | None = None,
) -> MessageReply:
    """An assistant message with one text block (``stop_reason`` ``"end_turn"``)."""
    return MessageReply(
        content=({"type": "text", "text": value},),
        stop_reason=stop_reason,
        usage=usage,
        stop_sequence=stop_sequence,
        model=model,
    )


def tool_uses(
    calls: Sequence[tuple[str, Mapping[str, Any]] | tuple[str, Mapping[str, Any], str]],
    *,
    text: str | None = None,
    stop_reason: str = "tool_use",
    usage: Mapping[str, int] | None = None,
    model: str | None = None,
) -> MessageReply:
    """An assistant message: optional leading text, then one ``tool_use`` per
    ``(name, input)`` or ``(name, input, tool_use_id)``."""
    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "text", "text": text})
    for call in calls:
        name, tool_input = call[0], call[1]
        block_id = call[2] if len(call) == 3 else _tool_use_id()
        content.append(
            {"type": "tool_use", "id": block_id, "name": name, "input": dict(tool_input)}
        )
    return MessageReply(content=tuple(content), stop_reason=stop_reason, usage=usage, model=model)


def tool_use(
    name: str,
    input: Mapping[str, Any],
    tool_use_id: str | None = None,
    *,
    text: str | None = None,
    stop_reason: str = "tool_use",
    usage: Mapping[str, int] | None = None,
    model: str | None = None,
) -> MessageReply:
    """An assistant message calling one tool (``stop_reason`` ``"tool_use"``)."""
    call = (name, input, tool_use_id or _tool_use_id())
    return tool_uses([call], text=text, stop_reason=stop_reason, usage=usage, model=model)


def cut_tool_use(
    name: str,
    partial_input: Mapping[str, Any],
    *,
    text: str | None = None,
    stop_reason: str = "max_tokens",
) -> MessageReply:
    """What the API answers when the output limit (``max_tokens``) or the context window
    (``model_context_window_exceeded``) cuts the model off inside a tool call: the partial
    ``tool_use`` is the last block, its input only what was written so far.
    https://docs.claude.com/en/docs/build-with-claude/handling-stop-reasons"""
    return tool_use(name, partial_input, text=text, stop_reason=stop_reason)


def context_window_exceeded(partial_text: str = "The answer began") -> MessageReply:
    """The model stopped because the context window is full.
    https://docs.claude.com/en/docs/build-with-claude/handling-stop-reasons"""
    return text(partial_text, stop_reason="model_context_window_exceeded")


def refusal(
    partial: Sequence[Mapping[str, Any]] = (),
    *,
    category: str | None = None,
    explanation: str | None = None,
) -> MessageReply:
    """The model declined (``stop_reason`` ``"refusal"``), with what it had written before,
    possibly a partial ``tool_use``, and ``stop_details`` naming why when the API knows.
    https://docs.claude.com/en/docs/test-and-evaluate/strengthen-guardrails/handle-streaming-refusals"""
    details = {"type": "refusal", "category": category, "explanation": explanation}
    return MessageReply(content=tuple(dict(b) for b in partial), stop_reason="refusal",
                        stop_details=details)


def pause_turn(partial_text: str = "Still working") -> MessageReply:
    """A long turn the API paused (``stop_reason`` ``"pause_turn"``); sending it back as the
    last assistant message lets the model continue it.
    https://docs.claude.com/en/docs/build-with-claude/handling-stop-reasons"""
    return text(partial_text, stop_reason="pause_turn")


def error(
    status: int,
    error_type: str,
    message: str,
    retry_after: float | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    details: Mapping[str, Any] | None = None,
) -> ErrorReply:
    """An error reply, e.g. ``error(529, "overloaded_error", "Overloaded", retry_after=0.01)``.

    The SDK ignores ``retry-after`` values <= 0 (it then backs off ~0.4-0.5 s), so
    use a small positive value such as 0.01 for fast retries.  ``headers`` adds
    more, e.g. ``{"x-should-retry": "false"}``; ``details`` becomes ``error.details``.
    """
    return ErrorReply(status, error_type, message, retry_after, dict(headers or {}), details)


def overloaded_mid_stream() -> MessageReply:
    """A stream that starts and then fails with an ``overloaded_error`` event."""
    return MessageReply(content=({"type": "text", "text": "never sent"},),
                        stream_error={"type": "overloaded_error", "message": "Overloaded"})


def spend_limit() -> ErrorReply:
    """The tier's monthly cap reached: a 429 ``rate_limit_error`` with no retry-after whose
    ``error.details.error_code`` is ``enforced_spend_limit_reached`` (retrying fails until the
    month turns; https://docs.claude.com/en/api/errors, https://docs.claude.com/en/api/rate-limits)."""
    return error(429, "rate_limit_error", "You have reached your organization's monthly usage "
                 "limit for your tier.", details={"error_code": "enforced_spend_limit_reached"},
                 headers={"x-should-retry": "false"})


def hang(seconds: float) -> Hang:
    """Queue marker: delay the next scripted reply by ``seconds``."""
    return Hang(seconds)


def delayed(seconds: float, reply: Reply) -> DelayedReply:
    """``reply``, answered after ``seconds``."""
    return DelayedReply(seconds, reply)


class ModelServerError(AssertionError):
    """A reply callable (or the server itself) failed; raised by :meth:`ModelServer.stop`."""


# --------------------------------------------------------------------------- the script


class Script:
    """The FIFO queue of scripted replies and :func:`hang` markers, safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[ScriptItem] = deque()

    def extend(self, items: Sequence[ScriptItem]) -> None:
        with self._lock:
            self._queue.extend(items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    def next_reply(self, default: Reply) -> tuple[float, Reply]:
        """The next reply (``default`` when the queue is empty) and the delay of the
        :func:`hang` markers consumed before it."""
        delay = 0.0
        with self._lock:
            while True:
                item: ScriptItem = self._queue.popleft() if self._queue else default
                if isinstance(item, Hang):
                    delay += item.seconds
                    continue
                return delay, item


def resolve(reply: Reply, request: RecordedRequest) -> tuple[float, MessageReply | ErrorReply]:
    """``reply`` with its :func:`delayed` wrappers and callables worked out, and the delay
    they add; a callable's exception propagates."""
    delay = 0.0
    for _ in range(100):
        if isinstance(reply, DelayedReply):
            delay += reply.seconds
            reply = reply.reply
        elif isinstance(reply, (MessageReply, ErrorReply)):
            return delay, reply
        else:
            reply = reply(request)
    raise ModelServerError("reply callables nested too deeply")
