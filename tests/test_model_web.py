"""The Messages API double's web tools, driven by the real SDK: their definitions are taken
only in the documented shape (tests/support/api_web.py cites the pages), and the answers that
use them parse as the SDK's own types, streamed or not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.support.model_server import ModelServer, ModelServerError
from tests.support.model_web import Page, web_fetch, web_search

MODEL = "claude-test-model"
USER: list[Any] = [{"role": "user", "content": "What is new? See https://example.org/new"}]
SEARCH = {"type": "web_search_20250305", "name": "web_search"}
FETCH = {"type": "web_fetch_20250910", "name": "web_fetch"}
BETA = "web-fetch-2025-09-10"
NEW = Page("https://example.org/new", "New", "Everything is new.")
OTHER = Page("https://other.example.com/x", "Other", "Something else.")


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer.start() as srv:
        yield srv


@pytest.fixture
def client(server: ModelServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.base_url, api_key="test", max_retries=0) as c:
        yield c


def refusal_of(client: anthropic.Anthropic, tools: list[Any], betas: tuple[str, ...] = ()) -> str:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.beta.messages.create(model=MODEL, max_tokens=100, messages=USER, tools=tools,
                                    betas=list(betas))
    return str(caught.value)


@pytest.mark.parametrize(("tool", "betas", "expected"), [
    ({**SEARCH, "max_results": 3}, (), "tools.0.web_search_20250305.max_results: Extra inputs"),
    ({**SEARCH, "name": "search"}, (), "name: Input should be 'web_search'"),
    ({**SEARCH, "max_uses": "5"}, (), "max_uses: Input should be a valid integer"),
    ({**SEARCH, "max_uses": 0}, (), "max_uses: Input should be greater than 0"),
    ({**SEARCH, "allowed_domains": "example.org"}, (), "allowed_domains: Input should be a "
     "valid list"),
    ({**SEARCH, "allowed_domains": ["a.org"], "blocked_domains": ["b.org"]}, (),
     "not both"),
    ({**SEARCH, "user_location": {"type": "exact"}}, (), "user_location.type"),
    ({**SEARCH, "type": "web_search_20990101"}, (), "Input tag 'web_search_20990101'"),
    (FETCH, (), "Input tag 'web_fetch_20250910'"),  # web fetch is a beta
    ({**FETCH, "citations": True}, (BETA,), "citations: Input should be an object"),
    ({**FETCH, "max_content_tokens": -1}, (BETA,), "max_content_tokens: Input should be "
     "greater than 0"),
])
def test_web_tools_off_their_documented_shape_are_refused(
        client: anthropic.Anthropic, tool: dict[str, Any], betas: tuple[str, ...],
        expected: str) -> None:
    assert expected in refusal_of(client, [tool], betas)


@pytest.mark.parametrize("stream", [False, True])
def test_a_search_answer_parses_as_the_sdk_types_with_citations_and_usage(
        server: ModelServer, client: anthropic.Anthropic, stream: bool) -> None:
    server.script(web_search("q1", "q2", pages=[NEW, OTHER], answer=[("It is new.", 0)]))
    tools: Any = [{**SEARCH, "max_uses": 1, "allowed_domains": ["example.org"]}]
    if stream:
        with client.messages.stream(model=MODEL, max_tokens=100, messages=USER,
                                    tools=tools) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(model=MODEL, max_tokens=100, messages=USER,
                                         tools=tools)
    kinds = [block.type for block in message.content]
    assert kinds == ["text", "server_tool_use", "web_search_tool_result", "server_tool_use",
                     "web_search_tool_result", "text"]
    found = message.content[2]
    assert found.type == "web_search_tool_result" and isinstance(found.content, list)
    assert [r.url for r in found.content] == [NEW.url]  # allowed_domains, subdomain excluded
    over = message.content[4]
    assert over.type == "web_search_tool_result" and not isinstance(over.content, list)
    assert over.content.error_code == "max_uses_exceeded"
    cited = message.content[5]
    assert cited.type == "text" and cited.citations is not None
    assert cited.citations[0].type == "web_search_result_location"
    assert cited.citations[0].url == NEW.url
    assert message.usage.server_tool_use is not None
    assert message.usage.server_tool_use.web_search_requests == 1  # the refused one is free


def test_search_results_must_come_back_as_the_api_sent_them(
        server: ModelServer, client: anthropic.Anthropic) -> None:
    server.script(web_search("q", pages=[NEW], answer=[("New.", 0)]))
    tools: Any = [SEARCH]
    message = client.messages.create(model=MODEL, max_tokens=100, messages=USER, tools=tools)
    history = [b.model_dump(mode="json", exclude_none=True) for b in message.content]
    again = [*USER, {"role": "assistant", "content": history},
             {"role": "user", "content": "Thanks."}]
    client.messages.create(model=MODEL, max_tokens=100, messages=again, tools=tools)
    history[2]["content"][0]["encrypted_content"] = "tampered"
    with pytest.raises(anthropic.BadRequestError, match="Invalid encrypted_content"):
        client.messages.create(model=MODEL, max_tokens=100, messages=again, tools=tools)


def test_a_fetch_reaches_only_urls_seen_and_allowed_and_cites_the_page(
        server: ModelServer, client: anthropic.Anthropic) -> None:
    server.script(web_fetch(NEW, answer=[("New.", True)]), web_fetch(OTHER))
    tools: Any = [{**FETCH, "citations": {"enabled": True}}]
    message = client.beta.messages.create(model=MODEL, max_tokens=100, messages=USER,
                                          tools=tools, betas=[BETA])
    result = message.content[1]
    assert result.type == "web_fetch_tool_result" and result.content.type == "web_fetch_result"
    assert result.content.url == NEW.url
    cited = message.content[2]
    assert cited.type == "text" and cited.citations is not None
    assert cited.citations[0].type == "char_location"
    assert message.usage.server_tool_use is not None
    assert message.usage.server_tool_use.web_fetch_requests == 1
    refused = client.beta.messages.create(model=MODEL, max_tokens=100, messages=USER,
                                          tools=tools, betas=[BETA])
    result = refused.content[1]
    assert result.type == "web_fetch_tool_result"
    assert result.content.type == "web_fetch_tool_error"
    assert result.content.error_code == "url_not_allowed"  # its URL was never in the chat


def test_a_web_answer_to_a_request_without_the_tool_fails_the_test(
        server: ModelServer, client: anthropic.Anthropic) -> None:
    server.script(web_search("q", pages=[NEW]))
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    with pytest.raises(ModelServerError, match="does not offer web_search"):
        server.stop()
