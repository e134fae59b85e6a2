"""The web end to end: the API's web search and web fetch are offered only when a policy's
`[internet]` table allows them, with its domain lists and the uses left; a paused turn goes on
with the server tools' blocks sent back exactly; the reply numbers its sources as plain
addresses; searches are priced into the task's cost and its reply's cost line; and a task
cannot pass the policy's uses, whatever the endpoint does (SECURITY.md E4, R1)."""

from __future__ import annotations

import email
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot
from tests.support.fixtures import MakeService
from tests.support.mail import OWNER, owner_mail
from tests.support.model_replies import MessageReply
from tests.support.model_server import ModelServer, text, tool_use
from tests.support.model_web import Page, web_fetch, web_search
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import RecordedMail, SmtpServer

FREE = 'input_usd_per_mtok = 0\noutput_usd_per_mtok = 0'  # the cost is then the searches'
PYTHON = Page("https://docs.python.org/3/whatsnew/3.13.html", "What's New In Python 3.13",
              "Python 3.13 adds a new interactive interpreter.")
BLOG = Page("https://blog.example.net/python", "A blog", "Python 3.13 is slow.")


def allow_internet(tmp_path: Path, table: str) -> None:
    """After the service is made (it writes the config and its policies folder)."""
    (tmp_path / "policies" / "web.toml").write_text("[internet]\n" + table)


def parts(mail: RecordedMail) -> tuple[str, str]:
    message = email.message_from_bytes(mail.raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None and html is not None
    return str(plain.get_content()).replace("\r\n", "\n"), str(html.get_content())


def wait_reply(smtp_server: SmtpServer, service: ServiceProcess, match: str) -> RecordedMail:
    return wait_until(lambda: next((m for m in smtp_server.messages if OWNER in m.rcpt_tos
                                    and match in parts(m)[0]), None), 40,
                      f"a reply with {match!r}; log:\n{service.log()}")


def web_tools(request_tools: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(t["name"]): t for t in request_tools if str(t.get("type", "")).startswith("web_")}


@pytest.mark.parametrize("stream", [False, True])
def test_a_search_carries_the_policy_pauses_and_goes_on_and_the_reply_numbers_its_sources(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        make_service: MakeService, stream: bool) -> None:
    model_server.script(
        web_search("python 3.13 changes", pages=[PYTHON, BLOG], stop_reason="pause_turn"),
        web_search("python 3.13 interpreter", pages=[PYTHON, BLOG], lead="One more.", answer=[
            ("Python 3.13 brings a new interactive interpreter", 0), (".", None)]))
    service = make_service(model_extra=FREE + f"\nstream = {str(stream).lower()}")
    allow_internet(tmp_path, 'web_search = true\nallowed_domains = ["python.org"]\n'
                             "max_uses = 3\n")
    dovecot.append(owner_mail("Python", "What changed in Python 3.13?"))
    service.start()
    try:
        reply = wait_reply(smtp_server, service, "Sources")
        first, second = model_server.message_requests
        assert first.stream is stream
        # the policy's domain list and uses, and no fetch tool: it was not turned on
        assert web_tools(first.body["tools"]) == {"web_search": {
            "type": "web_search_20250305", "name": "web_search", "max_uses": 3,
            "allowed_domains": ["python.org"]}}
        assert "web-fetch-2025-09-10" not in first.betas
        # the paused turn went back as it was sent, exactly, for the model to go on
        paused = model_server.responses[0]["content"]
        assert second.messages[-1]["role"] == "assistant"
        sent_back = [{k: v for k, v in b.items() if k != "cache_control"}
                     for b in second.messages[-1]["content"]]
        assert sent_back == paused
        # the search of the first turn was counted: one use is spent
        assert web_tools(second.body["tools"])["web_search"]["max_uses"] == 2
        plain, html = parts(reply)
        assert "Python 3.13 brings a new interactive interpreter [1]." in plain
        assert "Sources\n\n1. What's New In Python 3.13: " \
               "https://docs.python.org/3/whatsnew/3.13.html" in plain
        assert "blog.example.net" not in plain  # the domain list kept it out of the results
        assert "href" not in html and "docs.python.org/3/whatsnew/3.13.html" in html
        # two searches at $10 per 1,000, and no token cost (priced at 0 here)
        assert "2 web searches ($0.02)" in plain and "$0.0200" in plain
        [task] = service.store().tasks()
        assert task.state == "done"
        assert service.store().task_work(task.task_id).cost_usd == pytest.approx(0.02)
        assert service.stop() == 0
    finally:
        service.kill()


def test_without_an_internet_table_no_web_tool_is_ever_offered(
        dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        make_service: MakeService) -> None:
    model_server.script(tool_use("list_files", {"path": "."}), text("No web here."))
    service = make_service()
    dovecot.append(owner_mail("Flights", "Find the three cheapest flights to Lisbon."))
    service.start()
    try:
        wait_reply(smtp_server, service, "No web here.")
        assert len(model_server.message_requests) == 2
        for request in model_server.message_requests:
            assert web_tools(request.body["tools"]) == {}
            assert "web-fetch-2025-09-10" not in request.betas
            assert "web_search" not in request.body["system"][0]["text"]
        assert service.stop() == 0
    finally:
        service.kill()


def test_the_uses_are_kept_per_task_across_turns_and_a_tool_whose_uses_are_spent_is_withdrawn(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        make_service: MakeService) -> None:
    model_server.script(
        web_search("cheap flights", "cheap flights lisbon", pages=[PYTHON],
                   then=[{"type": "tool_use", "id": "toolu_list1", "name": "list_files",
                          "input": {"path": "."}}], stop_reason="tool_use"),
        web_fetch(PYTHON, answer=[("The interpreter is new.", True)]))
    service = make_service(model_extra=FREE)
    allow_internet(tmp_path, 'web_search = true\nweb_fetch = true\nblocked_domains = '
                             '["blog.example.net"]\nmax_uses = 2\nmax_content_tokens = 5000\n')
    dovecot.append(owner_mail("Research", "Look it up and read the page."))
    service.start()
    try:
        reply = wait_reply(smtp_server, service, "The interpreter is new.")
        first, second = model_server.message_requests
        tools = web_tools(first.body["tools"])
        assert tools["web_search"]["max_uses"] == 2
        assert tools["web_search"]["blocked_domains"] == ["blog.example.net"]
        assert tools["web_fetch"] == {
            "type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 2,
            "blocked_domains": ["blog.example.net"], "citations": {"enabled": True},
            "max_content_tokens": 5000}
        assert "web-fetch-2025-09-10" in first.betas
        # both searches were used in the first turn: search is gone, fetch is left
        assert set(web_tools(second.body["tools"])) == {"web_fetch"}
        plain, _ = parts(reply)
        assert "The interpreter is new. [1]" in plain
        assert "1. What's New In Python 3.13: https://docs.python.org/3/whatsnew/3.13.html" \
            in plain
        assert "2 web searches ($0.02) · 1 web page fetched" in plain
        assert service.stop() == 0
    finally:
        service.kill()


def test_an_endpoint_that_passes_max_uses_is_stopped_by_the_task_bound(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        make_service: MakeService) -> None:
    """An endpoint (a gateway, a local server) that ignores max_uses and searches more: the
    task ends at the policy's bound and the call of that turn does not run."""
    overreach = MessageReply(
        ({"type": "text", "text": "Searching a lot."},
         {"type": "tool_use", "id": "toolu_write1", "name": "write_file",
          "input": {"path": "found.txt", "content": "x"}}),
        stop_reason="tool_use",
        usage={"server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 0}})
    model_server.script(overreach)
    service = make_service(model_extra=FREE)
    allow_internet(tmp_path, "web_search = true\nmax_uses = 2\n")
    dovecot.append(owner_mail("Search", "Search everything."))
    service.start()
    try:
        reply = wait_reply(smtp_server, service, "did not finish")
        plain, _ = parts(reply)
        assert "3 web searches, more than the policy allows (2, web.toml:1 max_uses)" in plain
        assert "3 web searches ($0.03)" in plain  # what was billed is still counted
        assert len(model_server.message_requests) == 1
        assert not (tmp_path / "data" / "workspaces" / "main" / "found.txt").exists()
        [task] = service.store().tasks()
        assert task.state == "failed"
        assert service.stop() == 0
    finally:
        service.kill()
