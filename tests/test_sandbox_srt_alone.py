"""srt alone as the whole sandbox: what macOS runs commands in (srt's Seatbelt backend), with the
view written as srt's settings. Here it runs on srt's Linux backend, which takes the same
settings (srt's README, "Filesystem Configuration"), so these tests prove what mailagent asks of
srt: only the policy's folders readable, only its write folders and the workspace writable, the
protected paths neither, even the data folder that holds the workspace, the network only to the
listed hosts, and the limits held for the command.

srt is found as tests/support/upstream.py says (SRT).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mailagent.cli.check import commands_line
from mailagent.errors import MailagentError
from mailagent.policy import load_policy
from mailagent.policy.sandbox import (
    Limits,
    NoHostFilterError,
    Runner,
    SandboxInfo,
    find_srt_alone,
)
from mailagent.policy.srt import alone_settings, cover
from tests.support.sandbox import Box
from tests.support.upstream import FETCH, PYTHON, SRT, Site, Upstream, two_sites


@pytest.fixture(scope="module")
def sites() -> Iterator[tuple[Site, Site, Upstream]]:
    with two_sites() as served:
        yield served


@pytest.fixture(scope="module")
def alone(sites: tuple[Site, Site, Upstream]) -> SandboxInfo:
    return find_srt_alone(SRT, sites[2].url)


@pytest.fixture
def box(tmp_path: Path, alone: SandboxInfo) -> Box:
    return Box(tmp_path, alone)


def test_srt_alone_is_found_and_starts_a_shell_in_the_narrowest_view(
        alone: SandboxInfo) -> None:
    # Every test below depends on it; scripts/test.sh installs srt, so this fails, never skips.
    assert alone.kind == "srt" and alone.available, alone.detail
    assert alone.detail.startswith("srt alone (sandbox-runtime") and str(SRT) in alone.detail
    broken = find_srt_alone(SRT.parent / "no-such-srt")
    assert broken.kind == "none" and "missing or not executable" in broken.detail


def test_only_the_policy_folders_are_read_and_only_its_write_folders_written(box: Box) -> None:
    for path in (box.unlisted / "diary.txt", box.home / ".ssh" / "id_ed25519",
                 box.home / ".bashrc"):
        result = box.run("/bin/cat", str(path))
        assert result.exit_code != 0 and "SECRET" not in result.output, f"breach: {result}"
    for target in (box.reports / "new.txt", box.workspace.parent / "other.txt",
                   box.unlisted / "new.txt", box.home / "new.txt"):
        box.run("/bin/sh", "-c", f"echo x > {target}")
        assert not target.exists(), f"breach: wrote {target}"
    result = box.run("/bin/sh", "-c", f"echo made > {box.out / 'made.txt'} && echo here > "
                     f"{box.workspace / 'w.txt'} && cat {box.reports / 'q3.txt'}")
    assert result.exit_code == 0 and "Q3 figures" in result.output, result
    assert (box.out / "made.txt").read_text() == "made\n"
    assert (box.workspace / "w.txt").read_text() == "here\n"


def test_a_protected_path_inside_a_listed_folder_is_neither_read_nor_written(
        box: Box) -> None:
    (box.out / ".bashrc").write_text("# protected inside the write folder: SECRET\n")
    view = replace(box.view, read=(box.home,),
                   hidden=(*box.view.hidden, box.out / ".bashrc"))
    for path in (box.home / ".ssh" / "id_ed25519", box.home / ".bashrc", box.out / ".bashrc"):
        result = box.run("/bin/cat", str(path), view=view)
        assert "SECRET" not in result.output, f"breach: {result}"
    before = (box.out / ".bashrc").read_text()
    box.run("/bin/sh", "-c", f"echo pwned >> {box.out / '.bashrc'}", view=view)
    assert (box.out / ".bashrc").read_text() == before, "breach: wrote a protected file"
    result = box.run("/bin/cat", str(box.reports / "q3.txt"), view=view)
    assert result.exit_code == 0 and "Q3 figures" in result.output, result


def test_moving_the_folder_of_a_protected_file_does_not_uncover_it(box: Box) -> None:
    conf = box.out / "conf"
    conf.mkdir()
    (conf / "mailagent.toml").write_text('password = "MAIL-SECRET"\n')
    view = replace(box.view, hidden=(*box.view.hidden, conf / "mailagent.toml"))
    result = box.run("/bin/sh", "-c", f"mv {conf} {box.out / 'moved'}; "
                     f"cat {box.out / 'moved' / 'mailagent.toml'} {conf / 'mailagent.toml'}",
                     view=view)
    assert "MAIL-SECRET" not in result.output, f"breach: {result}"
    assert (conf / "mailagent.toml").read_text() == 'password = "MAIL-SECRET"\n' or \
        (box.out / "moved" / "mailagent.toml").read_text() == 'password = "MAIL-SECRET"\n'


def test_the_data_folder_inside_a_read_folder_shows_the_workspace_and_nothing_else(
        box: Box, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "mailagent.db").write_text("DB-SECRET")
    (data / "workspaces" / "other").mkdir()
    (data / "workspaces" / "other" / "notes.txt").write_text("OTHER-CONVERSATION-SECRET")
    view = replace(box.view, read=(tmp_path,))  # the folder that holds it all
    assert cover(data, (box.workspace,)) == [data / "mailagent.db",
                                             data / "workspaces" / "other"]
    for path in (data / "mailagent.db", data / "workspaces" / "other" / "notes.txt",
                 box.home / ".ssh" / "id_ed25519"):
        result = box.run("/bin/cat", str(path), view=view)
        assert "SECRET" not in result.output, f"breach: {result}"
    result = box.run("/bin/sh", "-c", "echo kept > w.txt && cat w.txt && cat "
                     f"{box.unlisted / 'diary.txt'}", view=view)
    assert result.exit_code == 0 and "kept" in result.output, result
    assert "DIARY-SECRET" in result.output  # listed now: the read folder holds it


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_the_settings_never_list_a_protected_path_as_readable(
        box: Box, tmp_path: Path, platform: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # On macOS the settings keep a read folder whole (Seatbelt judges reads and writes apart);
    # the rule of precedence below is srt's, as its README gives it for both.
    monkeypatch.setattr(sys, "platform", platform)
    (tmp_path / "data" / "mailagent.db").write_text("DB-SECRET")
    (tmp_path / "data" / "trash").mkdir()
    settings = alone_settings((), None, read=(tmp_path,), write=box.view.write,
                              workspace=box.workspace, hidden=box.view.hidden)
    files = settings["filesystem"]
    assert isinstance(files, dict)
    allowed = [Path(p) for p in files["allowRead"]]
    denied = [Path(p) for p in files["denyRead"]]
    assert denied[0] == Path("/")

    def readable(path: Path) -> bool:  # srt's rule: the most specific entry decides
        allow = max((a for a in allowed if a == path or a in path.parents),
                    key=lambda a: len(a.parts), default=None)
        deny = max((d for d in denied if d == path or d in path.parents),
                   key=lambda d: len(d.parts))
        return allow is not None and len(allow.parts) >= len(deny.parts)

    # The data folder holds the workspace: what it holds besides is covered (its names show
    # on macOS, as the folder that leads to the workspace).
    kept = [p for p in box.view.hidden if p not in box.workspace.parents]
    for path in (*kept, tmp_path / "data" / "mailagent.db", tmp_path / "data" / "trash" / "x",
                 box.home / ".ssh" / "id_ed25519"):
        assert not readable(path), f"{path} is readable under {files}"
    for path in (box.workspace / "w.txt", box.reports / "q3.txt", box.out / "made.txt",
                 box.unlisted / "diary.txt"):
        assert readable(path), f"{path} is not readable under {files}"
    assert files["allowWrite"] == [str(box.out), str(box.workspace)]
    assert settings["network"] == {"allowedDomains": [], "deniedDomains": []}


def test_a_command_reaches_a_listed_host_and_nothing_else(
        box: Box, sites: tuple[Site, Site, Upstream]) -> None:
    allowed, other, _upstream = sites
    result = box.run(PYTHON, "-c", FETCH, "http://allowed.test/alone", "http://other.test/",
                     f"http://127.0.0.1:{other.port}/", limits=Limits(30, hosts=("allowed.test",)))
    assert result.exit_code == 0, result
    lines = result.output.splitlines()
    assert "http://allowed.test/alone hello from allowed" in lines, result.output
    assert any(line.startswith("http://other.test/ FAILED") for line in lines), result.output
    assert any(line.startswith(f"http://127.0.0.1:{other.port}/ FAILED")
               for line in lines), result.output
    assert allowed.requests[-1] == "/alone" and other.requests == []
    before = len(allowed.requests)
    result = box.run(PYTHON, "-c", FETCH, "http://allowed.test/", limits=Limits(30))
    assert "http://allowed.test/ FAILED" in result.output and len(allowed.requests) == before


def test_the_whole_network_is_refused_rather_than_given(box: Box) -> None:
    with pytest.raises(NoHostFilterError, match=r"whole network.*list the hosts"):
        box.run("/bin/true", limits=Limits(10, network=True))


def test_limits_hold_for_the_command_and_the_environment_is_its_own(
        box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-SECRET")
    result = box.run("/usr/bin/env", limits=Limits(30, hosts=("allowed.test",)))
    assert "SECRET" not in result.output and "JAVA_TOOL_OPTIONS" not in result.output, result
    assert f"HOME={box.view.home}" in result.output
    assert f"TMPDIR={box.view.home / 'tmp'}" in result.output
    result = box.run(PYTHON, "-c", "b = bytearray(1024**3); print('allocated')",
                     limits=Limits(30, memory_bytes=512 * 1024**2))
    assert result.exit_code != 0 and "MemoryError" in result.output, result
    result = box.run(PYTHON, "-c", "print('x' * 100000)", limits=Limits(30, max_output_bytes=100))
    assert result.output_cut and len(result.output) <= 100


def test_a_timeout_kills_the_command_and_everything_it_started(box: Box) -> None:
    late = box.out / "late.txt"
    result = box.run("/bin/sh", "-c", f"(sleep 3; echo late > {late}) & sleep 60",
                     limits=Limits(1))
    assert result.timed_out and result.seconds < 15, result
    time.sleep(4)
    assert not late.exists(), "a process the command started outlived the time limit"


def test_a_runner_without_srt_alone_never_runs_bare(box: Box) -> None:
    gone = Runner(SandboxInfo("none", detail="srt is not on PATH"))
    with pytest.raises(NoHostFilterError, match=r"only allowed\.test"):
        box.run("/bin/true", limits=Limits(10, hosts=("allowed.test",)), runner=gone)


def test_check_names_srt_alone_and_why_and_refuses_the_whole_network(
        alone: SandboxInfo, tmp_path: Path) -> None:
    (tmp_path / "commands.toml").write_text(
        '[commands]\nallow = ["python3"]\nnetwork = ["pypi.org"]\n')
    rule = load_policy(tmp_path).commands
    assert rule is not None
    line = commands_line(rule, alone)
    assert line.startswith("run_command: python3 in srt alone (sandbox-runtime"), line
    assert f"because there is no bubblewrap on {sys.platform}" in line
    assert "network only to pypi.org, filtered by srt's proxy" in line
    (tmp_path / "commands.toml").write_text('[commands]\nallow = ["python3"]\n')
    rule = load_policy(tmp_path).commands
    assert rule is not None and "(no network;" in commands_line(rule, alone)
    (tmp_path / "commands.toml").write_text('[commands]\nallow = ["python3"]\nnetwork = true\n')
    rule = load_policy(tmp_path).commands
    assert rule is not None
    with pytest.raises(MailagentError, match=r"refused at every call: .*commands\.toml:1 gives "
                                             r"commands the whole network"):
        commands_line(rule, alone)
