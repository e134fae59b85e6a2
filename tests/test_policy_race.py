"""Check and use are one act (SECURITY.md F1, F2, F3): the file tools over real trees while
another process swaps a folder for a symlink to an unlisted folder, and files that change between
the decision and the I/O (a symlink, a FIFO, a device, a second hard link), and protected files
met under another name. Each runs with openat2(2) and with the name-by-name walk that runs where
the kernel refuses it (a seccomp filter in the calling thread, as older container runtimes have).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailagent.errors import PolicyError
from mailagent.policy import (
    Decision,
    Policy,
    Scope,
    decide,
    decide_move,
    fsat,
    load_policy,
    protected_paths,
    resolve,
)
from mailagent.tools.files import FileTools, ToolError
from tests.support.races import Swapper, exchange, walks

SECRET = "TOPSECRET outside the policy"
WALKS = ["openat2", "fallback"]
RACE_SECONDS = 1.5


@dataclass
class Tree:
    root: Path
    home: Path
    proj: Path
    sub: Path  # a real folder inside ~/proj
    swap: Path  # a symlink inside ~/proj to the unlisted folder
    outside: Path
    workspace: Path
    config: Path
    policies: Path
    policy: Policy
    scope: Scope
    attached: list[str]

    def tools(self, judge_then: Callable[[], None] | None = None) -> FileTools:
        """The file tools as the worker builds them; `judge_then` runs right after each
        decision, before the tool acts on it (the world changing between check and use)."""
        def after(decision: Decision) -> Decision:
            if judge_then is not None:
                judge_then()
            return decision

        return FileTools(
            workspace=self.workspace,
            judge=lambda action, path: after(decide(self.policy, action, path, self.scope)),  # type: ignore[arg-type]
            judge_move=lambda src, dst: after(decide_move(self.policy, src, dst, self.scope)),
            trash=self.root / "data" / "trash" / "task-1",
            on_attach=self.attached.append)

    def outside_state(self) -> dict[str, tuple[int, int, bytes]]:
        state = {}
        for entry in sorted(os.scandir(self.outside), key=lambda e: e.name):
            info = entry.stat(follow_symlinks=False)
            data = Path(entry.path).read_bytes() if stat.S_ISREG(info.st_mode) else b""
            state[entry.name] = (info.st_ino, info.st_mtime_ns, data)
        return state


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root = tmp_path.resolve()
    home, outside = root / "home", root / "outside"
    proj = home / "proj"
    for name in ("file.txt", "edit.txt", "victim.txt", "moving.txt"):
        _write(outside / name, f"{SECRET} {name} line\n")
        _write(proj / "sub" / name, f"public {name} line\n")
    _write(outside / "only-outside.txt", SECRET)
    (proj / "swap").symlink_to(outside)
    workspace = root / "data" / "workspaces" / "main"
    workspace.mkdir(parents=True)
    config = _write(proj / "etc" / "mailagent.toml", "[imap]\n")
    policies = proj / "etc" / "policies"
    _write(policies / "work.toml", f'[[folders]]\npath = "{proj}"\naccess = "write"\n'
                                   'delete = "allow"\n')
    protected = protected_paths(config_path=config, policies_dir=policies,
                                data_dir=root / "data", home=home)
    scope = Scope(workspace=workspace, home=home, protected=protected)
    return Tree(root, home, proj, proj / "sub", proj / "swap", outside, workspace, config,
                policies, load_policy(policies, home=home), scope, [])


# ---------------------------------------------------------------------------------------------
# A folder swapped for a symlink by another process, while the tools run


def _operations(tree: Tree, tools: FileTools, real_sub: int) -> list[Callable[[], str]]:
    """Every file tool on a path through ~/proj/sub; victims are put back through the folder's
    own descriptor (never by name, which the swapper is redirecting)."""
    def put_back(name: str) -> None:
        fd = os.open(name, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o644, dir_fd=real_sub)
        os.write(fd, f"public {name} line\n".encode())
        os.close(fd)

    def delete() -> str:
        put_back("victim.txt")
        return tools.delete_file("~/proj/sub/victim.txt")

    def move_out() -> str:
        put_back("moving.txt")
        return tools.move_file("~/proj/sub/moving.txt", "moved.txt")

    counter = iter(range(10**9))
    return [
        lambda: tools.read_file("~/proj/sub/file.txt"),
        lambda: tools.list_files("~/proj/sub"),
        lambda: tools.search_files("TOPSECRET", "~/proj/sub"),
        lambda: tools.write_file(f"~/proj/sub/new-{next(counter)}.txt", "new\n"),
        lambda: tools.edit_file("~/proj/sub/edit.txt", "line", "line"),
        delete,
        move_out,
        lambda: tools.move_file("moved.txt", "~/proj/sub/back.txt"),
        lambda: tools.attach_file("~/proj/sub/file.txt"),
        lambda: decide(tree.policy, "write", "~/proj/sub/x.txt", tree.scope).reason,
        lambda: str(_resolved_or_refused(tree)),
    ]


def _resolved_or_refused(tree: Tree) -> Path | None:
    try:
        return resolve("~/proj/sub/file.txt", tree.scope)
    except PolicyError:
        return None


def _race(tree: Tree, swap_mode: str, walk: str) -> tuple[int, int, int]:
    """The operations in a loop while the folder is swapped; (done, refused, swaps)."""
    tools = tree.tools()
    real_sub = os.open(tree.sub, os.O_RDONLY | os.O_DIRECTORY)
    swapper = Swapper(swap_mode, tree.sub, tree.swap)
    try:
        def loop() -> tuple[int, int]:
            done = refused = 0
            deadline = time.monotonic() + RACE_SECONDS
            while time.monotonic() < deadline:
                for operation in _operations(tree, tools, real_sub):
                    try:
                        text = operation()
                    except ToolError:  # the only way a call may fail
                        refused += 1
                        continue
                    done += 1
                    assert "TOPSECRET" not in text and "only-outside" not in text, text
            return done, refused

        done, refused = walks(walk, loop)
    finally:
        swaps = swapper.stop()
        os.close(real_sub)
    return done, refused, swaps


@pytest.mark.parametrize("walk", WALKS)
@pytest.mark.parametrize("swap_mode", ["exchange", "rename"])
def test_a_folder_swapped_for_a_symlink_never_redirects_a_read_or_a_write(
    tree: Tree, swap_mode: str, walk: str
) -> None:
    before = tree.outside_state()
    done, refused, swaps = _race(tree, swap_mode, walk)
    assert tree.outside_state() == before, "a change landed in the unlisted folder"
    assert all(Path(p).is_relative_to(tree.proj) for p in tree.attached)
    assert swaps > 100 and done > 0 and refused > 0, (done, refused, swaps)


# ---------------------------------------------------------------------------------------------
# The world changes right after the decision, before the tool acts on it


SWAPPED_CALLS: list[tuple[str, Callable[[FileTools], str]]] = [
    ("read", lambda t: t.read_file("~/proj/sub/file.txt")),
    ("list", lambda t: t.list_files("~/proj/sub")),
    ("search", lambda t: t.search_files("line", "~/proj/sub")),
    ("attach", lambda t: t.attach_file("~/proj/sub/file.txt")),
    ("write", lambda t: t.write_file("~/proj/sub/file.txt", "overwritten\n")),
    ("create", lambda t: t.write_file("~/proj/sub/created.txt", "new\n")),
    ("edit", lambda t: t.edit_file("~/proj/sub/edit.txt", "line", "changed")),
    ("delete", lambda t: t.delete_file("~/proj/sub/victim.txt")),
    ("move from", lambda t: t.move_file("~/proj/sub/moving.txt", "~/proj/moved.txt")),
    ("move to", lambda t: t.move_file("~/proj/moving.txt", "~/proj/sub/x.txt")),
]


@pytest.mark.parametrize("walk", WALKS)
@pytest.mark.parametrize(("name", "call"), SWAPPED_CALLS, ids=[c[0] for c in SWAPPED_CALLS])
def test_a_folder_swapped_right_after_the_check_fails_closed(
    tree: Tree, name: str, call: Callable[[FileTools], str], walk: str
) -> None:
    (tree.proj / "moving.txt").write_text("mine\n")
    before = tree.outside_state()
    swapped = [False]

    def swap_once() -> None:
        if not swapped[0]:
            exchange(tree.sub, tree.swap)  # ~/proj/sub is now the symlink to the outside
            swapped[0] = True

    tools = tree.tools(judge_then=swap_once)
    with pytest.raises(ToolError, match=r"symlink now|changed"):
        walks(walk, lambda: call(tools))
    assert swapped[0]
    assert tree.outside_state() == before
    assert not tree.attached


@pytest.mark.parametrize("walk", WALKS)
def test_a_file_swapped_for_a_fifo_or_a_device_after_the_check_is_never_opened(
    tree: Tree, walk: str
) -> None:
    kinds = {"fifo": lambda p: os.mkfifo(p)}
    try:
        os.mknod(tree.root / "probe", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        kinds["device"] = lambda p: os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pass  # not root: only the FIFO
    calls: list[Callable[[FileTools], str]] = [
        lambda t: t.read_file("~/proj/sub/file.txt"),
        lambda t: t.write_file("~/proj/sub/file.txt", "x"),
        lambda t: t.edit_file("~/proj/sub/file.txt", "line", "x"),
        lambda t: t.delete_file("~/proj/sub/file.txt"),
        lambda t: t.attach_file("~/proj/sub/file.txt"),
        lambda t: t.move_file("~/proj/sub/file.txt", "moved.txt"),
    ]
    for kind, make in kinds.items():
        for call in calls:
            target = tree.sub / "file.txt"
            target.unlink()
            target.write_text("public line\n")

            def replace(make: Callable[[Path], None] = make, target: Path = target) -> None:
                if stat.S_ISREG(os.lstat(target).st_mode):
                    odd = target.with_name("odd")
                    make(odd)
                    os.replace(odd, target)

            tools = tree.tools(judge_then=replace)
            started = time.monotonic()
            with pytest.raises(ToolError, match="not a regular file"):
                walks(walk, lambda call=call, tools=tools: call(tools))
            assert time.monotonic() - started < 5, kind
            assert not stat.S_ISREG(os.lstat(target).st_mode), f"the {kind} was replaced"
            assert not (tree.workspace / "moved.txt").exists()


@pytest.mark.parametrize("walk", WALKS)
def test_a_second_hard_link_made_after_the_check_refuses_the_change(
    tree: Tree, walk: str
) -> None:
    calls: list[Callable[[FileTools], str]] = [
        lambda t: t.write_file("~/proj/sub/file.txt", "x"),
        lambda t: t.edit_file("~/proj/sub/file.txt", "line", "x"),
        lambda t: t.delete_file("~/proj/sub/file.txt"),
        lambda t: t.move_file("~/proj/sub/file.txt", "moved.txt"),
    ]
    target, link = tree.sub / "file.txt", tree.outside / "linked.txt"
    for call in calls:
        link.unlink(missing_ok=True)
        tools = tree.tools(judge_then=lambda: None if link.exists() else os.link(target, link))
        with pytest.raises(ToolError, match="2 hard links"):
            walks(walk, lambda call=call, tools=tools: call(tools))
        assert target.read_text() == "public file.txt line\n"
        assert os.path.samefile(target, link)


# ---------------------------------------------------------------------------------------------
# FIFOs, devices and hard links as they are


@pytest.mark.parametrize("walk", WALKS)
def test_fifos_devices_and_hard_links_are_refused_quickly(tree: Tree, walk: str) -> None:
    os.mkfifo(tree.sub / "pipe")
    os.link(tree.outside / "file.txt", tree.sub / "hard.txt")
    tools = tree.tools()

    def refused(call: Callable[[], str], why: str) -> None:
        started = time.monotonic()
        with pytest.raises(ToolError, match=why):
            walks(walk, call)
        assert time.monotonic() - started < 5

    for call in (lambda: tools.read_file("~/proj/sub/pipe"),
                 lambda: tools.write_file("~/proj/sub/pipe", "x"),
                 lambda: tools.edit_file("~/proj/sub/pipe", "a", "b"),
                 lambda: tools.attach_file("~/proj/sub/pipe"),
                 lambda: tools.delete_file("~/proj/sub/pipe")):
        refused(call, "not a regular file")
    for call in (lambda: tools.read_file("/dev/null"),
                 lambda: tools.write_file("/dev/null", "x"),
                 lambda: tools.list_files("/dev")):
        refused(call, "system files")
    for call in (lambda: tools.write_file("~/proj/sub/hard.txt", "x"),
                 lambda: tools.edit_file("~/proj/sub/hard.txt", "line", "x"),
                 lambda: tools.delete_file("~/proj/sub/hard.txt"),
                 lambda: tools.move_file("~/proj/sub/hard.txt", "moved.txt")):
        refused(call, "hard links")
    assert (tree.outside / "file.txt").read_text() == f"{SECRET} file.txt line\n"
    assert stat.S_ISFIFO(os.lstat(tree.sub / "pipe").st_mode)


# ---------------------------------------------------------------------------------------------
# Protected files known by identity


@pytest.mark.parametrize("walk", WALKS)
def test_a_hard_link_to_a_protected_file_is_refused_by_identity(tree: Tree, walk: str) -> None:
    os.link(tree.config, tree.proj / "innocent.toml")
    decision = decide(tree.policy, "read", "~/proj/innocent.toml", tree.scope)
    assert decision.verdict == "deny" and "known by identity" in decision.rule, decision
    tools = tree.tools()
    for call in (lambda: tools.read_file("~/proj/innocent.toml"),
                 lambda: tools.attach_file("~/proj/innocent.toml"),
                 lambda: tools.search_files("imap", "~/proj")):
        try:
            text = walks(walk, call)
        except ToolError as error:
            assert "protected" in str(error)
            continue
        assert "[imap]" not in text and "innocent" not in text, text
    assert not tree.attached


@pytest.mark.parametrize("walk", WALKS)
def test_protected_folders_renamed_inside_a_writable_folder_stay_protected(
    tree: Tree, walk: str
) -> None:
    os.rename(tree.proj / "etc", tree.proj / "moved")  # after the task's scope was made
    tools = tree.tools()
    calls = [lambda: tools.read_file("~/proj/moved/mailagent.toml"),
             lambda: tools.read_file("~/proj/moved/policies/work.toml"),
             lambda: tools.list_files("~/proj/moved/policies"),
             lambda: tools.write_file("~/proj/moved/policies/all.toml", "[[folders]]\n"),
             lambda: tools.write_file("~/proj/moved/policies/new/deeper.toml", "x"),
             lambda: tools.edit_file("~/proj/moved/mailagent.toml", "imap", "smtp"),
             lambda: tools.delete_file("~/proj/moved/policies/work.toml"),
             lambda: tools.move_file("~/proj/moved/policies/work.toml", "work.toml")]
    for call in calls:
        with pytest.raises(ToolError, match="protected"):
            walks(walk, call)
    assert sorted(p.name for p in (tree.proj / "moved" / "policies").iterdir()) == ["work.toml"]
    assert (tree.proj / "moved" / "mailagent.toml").read_text() == "[imap]\n"
    assert not (tree.workspace / "work.toml").exists()
    for action in ("read", "write", "list", "delete"):
        decision = decide(tree.policy, action, "~/proj/moved/policies/work.toml", tree.scope)  # type: ignore[arg-type]
        assert decision.verdict == "deny" and "identity" in decision.rule, decision


# ---------------------------------------------------------------------------------------------
# Symlinks that stay inside the allowed folders


@pytest.mark.parametrize("walk", WALKS)
def test_a_symlink_within_the_allowed_folders_still_leads_to_its_judged_target(
    tree: Tree, walk: str
) -> None:
    (tree.proj / "alias.txt").symlink_to("sub/file.txt")
    (tree.workspace / "to-proj").symlink_to(tree.sub)
    tools = tree.tools()
    assert "public file.txt line" in walks(walk, lambda: tools.read_file("~/proj/alias.txt"))
    assert "file.txt" in walks(walk, lambda: tools.list_files("to-proj"))
    walks(walk, lambda: tools.write_file("to-proj/file.txt", "through the workspace\n"))
    assert (tree.sub / "file.txt").read_text() == "through the workspace\n"
    assert (tree.proj / "alias.txt").is_symlink()
    assert [c["path"] for c in tools.changes] == [str(tree.sub / "file.txt")]


# ---------------------------------------------------------------------------------------------
# Moves across file systems


def test_a_move_to_another_file_system_copies_through_descriptors_then_removes_the_source(
    tree: Tree,
) -> None:
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tree.root).st_dev:
        pytest.skip("no second file system to move to")
    elsewhere = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        source = tree.sub / "file.txt"
        os.chmod(source, 0o640)
        os.utime(source, ns=(1_000_000_000, 2_000_000_000))
        # /dev is never a policy's folder: the destination's anchor is put there by hand, to
        # exercise the copy that a move between two file systems needs.
        def judge_move(src: str, dst: str) -> Decision:
            decision = decide_move(tree.policy, src, dst, tree.scope)
            assert decision.verdict == "allow", decision
            return dataclasses.replace(decision, anchor=fsat.Anchor(elsewhere, ("moved.txt",)))

        tools = dataclasses.replace(tree.tools(), judge_move=judge_move)
        assert tools.move_file("~/proj/sub/file.txt", "~/proj/moved.txt").startswith("moved ")
        moved = elsewhere / "moved.txt"
        assert moved.read_text() == "public file.txt line\n" and not source.exists()
        info = moved.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_mtime_ns) == (0o640, 2_000_000_000)
        assert [c["op"] for c in tools.changes] == ["moved"]
    finally:
        shutil.rmtree(elsewhere)


# ---------------------------------------------------------------------------------------------
# The resolver and the walks


def test_the_resolver_raises_only_policy_errors_for_names_no_file_can_have(tree: Tree) -> None:
    for raw in ("\ud800", "~/proj/\udfff/x.txt", "a\ud83d.txt"):
        with pytest.raises(PolicyError, match="lone surrogate"):
            resolve(raw, tree.scope)
        for action in ("list", "read", "write", "delete"):
            decision = decide(tree.policy, action, raw, tree.scope)  # type: ignore[arg-type]
            assert decision.verdict == "deny" and decision.path is None
        assert decide_move(tree.policy, raw, "x.txt", tree.scope).verdict == "deny"


def test_both_walks_run_here(tree: Tree) -> None:
    slash = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        names = str(tree.sub.relative_to("/"))
        opened = walks("openat2", lambda: fsat.openat2(slash, names, os.O_PATH))
        if opened is None:
            pytest.skip("this kernel has no openat2(2): only the fallback walk runs here")
        os.close(opened)
        assert walks("fallback", lambda: fsat.openat2(slash, names, os.O_PATH)) is None
    finally:
        os.close(slash)
