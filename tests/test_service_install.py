"""`mailagent service install|uninstall|status`: the unit files, and where install puts them.

Service managers are external programs: the unit is checked by `systemd-analyze verify` (the
real one, installed by scripts/test.sh), and install runs against a fake `systemctl` first on
PATH that records its calls, so nothing is enabled on this machine.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.support.config import write_config
from tests.support.setup_cli import fake_home

TASK_NS = "{http://schemas.microsoft.com/windows/2004/02/mit/task}"

def mailagent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailagent", *args], capture_output=True,
                          text=True, env=env or dict(os.environ), timeout=120)


def odd_config(tmp_path: Path) -> Path:
    """A config path with a space, a percent sign, a dollar and an ampersand, to prove quoting."""
    folder = tmp_path / "my conf %h $HOME & co"
    folder.mkdir()
    return folder / "mailagent.toml"


def expected_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "mailagent", "run", "--config", str(config)]


def unit_sections(text: str) -> dict[str, dict[str, str]]:
    """A systemd unit's [Section] key=value pairs (comments and blank lines skipped)."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current[key] = value
    return sections


def test_the_systemd_unit_verifies_and_runs_this_python_with_the_config(tmp_path: Path) -> None:
    config = odd_config(tmp_path)
    result = mailagent("service", "install", "--dry-run", "--platform", "linux",
                       "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "mailagent.service" in result.stderr and "systemctl --user enable --now" in \
        result.stderr
    sections = unit_sections(result.stdout)
    service = sections["Service"]
    assert service["Restart"] == "on-failure"
    assert service["StandardOutput"] == service["StandardError"] == "journal"
    assert sections["Install"]["WantedBy"] == "default.target"
    exec_start = service["ExecStart"]
    assert exec_start.startswith(f'"{sys.executable}" "-m" "mailagent" "run" "--config" ')
    assert "%%h $$HOME & co" in exec_start  # systemd would expand %h and $HOME otherwise
    unit = tmp_path / "mailagent.service"
    unit.write_text(result.stdout)
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "scripts/test.sh installs systemd for systemd-analyze"
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr


def test_the_launchd_plist_parses_with_the_right_program_arguments(tmp_path: Path) -> None:
    config = odd_config(tmp_path)
    result = mailagent("service", "install", "--dry-run", "--platform", "darwin",
                       "--config", str(config))
    assert result.returncode == 0, result.stderr
    plist = plistlib.loads(result.stdout.encode())
    assert plist["ProgramArguments"] == expected_command(config)
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["RunAtLoad"] is True
    assert plist["Label"] == "org.mailagent.agent"
    assert "launchctl bootstrap gui/" in result.stderr


def test_the_windows_task_parses_with_the_right_command(tmp_path: Path) -> None:
    config = odd_config(tmp_path)
    result = mailagent("service", "install", "--dry-run", "--platform", "windows",
                       "--config", str(config))
    assert result.returncode == 0, result.stderr
    task = ET.fromstring(result.stdout.encode("utf-16"))
    assert task.findtext(f"{TASK_NS}Actions/{TASK_NS}Exec/{TASK_NS}Command") == sys.executable
    arguments = task.findtext(f"{TASK_NS}Actions/{TASK_NS}Exec/{TASK_NS}Arguments")
    assert arguments == subprocess.list2cmdline(expected_command(config)[1:])
    assert task.find(f"{TASK_NS}Triggers/{TASK_NS}LogonTrigger") is not None
    assert task.findtext(f"{TASK_NS}Settings/{TASK_NS}RestartOnFailure/{TASK_NS}Count") == "999"
    assert "schtasks /Create /TN mailagent /XML" in result.stderr


def test_install_writes_the_unit_where_systemd_looks_then_status_and_uninstall(
        tmp_path: Path) -> None:
    env, log = fake_home(tmp_path)
    config = write_config(tmp_path, 1, 1)
    unit = tmp_path / "xdg" / "systemd" / "user" / "mailagent.service"
    result = mailagent("service", "install", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert unit_sections(unit.read_text())["Service"]["ExecStart"] == \
        " ".join(f'"{word}"' for word in expected_command(config))
    assert log.read_text().splitlines() == ["--user daemon-reload",
                                            "--user enable --now mailagent.service"]
    assert "$ systemctl --user daemon-reload" in result.stdout  # each step is printed
    assert f"wrote {unit}" in result.stdout

    status = mailagent("service", "status", "--config", str(config), env=env)
    assert status.stdout.splitlines() == [f"installed: yes ({unit})", "running: yes"]

    removed = mailagent("service", "uninstall", "--config", str(config), env=env)
    assert removed.returncode == 0, removed.stderr
    assert not unit.exists()
    assert log.read_text().splitlines()[-2:] == ["--user disable --now mailagent.service",
                                                 "--user daemon-reload"]
    status = mailagent("service", "status", "--config", str(config), env=env)
    assert status.stdout.splitlines()[0] == f"installed: no ({unit})"


def test_install_refuses_a_config_that_would_not_start(tmp_path: Path) -> None:
    env, log = fake_home(tmp_path)
    config = tmp_path / "mailagent.toml"
    config.write_text("[imap]\nhost = 1\n")
    result = mailagent("service", "install", "--config", str(config), env=env)
    assert result.returncode == 2
    assert "imap.host must be a str" in result.stderr
    assert not (tmp_path / "xdg" / "systemd").exists()
    assert not log.exists()


def test_another_platforms_unit_is_only_shown(tmp_path: Path) -> None:
    env, log = fake_home(tmp_path)
    result = mailagent("service", "install", "--platform", "darwin", "--config",
                       str(write_config(tmp_path, 1, 1)), env=env)
    assert result.returncode == 2
    assert "only be shown with --dry-run" in result.stderr
    assert not (tmp_path / "home" / "Library").exists()
    assert not log.exists()
