"""Check and use are one act beyond the file tools (SECURITY.md F1, A1, A2, E3): what an approval
is bound to, `undo`, the protected paths a command made, the files a reply attaches and the
attachments saved from mail are each reached through descriptors, so a folder swapped for a
symlink to an unlisted folder between the judgement and the I/O reads, attaches, restores,
moves or deletes nothing there. Each runs with openat2(2) and with the name-by-name walk.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailagent.errors import PolicyError
from mailagent.mail.intake import Attachment
from mailagent.policy import (
    Decision,
    Policy,
    Scope,
    decide,
    decide_move,
    load_policy,
    protected_paths,
)
from mailagent.policy.calls import bind_operation
from mailagent.tasks.replies import files_to_send
from mailagent.tasks.toolbox import keep_in_trash
from mailagent.tasks.undo import revert
from mailagent.tasks.workspace import save_attachments
from mailagent.tools.files import FileTools, ToolError
from tests.support.races import Swapper, exchange, walks

SECRET = "TOPSECRET outside the policy"
WALKS = ["openat2", "fallback"]
NAMES = ("file.txt", "victim.txt", "moving.txt", "new.txt", "made.toml")


@dataclass
class Tree:
    root: Path
    proj: Path
    sub: Path  # a real folder inside ~/proj
    swap: Path  # a symlink inside ~/proj to the unlisted folder
    outside: Path
    trash: Path
    policy: Policy
    scope: Scope

    def judge(self, action: str, then: Callable[[], None] = lambda: None
              ) -> Callable[[str], Decision]:
        """The policy's decision on a path, then `then()`: the world changing after the check."""
        def judged(path: str) -> Decision:
            decision = decide(self.policy, action, path, self.scope)  # type: ignore[arg-type]
            then()
            return decision
        return judged

    def tools(self, then: Callable[[], None] = lambda: None) -> FileTools:
        return FileTools(workspace=self.scope.workspace, judge=lambda a, p: self.judge(a, then)(p),
                         judge_move=lambda s, d: _then(decide_move(self.policy, s, d,
                                                                   self.scope), then),
                         trash=self.trash, on_attach=lambda _path: None)

    def swap_once(self) -> Callable[[], None]:
        done = [False]

        def swap() -> None:
            if not done[0]:
                exchange(self.sub, self.swap)  # ~/proj/sub is now the symlink to the outside
                done[0] = True
        return swap

    def outside_state(self) -> dict[str, tuple[int, bytes]]:
        return {entry.name: (entry.inode(), Path(entry.path).read_bytes())
                for entry in os.scandir(self.outside) if entry.is_file(follow_symlinks=False)}


def _then(decision: Decision, then: Callable[[], None]) -> Decision:
    then()
    return decision


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root = tmp_path.resolve()
    home, outside = root / "home", root / "outside"
    proj = home / "proj"
    (proj / "sub").mkdir(parents=True)
    outside.mkdir()
    for name in NAMES:
        (outside / name).write_text(f"{SECRET} {name}\n")
    for name in ("file.txt", "victim.txt", "moving.txt"):
        (proj / "sub" / name).write_text(f"public {name}\n")
    (proj / "swap").symlink_to(outside)
    workspace = root / "data" / "workspaces" / "main"
    workspace.mkdir(parents=True)
    policies = root / "policies"
    policies.mkdir()
    (policies / "work.toml").write_text(f'[[folders]]\npath = "{proj}"\naccess = "write"\n'
                                        'delete = "ask"\n')
    protected = protected_paths(config_path=root / "mailagent.toml", policies_dir=policies,
                                data_dir=root / "data", home=home)
    scope = Scope(workspace=workspace, home=home, protected=protected)
    return Tree(root, proj, proj / "sub", proj / "swap", outside, root / "data" / "trash",
                load_policy(policies, home=home), scope)


# ---------------------------------------------------------------------------------------------
# What an approval is bound to


@pytest.mark.parametrize("walk", WALKS)
def test_the_digest_an_approval_binds_never_reads_a_file_through_a_swapped_folder(
    tree: Tree, walk: str
) -> None:
    decision = decide(tree.policy, "delete", "~/proj/sub/victim.txt", tree.scope)
    assert decision.verdict == "ask", decision
    exchange(tree.sub, tree.swap)
    binding = walks(walk, lambda: bind_operation(decision, "delete_file",
                                                 {"path": "~/proj/sub/victim.txt"}))
    state = binding.files[str(tree.sub / "victim.txt")]
    assert isinstance(state, str) and "symlink" in state, state
    secret = hashlib.sha256(f"{SECRET} victim.txt\n".encode()).hexdigest()
    assert secret not in repr(binding)


def _replace(path: Path) -> None:
    """The same bytes under the same name, as another file (another inode)."""
    path.with_name("twin").write_bytes(path.read_bytes())
    os.replace(path.with_name("twin"), path)


def _rewrite(path: Path) -> None:
    """The same file (the same inode), other bytes."""
    with open(path, "r+b") as handle:
        handle.write(b"P")


APPROVED_CALLS: list[tuple[str, str, dict[str, Any], Callable[[FileTools], str]]] = [
    ("delete", "delete_file", {"path": "~/proj/sub/victim.txt"},
     lambda t: t.delete_file("~/proj/sub/victim.txt")),
    ("write", "write_file", {"path": "~/proj/sub/victim.txt", "content": "new\n"},
     lambda t: t.write_file("~/proj/sub/victim.txt", "new\n")),
    ("edit", "edit_file", {"path": "~/proj/sub/victim.txt", "old_text": "public",
                           "new_text": "edited"},
     lambda t: t.edit_file("~/proj/sub/victim.txt", "public", "edited")),
    ("move", "move_file", {"source": "~/proj/sub/victim.txt", "destination": "~/proj/moved.txt"},
     lambda t: t.move_file("~/proj/sub/victim.txt", "~/proj/moved.txt")),
]


@pytest.mark.parametrize("change", [_replace, _rewrite], ids=["replaced", "rewritten"])
@pytest.mark.parametrize(("label", "name", "tool_input", "call"), APPROVED_CALLS,
                         ids=[c[0] for c in APPROVED_CALLS])
def test_an_approved_call_acts_only_on_the_file_and_bytes_the_owner_approved(
    tree: Tree, label: str, name: str, tool_input: dict[str, Any],
    call: Callable[[FileTools], str], change: Callable[[Path], None],
) -> None:
    victim = tree.sub / "victim.txt"
    decision = decide_move(tree.policy, tool_input["source"], tool_input["destination"],
                           tree.scope) if name == "move_file" else decide(
        tree.policy, "delete" if name == "delete_file" else "write", tool_input["path"],
        tree.scope)
    binding = bind_operation(decision, name, tool_input)
    mutated: list[bytes] = []

    def after_the_last_check() -> None:  # between the agent's digest check and the tool's I/O
        if not mutated:
            change(victim)
            mutated.append(victim.read_bytes())

    tools = tree.tools(after_the_last_check)
    tools.approved = binding
    with pytest.raises(ToolError, match="changed after the owner approved"):
        call(tools)
    assert mutated and victim.read_bytes() == mutated[0]  # not deleted, edited or replaced
    assert not (tree.proj / "moved.txt").exists()
    assert not tools.changes and not tree.trash.exists(), label


def test_an_approved_call_on_the_unchanged_file_runs(tree: Tree) -> None:
    tool_input = {"path": "~/proj/sub/victim.txt"}
    binding = bind_operation(decide(tree.policy, "delete", tool_input["path"], tree.scope),
                             "delete_file", tool_input)
    tools = tree.tools()
    tools.approved = binding
    assert tools.delete_file(tool_input["path"]).startswith("deleted ")
    assert not (tree.sub / "victim.txt").exists()
    assert [c["op"] for c in tools.changes] == ["deleted"]


# ---------------------------------------------------------------------------------------------
# undo


def _changes(tree: Tree) -> dict[str, dict[str, Any]]:
    """One change of each kind, made by the file tools in ~/proj/sub."""
    tools = tree.tools()
    tools.write_file("~/proj/sub/new.txt", "created by the task\n")
    tools.write_file("~/proj/sub/file.txt", "modified by the task\n")
    tools.approved = bind_operation(decide(tree.policy, "delete", "~/proj/sub/victim.txt",
                                           tree.scope), "delete_file",
                                    {"path": "~/proj/sub/victim.txt"})
    tools.delete_file("~/proj/sub/victim.txt")
    tools.approved = None
    tools.move_file("~/proj/sub/moving.txt", "~/proj/moving.txt")
    return {change["op"]: change for change in tools.changes}


@pytest.mark.parametrize("walk", WALKS)
@pytest.mark.parametrize("op", ["created", "modified", "deleted", "moved"])
def test_undo_through_a_folder_swapped_after_the_check_changes_nothing_outside(
    tree: Tree, op: str, walk: str
) -> None:
    change = _changes(tree)[op]
    before = tree.outside_state()
    swap, judged = tree.swap_once(), [0]

    def after_the_checks() -> None:  # a move back judges both ends first
        judged[0] += 1
        if judged[0] == (2 if op == "moved" else 1):
            swap()

    with pytest.raises(PolicyError, match="symlink now"):
        walks(walk, lambda: revert(change, tree.judge("write", after_the_checks)))
    assert tree.outside_state() == before
    exchange(tree.sub, tree.swap)  # back as it was: now undo does its work
    assert walks(walk, lambda: revert(change, tree.judge("write")))
    reverted: dict[str, Callable[[], bool]] = {
        "created": lambda: not (tree.sub / "new.txt").exists(),
        "modified": lambda: (tree.sub / "file.txt").read_text() == "public file.txt\n",
        "deleted": lambda: (tree.sub / "victim.txt").read_text() == "public victim.txt\n",
        "moved": lambda: (tree.sub / "moving.txt").read_text() == "public moving.txt\n"
        and not (tree.proj / "moving.txt").exists()}
    assert reverted[op](), op


@pytest.mark.parametrize("op", ["created", "modified", "deleted", "moved"])
def test_undo_leaves_alone_a_file_that_was_changed_after_the_task(tree: Tree, op: str) -> None:
    change = _changes(tree)[op]
    path = tree.sub / "victim.txt" if op == "deleted" else Path(change["path"])
    path.write_text("the owner's newer words\n")  # by name: the owner, not the task
    with pytest.raises(PolicyError, match="after the task"):
        revert(change, tree.judge("write"))
    assert path.read_text() == "the owner's newer words\n"
    if op == "moved":
        assert not (tree.sub / "moving.txt").exists()


# ---------------------------------------------------------------------------------------------
# A protected path a command made, moved to the trash


@pytest.mark.parametrize("walk", WALKS)
def test_a_protected_path_under_a_swapped_folder_never_moves_a_file_from_elsewhere(
    tree: Tree, walk: str
) -> None:
    made = tree.sub / "made.toml"
    exchange(tree.sub, tree.swap)  # the command swapped the folder before it ended
    before = tree.outside_state()
    said = walks(walk, lambda: keep_in_trash(made, tree.trash))
    assert "not moved" in said and "symlink" in said, said
    assert tree.outside_state() == before
    assert not tree.trash.exists() or not list(tree.trash.iterdir())
    exchange(tree.sub, tree.swap)
    made.write_text("made by a command\n")
    said = walks(walk, lambda: keep_in_trash(made, tree.trash))
    [kept] = list(tree.trash.iterdir())
    assert not made.exists() and kept.read_text() == "made by a command\n", said


# ---------------------------------------------------------------------------------------------
# The files a reply attaches, at send time


@pytest.mark.parametrize("walk", WALKS)
def test_an_attachment_is_read_through_its_anchor_never_through_a_swapped_folder(
    tree: Tree, walk: str
) -> None:
    refused: list[tuple[str, str]] = []
    files = walks(walk, lambda: files_to_send(tree.judge("read", tree.swap_once()),
                                              ["~/proj/sub/file.txt"], 10_000,
                                              lambda p, why: refused.append((p, why))))
    assert [(f.path, f.payload) for f in files] == [(tree.sub / "file.txt", None)]
    assert refused and "symlink" in refused[0][1], refused
    exchange(tree.sub, tree.swap)
    [sent] = walks(walk, lambda: files_to_send(tree.judge("read"), ["~/proj/sub/file.txt"],
                                               10_000, lambda p, why: refused.append((p, why))))
    assert sent.payload == b"public file.txt\n"


def test_an_attachment_over_the_limit_is_refused_whole_never_cut(tree: Tree) -> None:
    refused: list[tuple[str, str]] = []
    size = len(b"public file.txt\n")
    [cut] = files_to_send(tree.judge("read"), ["~/proj/sub/file.txt"], size - 1,
                          lambda p, why: refused.append((p, why)))
    assert cut.payload is None
    assert refused == [("~/proj/sub/file.txt", f"{tree.sub / 'file.txt'} is over {size - 1} "
                        "bytes: too large to attach")]
    [whole] = files_to_send(tree.judge("read"), ["~/proj/sub/file.txt"], size,
                            lambda p, why: refused.append((p, why)))
    assert whole.payload == b"public file.txt\n" and len(refused) == 1


# ---------------------------------------------------------------------------------------------
# Attachments saved from mail into the workspace


@pytest.mark.parametrize("walk", WALKS)
def test_saved_attachments_never_land_through_a_swapped_workspace_folder(
    tree: Tree, walk: str
) -> None:
    workspace = tree.scope.workspace
    (workspace / "attachments").mkdir()
    (workspace / "swap").symlink_to(tree.outside)
    attachment = Attachment(index=0, original_name="a.txt", content_type="text/plain",
                            payload=b"from the mail")
    swapper = Swapper("exchange", workspace / "attachments", workspace / "swap")
    saved = refused = 0
    try:
        def loop() -> tuple[int, int]:
            done = failed = 0
            deadline = time.monotonic() + 1.0
            number = 0
            while time.monotonic() < deadline:
                number += 1
                try:
                    save_attachments(workspace, number, [attachment])
                    done += 1
                except OSError:
                    failed += 1
            return done, failed

        saved, refused = walks(walk, loop)
    finally:
        swaps = swapper.stop()
    assert sorted(os.listdir(tree.outside)) == sorted(NAMES), "a save landed outside"
    assert swaps > 100 and saved > 0 and refused > 0, (saved, refused, swaps)
