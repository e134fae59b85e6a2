"""Routing: which conversation a message joins, and which messages are commands."""

from __future__ import annotations

import pytest

from mailagent.mail.intake import Inbound
from mailagent.mail.threads import CommandRoute, TaskRoute, route, subject_tag
from mailagent.store import ThreadMatch


def inbound(subject: str, typed: str = "do the thing", quoted: str = "",
            forwarded: tuple[str, ...] = ()) -> Inbound:
    return Inbound(owner_address="owner@example.com", authenticated_by="test", message_id="<m@x>",
                   in_reply_to=(), references=(), subject=subject, date=None, typed_text=typed,
                   quoted_text=quoted, forwarded=forwarded)


@pytest.mark.parametrize(
    ("subject", "conversation"),
    [
        ("[taxes] receipts for October", "taxes"),
        ("[Taxes] more receipts", "taxes"),
        ("Re: [taxes] receipts", "taxes"),
        ("summarise the reports", "main"),
        ("[not a tag!] hello", "main"),
        ("[../../etc] hello", "main"),
        ("about [taxes] later", "main"),
    ],
)
def test_subject_tag_chooses_the_conversation(subject: str, conversation: str) -> None:
    assert route(inbound(subject), None) == TaskRoute(conversation, None)


def test_a_reply_in_a_known_thread_continues_its_conversation_whatever_the_tag() -> None:
    thread = ThreadMatch(conversation_id=3, conversation_name="taxes", task_id=7)
    assert route(inbound("Re: [other] receipts", "and the November ones"), thread) == \
        TaskRoute("taxes", 7)


@pytest.mark.parametrize(
    ("subject", "typed", "name", "argument"),
    [
        ("status", "", "status", ""),
        ("status", "Sent from my iPhone", "status", ""),
        ("Re: [taxes] Status", "", "status", ""),
        ("anything", "help", "help", ""),
        ("anything", "Memory\n\nSent from my phone", "memory", ""),
        ("schedules", "", "schedules", ""),
        ("x", "forget 3", "forget", "3"),
        ("x", "run 2 now", "run", "2 now"),
        ("x", "run now", "run", "now"),
        ("Re: [home] Scheduled: weather", "pause", "pause", ""),
        ("x", "cancel", "cancel", ""),
        ("x", "cancel 12", "cancel", "12"),
        ("show 4", "", "show", "4"),
        ("x", "Show 12", "show", "12"),
        ("Re: Write my notes", "show", "show", ""),
    ],
)
def test_commands_are_recognised_in_subject_or_first_line(subject: str, typed: str, name: str,
                                                          argument: str) -> None:
    result = route(inbound(subject, typed), None)
    assert isinstance(result, CommandRoute)
    assert (result.name, result.argument) == (name, argument)


@pytest.mark.parametrize("typed", ["status of the report please", "forget it", "help me write",
                                   "show me the report", "show 3 files"])
def test_near_commands_are_tasks(typed: str) -> None:
    assert isinstance(route(inbound("question", typed), None), TaskRoute)


def test_quoted_text_never_makes_a_command() -> None:
    assert isinstance(route(inbound("hi", "thanks", quoted="> approve\n> cancel"), None), TaskRoute)


def test_approve_and_deny_count_only_as_replies_in_a_thread() -> None:
    thread = ThreadMatch(conversation_id=1, conversation_name="main", task_id=4)
    assert route(inbound("Re: approval needed", "Approve"), thread) == \
        CommandRoute("approve", "", "main", 4)
    assert route(inbound("Re: approval", "deny, too risky"), thread) == \
        CommandRoute("deny", "too risky", "main", 4)
    assert isinstance(route(inbound("approve the budget", "approve the budget"), None), TaskRoute)


def test_subject_tag_strips_reply_prefixes() -> None:
    assert subject_tag("RE: Fwd: [Home] boiler") == ("home", "boiler")


@pytest.mark.parametrize(("subject", "typed", "forwarded"), [
    ("Fwd: forget 1", "what is this about?", ()),
    ("Fwd: cancel 2", "", ("From: someone\n\ncancel 2",)),
    ("Fwd: cancel 2", "", ()),
    ("Re: Fw: [home] status", "", ()),
    ("WG: undo", "", ()),
    ("status", "and what about the invoices?", ()),
    ("forget 1", "", ("a forwarded mail",)),
])
def test_a_subject_makes_no_command_when_it_is_forwarded_or_the_owner_typed_more(
        subject: str, typed: str, forwarded: tuple[str, ...]) -> None:
    """Commands come from the owner's own typed text; a subject only when it is the owner's
    and stands alone (SECURITY.md S5)."""
    result = route(inbound(subject, typed, forwarded=forwarded), None)
    assert isinstance(result, TaskRoute), result


def test_a_typed_command_still_counts_in_a_forward() -> None:
    result = route(inbound("Fwd: invoices", "forget 3", forwarded=("a forwarded mail",)), None)
    assert result == CommandRoute("forget", "3", "main", None)
