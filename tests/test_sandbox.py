"""run_command's sandbox, with the real bubblewrap: what a hijacked model's command cannot do.

Each escape attempt is a program that exits 0 only if the escape worked, so an exit code of 0 is
a breach, whatever the output says.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from mailagent.policy import Decision, protected_paths
from mailagent.policy.sandbox import Limits, Runner, View, find_sandbox
from mailagent.tools.command import CommandTools
from mailagent.tools.files import ToolError
from tests.support.sandbox import Box

SANDBOX = find_sandbox()
PYTHON = str(Path(sys.prefix) / "bin" / "python3")


def test_bubblewrap_is_found_and_works_here() -> None:
    # Every test below depends on it; on a machine without it this fails, never skips.
    assert SANDBOX.available, SANDBOX.detail
    assert SANDBOX.kind == "bubblewrap" and "bubblewrap" in SANDBOX.detail


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path, SANDBOX)


def sh(script: str) -> tuple[str, str, str]:
    return ("/bin/sh", "-c", script)


def test_a_command_cannot_open_a_socket_even_to_a_loopback_server_of_the_test(box: Box) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.5)
        port = server.getsockname()[1]
        code = f"import socket; socket.create_connection(('127.0.0.1', {port}), 3)"
        result = box.run(PYTHON, "-c", code)
        assert result.exit_code != 0, f"breach: connected to the host's loopback: {result}"
        assert "Connection refused" in result.output or "unreachable" in result.output
        with pytest.raises(TimeoutError):
            server.accept()  # nothing came through
        # The same command with network allowed does connect: the test can see a breach.
        allowed = box.run(PYTHON, "-c", code, limits=Limits(10, network=True))
        assert allowed.exit_code == 0, allowed.output
        server.accept()[0].close()


def test_a_command_cannot_read_ssh_keys_or_an_unlisted_folder(box: Box) -> None:
    for target in (box.home / ".ssh" / "id_ed25519", box.unlisted / "diary.txt"):
        result = box.run("/bin/cat", str(target))
        assert result.exit_code != 0, f"breach: read {target}"
        assert "SECRET" not in result.output
    listing = box.run("/bin/ls", "-a", str(box.home / ".ssh"))
    assert "id_ed25519" not in listing.output
    # The home folder itself is not there, only the folders the policy names.
    assert box.run("/bin/ls", str(box.home / ".bashrc")).exit_code != 0
    allowed = box.run("/bin/cat", str(box.reports / "q3.txt"))
    assert allowed.exit_code == 0 and allowed.output == "Q3 figures"


def test_a_command_cannot_write_a_read_folder_but_can_write_a_write_folder(box: Box) -> None:
    attempts = [f"echo x > {box.reports}/new.txt", f"echo x >> {box.reports}/q3.txt",
                f"rm {box.reports}/q3.txt", f"mv {box.reports}/q3.txt {box.out}/"]
    for script in attempts:
        result = box.run(*sh(script))
        assert result.exit_code != 0, f"breach: {script}"
    assert sorted(os.listdir(box.reports)) == ["q3.txt"]
    assert (box.reports / "q3.txt").read_text() == "Q3 figures"
    assert box.run(*sh(f"echo made > {box.out}/made.txt && echo ok > in-workspace.txt")) \
        .exit_code == 0
    assert (box.out / "made.txt").read_text() == "made\n"
    assert (box.workspace / "in-workspace.txt").read_text() == "ok\n"


def test_protected_files_inside_a_write_folder_stay_unwritable(box: Box, tmp_path: Path) -> None:
    view = View(read=(), write=(box.home,), hidden=box.view.hidden, workspace=box.workspace,
                home=box.workspace / ".home")
    for script in (f"echo evil >> {box.home}/.bashrc", f"cat {box.home}/.ssh/id_ed25519",
                   f"echo key > {box.home}/.ssh/authorized_keys"):
        result = box.run(*sh(script), view=view)
        assert result.exit_code != 0, f"breach: {script}"
    assert (box.home / ".bashrc").read_text() == "# the owner's bashrc\n"
    assert os.listdir(box.home / ".ssh") == ["id_ed25519"]
    # A protected file that does not exist yet can be created inside the sandbox, so the tool
    # takes it away afterwards and says so.
    kept = tmp_path / "trash"

    def remove(path: Path) -> str:
        kept.mkdir(exist_ok=True)
        path.rename(kept / path.name)
        return str(path)

    tools = CommandTools(runner=Runner(SANDBOX), setup=lambda: (Allow(("sh",)), view, Limits(10)),
                         judge=lambda _a, _p: Decision("allow", "t", "t", box.workspace),
                         remove_protected=remove)
    text = tools.run_command(f"sh -c 'echo evil > {box.home}/.profile'")
    assert not (box.home / ".profile").exists()
    assert f"{box.home}/.profile" in text.split("never writable):", 1)[1]


def test_the_data_folder_stays_hidden_around_the_workspace_inside_a_write_folder(
        box: Box, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "workspaces" / "other").mkdir(parents=True)
    (data / "workspaces" / "other" / "notes.txt").write_text("OTHER-CONVERSATION-SECRET")
    (data / "mailagent.db").write_text("DATABASE-SECRET")
    view = View(read=(), write=(tmp_path,), hidden=box.view.hidden, workspace=box.workspace,
                home=box.workspace / ".home")
    for script in (f"cat {data}/mailagent.db", f"cat {data}/workspaces/other/notes.txt",
                   f"echo x > {data}/new.txt", f"rm {data}/mailagent.db"):
        result = box.run(*sh(script), view=view)
        assert result.exit_code != 0, f"breach: {script}: {result.output}"
        assert "SECRET" not in result.output
    assert sorted(os.listdir(data)) == ["mailagent.db", "workspaces"]
    assert box.run(*sh("echo fine > here.txt"), view=view).exit_code == 0
    assert (box.workspace / "here.txt").read_text() == "fine\n"


def test_a_command_sees_no_secret_environment_variables(
        box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-s3cret")
    monkeypatch.setenv("TEST_IMAP_PASSWORD", "imap-s3cret")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/agent.s3cret")
    code = ("import os, sys; sys.exit(0 if any('s3cret' in k + v for k, v in "
            "os.environ.items()) else 3)")
    result = box.run(PYTHON, "-c", code)
    assert result.exit_code == 3, f"breach: a secret reached the command: {result}"
    env = box.run("/usr/bin/env").output.splitlines()
    names = sorted(line.split("=", 1)[0] for line in env)
    assert "ANTHROPIC_API_KEY" not in names and "SSH_AUTH_SOCK" not in names
    assert f"HOME={box.workspace / '.home'}" in env


def running_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_command_is_killed_at_its_timeout_with_everything_it_started(box: Box) -> None:
    marker = "sleep 417"
    started = time.monotonic()
    result = box.run(*sh(f"(/bin/{marker} &) ; /bin/{marker}; exit 0"), limits=Limits(1.5))
    elapsed = time.monotonic() - started
    assert result.timed_out and result.exit_code is None, f"breach: {result}"
    assert elapsed < 6, f"took {elapsed:.1f} s"
    time.sleep(0.3)
    assert running_with(marker) == [], "a child outlived the timeout"


def test_a_fork_bomb_is_contained(box: Box) -> None:
    marker = "bomb4711"
    script = f"{marker}() {{ {marker} | {marker} & }}; {marker}; sleep 3"
    peak = 0
    done = threading.Event()

    def count() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, len(running_with(marker)))
            time.sleep(0.05)

    watcher = threading.Thread(target=count)
    watcher.start()
    started = time.monotonic()
    try:
        box.run(*sh(script), limits=Limits(4, max_processes=64))
    finally:
        done.set()
        watcher.join()
    assert time.monotonic() - started < 12
    assert 1 < peak <= 64 + 2, f"breach: {peak} processes of the bomb ran at once"
    time.sleep(0.5)
    assert running_with(marker) == [], "processes of the bomb are still running"
    assert box.run("/bin/true").exit_code == 0  # and the machine still starts programs


def test_a_command_cannot_start_more_processes_than_the_limit(box: Box) -> None:
    script = ("i=0; while [ $i -lt 100 ]; do /bin/sleep 2 & i=$((i+1)); done; "
              "[ $(ls /proc | grep -c '^[0-9][0-9]*$') -ge 100 ]")
    spawn = box.run(*sh(script), limits=Limits(10, max_processes=20))
    assert spawn.exit_code != 0, f"breach: 100 processes started under a limit of 20: {spawn}"
    assert "fork" in spawn.output.lower()
    # The same script under a roomy limit does start them all: the test can see a breach.
    assert box.run(*sh(script), limits=Limits(10, max_processes=400)).exit_code == 0


def test_kill_stops_a_running_command_at_once(box: Box) -> None:
    runner = Runner(SANDBOX)
    threading.Timer(0.5, runner.kill).start()
    started = time.monotonic()
    result = box.run("/bin/sleep", "30", runner=runner)
    assert result.cancelled and result.exit_code is None
    assert time.monotonic() - started < 5


class Allow:
    def __init__(self, programs: tuple[str, ...]) -> None:
        self.allow = programs


def test_only_listed_programs_start_and_only_by_name(box: Box) -> None:
    tools = CommandTools(runner=Runner(SANDBOX),
                         setup=lambda: (Allow(("python3",)), box.view, Limits(10)),
                         judge=lambda _a, _p: Decision("deny", "default: deny", "unlisted", None),
                         remove_protected=str)
    for command, reason in (("sh -c 'echo hi'", "'sh' is not an allowed program"),
                            (f"{PYTHON} -c 'print(1)'", "not an allowed program"),
                            ("python3 'unterminated", "cannot split"),
                            ("", "empty")):
        with pytest.raises(ToolError, match=reason):
            tools.run_command(command)
    with pytest.raises(ToolError, match="denied by default: deny"):
        tools.run_command("python3 -c 'print(1)'", cwd=str(box.unlisted))
    answer = tools.run_command("python3 -c 'print(6 * 7)'")
    assert answer.splitlines()[1].startswith("exit code 0") and "42" in answer
    with pytest.raises(ToolError, match="exit code 3"):
        tools.run_command("python3 -c 'import sys; print(\"out\"); sys.exit(3)'")


def test_output_is_capped_and_the_cut_is_said(box: Box) -> None:
    result = box.run(PYTHON, "-c", "print('y' * 1_000_000)", limits=Limits(10,
                     max_output_bytes=1000))
    assert result.exit_code == 0 and result.output_cut and len(result.output) == 1000


def test_commands_run_in_the_default_layout_with_the_whole_home_listed(tmp_path: Path) -> None:
    """Config and policies in ~/.config/mailagent, data in ~/.local/share/mailagent, `~` read:
    nested protected folders are covered parents first, and the command starts."""
    home = tmp_path / "home"
    config_dir = home / ".config" / "mailagent"
    (config_dir / "policies").mkdir(parents=True)
    (config_dir / "mailagent.toml").write_text("password = 'MAIL-PASSWORD-SECRET'\n")
    (config_dir / "policies" / "home.toml").write_text("# POLICY-SECRET\n")
    data = home / ".local" / "share" / "mailagent"
    workspace = data / "workspaces" / "main"
    workspace.mkdir(parents=True)
    (data / "mailagent.db").write_text("DATABASE-SECRET")
    (home / "notes.txt").write_text("visible notes")
    hidden = protected_paths(config_path=config_dir / "mailagent.toml",
                             policies_dir=config_dir / "policies", data_dir=data, home=home)
    view = View(read=(home,), write=(), hidden=hidden, workspace=workspace,
                home=workspace / ".home")
    result = Runner(SANDBOX).run(
        ["/bin/sh", "-c", f"cat {home}/notes.txt; echo made > made.txt; "
                          f"cat {config_dir}/mailagent.toml {config_dir}/policies/home.toml "
                          f"{data}/mailagent.db; ls -A {config_dir}"],
        workspace, view, Limits(10))
    assert "visible notes" in result.output, result.output
    assert (workspace / "made.txt").read_text() == "made\n"
    assert "SECRET" not in result.output


def test_a_command_cannot_move_a_parent_of_the_protected_paths_out_of_the_way(
        tmp_path: Path) -> None:
    """The config and policies lie inside a writable folder: renaming a folder above them
    would carry their covers away and leave the real files writable under a new name."""
    home = tmp_path / "home"
    config_dir = home / "work" / "settings" / "mailagent"
    (config_dir / "policies").mkdir(parents=True)
    (config_dir / "mailagent.toml").write_text("password = 'MAIL-PASSWORD-SECRET'\n")
    data = tmp_path / "data"
    workspace = data / "workspaces" / "main"
    workspace.mkdir(parents=True)
    hidden = protected_paths(config_path=config_dir / "mailagent.toml",
                             policies_dir=config_dir / "policies", data_dir=data, home=home)
    view = View(read=(), write=(home / "work",), hidden=hidden, workspace=workspace,
                home=workspace / ".home")
    for moved in (home / "work" / "settings", config_dir):
        result = Runner(SANDBOX).run(
            ["/bin/sh", "-c", f"mv {moved} {moved}.x && cat {moved}.x/mailagent.toml "
                              f"{str(moved) + '.x'}/mailagent/mailagent.toml"],
            workspace, view, Limits(10))
        assert result.exit_code != 0 and "SECRET" not in result.output, result.output
        assert moved.is_dir() and not Path(f"{moved}.x").exists()
    assert (config_dir / "mailagent.toml").read_text().startswith("password")
    # The rest of the writable folder is still the command's to change.
    ok = Runner(SANDBOX).run(["/bin/sh", "-c", f"mkdir {home}/work/new && mv {home}/work/new "
                              f"{home}/work/renamed"], workspace, view, Limits(10))
    assert ok.exit_code == 0 and (home / "work" / "renamed").is_dir(), ok.output
