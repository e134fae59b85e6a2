"""The files that govern mailagent are known by identity and checked after every command
(SECURITY.md F3): when the config, a policy file or the data directory is no longer where and
what it was, every tool stops, the owner gets one mail, a restart keeps the tools stopped, and
`mailagent resume` lets them run again. Mail that comes meanwhile is kept (L6)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mailagent.integrity import Guard, Mark, compare_policies, policy_marks
from tests.support.config import settings_for_tests

# ------------------------------------------------------------------ the check, on real files


def swap_for_copy(path: Path) -> None:
    """Replace a file by a copy of itself: the same bytes, another inode."""
    copy = path.with_name(path.name + ".copy")
    shutil.copy2(path, copy)
    os.replace(copy, path)


@pytest.fixture
def guarded(tmp_path: Path) -> tuple[Guard, list[object]]:
    settings = settings_for_tests(tmp_path)
    settings.policies_dir.mkdir()
    (settings.policies_dir / "main.toml").write_text('[[folders]]\npath = "/srv"\n')
    settings.config_path.write_text("[imap]\nhost = 'x'\n")
    settings.data_dir.mkdir()
    database = settings.data_dir / "mailagent.db"
    database.write_bytes(b"db")
    breaches: list[object] = []
    return Guard(settings, database, breaches.append), breaches


def test_a_config_replaced_by_a_copy_with_the_same_bytes_is_seen(
        guarded: tuple[Guard, list[object]], tmp_path: Path) -> None:
    guard, breaches = guarded
    with guard.watching(1, "main", "true") as found:
        pass
    assert found == [] and breaches == []
    swap_for_copy(tmp_path / "mailagent.toml")
    with guard.watching(2, "evil", "sh -c 'swap'") as found:
        pass
    [problem] = found
    assert "the config file" in problem and "replaced or moved" in problem
    [breach] = breaches
    assert "task #2 in conversation evil" in breach.reason  # type: ignore[attr-defined]


@pytest.mark.parametrize("change", ["content", "copy", "removed", "added"])
def test_a_policy_file_changed_while_a_command_runs_is_seen_and_between_commands_is_not(
        guarded: tuple[Guard, list[object]], tmp_path: Path, change: str) -> None:
    guard, breaches = guarded
    policy = tmp_path / "policies" / "main.toml"
    policy.write_text('[[folders]]\npath = "/srv/owner-edit"\n')  # the owner, between commands
    swap_for_copy(policy)
    with guard.watching(1, "main", "true") as found:
        pass
    assert found == [] and breaches == []
    with guard.watching(2, "main", "sh -c 'edit'") as found:
        if change == "content":
            policy.write_text('[[folders]]\npath = "/"\naccess = "write"\n')
        elif change == "copy":
            swap_for_copy(policy)
        elif change == "removed":
            policy.unlink()
        else:
            (policy.parent / "more.toml").write_text("")
    [problem] = found
    assert "while the command ran" in problem and "policy file" in problem
    assert len(breaches) == 1


def test_a_command_that_raises_is_checked_all_the_same(
        guarded: tuple[Guard, list[object]], tmp_path: Path) -> None:
    guard, breaches = guarded
    (tmp_path / "data").rename(tmp_path / "data.moved")
    (tmp_path / "data").mkdir()  # a look-alike where the data directory was
    with pytest.raises(TimeoutError), guard.watching(3, "main", "sleep 99"):
        raise TimeoutError
    assert len(breaches) == 1
    problems = breaches[0].problems  # type: ignore[attr-defined]
    assert any("the data directory" in p for p in problems)
    assert any("the database" in p and "is gone" in p for p in problems)


def test_policy_marks_know_files_by_identity_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("x")
    (tmp_path / ".#a.toml").write_text("lock")  # an editor's lock file: not a policy
    before = policy_marks(tmp_path)
    assert [m.path.name for m in before] == ["a.toml"]
    assert compare_policies(before, policy_marks(tmp_path)) == []
    gone = (Mark("the policy file a.toml", tmp_path / "a.toml", None, error="removed"),)
    assert compare_policies(before, gone)[0].endswith("while the command ran")
