"""Answers of the Messages API double that use its web tools, as the API shapes them.

:func:`web_search` and :func:`web_fetch` return reply callables: each looks at the request it
answers and does what the API would do with that request's tool definition, so a test cannot
pass on an answer the real API would never give:

* the tool must be offered in the request (else :class:`ModelServerError`: the API never uses a
  tool it was not given);
* a search finds only pages the domain lists let through; a fetch of a URL outside them, or
  one that appeared nowhere in the conversation, comes back as the API's ``url_not_allowed``;
* uses past the request's ``max_uses`` come back as ``max_uses_exceeded`` errors and are not
  counted in ``usage.server_tool_use``.

Shapes: https://docs.claude.com/en/docs/agents-and-tools/tool-use/web-search-tool (the
``server_tool_use``, ``web_search_tool_result`` and ``web_search_result_location`` citations)
and https://docs.claude.com/en/docs/agents-and-tools/tool-use/web-fetch-tool (the
``web_fetch_tool_result`` and ``char_location`` citations).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tests.support.api_web import is_web_tool, issue
from tests.support.model_replies import MessageReply, ModelServerError, RecordedRequest

__all__ = ["Page", "web_fetch", "web_search"]


@dataclass(frozen=True)
class Page:
    url: str
    title: str
    text: str = "Page text."


def _server_id() -> str:
    return "srvtoolu_" + secrets.token_hex(12)


def _tool(request: RecordedRequest, name: str) -> dict[str, Any]:
    for tool in request.body.get("tools") or []:
        if is_web_tool(tool) and tool.get("name") == name:
            return dict(tool)
    raise ModelServerError(f"a scripted {name} answer to a request that does not offer "
                           f"{name}: the API never uses a tool it was not given")


def _allows(tool: Mapping[str, Any], url: str) -> bool:
    """Whether the tool's domain lists let `url` through (subdomains and subpaths included)."""
    parts = urlsplit(url)
    where = f"{parts.hostname or ''}{parts.path}"

    def matches(domain: str) -> bool:
        host, _, path = domain.partition("/")
        name = parts.hostname or ""
        return (name == host or name.endswith("." + host)) and (
            not path or where.removeprefix(name).lstrip("/").startswith(path))

    allowed, blocked = tool.get("allowed_domains") or [], tool.get("blocked_domains") or []
    if allowed and not any(matches(d) for d in allowed):
        return False
    return not any(matches(d) for d in blocked)


def _answer(parts: Sequence[tuple[str, Mapping[str, Any] | None]]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for text, citation in parts:
        block: dict[str, Any] = {"type": "text", "text": text}
        if citation is not None:
            block["citations"] = [dict(citation)]
        blocks.append(block)
    return blocks


def web_search(*queries: str, pages: Sequence[Page], answer: Sequence[tuple[str, int | None]] = (),
               then: Sequence[Mapping[str, Any]] = (), stop_reason: str = "end_turn",
               lead: str = "Let me search.") -> Any:
    """A turn that searches once per query (each finds `pages` the domain lists let through),
    then says `answer`: (text, index of the page it cites or None), then the blocks `then`
    (e.g. a ``tool_use``); ``stop_reason`` ``"pause_turn"`` ends it early as the API may."""

    def reply(request: RecordedRequest) -> MessageReply:
        tool = _tool(request, "web_search")
        left = tool.get("max_uses")
        content: list[dict[str, Any]] = [{"type": "text", "text": lead}]
        found = [p for p in pages if _allows(tool, p.url)]
        results = [{"type": "web_search_result", "url": p.url, "title": p.title,
                    "encrypted_content": issue("enc_" + secrets.token_hex(16)),
                    "page_age": "1 day ago"} for p in found]
        used = 0
        for query in queries:
            call = _server_id()
            content.append({"type": "server_tool_use", "id": call, "name": "web_search",
                            "input": {"query": query}})
            if left is not None and used >= left:
                result: Any = {"type": "web_search_tool_result_error",
                               "error_code": "max_uses_exceeded"}
            else:
                used, result = used + 1, results
            content.append({"type": "web_search_tool_result", "tool_use_id": call,
                            "content": result})
        cited = [(text, None if index is None or pages[index] not in found else {
            "type": "web_search_result_location", "url": pages[index].url,
            "title": pages[index].title, "cited_text": pages[index].text[:150],
            "encrypted_index": issue("idx_" + secrets.token_hex(8))}) for text, index in answer]
        content += _answer(cited) + [dict(b) for b in then]
        return MessageReply(tuple(content), stop_reason=stop_reason, usage={
            "server_tool_use": {"web_search_requests": used, "web_fetch_requests": 0}})

    return reply


def web_fetch(page: Page, *, answer: Sequence[tuple[str, bool]] = (),
              stop_reason: str = "end_turn") -> Any:
    """A turn that fetches `page` (refused as ``url_not_allowed`` outside the domain lists or
    when its URL appeared nowhere in the conversation, as the API refuses it), then says
    `answer`: (text, whether it cites the page)."""

    def reply(request: RecordedRequest) -> MessageReply:
        tool = _tool(request, "web_fetch")
        call = _server_id()
        content: list[dict[str, Any]] = [
            {"type": "server_tool_use", "id": call, "name": "web_fetch",
             "input": {"url": page.url}}]
        seen = page.url in json.dumps(request.body.get("messages"))
        used = 0
        if tool.get("max_uses") is not None and tool["max_uses"] < 1:
            result: dict[str, Any] = {"type": "web_fetch_tool_error",
                                      "error_code": "max_uses_exceeded"}
        elif not (seen and _allows(tool, page.url)):
            result = {"type": "web_fetch_tool_error", "error_code": "url_not_allowed"}
        else:
            used, result = 1, {
                "type": "web_fetch_result", "url": page.url, "retrieved_at":
                "2026-01-01T00:00:00Z", "content": {
                    "type": "document", "title": page.title,
                    "source": {"type": "text", "media_type": "text/plain", "data": page.text},
                    "citations": tool.get("citations") or {"enabled": False}}}
        content.append({"type": "web_fetch_tool_result", "tool_use_id": call,
                        "content": result})
        enabled = used and bool((tool.get("citations") or {}).get("enabled"))
        content += _answer([(text, {
            "type": "char_location", "cited_text": page.text, "document_index": 0,
            "document_title": page.title, "start_char_index": 0,
            "end_char_index": len(page.text)} if cites and enabled else None)
            for text, cites in answer])
        return MessageReply(tuple(content), stop_reason=stop_reason, usage={
            "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": used}})

    return reply
