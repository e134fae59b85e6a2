"""The Messages API's web tools: what a request offers, what a response used, what it cites.

In: the policy's `InternetRule` (or None), the task's uses so far, a response's usage and the
content of the task's answer. Out: the server tool definitions of the next request (each with
the domain lists and the uses left as its `max_uses`) and the beta it needs; the searches and
fetches a response reports; why the task must stop when they pass the policy; the answer's
text with a mark after each cited passage, and the numbered sources. Pure: no I/O, no SDK.
The API runs these tools, not this machine; nothing they bring back is an instruction, and
nothing here widens what the policy allows (SECURITY.md E4): a tool the rule does not turn on,
or whose uses are spent, is not in the request.
https://docs.claude.com/en/docs/agents-and-tools/tool-use/web-search-tool
https://docs.claude.com/en/docs/agents-and-tools/tool-use/web-fetch-tool
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailagent.policy.rules import InternetRule
from mailagent.store import TaskWork

WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search"}
WEB_FETCH = {"type": "web_fetch_20250910", "name": "web_fetch"}
WEB_FETCH_BETA = "web-fetch-2025-09-10"  # web fetch is a beta: without it the API refuses it
MAX_SOURCES = 20


@dataclass(frozen=True)
class Source:
    url: str
    title: str = ""


def server_tools(rule: InternetRule | None, work: TaskWork) -> tuple[list[dict[str, Any]],
                                                                     list[str]]:
    """The web tools of the task's next request and the betas they need: only those the rule
    turns on and whose uses are not spent, each with `max_uses` at what is left for the task."""
    if rule is None:
        return [], []
    domains: dict[str, Any] = {}
    if rule.allowed_domains:
        domains["allowed_domains"] = list(rule.allowed_domains)
    elif rule.blocked_domains:
        domains["blocked_domains"] = list(rule.blocked_domains)
    tools: list[dict[str, Any]] = []
    betas: list[str] = []
    if rule.web_search and work.web_searches < rule.max_uses:
        tools.append({**WEB_SEARCH, "max_uses": rule.max_uses - work.web_searches, **domains})
    if rule.web_fetch and work.web_fetches < rule.max_uses:
        fetch = {**WEB_FETCH, "max_uses": rule.max_uses - work.web_fetches, **domains,
                 "citations": {"enabled": True}}
        if rule.max_content_tokens is not None:
            fetch["max_content_tokens"] = rule.max_content_tokens
        tools.append(fetch)
        betas.append(WEB_FETCH_BETA)
    return tools, betas


def web_requests(usage: Any) -> tuple[int, int]:
    """The web searches and fetches a response reports in `usage.server_tool_use` (0 where it
    says nothing; never below 0)."""
    used = getattr(usage, "server_tool_use", None)
    if used is None and isinstance(usage, dict):
        used = usage.get("server_tool_use")
    if used is None:
        return 0, 0

    def count(name: str) -> int:
        value = used.get(name) if isinstance(used, dict) else getattr(used, name, 0)
        return max(0, int(value or 0))

    return count("web_search_requests"), count("web_fetch_requests")


def over_web_limit(rule: InternetRule | None, work: TaskWork) -> str:
    """Why the task stops here, when its web uses passed what the policy allows ('' if not):
    the request's `max_uses` bounds one request, this bounds the task, whatever the endpoint
    reported doing."""
    allowed_search = rule.max_uses if rule is not None and rule.web_search else 0
    allowed_fetch = rule.max_uses if rule is not None and rule.web_fetch else 0
    where = f"{rule.source} max_uses" if rule is not None else "no [internet] table"
    if work.web_searches > allowed_search:
        return (f"budget: the task made {work.web_searches} web searches, more than the "
                f"policy allows ({allowed_search}, {where})")
    if work.web_fetches > allowed_fetch:
        return (f"budget: the task fetched {work.web_fetches} web pages, more than the policy "
                f"allows ({allowed_fetch}, {where})")
    return ""


def cited_answer(content: list[dict[str, Any]]) -> tuple[str, tuple[Source, ...]]:
    """The answer's text with ` [n]` after each passage that cites sources, and the sources by
    number (a URL cited twice keeps its first number). Citations of web search results and
    fetched pages carry a URL; others (a document of the mail) have none and get no number."""
    sources: list[Source] = []
    text = ""
    previous: dict[str, Any] | None = None  # the block before, when it was text
    for block in content:
        if block.get("type") != "text":
            previous = None
            continue
        marks = []
        for citation in block.get("citations") or []:
            source = _source(citation, content)
            if source is None:
                continue
            known = [s.url for s in sources]
            if source.url not in known and len(sources) < MAX_SOURCES:
                sources.append(source)
                known.append(source.url)
            if source.url in known and (mark := f"[{known.index(source.url) + 1}]") not in marks:
                marks.append(mark)
        # Cited passages and the text around them are blocks of one running text; other
        # blocks (the words before a search, after a result) are paragraphs of their own.
        running = previous is not None and (block.get("citations") or previous.get("citations"))
        glue = "" if running else "\n\n" if text else ""
        text += glue + str(block.get("text", "")) + (" " + "".join(marks) if marks else "")
        previous = block
    return text.strip(), tuple(sources)


def _source(citation: Any, content: list[dict[str, Any]]) -> Source | None:
    if not isinstance(citation, dict):
        return None
    url = citation.get("url")
    title = citation.get("title") or citation.get("document_title") or ""
    if not url and citation.get("type") == "char_location":
        url = _fetched_url(content, citation.get("document_index"))
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        return None
    return Source(url, str(title))


def _fetched_url(content: list[dict[str, Any]], index: Any) -> str | None:
    """The URL of the `index`-th page fetched in the answer: a fetched page's citations point
    at it as a document by its place among the documents."""
    pages = [b.get("content") for b in content if b.get("type") == "web_fetch_tool_result"]
    urls = [p.get("url") for p in pages if isinstance(p, dict) and p.get("type") ==
            "web_fetch_result"]
    if isinstance(index, int) and 0 <= index < len(urls):
        return str(urls[index])
    return None
