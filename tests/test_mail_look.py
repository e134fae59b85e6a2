"""Every kind of mail, as a reader sees it: each HTML part, built by the real templates and
compose, is loaded in headless Chromium at a phone's width (360 px) and a desktop's (1024 px),
in light and dark colour schemes, and measured: nothing wider than the screen, no text too
faint on its background, no style sheet, nothing that would load from elsewhere, and every
picture shown from the mail itself. Screenshots are kept in test-output/mail-look/."""

from __future__ import annotations

import base64
import email
import io
import re
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import matplotlib
import pytest

from mailagent.config import SmtpSettings
from mailagent.mail.notify import FileToSend, compose
from mailagent.mail.render import SAMPLES
from mailagent.store import ReplyTarget
from tests.support.chromium import Chromium, Page
from tests.support.mail import AGENT, OWNER

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SHOTS = Path(__file__).resolve().parents[1] / "test-output" / "mail-look"
LONG_PATH = ("/home/owner/Documents/reports/2026/quarterly-sales-and-forecasts/"
             "north-west-region/final-versions/summary_of_everything_v12_reviewed.xlsx")
ANSWER = f"""## Sales report

The figures are in **{LONG_PATH}**, and the chart is below.

| Month | Sales (EUR) | Change | Source file |
|-------|------------:|-------:|-------------|
| January | 120,000.00 | +4.1% | {LONG_PATH} |
| February | 95,500.50 | -20.4% | sales/feb.csv |
| March | 143,000.00 | +49.7% | sales/mar.csv |

What I did:

1. Read the three CSV files.
2. Made `make_chart.py` and ran it:

```
python3 make_chart.py --input sales/jan.csv sales/feb.csv sales/mar.csv --output {LONG_PATH}
```

- A word with no place to break: {"Donaudampfschifffahrtsgesellschaft" * 3}
- A link: [the dashboard](https://example.org/dashboards/sales?region=north-west&year=2026)
"""


def chart() -> bytes:
    figure, axes = plt.subplots(figsize=(8, 4), dpi=100)  # 800 px: wider than a phone
    axes.bar(["Jan", "Feb", "Mar"], [120, 95.5, 143])
    axes.set_title("Sales by month")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def smtp() -> SmtpSettings:
    return SmtpSettings("127.0.0.1", 25, "none", f"Mail Agent <{AGENT}>")


def target(subject: str) -> ReplyTarget:
    return ReplyTarget(OWNER, subject, "<task@example.com>", (), 7, "main", 1)


def mails(folder: Path) -> dict[str, EmailMessage]:
    """One of each kind, as the service composes it."""
    (folder / "sales.png").write_bytes(chart())
    (folder / "sales.csv").write_text("month,sales\nJan,120\n")
    completion = {**{k: v for k, v in SAMPLES["completion.md.j2"].items()
                     if k not in ("attached", "not_attached", "pictures")}, "answer": ANSWER,
                  "changes": [f"modified {LONG_PATH}"], "run_note": ""}
    kinds: dict[str, tuple[str, str, dict[str, Any], list[Path]]] = {
        "completion": ("completion", "completion.md.j2", completion,
                       [folder / "sales.png", folder / "sales.csv"]),
        "approval": ("approval", "approval.md.j2",
                     {**SAMPLES["approval.md.j2"], "operation": f"delete {LONG_PATH}"}, []),
        "budget": ("approval", "budget.md.j2",
                   {**SAMPLES["budget.md.j2"], "partial": ANSWER}, []),
        "failure": ("failure", "failure.md.j2",
                    {**{k: v for k, v in SAMPLES["failure.md.j2"].items() if k != "pictures"},
                     "reason": f"cannot read {LONG_PATH}",
                     "partial": ANSWER, "run_note": ""}, []),
        "refusal": ("refusal", "refused.md.j2", SAMPLES["refused.md.j2"], []),
        "held": ("notice", "held.md.j2", SAMPLES["held.md.j2"], []),
        "schedule_approval": ("approval", "schedule_approval.md.j2",
                              {**SAMPLES["schedule_approval.md.j2"],
                               "task_lines": [f"Summarise {LONG_PATH} every morning"]}, []),
    }
    built = {}
    for name, (kind, template, values, files) in kinds.items():
        outbound = compose(smtp(), target("[reports] Sales for the quarter"), kind, template,
                           values, [FileToSend(path, path.read_bytes()) for path in files])
        message = email.message_from_bytes(outbound.raw, policy=default_policy)
        assert isinstance(message, EmailMessage)
        built[name] = message
    return built


def as_a_client_shows_it(message: EmailMessage) -> str:
    """The HTML part with each `cid:` replaced by its part's bytes, as a mail client does;
    every `cid:` must name a part of the multipart/related around the HTML."""
    html_part = message.get_body(("html",))
    assert html_part is not None
    html = str(html_part.get_content())
    related = message.get_body(("related",))
    parts = {str(p["Content-ID"]).strip("<>"): p for p in related.iter_parts()
             if p["Content-ID"]} if related is not None else {}

    def inline(match: re.Match[str]) -> str:
        part = parts[match.group(1)]  # a KeyError is a picture the mail does not carry
        data = base64.b64encode(part.get_content()).decode()
        return f'src="data:{part.get_content_type()};base64,{data}"'

    return re.sub(r'src="cid:([^"]+)"', inline, html)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    chromium = Chromium.start(tmp_path_factory.mktemp("chromium"))
    try:
        yield chromium
    finally:
        chromium.stop()


@pytest.fixture(scope="module")
def page(browser: Chromium) -> Iterator[Page]:
    with browser.page() as tab:
        yield tab


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> dict[str, EmailMessage]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"mail screenshots: {SHOTS}")
    return mails(tmp_path_factory.mktemp("mails"))


KINDS = ["completion", "approval", "budget", "failure", "refusal", "held", "schedule_approval"]


@pytest.mark.parametrize("width", [360, 1024])
@pytest.mark.parametrize("kind", KINDS)
def test_every_mail_fits_the_screen_loads_nothing_and_reads_in_light_and_dark(
        built: dict[str, EmailMessage], page: Page, tmp_path: Path, kind: str,
        width: int) -> None:
    html = tmp_path / f"{kind}.html"
    html.write_text(as_a_client_shows_it(built[kind]))
    for scheme in ("light", "dark"):
        page.requests.clear()
        page.show(html, width, scheme)
        seen = page.measure()
        page.screenshot(SHOTS / f"{kind}-{width}-{scheme}.png")
        assert seen["width"] == width
        assert seen["scrollWidth"] <= width, (scheme, seen["wide"])
        assert seen["wide"] == [], scheme
        assert seen["faint"] == [], scheme
        assert seen["remote"] == [] and seen["styleSheets"] == 0
        assert [url for url in page.requests if not url.startswith(("file:", "data:"))] == []
        assert all(image["loaded"] and image["width"] <= width for image in seen["images"])
    if kind == "completion":
        assert [image["src"][:15] for image in seen["images"]] == ["data:image/png;"]


def test_the_measure_sees_a_code_line_that_runs_off_a_phone(page: Page, tmp_path: Path) -> None:
    """The check above can fail: a code block that keeps its lines overflows at 360 px."""
    html = tmp_path / "unwrapped.html"
    html.write_text('<!DOCTYPE html><html><head><meta name="viewport" '
                    'content="width=device-width, initial-scale=1"></head><body>'
                    f"<pre>python3 make_chart.py --output {LONG_PATH}</pre></body></html>")
    page.show(html, 360)
    seen = page.measure()
    assert seen["scrollWidth"] > 360 and any(w.startswith("pre") for w in seen["wide"])


def test_text_forced_dark_on_a_dark_screen_is_seen_as_faint(page: Page, tmp_path: Path) -> None:
    html = tmp_path / "forced.html"
    html.write_text('<!DOCTYPE html><html><head><meta name="color-scheme" content="light dark">'
                    '</head><body><p style="color:#1a1a1a">Hard to read</p></body></html>')
    page.show(html, 360, "dark")
    assert page.measure()["faint"] != []


def test_a_remote_picture_in_the_answer_is_words_never_a_load(
        page: Page, tmp_path: Path) -> None:
    outbound = compose(smtp(), target("Look"), "notice", "command.md.j2",
                       {"body": "See ![the plan](http://evil.example/p.png?leak=1) and "
                                "<img src='http://evil.example/q.png'>."})
    message = email.message_from_bytes(outbound.raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    html = tmp_path / "remote.html"
    html.write_text(as_a_client_shows_it(message))
    page.requests.clear()
    page.show(html, 360)
    seen = page.measure()
    assert seen["images"] == [] and seen["remote"] == []
    assert [url for url in page.requests if not url.startswith(("file:", "data:"))] == []
