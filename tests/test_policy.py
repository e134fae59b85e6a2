"""The policy engine over real temporary trees: symlinks, hard links, FIFOs, protected files.

Every case asserts the verdict and that the rule or reason says why. `{home}`, `{outside}`,
`{workspace}`, `{data}`, `{config}` and `{policies}` in a path are filled in from the tree.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailagent.errors import PolicyError
from mailagent.mail.render import shipped_text
from mailagent.policy import (
    Action,
    Decision,
    FolderRule,
    Policy,
    PolicyWatcher,
    Scope,
    decide,
    decide_command,
    decide_move,
    explain,
    load_policy,
    protected_paths,
    resolve,
)

POLICY_FILES = {
    "reports.toml": """\
# read-only reports
[[folders]]
path = "~/Documents/reports"
access = "read"
""",
    "work.toml": """\
[[folders]]
path = "~/proj"
access = "write"
delete = "ask"

[[folders]]
path = "~/drafts"
access = "write"
delete = "allow"
overwrite = "ask"

[[folders]]
path = "~/final"
access = "write"
overwrite = "never"

[[folders]]
path = "~/later"
access = "write"

[commands]
allow = ["python3", "sh"]
timeout_seconds = 30
""",
}


@dataclass(frozen=True)
class Tree:
    root: Path
    home: Path
    outside: Path
    workspace: Path
    data: Path
    config: Path
    policies: Path
    policy: Policy
    scope: Scope

    def fill(self, path: str) -> str:
        return path.format(
            home=self.home, outside=self.outside, workspace=self.workspace, data=self.data,
            config=self.config, policies=self.policies,
        )


def _write(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _build_home(home: Path, outside: Path) -> None:
    _write(home / "Documents/reports/q1.txt")
    _write(home / "Documents/Reports/q1.txt")  # a different folder on Linux: no rule covers it
    _write(home / "proj/real.txt")
    _write(home / "proj/.git/config")
    _write(home / "proj2/x.txt")
    _write(home / "drafts/old.txt")
    _write(home / "final/old.txt")
    _write(home / ".ssh/id_rsa")
    _write(home / ".bashrc")
    proj = home / "proj"
    (proj / "link_out").symlink_to(outside / "secret.txt")
    (proj / "dir_out").symlink_to(outside)
    (proj / "chain1").symlink_to(proj / "chain2")
    (proj / "chain2").symlink_to("real.txt")
    (proj / "chain_out1").symlink_to("chain_out2")
    (proj / "chain_out2").symlink_to(outside / "secret.txt")
    (proj / "loop_a").symlink_to("loop_b")
    (proj / "loop_b").symlink_to("loop_a")
    (proj / "dangling").symlink_to(proj / "missing.txt")
    (proj / "key_link").symlink_to(home / ".ssh/id_rsa")
    os.link(outside / "secret.txt", proj / "hard")
    os.mkfifo(proj / "pipe")


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root = tmp_path.resolve()
    home, outside, data = root / "home", root / "outside", root / "data"
    _write(outside / "secret.txt", "secret")
    _build_home(home, outside)
    workspace = data / "workspaces/main"
    _write(workspace / "attachments/a1.txt")
    _write(workspace / "notes.txt")
    _write(data / "workspaces/other/theirs.txt")
    _write(data / "mailagent.db")
    config = _write(root / "etc/mailagent.toml", "[imap]\n")
    policies = root / "etc/policies"
    for name, text in POLICY_FILES.items():
        _write(policies / name, text)
    protected = protected_paths(
        config_path=config, policies_dir=policies, data_dir=data, home=home
    )
    scope = Scope(workspace=workspace, home=home, protected=protected)
    policy = load_policy(policies, home=home)
    return Tree(root, home, outside, workspace, data, config, policies, policy, scope)


def _check(decision: Decision, verdict: str, why: str) -> None:
    text = f"{decision.rule} | {decision.reason}"
    assert decision.verdict == verdict, text
    assert why in text, text


def _in_time(call: Callable[[], Decision], seconds: float = 5.0) -> Decision:
    """Run a check in a thread so a check that blocks (say, on a FIFO) fails instead of hanging."""
    results: list[Decision] = []
    worker = threading.Thread(target=lambda: results.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert results, f"the check did not finish within {seconds} s"
    return results[0]


# ---------------------------------------------------------------------------------------------
# Paths judged against folder rules

DECIDE_CASES = [
    # read-only root
    ("read", "~/Documents/reports/q1.txt", "allow", "reports.toml:2 ~/Documents/reports (read)"),
    ("list", "~/Documents/reports", "allow", "inside ~/Documents/reports"),
    ("write", "~/Documents/reports/q1.txt", "deny", "read-only"),
    ("write", "~/Documents/reports/new.txt", "deny", "read-only"),
    ("delete", "~/Documents/reports/q1.txt", "deny", "read-only"),
    ("delete", "~/Documents/reports", "deny", "read-only"),
    # case tricks and prefix siblings
    ("read", "~/Documents/Reports/q1.txt", "deny", "no folder rule covers"),
    ("read", "~/proj2/x.txt", "deny", "no folder rule covers"),
    ("write", "~/proj2/x.txt", "deny", "no folder rule covers"),
    # escapes
    ("read", "~/proj/../../outside/secret.txt", "deny", "no folder rule covers"),
    ("read", "../../../outside/secret.txt", "deny", "no folder rule covers"),
    ("write", "attachments/../../../../outside/new.txt", "deny", "no folder rule covers"),
    ("read", "{outside}/secret.txt", "deny", "default: deny"),
    ("read", "~root/.ssh/id_rsa", "deny", "~user paths are not supported"),
    ("read", "~/proj/real\x00.txt", "deny", "NUL byte"),
    ("write", "", "deny", "the path is empty"),
    # the root folder itself
    ("list", "~/proj", "allow", "work.toml:1 ~/proj (write)"),
    ("read", "~/proj", "deny", "is a folder; use list_files"),
    ("delete", "~/proj", "deny", "is a folder"),
    ("write", "~/proj", "deny", "is a folder"),
    ("list", "~/proj/real.txt", "deny", "not a folder"),
    # symlinks
    ("read", "~/proj/link_out", "deny", "through a symlink out of work.toml:1 ~/proj"),
    ("write", "~/proj/link_out", "deny", "through a symlink"),
    ("write", "~/proj/dir_out/new.txt", "deny", "through a symlink"),
    ("read", "~/proj/chain1", "allow", "work.toml:1 ~/proj (write)"),
    ("read", "~/proj/chain_out1", "deny", "through a symlink"),
    ("read", "~/proj/loop_a", "deny", "symlink loop"),
    ("write", "~/proj/loop_a/new.txt", "deny", "symlink loop"),
    ("read", "~/proj/dangling", "deny", "dangling symlink"),
    # hard links, FIFOs, devices, /proc
    ("write", "~/proj/hard", "deny", "hard links"),
    ("delete", "~/proj/hard", "deny", "hard links"),
    ("read", "~/proj/pipe", "deny", "not a regular file"),
    ("write", "~/proj/pipe", "deny", "not a regular file"),
    ("read", "/dev/null", "deny", "protected: system files"),
    ("write", "/dev/null", "deny", "protected: system files"),
    ("read", "/proc/self/environ", "deny", "protected: system files"),
    ("read", "/dev/stdin", "deny", "protected: system files"),
    # write folders: delete, overwrite and new files
    ("write", "~/proj/real.txt", "allow", "~/proj is writable"),
    ("write", "~/proj/new/deeper/x.txt", "allow", "a new file"),
    ("write", "~/proj/real.txt/x.txt", "deny", "is a file, not a folder"),
    ("delete", "~/proj/real.txt", "ask", 'delete = "ask", work.toml:1'),
    ("delete", "~/proj/missing.txt", "deny", "no such file"),
    ("read", "~/proj/missing.txt", "deny", "no such file"),
    ("write", "~/drafts/old.txt", "ask", 'overwrite = "ask"'),
    ("write", "~/drafts/new.txt", "allow", "a new file"),
    ("delete", "~/drafts/old.txt", "allow", "deleting is allowed in ~/drafts"),
    ("write", "~/final/old.txt", "deny", 'overwrite = "never"'),
    ("delete", "~/final/old.txt", "deny", 'delete = "never"'),
    ("write", "~/later/x.txt", "deny", "the folder ~/later does not exist"),
    # the workspace
    ("write", "notes.txt", "allow", "workspace"),
    ("write", "./new/sub/dir/file.md", "allow", "workspace"),
    ("write", "{workspace}/notes.txt", "allow", "workspace"),
    ("delete", "attachments/a1.txt", "allow", "deleting is allowed in the workspace"),
    ("list", ".", "allow", "workspace"),
    ("read", "a/../" * 800 + "notes.txt", "allow", "workspace"),
    ("delete", ".", "deny", "is a folder"),
    ("action", "notes.txt", "deny", "unknown action"),
]


@pytest.mark.parametrize(("action", "path", "verdict", "why"), DECIDE_CASES)
def test_decide_judges_resolved_paths_against_folder_rules(
    tree: Tree, action: str, path: str, verdict: str, why: str
) -> None:
    decision = _in_time(lambda: decide(tree.policy, action, tree.fill(path), tree.scope))  # type: ignore[arg-type]
    _check(decision, verdict, why)


def test_a_decision_names_the_fully_resolved_path(tree: Tree) -> None:
    decision = decide(tree.policy, "read", "~/proj/chain1", tree.scope)
    _check(decision, "allow", "~/proj")
    assert decision.path == tree.home / "proj/real.txt"
    assert decide(tree.policy, "read", "~/proj/loop_a", tree.scope).path is None


def test_a_reason_names_the_path_as_given_and_what_to_do(tree: Tree) -> None:
    decision = decide(tree.policy, "write", "~/Documents/reports/x.txt", tree.scope)
    assert decision.reason.startswith("write to ~/Documents/reports/x.txt is denied")
    assert "write into the workspace instead" in decision.reason
    assert decision.rule == "reports.toml:2 ~/Documents/reports (read)"


def test_a_fifo_is_judged_without_being_opened(tree: Tree) -> None:
    # Opening a FIFO for reading blocks until a writer comes: the check must not even try.
    actions: tuple[Action, ...] = ("read", "write", "delete", "list")
    for action in actions:
        check = functools.partial(decide, tree.policy, action, "~/proj/pipe", tree.scope)
        decision = _in_time(check)
        _check(decision, "deny", "~/proj/pipe")


def test_hostile_long_paths_are_refused_quickly(tree: Tree) -> None:
    started = time.monotonic()
    long_name = decide(tree.policy, "read", "a" * 100_000, tree.scope)
    deep = decide(tree.policy, "read", "../" * 30_000 + "etc/passwd", tree.scope)
    assert time.monotonic() - started < 2.0
    _check(long_name, "deny", "the limit is 4096")
    _check(deep, "deny", "the limit is 4096")
    assert long_name.rule == "invalid path" and long_name.path is None


def test_the_most_specific_rule_decides(tree: Tree) -> None:
    inner = FolderRule(tree.home / "proj/sub", "read", source="inner.toml:1")
    policy = Policy(folders=(*tree.policy.folders, inner))
    _check(decide(policy, "write", "~/proj/sub/x.txt", tree.scope), "deny", "inner.toml:1")
    _check(decide(policy, "write", "~/proj/x.txt", tree.scope), "allow", "work.toml:1")


def test_the_workspace_is_writable_even_inside_a_read_only_rule(tree: Tree) -> None:
    data_rule = FolderRule(tree.data, "read", source="data.toml:1")
    decision = decide(Policy(folders=(data_rule,)), "write", "notes.txt", tree.scope)
    _check(decision, "allow", "workspace")


def test_an_empty_policy_allows_only_the_workspace(tree: Tree) -> None:
    _check(decide(Policy(), "read", "~/Documents/reports/q1.txt", tree.scope), "deny", "default")
    _check(decide(Policy(), "write", "notes.txt", tree.scope), "allow", "workspace")


# ---------------------------------------------------------------------------------------------
# Protected paths win over every rule

WIDE = "wide.toml:1"
PROTECTED_CASES = [
    ("read", "~/.ssh/id_rsa", "protected: SSH keys (~/.ssh)"),
    ("write", "~/.ssh/authorized_keys", "protected: SSH keys"),
    ("read", "~/.SSH/id_rsa", "protected: SSH keys"),  # what macOS would open as ~/.ssh
    ("read", "~/proj/key_link", "protected: SSH keys"),
    ("write", "~/.bashrc", "protected: shell start-up files (~/.bashrc)"),
    ("write", "~/.config/fish/config.fish", "protected: shell start-up files"),
    ("read", "~/.netrc", "protected: network passwords"),
    ("write", "~/proj/.git/config", "protected: .git"),
    ("read", "~/proj/.git/config", "protected: .git"),
    ("write", "~/proj/.GIT/hooks/pre-commit", "protected: .git"),
    ("write", ".git/config", "protected: .git"),
    ("read", "{config}", "protected: {config}"),
    ("write", "{config}", "protected: {config}"),
    ("write", "{policies}/allow-all.toml", "protected: {policies}"),
    ("read", "{policies}/work.toml", "protected: {policies}"),
    ("read", "{data}/mailagent.db", "protected: {data}"),
    ("delete", "{data}/mailagent.db", "protected: {data}"),
    ("write", "{data}/workspaces/other/theirs.txt", "protected: {data}"),
    ("write", "../other/theirs.txt", "protected: {data}"),
]


@pytest.mark.parametrize(("action", "path", "rule"), PROTECTED_CASES)
def test_protected_paths_are_denied_even_when_a_rule_covers_them(
    tree: Tree, action: str, path: str, rule: str
) -> None:
    everything = FolderRule(tree.root, "write", delete="allow", source=WIDE)
    decision = decide(Policy(folders=(everything,)), action, tree.fill(path), tree.scope)  # type: ignore[arg-type]
    _check(decision, "deny", tree.fill(rule))
    assert "protected" in decision.reason


def test_the_own_workspace_stays_usable_inside_the_protected_data_dir(tree: Tree) -> None:
    everything = Policy(folders=(FolderRule(tree.root, "write", delete="allow", source=WIDE),))
    _check(decide(everything, "write", "notes.txt", tree.scope), "allow", "workspace")
    _check(decide(everything, "delete", "attachments/a1.txt", tree.scope), "allow", "workspace")


def test_protected_paths_cover_settings_data_credentials_and_start_up_files(tree: Tree) -> None:
    protected = tree.scope.protected
    for path in (tree.config, tree.policies, tree.data, tree.home / ".ssh", tree.home / ".gnupg",
                 tree.home / ".aws", tree.home / ".config/mailagent", tree.home / ".profile",
                 tree.home / ".zprofile", tree.home / ".bash_login", tree.home / ".netrc"):
        assert path in protected, path
    assert tree.data / "workspaces" not in protected
    assert all(path.is_absolute() for path in protected)


# ---------------------------------------------------------------------------------------------
# Moves

MOVE_CASES = [
    ("~/proj/real.txt", "~/proj/renamed.txt", "allow", "both the source and the destination"),
    ("~/proj/real.txt", "moved.txt", "ask", "it leaves its folder, so this counts as a delete"),
    ("notes.txt", "~/drafts/old.txt", "ask", 'overwrite = "ask"'),
    ("notes.txt", "~/drafts/fresh.txt", "allow", "both the source and the destination"),
    ("~/Documents/reports/q1.txt", "q1.txt", "deny", "read-only"),
    ("notes.txt", "~/Documents/reports/notes.txt", "deny", "read-only"),
    ("notes.txt", "{outside}/notes.txt", "deny", "no folder rule covers"),
    ("~/final/old.txt", "notes-final.txt", "deny", 'delete = "never"'),
    ("~/proj/hard", "~/proj/soft", "deny", "hard links"),
    ("~/proj/loop_a", "x.txt", "deny", "symlink loop"),
]


@pytest.mark.parametrize(("source", "destination", "verdict", "why"), MOVE_CASES)
def test_a_move_is_judged_at_both_ends_and_the_stricter_verdict_wins(
    tree: Tree, source: str, destination: str, verdict: str, why: str
) -> None:
    decision = decide_move(tree.policy, tree.fill(source), tree.fill(destination), tree.scope)
    _check(decision, verdict, why)
    assert decision.rule.startswith("source: ") and "; destination: " in decision.rule


def test_a_move_names_the_resolved_destination(tree: Tree) -> None:
    decision = decide_move(tree.policy, "~/proj/real.txt", "moved.txt", tree.scope)
    assert decision.path == tree.workspace / "moved.txt"
    assert decision.rule == "source: work.toml:1 ~/proj (write); destination: workspace"
    assert decision.reason.startswith("moving ~/proj/real.txt to moved.txt")


# ---------------------------------------------------------------------------------------------
# resolve() and explain()


def test_resolve_expands_home_and_workspace_and_follows_symlinks(tree: Tree) -> None:
    assert resolve("~", tree.scope) == tree.home
    assert resolve("~/proj/chain1", tree.scope) == tree.home / "proj/real.txt"
    assert resolve("new/file.txt", tree.scope) == tree.workspace / "new/file.txt"
    with pytest.raises(PolicyError, match="symlink loop"):
        resolve("~/proj/loop_b", tree.scope)
    with pytest.raises(PolicyError, match="~user"):
        resolve("~root", tree.scope)


def test_explain_prints_verdict_rule_and_reason(tree: Tree) -> None:
    assert explain(tree.policy, "write", "notes.txt", tree.scope).startswith(
        "allow: workspace: write to notes.txt is allowed: "
    )
    line = explain(tree.policy, "read", str(tree.outside / "secret.txt"), tree.scope)
    assert line.startswith("deny: default: deny (no folder rule covers this path): read ")
    line = explain(tree.policy, "delete", "~/proj/real.txt", tree.scope)
    assert line.startswith("ask: work.toml:1 ~/proj (write): delete ~/proj/real.txt needs")
    with pytest.raises(PolicyError, match="use list, read, write or delete"):
        explain(tree.policy, "chmod", "notes.txt", tree.scope)


# ---------------------------------------------------------------------------------------------
# Loading policy files


def _policies(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_a_multi_file_policy_loads_in_name_order_with_sources(tree: Tree) -> None:
    policy = tree.policy
    assert policy.files == ("reports.toml", "work.toml")
    assert [rule.source for rule in policy.folders] == [
        "reports.toml:2", "work.toml:1", "work.toml:6", "work.toml:12", "work.toml:17",
    ]
    proj = policy.folders[1]
    assert (proj.path, proj.access, proj.delete, proj.overwrite) == (
        tree.home / "proj", "write", "ask", "allow",
    )
    assert policy.folders[0].delete == "never"
    assert policy.commands is not None
    assert policy.commands.allow == ("python3", "sh")
    assert (policy.commands.network, policy.commands.timeout_seconds) == (False, 30.0)
    assert policy.commands.source == "work.toml:21"


def test_a_rule_path_is_resolved_through_symlinks_at_load_time(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    folder = _policies(tmp_path, {"a.toml": f'[[folders]]\npath = "{tmp_path}/alias"\n'})
    assert load_policy(folder).folders[0].path == (tmp_path / "real").resolve()


BAD_FILES = [
    ("[[folders]]\npath = \"/data\"\naccess = read\n", "line 3, column 10", "invalid TOML"),
    ("[[folders]]\npath = \"/data\"\n\naccess = \"wrte\"\n", "line 4", 'did you mean "write"'),
    ("# c\n[[folders]]\npath = \"/d\"\ndelete = \"sometimes\"\n", "line 4", "not one of"),
    ("[[folders]]\npath = \"/data\"\nacess = \"read\"\n", "line 3", "unknown key 'acess'"),
    ("[[folders]]\npath = \"/a\"\n\n[[folders]]\naccess = \"read\"\n", "line 4", "has no path"),
    ("[[folders]]\npath = \"data/reports\"\n", "line 2", "relative"),
    ("[[folders]]\npath = \"~bob/reports\"\n", "line 2", "~user"),
    ("[[folders]]\npath = 42\n", "line 2", "path must be a string"),
    ("[[folders]]\npath = \"/a\"\naccess = \"read\"\ndelete = \"allow\"\n", "line 4",
     'needs access = "write"'),
    ("[[folder]]\npath = \"/a\"\n", "line 1", "unknown table or key 'folder'"),
    ("[command]\nallow = []\n", "line 1", "unknown table or key 'command'"),
    ("folders = \"/a\"\n", "line 1", "[[folders]] tables"),
    ("[commands]\nallow = \"sh\"\n", "line 2", "list of program names"),
    ("[commands]\nallow = []\nnetwork = \"yes\"\n", "line 3", "true or false"),
    ("[commands]\nallow = []\ntimeout_seconds = true\n", "line 3", "above 0"),
    ("[commands]\nallow = []\ntimeout_seconds = -1\n", "line 3", "above 0"),
    ("[commands]\nallow = []\nnet = true\n", "line 3", "unknown key 'net'"),
    ("[commands]\nallow = []\nmemory_mb = 0\n", "line 3", "whole number above 0"),
    ("[commands]\nallow = []\nmax_processes = 2.5\n", "line 3", "whole number above 0"),
    ("[commands]\nallow = []\nunsafe_no_sandbox = \"yes\"\n", "line 3", "true or false"),
    ("[[folders]]\npath = \"/a\"\n[[folders]]\npath = \"/a/\"\n", "line 3", "already listed"),
]


@pytest.mark.parametrize(("text", "line", "why"), BAD_FILES)
def test_a_bad_policy_file_is_refused_naming_file_and_line(
    tmp_path: Path, text: str, line: str, why: str
) -> None:
    folder = _policies(tmp_path, {"ok.toml": "", "bad.toml": text})
    with pytest.raises(PolicyError) as raised:
        load_policy(folder, home=tmp_path)
    message = str(raised.value)
    assert "bad.toml" in message and f"{line}:" in message and why in message, message


def test_two_commands_tables_are_refused(tmp_path: Path) -> None:
    table = "[commands]\nallow = [\"sh\"]\n"
    folder = _policies(tmp_path, {"a.toml": table, "b.toml": "\n" + table})
    with pytest.raises(PolicyError, match=r"b\.toml line 2: a second \[commands\].*a\.toml:1"):
        load_policy(folder)


@pytest.mark.parametrize(("table", "text"), [
    ("[mail]", '[mail]\nmay_write_to = ["*@example.org"]\n'),
    ("[internet]", "[internet]\nweb_search = true\n"),
    ("[desktop]", '[desktop]\napps = ["gedit"]\n'),
    ("[mcp.notes]", '[mcp.notes]\ncommand = "notes-server"\n'),
    ("[commands]", '[commands]\nallow = ["sh"]\n'),
])
def test_a_table_in_two_files_is_refused_in_one_wording(
    tmp_path: Path, table: str, text: str
) -> None:
    folder = _policies(tmp_path, {"a.toml": text, "b.toml": "\n" + text})
    with pytest.raises(PolicyError) as raised:
        load_policy(folder, home=tmp_path)
    assert str(raised.value) == (f"{folder / 'b.toml'} line 2: a second {table} table "
                                 "(the first is at a.toml:1); keep only one")


def test_the_same_folder_in_two_files_is_refused(tmp_path: Path) -> None:
    rule = f'[[folders]]\npath = "{tmp_path}"\n'
    folder = _policies(tmp_path, {"a.toml": rule, "b.toml": rule})
    with pytest.raises(PolicyError, match=r"b\.toml line 1: .* already listed at a\.toml:1"):
        load_policy(folder)


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    folder = _policies(tmp_path, {})
    (folder / "bin.toml").write_bytes(b"# ok\n\xff\xfe\n")
    with pytest.raises(PolicyError, match=r"bin\.toml line 2: not UTF-8"):
        load_policy(folder)


def test_a_missing_or_empty_policies_folder_denies_everything(tree: Tree, tmp_path: Path) -> None:
    assert load_policy(tmp_path / "nowhere") == Policy()
    empty = tmp_path / "empty"
    empty.mkdir()
    policy = load_policy(empty)
    assert policy == Policy()
    _check(decide(policy, "read", "~/Documents/reports/q1.txt", tree.scope), "deny", "default")


def test_hidden_and_non_toml_files_are_ignored(tmp_path: Path) -> None:
    folder = _policies(tmp_path, {"notes.txt": "not toml", ".#a.toml": "[[oops"})
    (folder / ".#lock.toml").symlink_to(tmp_path / "user@host.123")
    assert load_policy(folder) == Policy()


def test_a_policies_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "policies")
    with pytest.raises(PolicyError, match="is not a folder"):
        load_policy(tmp_path / "policies")


# ---------------------------------------------------------------------------------------------
# Watching for edits


def _bump(path: Path, text: str) -> None:
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


def test_the_watcher_keeps_the_last_good_policy_and_picks_up_a_fix(tmp_path: Path) -> None:
    folder = _policies(tmp_path, {"a.toml": f'[[folders]]\npath = "{tmp_path}"\n'})
    errors: list[PolicyError] = []
    watcher = PolicyWatcher(folder, errors.append)
    good = watcher.current()
    assert [rule.path for rule in good.folders] == [tmp_path.resolve()]

    _bump(folder / "a.toml", f'[[folders]]\npath = "{tmp_path}"\naccess = "wrte"\n')
    assert watcher.current() is good
    assert watcher.current() is good
    assert len(errors) == 1 and "a.toml line 3" in str(errors[0])

    _bump(folder / "a.toml", f'[[folders]]\npath = "{tmp_path}"\naccess = "write"\n')
    fixed = watcher.current()
    assert fixed.folders[0].access == "write"
    assert len(errors) == 1


def test_the_watcher_reports_each_new_error_once(tmp_path: Path) -> None:
    folder = _policies(tmp_path, {"a.toml": "[[folders]]\npath = \"rel\"\n"})
    errors: list[PolicyError] = []
    watcher = PolicyWatcher(folder, errors.append)
    assert watcher.current() == Policy()  # never a good policy: deny everything
    _bump(folder / "a.toml", "[[folders]]\npath = \"rel\"\n")  # touched, same error
    watcher.current()
    assert len(errors) == 1
    _bump(folder / "0.toml", "[nope]\n")  # loaded first, so a different error now
    watcher.current()
    assert len(errors) == 2 and "0.toml line 1" in str(errors[1])


def test_the_watcher_sees_a_new_file_and_a_removed_folder(tmp_path: Path) -> None:
    folder = _policies(tmp_path, {})
    watcher = PolicyWatcher(folder, lambda error: pytest.fail(str(error)))
    assert watcher.current() == Policy()
    _bump(folder / "a.toml", f'[[folders]]\npath = "{tmp_path}"\n')
    assert watcher.current().files == ("a.toml",)
    (folder / "a.toml").unlink()
    folder.rmdir()
    assert watcher.current() == Policy()


def test_the_watcher_expands_home_as_told(tmp_path: Path) -> None:
    folder = _policies(tmp_path, {"a.toml": '[[folders]]\npath = "~/docs"\n'})
    watcher = PolicyWatcher(folder, lambda error: pytest.fail(str(error)), home=tmp_path)
    assert watcher.current().folders[0].path == tmp_path.resolve() / "docs"


def test_the_shipped_example_policy_loads(tmp_path: Path) -> None:
    folder = _policies(tmp_path, {"example.toml": shipped_text("examples/policy.toml")})
    policy = load_policy(folder, home=tmp_path)
    assert [(rule.path, rule.access) for rule in policy.folders] == [
        (tmp_path.resolve() / "Documents/reports", "read"),
    ]
    assert policy.commands is None


def test_run_command_is_decided_by_program_name_and_sandbox(tmp_path: Path) -> None:
    folder = _policies(tmp_path, {"c.toml": "[commands]\nallow = [\"python3\"]\n"
                                            "max_processes = 32\n"})
    policy = load_policy(folder, home=tmp_path)
    assert policy.commands is not None and policy.commands.max_processes == 32
    assert decide_command(policy, "python3 make.py", sandboxed=True).verdict == "allow"
    for command, why in (("sh -c 'python3 x'", "'sh' is not an allowed program"),
                         ("/usr/bin/python3 x", "not an allowed program"),
                         ("python3 'open", "cannot be split"),
                         ("", "not an allowed program")):
        _check(decide_command(policy, command, sandboxed=True), "deny", why)
    _check(decide_command(policy, "python3 x", sandboxed=False), "deny", "no OS sandbox")
    _check(decide_command(Policy(), "python3 x", sandboxed=True), "deny", "no [commands]")
    (tmp_path / "w").mkdir()
    waived = _policies(tmp_path / "w", {"c.toml": "[commands]\nallow = [\"python3\"]\n"
                                                  "unsafe_no_sandbox = true\n"})
    assert decide_command(load_policy(waived, home=tmp_path), "python3 x",
                          sandboxed=False).verdict == "allow"
