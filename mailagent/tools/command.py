"""The command tool: `run_command`, one program from the policy's list, inside the sandbox.

In: the model's command line and optional working folder; the policy's program list and limits;
a `judge` for the working folder; a `Runner` (mailagent.policy.sandbox) that runs inside a view the
service built from the policy. Out: text for the model (exit code, output, files changed), or
ToolError. Side effects: what the program does inside its view.
It must never start a program that is not on the list, never use a shell it was not asked for,
never let a protected path that appears during the run stay, and never end a run without the
integrity check (`watch`) that the service puts around it.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mailagent.errors import PolicyError
from mailagent.policy import fsat
from mailagent.policy.sandbox import (
    CommandResult,
    Limits,
    NoHostFilterError,
    Runner,
    View,
    exposed_missing,
    program_path,
)
from mailagent.tools.files import Anchored, ToolError

MAX_CHANGED_SHOWN = 50
MAX_SNAPSHOT_FILES = 20_000


class Allowing(Protocol):
    """The policy's [commands] rule, as the policy engine makes it (never imported here)."""

    @property
    def allow(self) -> tuple[str, ...]: ...


@dataclass
class CommandTools:
    runner: Runner
    setup: Callable[[], tuple[Allowing, View, Limits]]  # read again at every call
    judge: Callable[[str, str], Anchored]
    remove_protected: Callable[[Path], str]  # moves a protected path that appeared to the trash
    # The integrity check around each run, however it ends: what it found, once it has ended.
    watch: Callable[[str], AbstractContextManager[list[str]]] = lambda _command: nullcontext([])

    def run_command(self, command: str, cwd: str | None = None) -> str:
        """Run one program in a sandbox and return its exit code and output.

        The program sees only the workspace and the folders the policy opens (read folders
        read-only), has no network unless the policy allows it (all of it, or only the hosts it
        lists, reached through the proxy in HTTP_PROXY/HTTPS_PROXY), no secrets in its environment,
        and is killed with everything it started at the time limit. The command line is split
        like a shell's, but no shell runs unless you start one (e.g. `sh -c "a | b"`) and it is
        allowed. Only the programs the policy lists can be started, by name.

        Args:
            command: the command line, e.g. `python3 make_chart.py data.csv`.
            cwd: the folder to run in; default the workspace.
        """
        rule, view, limits = self.setup()
        argv = self.parse(command, rule.allow)
        folder = self.folder(cwd, view.workspace)
        missing = exposed_missing(view)
        writable = (*view.write, view.workspace)
        before = _snapshot(writable, view.home)
        removed: list[str] = []
        with self.watch(command) as problems:
            try:
                result = self.runner.run(argv, folder, view, limits)
            except NoHostFilterError as error:
                raise ToolError(f"run_command is refused: {error}") from None
            finally:  # protected paths it made are taken away first: they are not a change
                removed = [self.remove_protected(p) for p in missing if os.path.lexists(p)]
        if problems:
            raise ToolError("tools are stopped: after this command, " + "; ".join(problems))
        changed = _changes(before, _snapshot(writable, view.home))
        return report(command, result, limits, changed, removed)

    @staticmethod
    def parse(command: str, allow: tuple[str, ...]) -> list[str]:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise ToolError(f"cannot split the command line: {exc}") from exc
        if not argv:
            raise ToolError("the command is empty")
        program = argv[0]
        if "/" in program or program not in allow:
            raise ToolError(
                f"denied by policy [commands]: {program!r} is not an allowed program; allowed: "
                f"{', '.join(allow) or 'none'} (give the name alone, not a path)")
        found = shutil.which(program, path=os.pathsep.join(program_path()))
        if found is None:
            raise ToolError(f"{program!r} is allowed but not installed on this computer; use "
                            "another allowed program, or tell the owner to install it")
        return [found, *argv[1:]]

    def folder(self, cwd: str | None, workspace: Path) -> Path:
        if not cwd:
            return workspace
        decision = self.judge("list", cwd)
        if decision.verdict != "allow" or decision.anchor is None:
            raise ToolError(f"denied by {decision.rule}: {decision.reason}")
        # The folder is checked through descriptors from its rule's root; the sandbox then
        # enters it by name inside a view that holds only what the policy opens.
        try:
            with fsat.folder(decision.anchor):
                pass
        except PolicyError as error:
            raise ToolError(f"{cwd}: {error}") from None
        return decision.anchor.path


def report(command: str, result: CommandResult, limits: Limits, changed: list[str],
           removed: list[str]) -> str:
    """What the model reads of one run; a failed or killed run is a ToolError."""
    lines = [f"$ {command}"]
    if result.cancelled:
        raise ToolError("the task was cancelled; the command and everything it started "
                        "were killed")
    if result.timed_out:
        lines.append(f"killed after the time limit of {limits.timeout_seconds:g} s, "
                     "with everything it started")
    else:
        lines.append(f"exit code {result.exit_code} after {result.seconds:.1f} s")
    if result.output:
        lines += ["output:", result.output.rstrip()]
    if result.output_cut:
        lines.append(f"[output cut at {limits.max_output_bytes} bytes]")
    if changed:
        lines += ["files changed:", *changed[:MAX_CHANGED_SHOWN]]
    if removed:
        lines += ["removed (protected locations, never writable):", *removed]
    text = "\n".join(lines)
    if result.timed_out or result.exit_code != 0:
        raise ToolError(text)
    return text


def _snapshot(roots: tuple[Path, ...], skip: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file under the writable roots (bounded), to report changes."""
    seen: dict[str, tuple[int, int]] = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            if Path(folder) == skip or skip in Path(folder).parents:
                dirs[:] = []
                continue
            for name in files:
                path = os.path.join(folder, name)
                try:
                    info = os.lstat(path)
                except OSError:
                    continue
                seen[path] = (info.st_size, info.st_mtime_ns)
                if len(seen) >= MAX_SNAPSHOT_FILES:
                    return seen
    return seen


def _changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    created = [f"created {p}" for p in sorted(after.keys() - before.keys())]
    modified = [f"modified {p}" for p in sorted(after.keys() & before.keys())
                if after[p] != before[p]]
    deleted = [f"deleted {p}" for p in sorted(before.keys() - after.keys())]
    return created + modified + deleted
