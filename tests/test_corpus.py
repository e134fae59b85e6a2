"""Every file of the public hostile-mail corpus goes through intake to a recorded outcome."""

from __future__ import annotations

import re
from email.utils import formatdate
from pathlib import Path

import pytest

from mailagent.config import LimitSettings, OwnerSettings
from mailagent.mail.mailbox import Fetched
from mailagent.service import Service
from mailagent.store import Store
from tests.support.config import settings_for_tests
from tests.support.mail import OWNER, owner_mail

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
FILES = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix != ".md"
               and not p.name.startswith("LICENSE"))


def as_from_owner(raw: bytes) -> bytes:
    """The same mail with one From: the owner, and a fresh Date, so intake parses it all."""
    raw = re.sub(rb"(?im)^(from|date):.*(\r?\n[ \t].*)*\r?\n", b"", raw, count=0)
    return f"From: <{OWNER}>\r\nDate: {formatdate()}\r\n".encode() + raw


def run_corpus(tmp_path: Path, owner: OwnerSettings, transform: bool) -> list[tuple]:
    settings = settings_for_tests(tmp_path, owner=owner,
                                  limits=LimitSettings(max_mails_per_hour=10_000))
    store = Store.open(settings.database_url)
    service = Service(settings, store)
    for uid, path in enumerate(FILES, start=1):
        raw = path.read_bytes()
        raw = as_from_owner(raw) if transform else raw
        service.receive(Fetched("INBOX", 1, uid, raw, len(raw)))
    return store.raw_outcomes()


def test_the_corpus_is_present() -> None:
    assert len(FILES) > 150, f"expected the shared corpus at {CORPUS}"


@pytest.mark.parametrize("transform", [False, True], ids=["as-is", "from-owner"])
def test_every_corpus_mail_ends_in_a_recorded_outcome(tmp_path: Path, transform: bool) -> None:
    owner = OwnerSettings((OWNER,), "none")
    outcomes = run_corpus(tmp_path, owner, transform)
    stored = {raw_id for raw_id, *_ in outcomes}
    assert len(outcomes) >= len(FILES) - 5  # a few fixtures are byte-identical copies
    assert len(stored) == len(outcomes)
    for raw_id, state, outcome, reason in outcomes:
        assert state == "processed", f"message {raw_id} left unprocessed"
        assert outcome in ("task", "command", "rejected")
        assert reason, f"message {raw_id} has no recorded reason"
        assert "internal error" not in reason, f"message {raw_id}: {reason}"
    if transform:
        assert sum(1 for *_, o, _ in outcomes if o == "task") > 50


def test_a_message_that_keeps_killing_intake_is_given_up_after_three_attempts(
        tmp_path: Path) -> None:
    settings = settings_for_tests(tmp_path)
    store = Store.open(settings.database_url)
    raw = owner_mail("crashes every time")
    saved = store.save_raw(folder="INBOX", uidvalidity=1, uid=1, raw=raw, size=len(raw),
                           content_key="k", message_id=None)
    for _ in range(3):  # three starts that died while processing it
        store.begin_processing(saved.raw_message_id)
    Service(settings, store).process_pending()
    [(_, state, outcome, reason)] = store.raw_outcomes()
    assert (state, outcome) == ("processed", "rejected")
    assert reason == "gave up after 3 attempts"
    assert store.tasks() == []
