"""The `[desktop]` table and the rules around the computer-use tool, without a display: off
unless the table is there, its errors name the file, the line and the fix, only listed apps
start (and none the agent could rewrite), `policy explain desktop` and `check` say what is
offered; the model double takes the computer tool only in its documented shape with its beta;
an xwd screenshot becomes an image block."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mailagent.errors import PolicyError
from mailagent.mail.render import shipped_text
from mailagent.policy import DesktopRule, Scope, check_call, explain_desktop, load_policy
from mailagent.tools.desktop import COMPUTER_BETA, computer_definition
from mailagent.tools.media import MediaError, screenshot_media
from tests.support.api_computer import computer
from tests.support.api_rules import first_violation
from tests.support.config import write_config


def policies(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def scope(tmp_path: Path) -> Scope:
    return Scope(workspace=tmp_path / "workspace", home=tmp_path, protected=())


def test_no_table_and_the_commented_example_offer_no_desktop(tmp_path: Path) -> None:
    folder = policies(tmp_path, {"example.toml": shipped_text("examples/policy.toml")})
    policy = load_policy(folder, home=tmp_path)
    assert policy.desktop is None
    for name, tool_input in (("computer", {"action": "screenshot"}),
                             ("start_app", {"name": "mousepad"})):
        decision = check_call(policy, scope(tmp_path), name, tool_input, sandboxed=True)
        assert decision.verdict == "deny" and "no [desktop] table" in decision.reason
    assert explain_desktop(policy, "mousepad") == (
        "deny", "default: no [desktop] table, so no desktop tool is offered")


def test_a_table_lists_apps_by_name_or_absolute_path(tmp_path: Path) -> None:
    folder = policies(tmp_path, {"apps.toml": '# apps\n[desktop]\napps = ["mousepad", '
                                              '"/opt/tools/editor"]\nmax_actions = 7\n'})
    policy = load_policy(folder, home=tmp_path)
    assert policy.desktop == DesktopRule(("mousepad", "/opt/tools/editor"), 7, "apps.toml:2")
    judged = {name: check_call(policy, scope(tmp_path), "start_app", {"name": name},
                               sandboxed=True).verdict
              for name in ("mousepad", "editor", "xterm", "/usr/bin/mousepad", "../mousepad")}
    assert judged == {"mousepad": "allow", "editor": "allow", "xterm": "deny",
                      "/usr/bin/mousepad": "deny", "../mousepad": "deny"}
    unsandboxed = check_call(policy, scope(tmp_path), "computer", {"action": "screenshot"},
                             sandboxed=False)
    assert unsandboxed.verdict == "deny" and "only inside the command sandbox" in \
        unsandboxed.reason


def test_an_app_the_agent_could_rewrite_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    app = tmp_path / "work" / "editor"
    app.write_text("#!/bin/sh\n")
    app.chmod(0o755)
    folder = policies(tmp_path, {"a.toml": f'[[folders]]\npath = "{tmp_path / "work"}"\n'
                                           f'access = "write"\n\n[desktop]\napps = ["{app}"]\n'})
    decision = check_call(load_policy(folder, home=tmp_path), scope(tmp_path), "start_app",
                          {"name": "editor"}, sandboxed=True)
    assert decision.verdict == "deny" and "could have been rewritten" in decision.reason


@pytest.mark.parametrize(("text", "message"), [
    ("[desktop]\n", 'line 1: apps must list the applications'),
    ('[desktop]\napps = "mousepad"\n', "line 2: apps must list the applications"),
    ('[desktop]\napps = ["rm -rf"]\n', "line 2: apps: 'rm -rf' is neither a program name"),
    ('[desktop]\napps = ["bin/editor"]\n', "line 2: apps: 'bin/editor' is neither"),
    ('[desktop]\napps = ["/a/../b"]\n', "line 2: apps: '/a/../b' is neither"),
    ('[desktop]\napps = ["edit", "/opt/edit"]\n', "line 2: apps: two entries are called 'edit'"),
    ('[desktop]\napps = ["a"]\nmax_actions = 0\n', "line 3: max_actions = 0 must be a whole "
                                                   "number from 1 to 500"),
    ('[desktop]\napps = ["a"]\nmax_actions = "5"\n', "line 3: max_actions = '5' must be"),
    ('[desktop]\napps = ["a"]\nmax_action = 5\n', "line 3: unknown key 'max_action' in "
                                                  '[desktop] (did you mean "max_actions"?)'),
    ("desktop = 3\n", "line 1: desktop must be a [desktop] table"),
])
def test_a_broken_desktop_table_is_an_error_naming_the_line(tmp_path: Path, text: str,
                                                            message: str) -> None:
    folder = policies(tmp_path, {"d.toml": text})
    with pytest.raises(PolicyError, match="d.toml " + message.replace("[", r"\[")
                       .replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")
                       .replace(".", r"\.").replace("+", r"\+")):
        load_policy(folder, home=tmp_path)


def test_a_second_desktop_table_is_an_error(tmp_path: Path) -> None:
    folder = policies(tmp_path, {"a.toml": '[desktop]\napps = ["a"]\n',
                                 "b.toml": '\n[desktop]\napps = ["b"]\n'})
    with pytest.raises(PolicyError, match=r"b.toml line 2: a second \[desktop\] table "
                                          r"\(the first is at a.toml:1\)"):
        load_policy(folder, home=tmp_path)


def mailagent(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TEST_IMAP_PASSWORD": "agent-secret"}
    return subprocess.run([sys.executable, "-m", "mailagent", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_policy_explain_desktop_and_check_say_what_is_offered(tmp_path: Path) -> None:
    config = write_config(tmp_path, 1, 1)
    policies(tmp_path, {"d.toml": '[desktop]\napps = ["xeyes", "no-such-app"]\n'})
    listed = mailagent("policy", "explain", "--config", str(config), "desktop", "xeyes")
    missing = mailagent("policy", "explain", "--config", str(config), "desktop", "no-such-app")
    other = mailagent("policy", "explain", "--config", str(config), "desktop", "xterm")
    assert listed.returncode == 0 and listed.stdout.startswith(
        "allow: d.toml:1: xeyes may be started on a virtual display inside the command sandbox")
    assert "never on your own screen" in listed.stdout
    assert "(NOT found on this computer)" in missing.stdout
    assert other.stdout.strip() == ("deny: d.toml:1: 'xterm' is not in [desktop] apps "
                                    "(no-such-app, xeyes)")
    check = mailagent("check", "--config", str(config))  # no IMAP here: it fails, but says
    if sys.platform == "linux":
        assert ("desktop: xeyes (found), no-such-app (NOT FOUND) on a virtual display in "
                "bubblewrap" in check.stdout) or "desktop: NOT offered" in check.stdout
    else:
        assert "the virtual display is Linux only" in check.stdout
    (tmp_path / "policies" / "d.toml").unlink()
    check = mailagent("check", "--config", str(config))
    assert "desktop: not offered (no [desktop] table in the policies)" in check.stdout


def request(tool: dict[str, Any]) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 10, "tools": [tool],
            "messages": [{"role": "user", "content": "hi"}]}


def test_the_model_double_takes_the_computer_tool_only_in_its_documented_shape() -> None:
    tool = computer_definition(1024, 768, 1)
    assert first_violation(request(tool), [COMPUTER_BETA]) is None
    assert first_violation(request(tool), []) == (
        "tools.0: Input tag 'computer_20250124' found using 'type' does not match any of the "
        "expected tags")
    assert first_violation(request(tool), ["computer-use-2025-11-24"]) is not None
    assert first_violation(request({**tool, "name": "screen"}), [COMPUTER_BETA]) == \
        "tools.0.computer_20250124.name: Input should be 'computer'"
    assert first_violation(request({**tool, "enable_zoom": True}), [COMPUTER_BETA]) == \
        "tools.0.computer_20250124.enable_zoom: Extra inputs are not permitted"
    without = {k: v for k, v in tool.items() if k != "display_width_px"}
    assert first_violation(request(without), [COMPUTER_BETA]) == \
        "tools.0.computer_20250124.display_width_px: Field required"
    assert first_violation(request({**tool, "display_height_px": "768"}), [COMPUTER_BETA]) == \
        "tools.0.computer_20250124.display_height_px: Input should be a valid integer"
    with pytest.raises(ValueError, match="does not send the computer action 'zoom'"):
        computer("zoom")


def xwd(width: int, height: int, pixel: bytes, bits: int = 32, byte_order: int = 0) -> bytes:
    """An xwd file as Xvfb's screen gives it: a header of 25 fields, no colours, the rows."""
    row = width * bits // 8
    header = struct.pack(">25I", 100 + 8, 7, 2, 24, width, height, 0, byte_order, 32, 0, 32,
                         bits, row, 4, 0xFF0000, 0xFF00, 0xFF, 8, 256, 0, width, height, 0,
                         0, 0)
    return header + b"screen\0\0" + pixel * (width * height)


def test_an_xwd_screenshot_becomes_a_png_image_block_and_garbage_is_refused() -> None:
    media, png = screenshot_media(xwd(4, 3, bytes([0x10, 0x20, 0xF0, 0])), "screenshot")
    assert png.startswith(b"\x89PNG") and "PNG 4x3 px" in media.text
    [block] = media.blocks
    assert block["source"]["media_type"] == "image/png"
    assert Image.open(io.BytesIO(png)).getpixel((0, 0)) == (0xF0, 0x20, 0x10)  # BGRX read
    with pytest.raises(MediaError, match="the screenshot is empty"):
        screenshot_media(b"", "screenshot")
    with pytest.raises(MediaError, match="not a screenshot of a TrueColor screen"):
        screenshot_media(xwd(4, 3, b"\0\0\0\0")[:-8], "screenshot")
    with pytest.raises(MediaError, match="not a screenshot of a TrueColor screen"):
        screenshot_media(xwd(4, 3, b"\0", bits=8), "screenshot")
