"""The desktop tools: the Messages API's computer-use tool and `start_app`, on a virtual display.

In: the model's actions in the computer-use tool's documented shape (screenshot, clicks, typing,
keys, scrolling; https://docs.claude.com/en/docs/agents-and-tools/tool-use/computer-use-tool)
and the name of an application to start; the policy's [desktop] rule, the task's view and
limits (read again at every call); the task's actions so far. Out: a screenshot as an image
block, or a line saying what was done; ToolError for anything refused. Side effects: starts
the task's display (mailagent.policy.display) at the first call; runs xdotool and xwd on it;
starts the listed applications there; keeps the latest screenshot in the workspace.
It must never act anywhere but the task's own display, never start an application by a path
the model wrote (only the executables the owner's list names), never pass the model's text
to a shell, and never take more actions than `max_actions`.
"""

from __future__ import annotations

import re
import shlex
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mailagent.policy.display import DISPLAY_NUMBER, HEIGHT_PX, WIDTH_PX, Display, DisplayError
from mailagent.policy.sandbox import Limits, Runner, SandboxInfo, View
from mailagent.tools.files import ToolError
from mailagent.tools.media import Media, screenshot_media

T = TypeVar("T")

COMPUTER_TYPE = "computer_20250124"
COMPUTER_BETA = "computer-use-2025-01-24"
SCREENSHOT_NAME = "desktop-screenshot.png"  # the latest one, in the workspace: attach_file
MAX_TEXT_CHARS = 5_000
MAX_WAIT_SECONDS = 10.0
MAX_SCROLL = 20
MAX_ARGS = 10
TYPE_DELAY_MS = "8"
KEYS = re.compile(r"^[A-Za-z0-9_+]{1,40}( [A-Za-z0-9_+]{1,40}){0,9}$")  # xdotool key names
BUTTONS = {"left_click": ["1"], "right_click": ["3"], "middle_click": ["2"],
           "double_click": ["--repeat", "2", "1"], "triple_click": ["--repeat", "3", "1"]}
WHEEL = {"up": "4", "down": "5", "left": "6", "right": "7"}


def computer_definition(width_px: int, height_px: int, number: int) -> dict[str, Any]:
    """The computer-use tool as the API takes it (BetaToolComputerUse20250124Param): its own
    type and name, the display's size; it needs the beta header COMPUTER_BETA."""
    return {"type": COMPUTER_TYPE, "name": "computer", "display_width_px": width_px,
            "display_height_px": height_px, "display_number": number}


class Desktop(Protocol):
    """The [desktop] rule, as the policy engine makes it (never imported here)."""

    @property
    def max_actions(self) -> int: ...

    @property
    def source(self) -> str: ...


@dataclass
class DesktopTools:
    runner: Runner  # the task's: killing it (cancel, the task's end) kills the display
    sandbox: SandboxInfo
    # The rule, the view, the limits and the app's executable by name, read again per call
    # (ToolError when the desktop is no longer allowed).
    setup: Callable[[], tuple[Desktop, View, Limits]]
    find: Callable[[str], Path]  # a listed app's executable (ToolError if not listed or found)
    actions_used: Callable[[], int]  # this task's desktop calls, this one included
    # The integrity check around each action, as around a command (what it found, once ended).
    watch: Callable[[str], AbstractContextManager[list[str]]] = lambda _what: nullcontext([])
    # Moves away the protected paths an app made in a writable folder; says what it moved.
    tidy: Callable[[], list[str]] = lambda: []
    display: Display | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def api_definitions(self) -> dict[str, dict[str, Any]]:
        """The tools whose definition the API owns, by name (agent/api.py sends them as
        they are)."""
        return {"computer": computer_definition(WIDTH_PX, HEIGHT_PX, DISPLAY_NUMBER)}

    def computer(self, action: str, coordinate: list[int] | None = None,
                 text: str | None = None, scroll_direction: str | None = None,
                 scroll_amount: int | None = None, duration: float | None = None,
                 start_coordinate: list[int] | None = None) -> str | Media:
        """The computer-use tool of the Messages API, on the task's virtual display."""
        return self.guarded(f"computer {action}", lambda: self.act(
            action, coordinate, text, scroll_direction, scroll_amount, duration,
            start_coordinate))

    def act(self, action: str, coordinate: list[int] | None, text: str | None,
            scroll_direction: str | None, scroll_amount: int | None, duration: float | None,
            start_coordinate: list[int] | None) -> str | Media:
        display = self.ready()
        if action == "screenshot":
            return self.screenshot(display)
        if action == "wait":
            time.sleep(min(max(float(duration or 1), 0), MAX_WAIT_SECONDS))
            return "waited"
        if action == "cursor_position":
            out = self.xdotool(display, ["getmouselocation", "--shell"])
            found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
            return f"X={found.get('X')},Y={found.get('Y')}"
        self.xdotool(display, self.arguments(display, action, coordinate, text,
                                             scroll_direction, scroll_amount, duration,
                                             start_coordinate))
        return f"{action} done; take a screenshot to see the result"

    def start_app(self, name: str, args: list[str] | None = None) -> str:
        """Start a desktop application on your virtual display (see it with the computer
        tool's screenshot action). Only the applications the policy lists can be started, by
        name; they see only the folders the policy opens, have no network, and are closed
        when the task ends.

        Args:
            name: the application's name as listed, e.g. `mousepad`.
            args: its arguments, e.g. a file to open: `["/home/me/notes.txt"]`. No shell.
        """
        program = self.find(name)
        argv = [str(program), *[str(a) for a in (args or [])][:MAX_ARGS]]
        return self.guarded(f"start_app {name}", lambda: self.start(name, argv))

    def start(self, name: str, argv: list[str]) -> str:
        display = self.ready()
        try:
            code = display.spawn(argv, display.view.workspace)
        except DisplayError as error:
            raise ToolError(f"{name} did not start: {error}") from None
        if code:
            raise ToolError(f"{name} ended at once with exit code {code}")
        ended = "" if code is None else " (it ended at once, with exit code 0)"
        return f"started {shlex.join([name, *argv[1:]])} on the virtual display{ended}"

    def guarded(self, what: str, action: Callable[[], T]) -> T:
        """One action inside the integrity check; protected paths that appeared are moved
        away after it, however it ended, and the model is told."""
        outcome: list[T] = []
        failure = ""
        with self.watch(what) as problems:
            try:
                outcome.append(action())
            except ToolError as error:
                failure = str(error)
            finally:
                removed = self.tidy()
        if problems:
            raise ToolError("tools are stopped: after this desktop action, " + "; ".join(problems))
        if removed:
            failure += ("\n" if failure else "") + \
                "removed (protected locations, never writable): " + ", ".join(removed)
        if failure:
            raise ToolError(failure)
        return outcome[0]

    def ready(self) -> Display:
        """The task's display, started at the first call; the budget and the rule checked."""
        rule, view, limits = self.setup()
        used = self.actions_used()
        if used > rule.max_actions:
            raise ToolError(f"budget: the task took {used - 1} desktop actions, the most "
                            f"{rule.source} allows (max_actions = {rule.max_actions})")
        with self._lock:
            if self.display is None or self.display.pid is None:
                display = Display(self.sandbox, view, limits)
                self.runner.on_kill.append(display.kill)  # a restarted display: one more
                if self.tidy not in self.runner.on_kill:
                    self.runner.on_kill.append(self.tidy)
                if self.runner.cancelled:  # killed already, or its kill sees this display
                    display.kill()
                try:
                    display.start()
                except DisplayError as error:
                    raise ToolError(str(error)) from None
                self.display = display
            return self.display

    def screenshot(self, display: Display) -> Media:
        code, out, err = self.run(display, ["xwd", "-root", "-silent"])
        if code != 0:
            raise ToolError(f"the screenshot failed: {err.strip()[:300]}")
        media, png = screenshot_media(out, "screenshot")
        (display.view.workspace / SCREENSHOT_NAME).write_bytes(png)
        return Media(f"{media.text}; the latest is kept as {SCREENSHOT_NAME} in the workspace "
                     "(attach_file sends it)", media.blocks)

    def xdotool(self, display: Display, args: list[str]) -> str:
        code, out, err = self.run(display, ["xdotool", *args])
        if code != 0:
            raise ToolError(f"xdotool {args[0]} failed: {err.strip()[:300]}")
        return out.decode(errors="replace")

    @staticmethod
    def run(display: Display, argv: list[str]) -> tuple[int, bytes, str]:
        try:
            return display.run(argv)
        except DisplayError as error:
            raise ToolError(f"the desktop stopped: {error}") from None

    def arguments(self, display: Display, action: str, coordinate: list[int] | None,
                  text: str | None, direction: str | None, amount: int | None,
                  duration: float | None, start: list[int] | None) -> list[str]:
        """xdotool's arguments for one action; ToolError for a bad or unknown one."""
        if action in BUTTONS or action in ("mouse_move", "scroll"):
            move = self.point(display, coordinate, action, required=action == "mouse_move")
            if action in BUTTONS:
                return [*move, "click", *BUTTONS[action]]
            if action == "mouse_move":
                return move
            if direction not in WHEEL:
                raise ToolError("scroll needs scroll_direction: up, down, left or right")
            clicks = min(max(int(amount or 3), 1), MAX_SCROLL)
            return [*move, "click", "--repeat", str(clicks), WHEEL[direction]]
        if action == "left_click_drag":
            return [*self.point(display, start, action, required=True), "mousedown", "1",
                    *self.point(display, coordinate, action, required=True), "mouseup", "1"]
        if action in ("left_mouse_down", "left_mouse_up"):
            return ["mousedown" if action.endswith("down") else "mouseup", "1"]
        if action == "type":
            if not text or len(text) > MAX_TEXT_CHARS:
                raise ToolError(f"type needs text of 1 to {MAX_TEXT_CHARS} characters")
            return ["type", "--delay", TYPE_DELAY_MS, "--", text]
        if action in ("key", "hold_key"):
            if not text or not KEYS.match(text):
                raise ToolError("key needs key names in text, e.g. 'ctrl+s' or 'Return'")
            if action == "key":
                return ["key", "--", *text.split()]
            seconds = str(min(max(float(duration or 1), 0), MAX_WAIT_SECONDS))
            return ["keydown", text, "sleep", seconds, "keyup", text]
        raise ToolError(f"unknown action {action!r}")

    @staticmethod
    def point(display: Display, coordinate: list[int] | None, action: str, *,
              required: bool) -> list[str]:
        """`mousemove x y` to a point on the screen, or nothing when none is given."""
        if coordinate is None and not required:
            return []
        if not (isinstance(coordinate, list) and len(coordinate) == 2
                and all(isinstance(c, int) and not isinstance(c, bool) for c in coordinate)
                and 0 <= coordinate[0] < display.width_px
                and 0 <= coordinate[1] < display.height_px):
            raise ToolError(f"{action} needs coordinate [x, y] on the {display.width_px}x"
                            f"{display.height_px} screen")
        return ["mousemove", str(coordinate[0]), str(coordinate[1])]
