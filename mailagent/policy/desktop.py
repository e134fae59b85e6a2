"""The desktop rule: whether the computer-use tool is offered, and which applications it starts.

In: the `[desktop]` table of a policy file (TOML written by the owner); a tool call of the
desktop tools (`computer`, `start_app`). Out: a `DesktopRule` (the apps, the actions per
task), or a PolicyError naming the key and what to write instead; the `Decision` for a call;
the words `policy explain desktop` prints; where an app is found. Side effects: looks apps up on
the sandbox's PATH. It must never offer the tool without a `[desktop]` table or without the
sandbox (the display runs only inside it), and never start an application the table does not
list, nor one the agent could rewrite (inside a writable folder or the workspace).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from mailagent.errors import unknown_key
from mailagent.policy.internet import Fail, count
from mailagent.policy.rules import DESKTOP_KEYS, Decision, DesktopRule, Policy, Scope
from mailagent.policy.sandbox import program_path

APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
MAX_ACTIONS_PER_TASK = 500
# What the display needs inside the sandbox: the X server, the input tool, the screen grabber
# (Debian: xvfb, xdotool, x11-apps).
DISPLAY_PROGRAMS = ("Xvfb", "xdotool", "xwd")
DESKTOP_TOOLS = ("computer", "start_app")


def parse_desktop(table: dict[str, Any], fail: Fail, source: str) -> DesktopRule:
    """The rule of one `[desktop]` table; `fail(message, key)` makes the error to raise."""
    for key in table:
        if key not in DESKTOP_KEYS:
            raise fail(unknown_key(key, DESKTOP_KEYS, "[desktop]"), key)
    apps = table.get("apps", [])
    if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps) or not apps:
        raise fail('apps must list the applications the agent may start, e.g. apps = '
                   '["mousepad", "libreoffice"] (names on PATH, or absolute paths)', "apps")
    for app in apps:
        if not (APP_NAME.match(app) or (app.startswith("/") and APP_NAME.match(Path(app).name)
                                        and ".." not in Path(app).parts)):
            raise fail(f"apps: {app[:80]!r} is neither a program name (letters, digits, . _ + "
                       "-) nor an absolute path to one", "apps")
    names = [app_name(app) for app in apps]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise fail(f"apps: two entries are called {twice[0]!r}; the agent starts an app by "
                   "its name, so keep one", "apps")
    actions = count(table, "max_actions", 50, fail, MAX_ACTIONS_PER_TASK)
    return DesktopRule(tuple(apps), actions, source)


def app_name(app: str) -> str:
    """The name the agent starts an app by: the entry itself, or an absolute path's last part."""
    return Path(app).name if app.startswith("/") else app


def find_app(app: str) -> Path | None:
    """Where an app of the list is: on the sandbox's PATH, or at its absolute path, if it is an
    executable file there."""
    if app.startswith("/"):
        path = Path(app)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    found = shutil.which(app, path=os.pathsep.join(program_path()))
    return Path(found) if found else None


def missing_programs() -> list[str]:
    """What the display needs and this computer lacks; on anything but Linux, everything."""
    if sys.platform != "linux":
        return list(DISPLAY_PROGRAMS)
    return [p for p in DISPLAY_PROGRAMS if find_app(p) is None]


def decide_desktop(policy: Policy, scope: Scope, name: str, tool_input: dict[str, Any],
                   sandboxed: bool) -> Decision:
    """A call of `computer` or `start_app` under the policy in force (never raises)."""
    rule = policy.desktop
    if rule is None:
        return Decision("deny", "default: deny", "no [desktop] table in the policies, so no "
                        "desktop tool is offered", None)
    if not sandboxed:
        return Decision("deny", rule.source, "the virtual display runs only inside the "
                        "command sandbox, and there is none here", None)
    if name == "start_app":
        return decide_app(rule, policy, scope, str(tool_input.get("name", "")))
    return Decision("allow", rule.source, f"an action on the task's virtual display, at most "
                    f"{rule.max_actions} per task", None)


def decide_app(rule: DesktopRule, policy: Policy, scope: Scope, name: str) -> Decision:
    listed = {app_name(app): app for app in rule.apps}
    if name not in listed:
        return Decision("deny", rule.source, f"{name[:80]!r} is not an application the policy "
                        f"lists; allowed: {', '.join(sorted(listed))}", None)
    app = listed[name]
    if app.startswith("/"):
        writable = [f.path for f in policy.folders if f.access == "write"] + [scope.workspace]
        real = Path(os.path.realpath(app))
        if any(root == real or root in real.parents for root in writable):
            return Decision("deny", rule.source, f"{app} lies in a folder the agent may write, "
                            "so it could have been rewritten; the owner must keep it elsewhere",
                            None)
    return Decision("allow", rule.source, f"{name} is listed in [desktop] apps", None)


def explain_desktop(policy: Policy, app: str) -> tuple[str, str]:
    """The verdict for starting `app` on the virtual display under `policy`, and the words why."""
    rule = policy.desktop
    if rule is None:
        return "deny", "default: no [desktop] table, so no desktop tool is offered"
    listed = {app_name(a): a for a in rule.apps}
    if app not in listed:
        return "deny", (f"{rule.source}: {app!r} is not in [desktop] apps "
                        f"({', '.join(sorted(listed))})")
    found = find_app(listed[app])
    where = f"found at {found}" if found else "NOT found on this computer"
    return "allow", (f"{rule.source}: {app} may be started on a virtual display inside the "
                     f"command sandbox ({where}), at most {rule.max_actions} actions per task; "
                     "Linux only, never on your own screen")
