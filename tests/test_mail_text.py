"""The parts of a reply, read as a mail client reads them: the text part is clean text, a
question's subject says an answer is needed, and pictures come inline and attached."""

from __future__ import annotations

import email
import re
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest

from mailagent.config import SmtpSettings
from mailagent.mail.markdown import to_text
from mailagent.mail.notify import FileToSend, compose, question_subject
from mailagent.mail.render import SAMPLES
from mailagent.store import ReplyTarget
from mailagent.tasks.replies import is_in_workspace
from tests.support.mail import AGENT, OWNER

ANSWER = """## Sales

The totals are **final**; see `sales.xlsx` and [the dashboard](https://example.org/d?q=1).

| Month | Sales | Note |
|-------|------:|------|
| January | 120 | first |
| February | 95.5 | short month |

1. Read the files.
2. Made the chart:
   - bars
   - a title

```
python3 make_chart.py
```

> A quoted line
> and the next one
"""

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6300010000050001a5f645400000000049454e44ae426082")


def smtp(max_attachment_bytes: int = 15 * 1024 * 1024) -> SmtpSettings:
    return SmtpSettings("127.0.0.1", 25, "none", f"Mail Agent <{AGENT}>",
                        max_attachment_bytes=max_attachment_bytes)


def target(subject: str = "[reports] Sales") -> ReplyTarget:
    return ReplyTarget(OWNER, subject, "<task@example.com>", (), 7, "reports", 1)


def completion(answer: str, files: list[Path] = (),  # type: ignore[assignment]
               settings: SmtpSettings | None = None) -> EmailMessage:
    values = {key: value for key, value in SAMPLES["completion.md.j2"].items()
              if key not in ("attached", "not_attached", "pictures")}
    outbound = compose(settings or smtp(), target(), "completion", "completion.md.j2",
                       {**values, "answer": answer, "run_note": ""},
                       [FileToSend(path, path.read_bytes()) for path in files])
    message = email.message_from_bytes(outbound.raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def test_the_text_part_has_no_markdown_left_and_its_table_lines_up() -> None:
    text = text_of(completion(ANSWER))
    assert not [mark for mark in ("**", "`", "##", "|", "](") if mark in text]
    lines = text.splitlines()
    assert "Sales" in lines and "The totals are final; see sales.xlsx and the dashboard " \
        "(https://example.org/d?q=1)." in lines
    table = lines[lines.index("Month     Sales  Note"):][:4]
    assert table == ["Month     Sales  Note",
                     "--------  -----  -----------",
                     "January   120    first",
                     "February  95.5   short month"]
    assert lines[lines.index("1. Read the files."):][:4] == [
        "1. Read the files.", "2. Made the chart:", "   - bars", "   - a title"]
    assert "    python3 make_chart.py" in lines
    assert "> A quoted line" in lines and "> and the next one" in lines
    assert "Task #1 · 10 tokens · $0.0100 · reply undo to revert the file changes" in lines


def test_a_paragraph_is_one_line_for_the_reader_to_wrap() -> None:
    assert to_text("A sentence that the template\nwrapped at its width.\n") == \
        "A sentence that the template wrapped at its width.\n"


@pytest.mark.parametrize(("subject", "expected"), [
    ("Clean up", "Re: Answer needed: Clean up"),
    ("[files] Clean up", "Re: [files] Answer needed: Clean up"),
    ("Re: [files] Answer needed: Clean up", "Re: [files] Answer needed: Clean up"),
    ("RE: Fwd: notes", "RE: Answer needed: Fwd: notes"),
])
def test_a_question_says_an_answer_is_needed_once_and_keeps_re_and_the_tag(
        subject: str, expected: str) -> None:
    assert question_subject(subject if subject.lower().startswith("re:") else f"Re: {subject}"
                            ) == expected


@pytest.mark.parametrize("template", ["approval.md.j2", "budget.md.j2",
                                      "schedule_approval.md.j2"])
def test_every_question_mail_says_in_its_subject_and_first_line_how_to_answer(
        template: str) -> None:
    outbound = compose(smtp(), target(), "approval", template, SAMPLES[template])
    message = email.message_from_bytes(outbound.raw, policy=default_policy)
    assert message["Subject"] == "Re: [reports] Answer needed: Sales"
    assert message["In-Reply-To"] == "<task@example.com>"
    first = text_of(message).splitlines()[0]  # type: ignore[arg-type]
    assert re.match(r"Reply (approve|continue) or deny: (task|schedule) #1 ", first), first


def test_a_picture_shows_inline_as_a_related_part_and_stays_attached(tmp_path: Path) -> None:
    (tmp_path / "chart.png").write_bytes(PNG)
    (tmp_path / "notes.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    message = completion("Here it is.", [tmp_path / "chart.png", tmp_path / "notes.svg"])
    related = message.get_body(("related",))
    assert related is not None
    [html_part, picture] = list(related.iter_parts())
    assert picture.get_content_type() == "image/png" and picture.get_content() == PNG
    assert picture.get_content_disposition() == "inline"
    cid = str(picture["Content-ID"]).strip("<>")
    html = str(html_part.get_content())
    assert re.findall(r'<img src="([^"]+)"', html) == [f"cid:{cid}"]
    assert {a.get_filename(): a.get_content() for a in message.iter_attachments()} == {
        "chart.png": PNG, "notes.svg": b'<svg xmlns="http://www.w3.org/2000/svg"/>'}
    assert "[picture: chart.png]" in text_of(message)


def test_a_picture_that_does_not_fit_twice_is_only_attached(tmp_path: Path) -> None:
    (tmp_path / "chart.png").write_bytes(PNG)
    message = completion("Here it is.", [tmp_path / "chart.png"], smtp(len(PNG) + 10))
    assert message.get_body(("related",)) is None
    assert [a.get_filename() for a in message.iter_attachments()] == ["chart.png"]
    html_part = message.get_body(("html",))
    assert html_part is not None and "<img" not in str(html_part.get_content())


def test_a_picture_the_answer_names_by_address_is_its_words_never_a_load() -> None:
    message = completion("![plan](https://evil.example/p.png?leak=1) and ![x](picture-1)")
    html_part = message.get_body(("html",))
    assert html_part is not None
    html = str(html_part.get_content())
    assert "<img" not in html and "plan (https://evil.example/p.png?leak=1)" in html


@pytest.mark.parametrize(("change", "inside"), [
    ({"op": "created", "path": "/data/ws/main/report.md"}, True),
    ({"op": "created", "path": "/data/ws/main"}, True),  # the folder itself
    ({"op": "moved", "from": "/data/ws/main/a.txt", "path": "/home/o/Documents/a.txt"}, False),
    ({"op": "moved", "from": "/home/o/Documents/a.txt", "path": "/data/ws/main/a.txt"}, False),
    ({"op": "modified", "path": "/home/o/Documents/plan.md"}, False),
    ({"op": "deleted", "path": "/data/ws/main-old/x.txt"}, False),  # a name that only starts so
])
def test_only_changes_outside_the_workspace_are_listed_by_name(
        change: dict[str, str], inside: bool) -> None:
    assert is_in_workspace(change, Path("/data/ws/main")) is inside
