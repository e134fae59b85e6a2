"""A loopback fake of the Anthropic Messages API, driven by the real ``anthropic`` SDK.

``ModelServer.start()`` serves HTTP/1.1 on 127.0.0.1 (free port) from a
``ThreadingHTTPServer`` in a daemon thread; point a client at it with
``anthropic.Anthropic(base_url=server.base_url, api_key="test")``.  Every request
is recorded in :attr:`ModelServer.requests` (:class:`RecordedRequest`).

Answers are scripted: :meth:`ModelServer.script` appends replies to a FIFO queue
and each ``POST /v1/messages`` that makes the model sample consumes one; when the
queue is empty :attr:`ModelServer.default` (``text("done")``) is used.  ``"stream": true``
requests are answered with Server-Sent Events in the real API's order.

Other endpoints: ``POST /v1/messages/count_tokens`` (``{"input_tokens": N}``),
``GET /v1/models`` and ``GET /v1/models/{id}``; anything else is a 404 error body.

The double in parts, each documented in its docstring: ``model_replies.py`` (the recorded
request, the replies and the script), ``model_accounting.py`` (token counts and the prompt
cache), ``model_compaction.py`` (server-side compaction), ``model_sse.py`` (the events of a
stream), ``model_http.py`` (reading requests, writing answers), ``api_rules.py`` (what the
API refuses) and this module (the server and its endpoints).  Every name tests import is
importable from here.

Strictness: with :attr:`ModelServer.strict` (default ``True``) a request the real API
refuses is refused here with its 400 ``invalid_request_error`` and a message worded like the
API's: a ``tool_use`` not answered at the start of the next user message, a stray
``tool_result``, an empty text block, more than 4 ``cache_control`` breakpoints, a tool name
off ``^[a-zA-Z0-9_-]{1,64}$`` or used twice, a tool's ``input_schema`` that is not a JSON
Schema (draft 2020-12) of an object, beta fields without their beta header, a compaction
trigger under 50,000, an image or document block the API refuses (its media type, base64,
bytes, dimensions, pages: ``api_media.py``), a web tool off its documented shape or a search
result not sent back as issued (``api_web.py``; ``model_web.py`` answers with the web tools)
(``tests/support/api_rules.py`` cites the documentation of each). :func:`cut_tool_use`,
:func:`refusal`, :func:`pause_turn` and :func:`context_window_exceeded` answer as the API does
at those stop reasons.

Authentication: with :attr:`ModelServer.api_key` set, a request must carry
``x-api-key: <key>`` *or* ``authorization: Bearer <key>`` -- note that the
anthropic 2.x SDK sends ``api_key`` as ``Authorization: Bearer``, not
``x-api-key`` -- otherwise it gets a 401 ``authentication_error``.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import sys
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from tests.support import model_accounting as accounting
from tests.support.api_rules import first_violation
from tests.support.model_compaction import (
    DEFAULT_COMPACTION_TRIGGER,
    Summary,
    compaction_conflict,
    iterations,
    plan_compaction,
)
from tests.support.model_http import read_request, send_error, send_json, send_stream
from tests.support.model_replies import (
    DelayedReply,
    ErrorReply,
    Hang,
    MessageReply,
    ModelServerError,
    RecordedRequest,
    Reply,
    ReplyFunction,
    Script,
    ScriptItem,
    context_window_exceeded,
    cut_tool_use,
    delayed,
    error,
    hang,
    overloaded_mid_stream,
    pause_turn,
    refusal,
    resolve,
    spend_limit,
    text,
    tool_use,
    tool_uses,
)

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
    "overloaded_mid_stream",
    "pause_turn",
    "refusal",
    "spend_limit",
    "text",
    "tool_use",
    "tool_uses",
]

HOST = "127.0.0.1"

_CONNECTION_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


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
    disable_nagle_algorithm = True  # as a real front end: no 40 ms wait for a delayed ACK

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
        self.compaction_summary: Summary = "Summary of the conversation so far."
        self.min_cacheable_tokens: int = 0
        self.strict: bool = True
        """Refuse what the real API refuses (tests/support/api_rules.py). A test that needs an
        invalid request through sets it False and says why."""
        self.cache_lookback_blocks: int = 20

        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._responses: list[dict[str, Any]] = []
        self._script = Script()
        self._cache = accounting.PromptCache()
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
        self._script.extend(replies)

    @property
    def pending(self) -> int:
        """Queued script items not consumed yet."""
        return len(self._script)

    def clear_cache(self) -> None:
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
        return accounting.count_tokens(body, drop_before_compaction=self.supports_compaction)

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
        request, bad_json = read_request(handler)
        with self._new_request:
            self._requests.append(request)
            self._new_request.notify_all()
        refused = self._refusal(request, bad_json)
        if refused is not None:
            send_error(handler, refused)
            return
        method, path = request.method, request.path
        if method == "POST" and path == "/v1/messages":
            self._messages(handler, request)
        elif method == "POST" and path == "/v1/messages/count_tokens":
            self._count_tokens(handler, request)
        elif method == "GET" and path == "/v1/models":
            self._list_models(handler)
        elif method == "GET" and path.startswith("/v1/models/"):
            self._retrieve_model(handler, unquote(path.removeprefix("/v1/models/")))
        else:
            send_error(handler, error(
                404, "not_found_error", f"Not found: {method} {urlsplit(handler.path).path}"))

    def _refusal(self, request: RecordedRequest, bad_json: bool) -> ErrorReply | None:
        """The error any endpoint answers first: a wrong key, no version header, bad JSON."""
        if self.api_key is not None and not self._authorized(request):
            return error(401, "authentication_error", "invalid x-api-key")
        if self.require_version_header and "anthropic-version" not in request.headers:
            return error(400, "invalid_request_error", "anthropic-version: header is required")
        if bad_json:
            return error(400, "invalid_request_error", "invalid JSON body")
        return None

    def _authorized(self, request: RecordedRequest) -> bool:
        key = self.api_key
        return (
            request.headers.get("x-api-key") == key
            or request.headers.get("authorization") == f"Bearer {key}"
        )

    def _list_models(self, handler: _Handler) -> None:
        data = [_model_info(m) for m in self.models]
        send_json(handler, 200, {"data": data, "has_more": False,
                                 "first_id": data[0]["id"] if data else None,
                                 "last_id": data[-1]["id"] if data else None})

    def _retrieve_model(self, handler: _Handler, model_id: str) -> None:
        if self.strict_models and model_id not in self.models:
            send_error(handler, error(404, "not_found_error", f"model: {model_id}"))
        else:
            send_json(handler, 200, _model_info(model_id))

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
        conflict = compaction_conflict(body) if self.supports_compaction else None
        return None if conflict is None else error(400, "invalid_request_error", conflict)

    def _count_tokens(self, handler: _Handler, request: RecordedRequest) -> None:
        body = request.body
        if "messages" not in body or "model" not in body:
            send_error(handler, error(400, "invalid_request_error", "messages: Field required"))
            return
        send_json(handler, 200, {"input_tokens": self.count_tokens(body)})

    def _messages(self, handler: _Handler, request: RecordedRequest) -> None:
        invalid = self._validate(request)
        if invalid is not None:
            send_error(handler, invalid)
            return
        compaction_block, compaction_only = (
            plan_compaction(request, self.compaction_summary)
            if self.supports_compaction else (None, False)
        )
        reply: MessageReply | ErrorReply
        if compaction_only:
            delay, reply = self.delay_seconds, MessageReply(content=(), stop_reason="compaction")
        else:
            hang_delay, item = self._script.next_reply(self.default)
            try:
                extra_delay, reply = resolve(item, request)
            except Exception as exc:
                self._record_failure(exc)
                send_error(handler, error(500, "api_error", f"reply callable failed: {exc!r}",
                                          headers={"x-should-retry": "false"}))
                return
            delay = self.delay_seconds + (hang_delay + extra_delay)
        if delay > 0 and self._stopping.wait(delay):
            handler.close_connection = True
            return
        if isinstance(reply, ErrorReply):
            send_error(handler, reply)
            return
        self._send_message(handler, request, reply, self._message(request, reply, compaction_block))

    def _message(self, request: RecordedRequest, reply: MessageReply,
                 compaction_block: dict[str, Any] | None) -> dict[str, Any]:
        """The API's message for ``reply``, with usage per ``model_accounting``; writes the
        request's prefixes to the prompt cache."""
        usage = self._cache.usage(
            request.body, request.model, drop_before_compaction=self.supports_compaction,
            min_cacheable_tokens=self.min_cacheable_tokens,
            lookback_blocks=self.cache_lookback_blocks,
        )
        content = [dict(b) for b in reply.content]
        if compaction_block is not None:
            content.insert(0, compaction_block)
        usage["output_tokens"] = accounting.output_tokens(content)
        if compaction_block is not None:
            usage["iterations"] = iterations(request.body, usage,
                                             accounting.output_tokens([compaction_block]),
                                             usage["output_tokens"])
        usage.update(reply.usage or {})
        return {
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

    def _send_message(self, handler: _Handler, request: RecordedRequest, reply: MessageReply,
                      message: dict[str, Any]) -> None:
        failure = reply.stream_error
        if failure is not None and not request.stream:
            send_error(handler, error(529, failure["type"], failure["message"]))
            return
        if failure is None:
            with self._lock:
                self._responses.append(message)
        if request.stream:
            send_stream(handler, message, failure, event_delay=self.stream_event_delay,
                        stopping=self._stopping)
        else:
            send_json(handler, 200, message)
