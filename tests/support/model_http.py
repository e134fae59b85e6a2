"""The wire side of the Messages API double: a request read into a :class:`RecordedRequest`;
answers written as JSON bodies, error bodies and SSE streams.

Every answer carries a ``request-id`` header, as the API's do.  Errors are the API's shape,
``{"type": "error", "error": {"type", "message"[, "details"]}}``, with ``retry-after`` when
the reply asks for one.  Streams are chunked-encoded (see :mod:`tests.support.model_sse`).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from tests.support.model_replies import ErrorReply, RecordedRequest
from tests.support.model_sse import stream_events

__all__ = ["read_request", "send_error", "send_json", "send_stream"]


def read_request(handler: BaseHTTPRequestHandler) -> tuple[RecordedRequest, bool]:
    """The request ``handler`` received, and whether its body was not a JSON object."""
    length = int(handler.headers.get("content-length") or 0)
    raw = handler.rfile.read(length) if length else b""
    split = urlsplit(handler.path)
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
        path=split.path.rstrip("/") or "/",
        headers={k.lower(): v for k, v in handler.headers.items()},
        body=body,
        stream=body.get("stream") is True,
        received_at=time.monotonic(),
        query=split.query,
    )
    return request, bad_json


def send_json(
    handler: BaseHTTPRequestHandler,
    status: int,
    payload: object,
    headers: Mapping[str, str] | None = None,
) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(data)))
    handler.send_header("request-id", _request_id())
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


def send_error(handler: BaseHTTPRequestHandler, reply: ErrorReply) -> None:
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
    send_json(handler, reply.status, payload, headers)


def send_stream(
    handler: BaseHTTPRequestHandler,
    message: Mapping[str, Any],
    failure: Mapping[str, str] | None,
    *,
    event_delay: float,
    stopping: threading.Event,
) -> None:
    """``message`` as SSE, ``event_delay`` seconds between events; a ``stopping`` server
    drops the connection mid-stream."""
    handler.send_response(200)
    handler.send_header("content-type", "text/event-stream; charset=utf-8")
    handler.send_header("cache-control", "no-cache")
    handler.send_header("transfer-encoding", "chunked")
    handler.send_header("request-id", _request_id())
    handler.end_headers()
    for index, (event, data) in enumerate(stream_events(message, failure)):
        if index and event_delay > 0 and stopping.wait(event_delay):
            handler.close_connection = True
            return
        frame = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
    handler.wfile.write(b"0\r\n\r\n")


def _request_id() -> str:
    return "req_" + secrets.token_hex(12)
