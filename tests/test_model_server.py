"""The fake Anthropic API in ``tests/support/model_server.py``, driven by the real SDK."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from anthropic.types import TextBlock, ToolUseBlock

from tests.support.model_server import (
    ModelServer,
    ModelServerError,
    RecordedRequest,
    Reply,
    context_window_exceeded,
    cut_tool_use,
    delayed,
    error,
    hang,
    pause_turn,
    refusal,
    text,
    tool_use,
    tool_uses,
)

MODEL = "claude-test-model"
USER: list[Any] = [{"role": "user", "content": "hello"}]


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer.start() as srv:
        yield srv


@pytest.fixture
def client(server: ModelServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.base_url, api_key="test", max_retries=0) as c:
        yield c


def _create(client: anthropic.Anthropic, **kwargs: Any) -> anthropic.types.Message:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "messages": USER, **kwargs}
    message: anthropic.types.Message = client.messages.create(**params)
    return message


def test_text_reply_and_recorded_request(server: ModelServer, client: anthropic.Anthropic) -> None:
    server.script(text("Hi there"))
    before = time.monotonic()
    message = _create(client, system="be brief")
    assert isinstance(message.content[0], TextBlock)
    assert message.content[0].text == "Hi there"
    assert message.stop_reason == "end_turn"
    assert message.model == MODEL
    assert message.id.startswith("msg_")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    [request] = server.requests
    assert request.path == "/v1/messages" and request.method == "POST"
    assert request.body["system"] == "be brief"
    assert request.stream is False
    assert request.headers["anthropic-version"]
    assert request.received_at >= before
    assert server.pending == 0


def test_default_reply_when_queue_empty(server: ModelServer, client: anthropic.Anthropic) -> None:
    first = _create(client)
    server.default = text("fallback")
    second = _create(client)
    assert [first.content[0], second.content[0]] == [
        TextBlock(type="text", text="done"),
        TextBlock(type="text", text="fallback"),
    ]


def test_tool_use_reply(server: ModelServer, client: anthropic.Anthropic) -> None:
    server.script(tool_use("send_mail", {"to": "a@example.org", "n": [1, 2]}, text="Sending."))
    message = _create(client)
    assert message.stop_reason == "tool_use"
    lead, call = message.content
    assert isinstance(lead, TextBlock) and lead.text == "Sending."
    assert isinstance(call, ToolUseBlock)
    assert call.name == "send_mail"
    assert call.input == {"to": "a@example.org", "n": [1, 2]}
    assert call.id.startswith("toolu_")


def test_several_tool_uses_keep_order_and_ids(
    server: ModelServer, client: anthropic.Anthropic
) -> None:
    server.script(tool_uses([("a", {"x": 1}), ("b", {"y": 2}, "toolu_fixed")]))
    message = _create(client)
    calls = [b for b in message.content if isinstance(b, ToolUseBlock)]
    assert [(c.name, c.input) for c in calls] == [("a", {"x": 1}), ("b", {"y": 2})]
    assert calls[1].id == "toolu_fixed" and calls[0].id != calls[1].id


def test_stream_text(server: ModelServer, client: anthropic.Anthropic) -> None:
    long_text = "The quick brown fox jumps over the lazy dog. " * 3
    server.script(text(long_text))
    with client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == long_text
    assert [(b.type, getattr(b, "text", None)) for b in final.content] == [("text", long_text)]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 1
    assert server.requests[0].stream is True


def test_stream_tool_use_with_input_json_delta(
    server: ModelServer, client: anthropic.Anthropic
) -> None:
    tool_input = {"path": "/tmp/report.txt", "lines": [1, 2, 3], "nested": {"ok": True}}
    server.script(tool_use("read_file", tool_input, text="Let me look."))
    with client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
        event_types = [(e.type, getattr(getattr(e, "delta", None), "type", None)) for e in stream]
        final = stream.get_final_message()
    assert ("content_block_delta", "input_json_delta") in event_types
    assert ("content_block_delta", "text_delta") in event_types
    assert event_types[-1][0] == "message_stop"
    lead, call = final.content
    assert isinstance(lead, TextBlock) and lead.text == "Let me look."
    assert isinstance(call, ToolUseBlock) and call.input == tool_input
    assert final.stop_reason == "tool_use"


def test_raw_create_stream_true_event_sequence(
    server: ModelServer, client: anthropic.Anthropic
) -> None:
    server.script(text("ab"))
    events = list(client.messages.create(model=MODEL, max_tokens=5, messages=USER, stream=True))
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # "ping" is swallowed by the SDK
    delta = events[4]
    assert delta.type == "message_delta" and delta.delta.stop_reason == "end_turn"


def test_529_then_success_is_retried(server: ModelServer) -> None:
    server.script(error(529, "overloaded_error", "Overloaded", retry_after=0.01), text("ok"))
    with anthropic.Anthropic(base_url=server.base_url, api_key="test", max_retries=1) as c:
        message = _create(c)
    assert message.content == [TextBlock(type="text", text="ok")]
    first, second = server.requests
    assert first.headers["x-stainless-retry-count"] == "0"
    assert second.headers["x-stainless-retry-count"] == "1"
    assert second.body == first.body


def test_429_without_retries_raises_rate_limit(
    server: ModelServer, client: anthropic.Anthropic
) -> None:
    server.script(error(429, "rate_limit_error", "slow down", retry_after=7))
    with pytest.raises(anthropic.RateLimitError) as info:
        _create(client)
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }


def test_400_raises_bad_request(server: ModelServer, client: anthropic.Anthropic) -> None:
    server.script(error(400, "invalid_request_error", "prompt is too long"))
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long") as info:
        _create(client)
    assert info.value.status_code == 400
    assert info.value.request_id is not None and info.value.request_id.startswith("req_")


def test_error_on_streaming_request(server: ModelServer, client: anthropic.Anthropic) -> None:
    server.script(error(500, "api_error", "boom"))
    with (
        pytest.raises(anthropic.InternalServerError),
        client.messages.stream(model=MODEL, max_tokens=10, messages=USER) as stream,
    ):
        stream.get_final_message()


def test_prompt_cache_accounting(server: ModelServer, client: anthropic.Anthropic) -> None:
    system: list[Any] = [
        {
            "type": "text",
            "text": "You are a mail agent. " * 50,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    first = _create(client, system=system, messages=[{"role": "user", "content": "one"}])
    second = _create(client, system=system, messages=[{"role": "user", "content": "two"}])
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation_input_tokens and first.usage.cache_creation_input_tokens > 200
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0
    # The uncached tail is still counted as plain input.
    assert second.usage.input_tokens > 0
    total = second.usage.input_tokens + second.usage.cache_read_input_tokens
    count = client.messages.count_tokens(
        model=MODEL, system=system, messages=[{"role": "user", "content": "two"}]
    )
    assert count.input_tokens == total


def test_cache_grows_with_conversation_and_differs_by_prefix(
    server: ModelServer, client: anthropic.Anthropic
) -> None:
    tools: list[Any] = [
        {
            "name": "send",
            "description": "send mail " * 40,
            "input_schema": {"type": "object", "properties": {}},
            "cache_control": {"type": "ephemeral"},
        }
    ]
    turn1 = [{"role": "user", "content": [{"type": "text", "text": "first " * 30}]}]
    m1 = _create(client, tools=tools, messages=turn1, cache_control={"type": "ephemeral"})
    # Next turn: automatic (top-level) breakpoint moves to the end; the old prefix is read.
    turn2 = [
        *turn1,
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second " * 30},
    ]
    m2 = _create(client, tools=tools, messages=turn2, cache_control={"type": "ephemeral"})
    assert m1.usage.cache_read_input_tokens == 0
    assert m2.usage.cache_read_input_tokens == m1.usage.cache_creation_input_tokens
    assert m2.usage.cache_creation_input_tokens and m2.usage.cache_creation_input_tokens > 0
    assert m2.usage.input_tokens == 0  # breakpoint on the last block: nothing uncached after it
    # A different tools prefix misses the cache entirely.
    other_tools = [{**tools[0], "description": "other"}]
    m3 = _create(client, tools=other_tools, messages=turn1, cache_control={"type": "ephemeral"})
    assert m3.usage.cache_read_input_tokens == 0


def test_usage_and_stop_reason_overrides(server: ModelServer, client: anthropic.Anthropic) -> None:
    server.script(text("cut", stop_reason="max_tokens", usage={"output_tokens": 4096}))
    message = _create(client)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 4096
    assert message.usage.input_tokens == server.count_tokens(server.requests[0].body)


def test_count_tokens(server: ModelServer, client: anthropic.Anthropic) -> None:
    short = client.messages.count_tokens(model=MODEL, messages=USER)
    long = client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "x" * 4000}]
    )
    assert 0 < short.input_tokens < long.input_tokens
    assert long.input_tokens >= 1000
    assert server.requests[0].path == "/v1/messages/count_tokens"
    assert server.pending == 0 and len(server.message_requests) == 0


def test_models_endpoints(server: ModelServer, client: anthropic.Anthropic) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve("claude-sonnet-4-5").id == "claude-sonnet-4-5"
    server.strict_models = True
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-nope")
    with pytest.raises(anthropic.NotFoundError):
        _create(client, model="claude-nope")


def test_unknown_path_is_404(server: ModelServer, client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client.get("/v1/nothing", cast_to=object)
    assert info.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "Not found: GET /v1/nothing"},
    }


def test_api_key_check(server: ModelServer) -> None:
    server.api_key = "sk-right"
    with anthropic.Anthropic(base_url=server.base_url, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as info:
            _create(bad)
        assert info.value.status_code == 401
    with anthropic.Anthropic(base_url=server.base_url, api_key="sk-right", max_retries=0) as good:
        assert _create(good).content[0] == TextBlock(type="text", text="done")
    # The x-api-key header is accepted too (the 2.x SDK itself sends Authorization: Bearer).
    with anthropic.Anthropic(
        base_url=server.base_url,
        auth_token="unused",
        default_headers={"x-api-key": "sk-right", "Authorization": "Bearer nope"},
        max_retries=0,
    ) as via_header:
        assert _create(via_header).stop_reason == "end_turn"


def test_callable_reply_sees_request(server: ModelServer, client: anthropic.Anthropic) -> None:
    def echo(request: RecordedRequest) -> Reply:
        if request.tool_results:
            result = request.tool_results[0]["content"]
            return text(f"tool said {result}")
        return tool_use("lookup", {"q": request.last_text})

    server.script(echo, echo)
    first = _create(client, messages=[{"role": "user", "content": "weather?"}])
    call = first.content[0]
    assert isinstance(call, ToolUseBlock) and call.input == {"q": "weather?"}
    follow_up = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}],
        },
    ]
    second = _create(client, messages=follow_up)
    assert second.content[0] == TextBlock(type="text", text="tool said sunny")


def test_failing_callable_is_reported_on_stop() -> None:
    def broken(request: RecordedRequest) -> Reply:
        raise ValueError("bug in test callable")

    srv = ModelServer.start()
    srv.script(broken)
    with (
        anthropic.Anthropic(base_url=srv.base_url, api_key="test", max_retries=3) as c,
        pytest.raises(anthropic.InternalServerError),
    ):
        _create(c)
    assert len(srv.requests) == 1  # x-should-retry: false
    with pytest.raises(ModelServerError, match="bug in test callable"):
        srv.stop()


def test_hang_and_delayed(server: ModelServer, client: anthropic.Anthropic) -> None:
    server.script(hang(0.3), text("late"), delayed(0.2, text("later")), text("now"))
    t0 = time.monotonic()
    assert _create(client).content[0] == TextBlock(type="text", text="late")
    t1 = time.monotonic()
    assert _create(client).content[0] == TextBlock(type="text", text="later")
    t2 = time.monotonic()
    assert _create(client).content[0] == TextBlock(type="text", text="now")
    assert t1 - t0 >= 0.3 and t2 - t1 >= 0.2
    assert len(server.requests) == 3


def test_client_timeout_on_hang_then_retry(server: ModelServer) -> None:
    server.script(hang(5), text("never seen"), text("second try"))
    with anthropic.Anthropic(
        base_url=server.base_url, api_key="test", max_retries=1, timeout=0.3
    ) as c:
        message = _create(c)
    assert message.content[0] == TextBlock(type="text", text="second try")
    assert len(server.requests) == 2  # stop() (fixture) interrupts the hanging handler


def test_concurrent_conversations_overlap(server: ModelServer) -> None:
    server.delay_seconds = 1.0
    results: list[str] = []

    async def one(c: anthropic.AsyncAnthropic, i: int) -> None:
        message = await c.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": f"conv {i}"}]
        )
        block = message.content[0]
        assert isinstance(block, TextBlock)
        results.append(block.text)

    async def main() -> None:
        async with anthropic.AsyncAnthropic(
            base_url=server.base_url, api_key="test", max_retries=0
        ) as c:
            await asyncio.gather(*(one(c, i) for i in range(5)))

    server.default = lambda request: text(f"echo {request.last_text}")
    t0 = time.monotonic()
    asyncio.run(main())
    elapsed = time.monotonic() - t0
    assert sorted(results) == [f"echo conv {i}" for i in range(5)]
    assert elapsed < 3.0  # 5 x 1 s in parallel, not in series
    arrivals = [r.received_at for r in server.requests]
    assert max(arrivals) - min(arrivals) < 0.9


def test_async_stream(server: ModelServer) -> None:
    server.script(tool_use("t", {"k": "v"}))

    async def main() -> anthropic.types.Message:
        async with (
            anthropic.AsyncAnthropic(base_url=server.base_url, api_key="test", max_retries=0) as c,
            c.messages.stream(model=MODEL, max_tokens=10, messages=USER) as stream,
        ):
            return await stream.get_final_message()

    final = asyncio.run(main())
    [call] = final.content
    assert isinstance(call, ToolUseBlock) and call.input == {"k": "v"}


def test_missing_fields_are_400(server: ModelServer, client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="messages"):
        client.post("/v1/messages", body={"model": MODEL, "max_tokens": 1}, cast_to=object)
    assert server.pending == 0


# ----------------------------------------------------------------------------- compaction

COMPACT_BETA = "compact-2026-01-12"
BIG: list[Any] = [{"role": "user", "content": "x" * 240_000}]  # over the 50,000-token minimum


def _beta_create(client: anthropic.Anthropic, **kwargs: Any) -> Any:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "messages": USER, **kwargs}
    return client.beta.messages.create(**params)


def _compact_edit(trigger: int, pause: bool = False) -> dict[str, Any]:
    return {
        "edits": [
            {
                "type": "compact_20260112",
                "trigger": {"type": "input_tokens", "value": trigger},
                "pause_after_compaction": pause,
            }
        ]
    }


def test_compaction_ignored_when_unsupported(
    server: ModelServer, client: anthropic.Anthropic
) -> None:
    server.script(text("plain"))
    message = _beta_create(
        client, messages=BIG, context_management=_compact_edit(50_000), betas=[COMPACT_BETA]
    )  # over the trigger, but compaction is unsupported
    assert [b.type for b in message.content] == ["text"]
    assert server.requests[0].betas == [COMPACT_BETA]
    assert server.requests[0].body["context_management"]["edits"][0]["type"] == "compact_20260112"


def test_compaction_block_when_over_trigger(
    server: ModelServer, client: anthropic.Anthropic
) -> None:
    server.supports_compaction = True
    server.compaction_summary = lambda request: f"summary of {len(request.messages)} messages"
    big = BIG
    server.script(text("below"), text("after compaction"))
    small = _beta_create(client, context_management=_compact_edit(50_000), betas=[COMPACT_BETA])
    assert [b.type for b in small.content] == ["text"]
    message = _beta_create(
        client, messages=big, context_management=_compact_edit(50_000), betas=[COMPACT_BETA]
    )
    assert [b.type for b in message.content] == ["compaction", "text"]
    assert message.content[0].content == "summary of 1 messages"
    assert message.content[1].text == "after compaction"
    assert [i.type for i in message.usage.iterations] == ["compaction", "message"]

    # Streaming reconstructs the compaction block too; pause_after_compaction stops there
    # without consuming a scripted reply.
    server.script(text("not used"))
    with client.beta.messages.stream(
        model=MODEL,
        max_tokens=100,
        messages=big,  # type: ignore[arg-type]
        context_management=_compact_edit(50_000, pause=True),  # type: ignore[arg-type]
        betas=[COMPACT_BETA],
    ) as stream:
        paused = stream.get_final_message()
    assert paused.stop_reason == "compaction"
    assert [(b.type, getattr(b, "content", None)) for b in paused.content] == [
        ("compaction", "summary of 1 messages")
    ]
    assert server.pending == 1

    # Round trip: blocks before the compaction block no longer count.
    resumed = [
        {"role": "user", "content": BIG[0]["content"]},
        {"role": "assistant", "content": [paused.content[0].model_dump(exclude_none=True)]},
        {"role": "user", "content": "go on"},
    ]
    counted_full = server.count_tokens({"messages": big})
    assert server.count_tokens({"messages": resumed}) < counted_full


def test_explicit_summarize_compaction(server: ModelServer, client: anthropic.Anthropic) -> None:
    server.supports_compaction = True
    server.script(text("unused"))
    message = _beta_create(client, compaction={"type": "summarize"}, betas=["compact-2026-09-04"])
    assert message.stop_reason == "compaction"
    [block] = message.content
    assert block.type == "compaction" and block.signature
    assert server.pending == 1
    with pytest.raises(anthropic.BadRequestError):
        _beta_create(
            client,
            compaction={"type": "summarize"},
            context_management=_compact_edit(50_000),
            betas=["compact-2026-09-04"],
        )


def test_raw_sse_wire_format(server: ModelServer) -> None:
    """The wire format itself: ``event:``/``data:`` lines, chunked, ``ping`` included."""
    import http.client

    server.script(text("hi"))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        body = json.dumps({"model": MODEL, "max_tokens": 5, "messages": USER, "stream": True})
        conn.request(
            "POST",
            "/v1/messages",
            body=body,
            headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
        )
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("content-type", "").startswith("text/event-stream")
        raw = response.read().decode()
    finally:
        conn.close()
    frames = [f for f in raw.split("\n\n") if f]
    names = [f.split("\n")[0].removeprefix("event: ") for f in frames]
    assert names[:2] == ["message_start", "ping"] and names[-1] == "message_stop"
    for frame in frames:
        event_line, data_line = frame.split("\n")
        assert json.loads(data_line.removeprefix("data: "))["type"] == event_line[7:]


# --------------------------------------------------------------------------- strict as the API


def _refusal_of(client: anthropic.Anthropic, **kwargs: Any) -> str:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "messages": USER, **kwargs}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(**params)
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    return str(body["error"]["message"])


CALL = {"type": "tool_use", "id": "toolu_a", "name": "read_file", "input": {"path": "x"}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_a", "content": "text"}


def test_a_tool_use_left_unanswered_is_refused_as_the_api_refuses_it(
        client: anthropic.Anthropic) -> None:
    messages = [USER[0], {"role": "assistant", "content": [CALL]},
                {"role": "user", "content": "next task"}]
    message = _refusal_of(client, messages=messages)
    assert "`tool_use` ids were found without `tool_result` blocks immediately after: " \
           "toolu_a" in message


def test_a_tool_result_after_text_or_without_its_call_is_refused(
        client: anthropic.Anthropic) -> None:
    late = [USER[0], {"role": "assistant", "content": [CALL]},
            {"role": "user", "content": [{"type": "text", "text": "first"}, RESULT]}]
    assert "without `tool_result` blocks immediately after" in _refusal_of(client, messages=late)
    stray = [USER[0], {"role": "assistant", "content": [{"type": "text", "text": "hi"}]},
             {"role": "user", "content": [RESULT]}]
    assert "unexpected `tool_use_id`" in _refusal_of(client, messages=stray)


def test_answered_tool_uses_pass(server: ModelServer, client: anthropic.Anthropic) -> None:
    server.script(text("fine"))
    messages = [USER[0], {"role": "assistant", "content": [CALL]},
                {"role": "user", "content": [RESULT, {"type": "text", "text": "and more"}]}]
    reply = client.messages.create(model=MODEL, max_tokens=10, messages=messages)  # type: ignore[arg-type]
    assert reply.content[0].type == "text"


def test_an_empty_text_block_is_refused(client: anthropic.Anthropic) -> None:
    messages = [USER[0], {"role": "assistant", "content": [{"type": "text", "text": " "}]},
                {"role": "user", "content": "again"}]
    assert "must contain non-whitespace text" in _refusal_of(client, messages=messages)


def test_a_fifth_cache_breakpoint_is_refused(client: anthropic.Anthropic) -> None:
    cached = {"type": "text", "text": "part", "cache_control": {"type": "ephemeral"}}
    messages = [{"role": "user", "content": [dict(cached) for _ in range(5)]}]
    assert "A maximum of 4 blocks with cache_control" in _refusal_of(client, messages=messages)


def test_a_tool_name_off_the_pattern_is_refused_and_an_mcp_name_passes(
        server: ModelServer, client: anthropic.Anthropic) -> None:
    schema = {"type": "object", "properties": {}}
    bad = [{"name": "read file", "description": "d", "input_schema": schema}]
    assert "String should match pattern" in _refusal_of(client, tools=bad)
    server.script(text("ok"))
    good = [{"name": "mcp__notes__search", "description": "d", "input_schema": schema}]
    client.messages.create(model=MODEL, max_tokens=10, messages=USER, tools=good)  # type: ignore[arg-type]


def test_a_compaction_trigger_under_the_minimum_is_refused(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        _beta_create(client, context_management=_compact_edit(35_000), betas=[COMPACT_BETA])
    assert "greater than or equal to 50000" in str(caught.value)


def test_beta_fields_without_their_beta_header_are_refused(client: anthropic.Anthropic) -> None:
    assert _refusal_of(client, extra_body={"context_management": _compact_edit(50_000)}) == \
        "context_management: Extra inputs are not permitted"
    compacted = [USER[0], {"role": "assistant", "content": [
        {"type": "compaction", "content": "what happened"}, {"type": "text", "text": "ok"}]},
        {"role": "user", "content": "go on"}]
    assert "Input tag 'compaction'" in _refusal_of(client, messages=compacted)


def test_tool_schemas_must_be_json_schema_objects_and_names_unique(
        server: ModelServer, client: anthropic.Anthropic) -> None:
    def tool(name: str, schema: Any) -> dict[str, Any]:
        return {"name": name, "description": "d", "input_schema": schema}
    assert "input_schema.type: Input should be 'object'" in _refusal_of(
        client, tools=[tool("a", {"type": "array"})])
    assert "JSON schema is invalid" in _refusal_of(
        client, tools=[tool("a", {"type": "object", "properties": {"x": {"type": "strng"}}})])
    assert "Field required" in _refusal_of(
        client, tools=[{"name": "a", "description": "d"}])
    assert "Tool names must be unique" in _refusal_of(
        client, tools=[tool("a", {"type": "object"}), tool("a", {"type": "object"})])
    server.script(text("ok"))
    good = tool("a", {"type": "object", "properties": {"x": {"type": "string"}},
                      "required": ["x"]})
    client.messages.create(model=MODEL, max_tokens=10, messages=USER, tools=[good])  # type: ignore[list-item]


def test_a_lenient_server_lets_an_invalid_request_through(
        server: ModelServer, client: anthropic.Anthropic) -> None:
    server.strict = False
    server.script(text("let through"))
    messages = [USER[0], {"role": "assistant", "content": [CALL]},
                {"role": "user", "content": "next"}]
    reply = client.messages.create(model=MODEL, max_tokens=10, messages=messages)  # type: ignore[arg-type]
    assert reply.content[0].type == "text"


@pytest.mark.parametrize("stream", [False, True])
def test_stop_reasons_come_back_as_the_api_sends_them(
        server: ModelServer, client: anthropic.Anthropic, stream: bool) -> None:
    server.script(cut_tool_use("write_file", {"path": "a.txt"}),
                  refusal([{"type": "text", "text": "I will"}], category="cyber",
                          explanation="This looks like malware."),
                  pause_turn("Searching"), context_window_exceeded())
    replies = []
    for _ in range(4):
        params: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "messages": USER}
        if stream:
            with client.messages.stream(**params) as events:
                replies.append(events.get_final_message())
        else:
            replies.append(client.messages.create(**params))
    cut, refused, paused, full = replies
    assert cut.stop_reason == "max_tokens" and cut.content[-1].type == "tool_use"
    assert refused.stop_reason == "refusal" and refused.stop_details is not None
    assert refused.stop_details.explanation == "This looks like malware."
    assert paused.stop_reason == "pause_turn"
    assert full.stop_reason == "model_context_window_exceeded"
