"""run_command with a host list, with the real srt (Anthropic's sandbox-runtime) around the real
bubblewrap: a command reaches the hosts the policy lists and nothing else, and still sees only
the policy's folders.

The internet is an upstream proxy on loopback (tests/support/upstream.py) that maps the names
`allowed.test` and `other.test` to two local servers: srt's filter decides by name, and what it
lets through goes to that proxy, so the test sees exactly what left the sandbox.
srt is found as tests/support/upstream.py says (SRT).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mailagent.errors import PolicyError
from mailagent.policy import load_policy
from mailagent.policy.sandbox import Limits, NoHostFilterError, Runner, find_sandbox
from mailagent.policy.srt import SrtInfo
from tests.support.sandbox import Box
from tests.support.upstream import FETCH, PYTHON, SRT, Site, Upstream, two_sites


@pytest.fixture(scope="module")
def sites() -> Iterator[tuple[Site, Site, Upstream]]:
    with two_sites() as served:
        yield served


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path, find_sandbox())


def test_srt_is_found_and_works_here(sites: tuple[Site, Site, Upstream]) -> None:
    # Every test below depends on it; scripts/test.sh installs it, so this fails, never skips.
    sandbox = find_sandbox(SRT, sites[2].url)
    assert sandbox.srt.available, sandbox.srt.detail
    assert "sandbox-runtime" in sandbox.srt.detail and str(SRT) in sandbox.srt.detail


def test_a_command_reaches_a_listed_host_and_not_another(
        box: Box, sites: tuple[Site, Site, Upstream]) -> None:
    allowed, other, upstream = sites
    runner = Runner(find_sandbox(SRT, upstream.url))
    result = box.run(PYTHON, "-c", FETCH, "http://allowed.test/first", "http://other.test/",
                     f"http://127.0.0.1:{other.port}/", limits=Limits(30, hosts=("allowed.test",)),
                     runner=runner)
    assert result.exit_code == 0, result
    lines = result.output.splitlines()
    assert "http://allowed.test/first hello from allowed" in lines, result.output
    assert any(line.startswith("http://other.test/ FAILED") and "403" in line
               for line in lines), result.output  # srt's proxy refused it by name
    assert any(line.startswith(f"http://127.0.0.1:{other.port}/ FAILED")
               for line in lines), result.output  # no way around the proxy
    assert allowed.requests[-1] == "/first"
    assert other.requests == [] and "other.test" not in upstream.asked


def test_with_no_host_listed_nothing_is_reached(
        box: Box, sites: tuple[Site, Site, Upstream]) -> None:
    allowed, _other, upstream = sites
    before = len(allowed.requests)
    result = box.run(PYTHON, "-c", FETCH, "http://allowed.test/", limits=Limits(30),
                     runner=Runner(find_sandbox(SRT, upstream.url)))
    assert "http://allowed.test/ FAILED" in result.output, result.output
    assert len(allowed.requests) == before


def test_under_srt_a_command_still_sees_only_the_policy_folders(
        box: Box, sites: tuple[Site, Site, Upstream]) -> None:
    runner = Runner(find_sandbox(SRT, sites[2].url))
    limits = Limits(30, hosts=("allowed.test",))
    for path in (box.unlisted / "diary.txt", box.home / ".ssh" / "id_ed25519"):
        result = box.run("/bin/cat", str(path), limits=limits, runner=runner)
        assert result.exit_code != 0 and "SECRET" not in result.output, f"breach: {result}"
    (box.out / ".bashrc").write_text("# a protected file inside the write folder\n")
    view = replace(box.view, hidden=(*box.view.hidden, box.out / ".bashrc"))
    for bashrc in (box.home / ".bashrc", box.out / ".bashrc"):
        before = bashrc.read_text()
        box.run("/bin/sh", "-c", f"echo pwned >> {bashrc}", limits=limits, runner=runner,
                view=view)
        assert bashrc.read_text() == before, f"breach: wrote {bashrc}"
    for target in (box.reports / "new.txt", box.workspace.parent / "other.txt"):
        box.run("/bin/sh", "-c", f"echo x > {target}", limits=limits, runner=runner)
        assert not target.exists(), f"breach: wrote {target}"
    result = box.run("/bin/sh", "-c", f"echo made > {box.out / 'made.txt'} && cat "
                     f"{box.reports / 'q3.txt'}", limits=limits, runner=runner)
    assert result.exit_code == 0 and "Q3 figures" in result.output, result
    assert (box.out / "made.txt").read_text() == "made\n"


def test_a_command_under_srt_sees_no_secret_and_is_killed_at_its_timeout(
        box: Box, sites: tuple[Site, Site, Upstream], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-SECRET")
    runner = Runner(find_sandbox(SRT, sites[2].url))
    result = box.run("/usr/bin/env", limits=Limits(30, hosts=("allowed.test",)), runner=runner)
    assert "SECRET" not in result.output and "JAVA_TOOL_OPTIONS" not in result.output
    assert f"HOME={box.view.home}" in result.output and "HTTP_PROXY=" in result.output
    result = box.run("/bin/sleep", "60", limits=Limits(2, hosts=("allowed.test",)),
                     runner=runner)
    assert result.timed_out and result.seconds < 15


def test_a_host_list_never_runs_without_srt_and_never_with_the_whole_network(
        box: Box) -> None:
    without = replace(find_sandbox(SRT), srt=SrtInfo(detail="srt is not on PATH"))
    for runner in (Runner(without), Runner(None)):
        with pytest.raises(NoHostFilterError, match=r"only allowed\.test"):
            box.run("/bin/true", limits=Limits(10, hosts=("allowed.test",)), runner=runner)
    assert not box.view.home.exists() or not any(box.view.home.iterdir())


def test_network_takes_a_list_of_hosts_and_names_the_line_of_a_bad_one(tmp_path: Path) -> None:
    (tmp_path / "commands.toml").write_text(
        '[commands]\nallow = ["python3"]\nnetwork = ["PyPI.org", "*.github.com", '
        '"localhost:8000", "pypi.org"]\n')
    rule = load_policy(tmp_path).commands
    assert rule is not None and rule.network is False
    assert rule.hosts == ("pypi.org", "*.github.com", "localhost:8000")
    for bad in ('"http://pypi.org"', '"a b"', '"*."', '"pypi.org:99999"', "3"):
        (tmp_path / "commands.toml").write_text(
            f'[commands]\nallow = ["python3"]\nnetwork = [{bad}]\n')
        with pytest.raises(PolicyError, match=r"commands.toml line 3: network"):
            load_policy(tmp_path)
