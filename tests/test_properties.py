"""Property-based tests (hypothesis): intake never crashes and always records an outcome, and
the path resolver never allows a path outside an allowed root (SECURITY.md F1, F2, R1)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailagent.config import LimitSettings
from mailagent.mail.mailbox import Fetched
from mailagent.policy import Policy, Scope, decide, load_policy, protected_paths
from mailagent.service import Service
from mailagent.store import Store
from tests.support.config import settings_for_tests
from tests.support.mail import OWNER, PASS_RESULTS

EXAMPLES = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---------------------------------------------------------------- intake


@dataclass
class Intake:
    service: Service
    store: Store
    uids: Iterator[int]

    def receive(self, raw: bytes) -> None:
        self.service.receive(Fetched("INBOX", 1, next(self.uids), raw, len(raw)))

    def assert_every_message_recorded(self) -> None:
        outcomes = self.store.raw_outcomes()
        assert outcomes
        for raw_id, state, outcome, reason in outcomes:
            assert state == "processed", f"message {raw_id} left {state}"
            assert outcome in ("task", "command", "rejected"), (raw_id, outcome)
            assert reason, f"message {raw_id} has no reason"
            assert "internal error" not in reason, f"message {raw_id}: {reason}"


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory) -> Intake:
    folder = tmp_path_factory.mktemp("intake")
    limits = LimitSettings(max_mime_parts=50, max_mime_depth=8, max_header_bytes=8192,
                           max_attachments=5, max_attachment_bytes=20_000,
                           max_mails_per_hour=100_000)
    config = settings_for_tests(folder, limits=limits)
    store = Store.open(config.database_url)
    return Intake(Service(config, store), store, itertools.count(1))


@EXAMPLES
@given(raw=st.binary(max_size=3000))
def test_intake_records_an_outcome_for_any_bytes(intake: Intake, raw: bytes) -> None:
    intake.receive(raw)
    intake.assert_every_message_recorded()


CONTENT_TYPES = ["text/plain", "text/html", "multipart/mixed", "multipart/alternative",
                 "message/rfc822", "application/octet-stream", "multipart/", "text/",
                 "multipart/mixed; boundary=", 'multipart/mixed; boundary="b"', "image/png",
                 "text/plain; charset=utf-7", "text/plain; charset=bogus-8",
                 "text/plain; charset=utf-16", "application/zip; name=../../x.zip"]
ENCODINGS = ["7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "binary", "gzip", ""]
BOUNDARIES = ["b", "B", "", "b--", "--", " ", "b" * 80]


@st.composite
def mangled_mime(draw: st.DrawFn) -> bytes:
    """An authenticated owner's mail whose MIME structure is plausible but broken."""
    head = [f"Authentication-Results: {PASS_RESULTS}", f"From: <{OWNER}>",
            f"Date: {formatdate()}", f"Message-ID: <p{draw(st.integers(0, 10**9))}@example.com>",
            f"Subject: {draw(st.text(max_size=60))}", "MIME-Version: 1.0"]
    parts: list[str] = []
    for _ in range(draw(st.integers(0, 12))):
        boundary = draw(st.sampled_from(BOUNDARIES))
        part_head = [f"Content-Type: {draw(st.sampled_from(CONTENT_TYPES))}"
                     f"{'; boundary=' + repr(boundary) if draw(st.booleans()) else ''}",
                     f"Content-Transfer-Encoding: {draw(st.sampled_from(ENCODINGS))}"]
        if draw(st.booleans()):
            part_head.append(f"Content-Disposition: attachment; filename="
                             f"{draw(st.text(max_size=40))!r}")
        body = draw(st.text(max_size=200))
        opener = draw(st.sampled_from(["--", "", "---", "-- "]))
        parts.append(f"{opener}{boundary}\r\n" + "\r\n".join(part_head) + f"\r\n\r\n{body}")
    top = f"Content-Type: {draw(st.sampled_from(CONTENT_TYPES))}; boundary=\"b\""
    text = "\r\n".join([*head, top]) + "\r\n\r\n" + "\r\n".join(parts)
    if draw(st.booleans()):
        text += "\r\n--b--\r\n"
    raw = text.encode("utf-8", "surrogatepass")
    cut = draw(st.integers(0, len(raw)))
    flips = draw(st.lists(st.tuples(st.integers(0, max(len(raw) - 1, 0)), st.integers(0, 255)),
                          max_size=5))
    mangled = bytearray(raw[:cut] if draw(st.booleans()) else raw)
    for index, value in flips:
        if index < len(mangled):
            mangled[index] = value
    return bytes(mangled)


@EXAMPLES
@given(raw=mangled_mime())
def test_intake_records_an_outcome_for_mangled_mime(intake: Intake, raw: bytes) -> None:
    intake.receive(raw)
    intake.assert_every_message_recorded()


# ---------------------------------------------------------------- the path resolver


@dataclass(frozen=True)
class Tree:
    root: Path
    home: Path
    outside: Path
    policy: Policy
    scope: Scope


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    """A home with a read and a write folder, and every kind of way out of them."""
    root = Path(os.path.realpath(tmp_path_factory.mktemp("paths")))
    home, outside = root / "home", root / "outside"
    for folder in (home / "docs" / "sub", home / "out", home / ".ssh", outside,
                   root / "data" / "workspaces" / "main", root / "policies"):
        folder.mkdir(parents=True)
    (outside / "secret.txt").write_text("secret")
    (home / ".ssh" / "id_rsa").write_text("key")
    (home / "docs" / "a.txt").write_text("a")
    (home / "out" / "b.txt").write_text("b")
    os.symlink(outside, home / "docs" / "link_out")
    os.symlink("../out", home / "docs" / "link_rel")
    os.symlink(outside / "secret.txt", home / "out" / "secret_link")
    os.symlink("loop", home / "docs" / "loop")
    os.symlink("nowhere", home / "out" / "dangling")
    os.symlink(root / "data", root / "data" / "workspaces" / "main" / "up")
    os.link(outside / "secret.txt", home / "out" / "hard.txt")
    os.mkfifo(home / "out" / "pipe")
    (root / "policies" / "main.toml").write_text(
        f'[[folders]]\npath = "{home / "docs"}"\naccess = "read"\n\n'
        f'[[folders]]\npath = "{home / "out"}"\naccess = "write"\ndelete = "ask"\n')
    policy = load_policy(root / "policies", home=home)
    protected = protected_paths(config_path=root / "mailagent.toml",
                                policies_dir=root / "policies", data_dir=root / "data",
                                home=home)
    workspace = root / "data" / "workspaces" / "main"
    return Tree(root, home, outside, policy, Scope(workspace, home, protected))


PARTS = ["..", ".", "~", "", "docs", "out", "out2", "outside", "a.txt", "b.txt", "secret.txt",
         "link_out", "link_rel", "secret_link", "loop", "dangling", "hard.txt", "pipe", "sub",
         ".ssh", "id_rsa", ".git", "data", "workspaces", "main", "up", "policies", "proc",
         "self", "environ", "é", "e\u0301", "\u202e", "\u200b", "\x00", "~root", "DOCS", "*"]


@st.composite
def hostile_paths(draw: st.DrawFn) -> str:
    start = draw(st.sampled_from(["", "/", "~/", "~", "./", "../", "/proc/", "{root}/",
                                  "{home}/", "//"]))
    parts = draw(st.lists(st.sampled_from(PARTS) | st.text(max_size=8), max_size=8))
    return start + "/".join(parts)


ROOT_MARK = "{root}"


def allowed_roots(tree: Tree, action: str) -> list[Path]:
    """Where a path may lead for `action`: the rules' folders and the workspace."""
    writable = [f.path for f in tree.policy.folders if f.access == "write"]
    readable = [f.path for f in tree.policy.folders]
    roots = writable if action in ("write", "delete") else readable
    return [*roots, tree.scope.workspace]


@EXAMPLES
@given(raw=hostile_paths())
def test_no_generated_path_escapes_its_root(tree: Tree, raw: str) -> None:
    path = raw.replace(ROOT_MARK, str(tree.root)).replace("{home}", str(tree.home))
    for action in ("list", "read", "write", "delete"):
        decision = decide(tree.policy, action, path, tree.scope)  # type: ignore[arg-type]
        if decision.verdict == "deny":
            assert decision.reason, (action, path)
            continue
        assert decision.path is not None, (action, path, decision)
        real = Path(os.path.realpath(decision.path))
        assert real == decision.path, f"{path!r} was judged before every symlink was followed"
        inside = [r for r in allowed_roots(tree, action) if real.is_relative_to(r)]
        assert inside, f"{action} {path!r} -> {real} is outside every allowed root"
        assert not real.is_relative_to(tree.outside)
        assert not real.is_relative_to(tree.home / ".ssh")
        assert "\x00" not in path
        in_workspace = real.is_relative_to(tree.scope.workspace)
        assert in_workspace or not real.is_relative_to(tree.root / "data")
        if action in ("write", "delete") and real.exists():
            assert real.is_file() and os.lstat(real).st_nlink == 1, (action, path)


@EXAMPLES
@given(raw=st.text(max_size=300))
def test_no_arbitrary_text_escapes_its_root(tree: Tree, raw: str) -> None:
    for action in ("read", "write"):
        decision = decide(tree.policy, action, raw, tree.scope)  # type: ignore[arg-type]
        if decision.verdict != "deny":
            assert decision.path is not None
            assert any(decision.path.is_relative_to(r) for r in allowed_roots(tree, action))
