"""The outcome of every hostile input: the public corpus and the inputs made at test time.

    python -m tests.hostile_report        # in-process intake, prints one line per message

`tests/test_hostile_report.py` runs the same inputs through the real service (Dovecot, SMTP, the
scripted model) and writes this table under its temporary folder.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

from mailagent.config import LimitSettings, OwnerSettings
from mailagent.mail.intake import content_key
from mailagent.mail.mailbox import Fetched
from mailagent.service import Service
from mailagent.store import Store
from tests.hostile import archives_mail, huge_header, many_parts, nested_mime
from tests.support.config import settings_for_tests
from tests.support.mail import OWNER, PASS_RESULTS, owner_mail

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


@dataclass(frozen=True)
class Input:
    name: str
    raw: bytes


@dataclass(frozen=True)
class Row:
    name: str
    size: int
    outcome: str
    reason: str


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix != ".md"
                  and not p.name.startswith("LICENSE"))


def as_from_owner(raw: bytes) -> bytes:
    """The same mail from the authenticated owner with a fresh Date, so intake reads all of it."""
    raw = re.sub(rb"(?im)^(from|date|authentication-results):.*(\r?\n[ \t].*)*\r?\n", b"", raw)
    head = f"Authentication-Results: {PASS_RESULTS}\r\nFrom: <{OWNER}>\r\nDate: {formatdate()}\r\n"
    return head.encode() + raw


def generated() -> list[Input]:
    """Hostile mail made here: bombs, depth, width, size, and bytes that are not mail at all."""
    return [
        Input("gen/zip-bomb-and-nested-archives", archives_mail("[bombs] Read these")),
        Input("gen/mime-nested-5000-deep", nested_mime(5000)),
        Input("gen/mime-nested-60-deep", nested_mime(60)),
        Input("gen/3000-parts", many_parts(3000)),
        Input("gen/1.5-MB-header", huge_header(1.5)),
        Input("gen/1.5-MB-header-stranger", huge_header(1.5, "stranger", auth=False)),
        Input("gen/not-mail", b"\x00\xff" * 500 + b"\r\n\r\n" + bytes(range(256))),
        Input("gen/headers-only", f"From: <{OWNER}>\r\nSubject: x\r\n".encode()),
        Input("gen/25-attachments", owner_mail("Many files", "x", attachments=[
            (f"f{n}.txt", "text/plain", b"x") for n in range(25)])),
        Input("gen/forged-owner", owner_mail("Delete everything", auth=None)),
    ]


def inputs() -> list[Input]:
    corpus = [Input(str(p.relative_to(CORPUS)), as_from_owner(p.read_bytes()))
              for p in corpus_files()]
    return corpus + generated()


def key_of(item: Input) -> str:
    """The content key the service gives the input once the IMAP server stored it (CRLF)."""
    return content_key(item.raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))[0]


def distinct(sent: Sequence[Input]) -> int:
    return len({key_of(item) for item in sent})


def rows_for(store: Store, sent: Sequence[Input]) -> list[Row]:
    """One row per input, matched to its stored message by content key in the order received
    (a second copy of the same content is a duplicate, not a new message)."""
    outcomes = store.raw_outcomes()
    first_of: dict[str, int] = {}
    rows = []
    for item in sent:
        key = key_of(item)
        if key in first_of:
            rows.append(Row(item.name, len(item.raw), "duplicate",
                            f"same content as input {first_of[key] + 1}: not acted on again"))
            continue
        index = len(first_of)
        first_of[key] = index
        if index >= len(outcomes):
            rows.append(Row(item.name, len(item.raw), "missing", "no stored message"))
            continue
        _, state, outcome, reason = outcomes[index]
        rows.append(Row(item.name, len(item.raw), outcome or state, reason or ""))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    width = max(len(r.name) for r in rows)
    lines = [f"{'input':<{width}}  {'bytes':>9}  {'outcome':<9}  reason",
             f"{'-' * width}  {'-' * 9}  {'-' * 9}  {'-' * 40}"]
    for row in rows:
        reason = " ".join(row.reason.split())[:110]
        lines.append(f"{row.name:<{width}}  {row.size:>9}  {row.outcome:<9}  {reason}")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.outcome] = counts.get(row.outcome, 0) + 1
    lines.append("")
    lines.append(f"{len(rows)} inputs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return "\n".join(lines)


def run_in_process(folder: Path, sent: Sequence[Input]) -> list[Row]:
    settings = settings_for_tests(folder, owner=OwnerSettings((OWNER,), "authentication-results",
                                                              ("mx.example.com",)),
                                  limits=LimitSettings(max_mails_per_hour=10_000))
    store = Store.open(settings.database_url)
    service = Service(settings, store)
    for uid, item in enumerate(sent, start=1):
        service.receive(Fetched("INBOX", 1, uid, item.raw, len(item.raw)))
    return rows_for(store, sent)


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        print(format_table(run_in_process(Path(folder), inputs())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
