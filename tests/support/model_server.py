"""A loopback fake of the Anthropic Messages API, driven by the real ``anthropic`` SDK.

``ModelServer.start()`` serves HTTP/1.1 on 127.0.0.1 (free port) from a
``ThreadingHTTPServer`` in a daemon thread; point a client at it with
``anthropic.Anthropic(base_url=server.base_url, api_key="test")``.  Every request
is recorded in :attr:`ModelServer.requests` (:class:`RecordedRequest`).

Answers are scripted: :meth:`ModelServer.script` appends replies to a FIFO queue
and each ``POST /v1/messages`` that makes the model sample consumes one; when the
queue is empty :attr:`ModelServer.default` (``text("done")``) is used.  A reply is

* :func:`text` / :func:`tool_use` / :func:`tool_uses` -- an assistant message;
* :func:`error` -- an Anthropic error body with an HTTP status (and ``retry-after``);
* :func:`hang` -- "the next scripted reply comes ``seconds`` late" (one request
  consumes the hang *and* the reply after it); :func:`delayed` is the wrapping form;
* any callable ``(RecordedRequest) -> Reply`` for answers that depend on the request.

``"stream": true`` requests are answered with Server-Sent Events in the real
API's order (``message_start``, ``ping``, ``content_block_start``,
``content_block_delta`` with ``text_delta`` / ``input_json_delta``,
``content_block_stop``, ``message_delta``, ``message_stop``), chunked-encoded, so
``client.messages.stream(...)`` / ``get_final_message()`` and
``create(stream=True)`` work.  Errors on a streaming request are plain JSON with
the HTTP status, as with the real API (errors happen before the stream starts).

Other endpoints: ``POST /v1/messages/count_tokens`` (``{"input_tokens": N}``),
``GET /v1/models`` and ``GET /v1/models/{id}``; anything else is a 404 error body.

Token accounting (an approximation, deterministic and good enough to prove that
prompt caching is *wired up*, not to predict real bills):

* The prompt is flattened into blocks in the real prefix order: each tool
  definition, then the system prompt (a string counts as one text block), then
  every content block of every message (a string ``content`` is one text block).
  Each block is serialised as compact, key-sorted JSON *without* its
  ``cache_control`` key, together with its section/role.  A prefix "costs"
  ``cumulative characters // 4`` tokens; the whole prompt costs at least 1.
  ``count_tokens`` returns exactly that total.
* A block carrying ``cache_control`` is a breakpoint; the top-level
  ``cache_control`` request parameter puts a breakpoint on the last block.  For
  each request the server looks for the longest prefix, ending at most
  :attr:`ModelServer.cache_lookback_blocks` (20, like the real API) blocks before
  some breakpoint, that an *earlier* request wrote (same model, same serialised
  prefix): its tokens are ``cache_read_input_tokens``.  The remainder up to the
  last breakpoint is ``cache_creation_input_tokens``; everything after it is
  ``input_tokens``.  Every breakpoint prefix is then written.  Entries never
  expire (no TTL); :meth:`ModelServer.clear_cache` forgets them.  Prefixes under
  :attr:`ModelServer.min_cacheable_tokens` (default 0; real models need ~1024+)
  are neither read nor written.  Only ``model`` and the prompt blocks are part of
  the cache key (not ``tool_choice``, ``thinking``, ...).
* ``output_tokens`` is ``len(json.dumps(content)) // 4`` (at least 1).
* Every field can be overridden per reply with ``usage={...}``.

Server-side compaction (anthropic SDK 2.x, beta API): two request shapes exist,

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

Strictness: with :attr:`ModelServer.strict` (default ``True``) a request the real API
refuses is refused here with its 400 ``invalid_request_error`` and a message worded like the
API's: a ``tool_use`` not answered at the start of the next user message, a stray
``tool_result``, an empty text block, more than 4 ``cache_control`` breakpoints, a tool name
off ``^[a-zA-Z0-9_-]{1,64}$`` or used twice, a tool's ``input_schema`` that is not a JSON
Schema (draft 2020-12) of an object, beta fields without their beta header, a compaction
trigger under 50,000 (``tests/support/api_rules.py``
cites the documentation of each). :func:`cut_tool_use`, :func:`refusal`, :func:`pause_turn`
and :func:`context_window_exceeded` answer as the API does at those stop reasons.

Authentication: with :attr:`ModelServer.api_key` set, a request must carry
``x-api-key: <key>`` *or* ``authorization: Bearer <key>`` -- note that the
anthropic 2.x SDK sends ``api_key`` as ``Authorization: Bearer``, not
``x-api-key`` -- otherwise it gets a 401 ``authentication_error``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeAlias, cast
from urllib.parse import unquote, urlsplit

from tests.support.api_rules import first_violation

__all__ = [
    "DEFAULT_COMPACTION_TRIGGER",
    "DelayedReply",
    "ErrorReply",
    "Hang",
    "MessageReply",
    "ModelServer",
    "ModelServerError",
    "RecordedRequest",
    "Reply",
    "ReplyFunction",
    "ScriptItem",
    "context_window_exceeded",
    "cut_tool_use",
    "delayed",
    "error",
    "hang",
    "pause_turn",
    "refusal",
    "text",
    "tool_use",
    "tool_uses",
]

HOST = "127.0.0.1"
DEFAULT_COMPACTION_TRIGGER = 150_000
"""Input tokens above which ``compact_20260112`` compacts when no trigger is given."""

_CONNECTION_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


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
    usage: Mapping[str, int] | None = None
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


# --------------------------------------------------------------------------- prompt accounting


@dataclass(frozen=True)
class _PromptBlock:
    serialized: str
    breakpoint: bool


def _strip_cache_control(block: object) -> object:
    if isinstance(block, dict):
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def _has_cache_control(block: object) -> bool:
    return isinstance(block, dict) and block.get("cache_control") is not None


def _serialize(section: str, block: object) -> str:
    return json.dumps(
        [section, _strip_cache_control(block)],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def _prompt_blocks(body: Mapping[str, Any], drop_before_compaction: bool) -> list[_PromptBlock]:
    raw: list[tuple[str, object]] = []
    tools = body.get("tools")
    if isinstance(tools, list):
        raw.extend(("tool", tool) for tool in tools)
    system = body.get("system")
    if isinstance(system, str):
        raw.append(("system", {"type": "text", "text": system}))
    elif isinstance(system, list):
        raw.extend(("system", block) for block in system)
    message_blocks: list[tuple[str, object]] = []
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        role = str(message.get("role", ""))
        content = message.get("content")
        if isinstance(content, str):
            message_blocks.append((role, {"type": "text", "text": content}))
        elif isinstance(content, list):
            message_blocks.extend((role, block) for block in content)
    if drop_before_compaction:
        last = max(
            (
                i
                for i, (_, b) in enumerate(message_blocks)
                if isinstance(b, dict) and b.get("type") == "compaction"
            ),
            default=0,
        )
        message_blocks = message_blocks[last:]
    raw.extend(message_blocks)
    blocks = [_PromptBlock(_serialize(s, b), _has_cache_control(b)) for s, b in raw]
    if body.get("cache_control") is not None and blocks:
        blocks[-1] = _PromptBlock(blocks[-1].serialized, True)
    return blocks


def _tokens(chars: int) -> int:
    return chars // 4


def _output_tokens(content: Sequence[Mapping[str, Any]]) -> int:
    return max(1, _tokens(len(json.dumps(list(content)))))


# --------------------------------------------------------------------------- HTTP plumbing


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: ModelServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Connection errors are expected when a client or stop() drops a socket.
        exc = sys.exc_info()[1]
        if exc is None or isinstance(exc, OSError):
            return
        self.owner._record_failure(exc)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self._owner()._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._owner()._track(self.connection, add=False)

    def _owner(self) -> ModelServer:
        return cast(_HTTPServer, self.server).owner

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _dispatch(self) -> None:
        try:
            self._owner()._handle(self)
        except _CONNECTION_ERRORS:
            self.close_connection = True

    do_GET = _dispatch
    do_POST = _dispatch
    do_PUT = _dispatch
    do_PATCH = _dispatch
    do_DELETE = _dispatch


# --------------------------------------------------------------------------- the server


class ModelServer:
    """A scripted Anthropic Messages API on 127.0.0.1.  See the module docstring."""

    def __init__(self) -> None:
        self.default: Reply = text("done")
        """Used when the script queue is empty."""
        self.delay_seconds: float = 0.0
        """Added to every ``/v1/messages`` answer (e.g. 2.0 for concurrency tests)."""
        self.stream_event_delay: float = 0.0
        """Pause between SSE events."""
        self.api_key: str | None = None
        self.require_version_header: bool = True
        """Answer 400 when ``anthropic-version`` is missing (as the real API does)."""
        self.models: list[str] = ["claude-test-model"]
        """Listed by ``GET /v1/models``."""
        self.strict_models: bool = False
        """If True, unknown models get 404 ``not_found_error`` (retrieve and messages)."""
        self.supports_compaction: bool = False
        self.compaction_summary: str | Callable[[RecordedRequest], str] = (
            "Summary of the conversation so far."
        )
        self.min_cacheable_tokens: int = 0
        self.strict: bool = True
        """Refuse what the real API refuses (tests/support/api_rules.py). A test that needs an
        invalid request through sets it False and says why."""
        self.cache_lookback_blocks: int = 20

        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._responses: list[dict[str, Any]] = []
        self._queue: deque[ScriptItem] = deque()
        self._cache: set[tuple[str, str]] = set()
        self._failures: list[BaseException] = []
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._new_request = threading.Condition(self._lock)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------

    @classmethod
    def start(cls) -> ModelServer:
        server = cls()
        httpd = _HTTPServer((HOST, 0), _Handler)
        httpd.owner = server
        server._httpd = httpd
        server._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"ModelServer:{httpd.server_address[1]}",
            daemon=True,
        )
        server._thread.start()
        return server

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        """Stop serving, drop open connections, join all threads.

        Raises :class:`ModelServerError` if a reply callable raised while serving.
        """
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            self._stopping.set()  # wakes hanging handlers
            httpd.shutdown()
            with self._lock:
                connections = list(self._connections)
            for conn in connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            httpd.server_close()  # joins the handler threads
        if thread is not None:
            thread.join()
        with self._lock:
            failures, self._failures = self._failures, []
        if failures:
            first = failures[0]
            raise ModelServerError(f"model server callback failed: {first!r}") from first

    def __enter__(self) -> ModelServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        except ModelServerError:
            if exc is None:
                raise

    # -- scripting --------------------------------------------------------------

    def script(self, *replies: ScriptItem) -> None:
        """Append replies (or :func:`hang` markers) to the FIFO queue."""
        with self._lock:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        """Queued script items not consumed yet."""
        with self._lock:
            return len(self._queue)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # -- observation ------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def responses(self) -> list[dict[str, Any]]:
        """Every message answered (not errors), as sent, usage included."""
        with self._lock:
            return list(self._responses)

    @property
    def message_requests(self) -> list[RecordedRequest]:
        """Only the ``POST /v1/messages`` requests."""
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/messages"]

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``count`` requests arrived; ``TimeoutError`` otherwise."""
        deadline = time.monotonic() + timeout
        with self._new_request:
            while len(self._requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{len(self._requests)} of {count} requests after {timeout}s"
                    )
                self._new_request.wait(remaining)
            return list(self._requests)

    def count_tokens(self, body: Mapping[str, Any]) -> int:
        """The input-token estimate for a request body (what ``count_tokens`` answers)."""
        blocks = _prompt_blocks(body, drop_before_compaction=self.supports_compaction)
        return max(1, _tokens(sum(len(b.serialized) for b in blocks)))

    # -- internals ------------------------------------------------------------

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _record_failure(self, exc: BaseException) -> None:
        with self._lock:
            self._failures.append(exc)

    def _handle(self, handler: _Handler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        split = urlsplit(handler.path)
        path = split.path.rstrip("/") or "/"
        body: dict[str, Any] = {}
        bad_json = False
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                bad_json = True
            else:
                if isinstance(parsed, dict):
                    body = parsed
                else:
                    bad_json = True
        request = RecordedRequest(
            method=handler.command,
            path=path,
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
            stream=body.get("stream") is True,
            received_at=time.monotonic(),
            query=split.query,
        )
        with self._new_request:
            self._requests.append(request)
            self._new_request.notify_all()

        if self.api_key is not None and not self._authorized(request):
            self._send_error(handler, error(401, "authentication_error", "invalid x-api-key"))
            return
        if self.require_version_header and "anthropic-version" not in request.headers:
            self._send_error(
                handler,
                error(400, "invalid_request_error", "anthropic-version: header is required"),
            )
            return
        if bad_json:
            self._send_error(handler, error(400, "invalid_request_error", "invalid JSON body"))
            return

        method = request.method
        if method == "POST" and path == "/v1/messages":
            self._messages(handler, request)
        elif method == "POST" and path == "/v1/messages/count_tokens":
            self._count_tokens(handler, request)
        elif method == "GET" and path == "/v1/models":
            data = [self._model_info(m) for m in self.models]
            self._send_json(
                handler,
                200,
                {
                    "data": data,
                    "has_more": False,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None,
                },
            )
        elif method == "GET" and path.startswith("/v1/models/"):
            model_id = unquote(path.removeprefix("/v1/models/"))
            if self.strict_models and model_id not in self.models:
                self._send_error(handler, error(404, "not_found_error", f"model: {model_id}"))
            else:
                self._send_json(handler, 200, self._model_info(model_id))
        else:
            self._send_error(
                handler, error(404, "not_found_error", f"Not found: {method} {split.path}")
            )

    def _authorized(self, request: RecordedRequest) -> bool:
        key = self.api_key
        return (
            request.headers.get("x-api-key") == key
            or request.headers.get("authorization") == f"Bearer {key}"
        )

    @staticmethod
    def _model_info(model_id: str) -> dict[str, Any]:
        return {
            "type": "model",
            "id": model_id,
            "display_name": model_id,
            "created_at": "2025-01-01T00:00:00Z",
            "lifecycle": "active",
            # As the Models API reports them (https://docs.claude.com/en/api/models/get).
            "max_input_tokens": 200_000,
            "max_tokens": 64_000,
            "capabilities": {"context_management": {
                "supported": True, "compact_20260112": {"supported": True}}},
        }

    def _validate(self, request: RecordedRequest) -> ErrorReply | None:
        body = request.body
        for name in ("model", "max_tokens", "messages"):
            if name not in body:
                return error(400, "invalid_request_error", f"{name}: Field required")
        if not isinstance(body["messages"], list) or not body["messages"]:
            return error(400, "invalid_request_error", "messages: at least one message is required")
        if self.strict_models and request.model not in self.models:
            return error(404, "not_found_error", f"model: {request.model}")
        if self.strict and (violation := first_violation(body, request.betas)) is not None:
            return error(400, "invalid_request_error", violation)
        if (
            self.supports_compaction
            and body.get("compaction") is not None
            and body.get("context_management") is not None
        ):
            return error(
                400,
                "invalid_request_error",
                "compaction: cannot be combined with context_management",
            )
        return None

    def _count_tokens(self, handler: _Handler, request: RecordedRequest) -> None:
        body = request.body
        if "messages" not in body or "model" not in body:
            self._send_error(
                handler, error(400, "invalid_request_error", "messages: Field required")
            )
            return
        self._send_json(handler, 200, {"input_tokens": self.count_tokens(body)})

    def _next_script_item(self) -> tuple[float, Reply]:
        delay = 0.0
        with self._lock:
            while True:
                item: ScriptItem = self._queue.popleft() if self._queue else self.default
                if isinstance(item, Hang):
                    delay += item.seconds
                    continue
                return delay, item

    def _resolve(self, reply: Reply, request: RecordedRequest) -> tuple[float, Reply]:
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

    def _compaction_edit(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        management = body.get("context_management")
        if not isinstance(management, dict):
            return None
        for edit in management.get("edits") or []:
            if isinstance(edit, dict) and edit.get("type") == "compact_20260112":
                return edit
        return None

    def _compaction_block(self, request: RecordedRequest, signed: bool) -> dict[str, Any]:
        summary = self.compaction_summary
        content = summary(request) if callable(summary) else summary
        block: dict[str, Any] = {
            "type": "compaction",
            "content": content,
            "encrypted_content": None,
        }
        if signed:
            block["signature"] = "sig_" + secrets.token_hex(16)
        return block

    def _messages(self, handler: _Handler, request: RecordedRequest) -> None:
        invalid = self._validate(request)
        if invalid is not None:
            self._send_error(handler, invalid)
            return
        body = request.body

        # Server-side compaction (only when enabled).
        compaction_block: dict[str, Any] | None = None
        compaction_only = False
        if self.supports_compaction:
            if isinstance(body.get("compaction"), dict):
                compaction_block, compaction_only = self._compaction_block(request, True), True
            elif (edit := self._compaction_edit(body)) is not None:
                trigger = edit.get("trigger") or {}
                threshold = int(trigger.get("value", DEFAULT_COMPACTION_TRIGGER))
                if self.count_tokens(body) > threshold:
                    compaction_block = self._compaction_block(request, False)
                    compaction_only = bool(edit.get("pause_after_compaction"))

        delay = self.delay_seconds
        reply: MessageReply | ErrorReply
        if compaction_only:
            assert compaction_block is not None
            reply = MessageReply(content=(), stop_reason="compaction")
        else:
            hang_delay, item = self._next_script_item()
            try:
                extra_delay, resolved = self._resolve(item, request)
            except Exception as exc:
                self._record_failure(exc)
                self._send_error(
                    handler,
                    error(
                        500,
                        "api_error",
                        f"reply callable failed: {exc!r}",
                        headers={"x-should-retry": "false"},
                    ),
                )
                return
            assert isinstance(resolved, (MessageReply, ErrorReply))
            reply = resolved
            delay += hang_delay + extra_delay

        if delay > 0 and self._stopping.wait(delay):
            handler.close_connection = True
            return
        if isinstance(reply, ErrorReply):
            self._send_error(handler, reply)
            return

        usage = self._usage(request)
        content = [dict(b) for b in reply.content]
        if compaction_block is not None:
            content.insert(0, compaction_block)
        output_tokens = _output_tokens(content)
        usage["output_tokens"] = output_tokens
        if compaction_block is not None:
            compaction_out = _output_tokens([compaction_block])
            usage["iterations"] = [
                {
                    "type": "compaction",
                    "input_tokens": self.count_tokens(body),
                    "output_tokens": compaction_out,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
                {
                    "type": "message",
                    "input_tokens": usage["input_tokens"],
                    "output_tokens": output_tokens,
                    "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
                    "cache_read_input_tokens": usage["cache_read_input_tokens"],
                },
            ]
        usage.update(reply.usage or {})
        message: dict[str, Any] = {
            "id": "msg_" + secrets.token_hex(12),
            "type": "message",
            "role": "assistant",
            "model": reply.model or request.model,
            "content": content,
            "stop_reason": reply.stop_reason,
            "stop_sequence": reply.stop_sequence,
            "stop_details": dict(reply.stop_details) if reply.stop_details else None,
            "usage": usage,
        }
        if reply.stream_error is not None and not request.stream:
            self._send_error(handler, error(529, reply.stream_error["type"],
                                            reply.stream_error["message"]))
            return
        if reply.stream_error is None:
            with self._lock:
                self._responses.append(message)
        if request.stream:
            self._send_stream(handler, message, reply.stream_error)
        else:
            self._send_json(handler, 200, message)

    def _usage(self, request: RecordedRequest) -> dict[str, Any]:
        """Input/cache usage per the approximation in the module docstring."""
        blocks = _prompt_blocks(request.body, drop_before_compaction=self.supports_compaction)
        cumulative = [0]
        digests = [""]
        hasher = hashlib.sha256()
        for block in blocks:
            cumulative.append(cumulative[-1] + len(block.serialized))
            hasher.update(block.serialized.encode())
            hasher.update(b"\x00")
            digests.append(hasher.copy().hexdigest())
        total = max(1, _tokens(cumulative[-1]))
        ends = [i + 1 for i, b in enumerate(blocks) if b.breakpoint]
        ends = [e for e in ends if _tokens(cumulative[e]) >= self.min_cacheable_tokens]
        read = creation = 0
        if ends:
            model = request.model
            last = ends[-1]
            candidates: set[int] = set()
            for end in ends:
                candidates.update(range(max(1, end - self.cache_lookback_blocks), end + 1))
            with self._lock:
                hit = max((e for e in candidates if (model, digests[e]) in self._cache), default=0)
                self._cache.update((model, digests[e]) for e in ends)
            read = _tokens(cumulative[hit])
            creation = _tokens(cumulative[last]) - read
        return {
            "input_tokens": max(0, total - read - creation),
            "cache_creation_input_tokens": creation,
            "cache_read_input_tokens": read,
            "output_tokens": 0,
        }

    # -- responses --------------------------------------------------------------

    @staticmethod
    def _request_id() -> str:
        return "req_" + secrets.token_hex(12)

    def _send_json(
        self,
        handler: _Handler,
        status: int,
        payload: object,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        handler.send_header("request-id", self._request_id())
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _send_error(self, handler: _Handler, reply: ErrorReply) -> None:
        headers = dict(reply.headers)
        if reply.retry_after is not None:
            seconds = reply.retry_after
            headers["retry-after"] = (
                str(int(seconds)) if float(seconds).is_integer() else str(seconds)
            )
        inner: dict[str, Any] = {"type": reply.error_type, "message": reply.message}
        if reply.details is not None:
            inner["details"] = dict(reply.details)
        payload = {"type": "error", "error": inner}
        self._send_json(handler, reply.status, payload, headers)

    def _send_stream(self, handler: _Handler, message: Mapping[str, Any],
                     failure: Mapping[str, str] | None = None) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream; charset=utf-8")
        handler.send_header("cache-control", "no-cache")
        handler.send_header("transfer-encoding", "chunked")
        handler.send_header("request-id", self._request_id())
        handler.end_headers()
        events = list(_sse_events(message))
        if failure is not None:  # https://docs.claude.com/en/docs/build-with-claude/streaming
            events = [*events[:2], ("error", {"type": "error", "error": dict(failure)})]
        for index, (event, data) in enumerate(events):
            if (
                index
                and self.stream_event_delay > 0
                and self._stopping.wait(self.stream_event_delay)
            ):
                handler.close_connection = True
                return
            frame = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
        handler.wfile.write(b"0\r\n\r\n")


def _chunks(value: str, size: int) -> list[str]:
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def _sse_events(message: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
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
            for piece in _chunks(str(block["text"]), 12):
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
        elif kind == "tool_use":
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
