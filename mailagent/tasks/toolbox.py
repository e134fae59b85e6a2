"""Toolbox: the tools, the checks and the system prompt one task runs with.

In: a claimed task (`TaskWork`), the policy in force, the sandbox, the MCP connectors. Out: a
`TaskContext` for the agent: the tools (files, memory, schedules, drafts, run_command, the
desktop's computer and start_app, MCP tools), the `check` each call passes first
(policy.calls, with tools stopped after a failed integrity check), the digest an approval
binds, the fence nonce, the system prompt, and the policy's [internet] rule (the API's web
tools) as it stands at each request. Side effects: makes
the task's workspace. Every tool judges again, at each call, by the policy in force then.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailagent.agent.task import TaskContext
from mailagent.config import Settings
from mailagent.content import fence
from mailagent.errors import PolicyError
from mailagent.mail.render import render
from mailagent.policy import (
    CommandsRule,
    Decision,
    DesktopRule,
    Policy,
    PolicyWatcher,
    Scope,
    decide,
    decide_move,
    fsat,
    protected_paths,
)
from mailagent.policy.binding import Binding
from mailagent.policy.calls import bind_operation, check_call
from mailagent.policy.desktop import DESKTOP_TOOLS, app_name, find_app, missing_programs
from mailagent.policy.display import HEIGHT_PX, WIDTH_PX
from mailagent.policy.fsat import Anchor
from mailagent.policy.mail import decide_recipients
from mailagent.policy.sandbox import Limits, Runner, SandboxInfo, View, exposed_missing
from mailagent.policy.skills import allowed_skills, read_skills, skill_folders
from mailagent.store import Store, TaskWork
from mailagent.tasks.draft_approval import DraftApprovals
from mailagent.tasks.schedule_approval import ScheduleApprovals
from mailagent.tasks.workspace import data_key, workspace_dir
from mailagent.tools import anchored
from mailagent.tools.command import CommandTools
from mailagent.tools.connector import ConnectorTools
from mailagent.tools.desktop import DesktopTools
from mailagent.tools.drafts import DraftTools, read_judged
from mailagent.tools.files import FileTools, Media, ToolError
from mailagent.tools.mcp_servers import Connectors
from mailagent.tools.memory import MemoryTools
from mailagent.tools.schedule import ScheduleTools

log = logging.getLogger(__name__)


FILE_TOOLS = ("list_files", "read_file", "write_file", "edit_file", "move_file", "delete_file",
              "search_files", "attach_file")


FENCE_KEY = "fence.key"  # the data directory's secret behind each conversation's fence id


def conversation_nonce(data_dir: Path, conversation_id: int) -> str:
    """A fence id unknown to senders and stable per conversation (a stable prompt prefix)."""
    key = data_key(data_dir, FENCE_KEY)
    return hmac.new(key, str(conversation_id).encode(), hashlib.sha256).hexdigest()[:16]


def command_view(policy: Policy, scope: Scope) -> View:
    """What a command sees: the policy's folders, the workspace, and no protected path."""
    read = tuple(f.path for f in policy.folders if f.access == "read")
    write = tuple(f.path for f in policy.folders if f.access == "write")
    return View(read=read, write=write, hidden=scope.protected, workspace=scope.workspace,
                home=scope.workspace / ".home", skills=skill_folders(policy, scope.skills_dir))


def command_limits(rule: CommandsRule) -> Limits:
    return Limits(timeout_seconds=rule.timeout_seconds, memory_bytes=rule.memory_mb * 1024**2,
                  max_processes=rule.max_processes, max_output_bytes=rule.max_output_bytes,
                  network=rule.network, hosts=rule.hosts)


def keep_in_trash(path: Path, trash: Path) -> str:
    """Move a protected path a command created out of the way; say where it went. Its folder
    is walked from / with no symlink followed (protected paths are resolved): a folder on the
    way that a command swapped for a symlink makes nothing move, never a file from elsewhere."""
    try:
        with fsat.parent(Anchor(Path("/"), path.parts[1:])) as place:
            if place.stat() is None:
                return f"{path} (gone by itself)"
            kept = anchored.move_into(place, trash, f"protected-{secrets.token_hex(4)}-{path.name}")
    except PolicyError as error:
        log.warning("a command made the protected path %s, which cannot be moved: %s", path,
                    error)
        return f"{path} (not moved: {error})"
    log.warning("a command created the protected path %s; moved to %s", path, kept)
    return f"{path} (moved to {kept})"


class Toolbox:
    """What one task runs with: its scope, tools, checks and system prompt. A part of `Worker`."""

    connectors: Connectors | None
    draft_approvals: DraftApprovals
    home: Path
    on_mail: Callable[[], None]
    policies: PolicyWatcher
    runners: dict[int, Runner]
    sandbox: SandboxInfo
    schedule_approvals: ScheduleApprovals | None
    settings: Settings
    store: Store
    tools_stopped: Callable[[], bool]
    watch: Callable[[TaskWork, str], AbstractContextManager[list[str]]]

    def scope(self, work: TaskWork) -> Scope:
        s = self.settings
        workspace = workspace_dir(s.workspaces_dir, work.conversation_name)
        workspace.mkdir(parents=True, exist_ok=True)
        home = self.home
        skills_dir = Path(os.path.realpath(s.skills_dir)) if s.skills_dir else None
        protected = protected_paths(config_path=s.config_path, policies_dir=s.policies_dir,
                                    data_dir=s.data_dir, home=home, skills_dir=skills_dir,
                                    others=s.others_protected)
        return Scope(workspace=workspace.resolve(), home=home, protected=protected,
                     skills_dir=skills_dir)

    def context(self, work: TaskWork) -> TaskContext:
        scope = self.scope(work)
        files = FileTools(
            workspace=scope.workspace,
            judge=lambda action, path: decide(self.policies.current(), action, path, scope),  # type: ignore[arg-type]
            judge_move=lambda src, dst: decide_move(self.policies.current(), src, dst, scope),
            trash=self.settings.data_dir / "trash" / f"task-{work.task_id}",
            on_attach=lambda path: self.store.add_attachment(work.task_id, path),
            max_output_chars=self.settings.agent.max_tool_output_chars,
        )
        memory = MemoryTools(save=lambda note: self.store.remember(work.conversation_id, note),
                             notes=lambda: self.store.memory(work.conversation_id),
                             max_notes=self.settings.agent.max_memory_notes,
                             max_chars=self.settings.agent.max_memory_chars)
        tools: dict[str, Callable[..., str | Media]] = {
            name: getattr(files, name) for name in FILE_TOOLS}
        tools["remember"] = memory.remember
        if self.schedule_approvals is not None:  # who made it decides whether it waits (S5)
            tools["schedule_task"] = ScheduleTools(make=functools.partial(
                self.schedule_approvals.make, work.task_id)).schedule_task
        policy = self.policies.current()
        if policy.mail is not None and policy.mail.may_write_to:  # off by default (E1)
            tools["draft_mail"] = DraftTools(make=functools.partial(
                self.draft_approvals.make, work.task_id)).draft_mail
        if self.offers_commands(policy):
            tools["run_command"] = self.command_tools(work, scope).run_command
        if self.offers_desktop(policy):  # off by default: a [desktop] table turns it on
            desktop = self.desktop_tools(work, scope)
            tools["computer"], tools["start_app"] = desktop.computer, desktop.start_app
        connector = self.connector_tools(work, scope)
        if connector is not None:
            tools.update(connector.tools())

        def approve(binding: Binding | None) -> None:
            files.approved = binding
            if connector is not None:
                connector.approved = binding is not None

        nonce = conversation_nonce(self.settings.data_dir, work.conversation_id)
        return TaskContext(
            work=work, system=self.system_prompt(work, scope, policy, nonce), tools=tools,
            check=lambda name, tool_input: self.judge_call(scope, name, tool_input),
            nonce=nonce,
            set_approved=approve,
            bind=lambda name, tool_input: bind_operation(
                self.judge_call(scope, name, tool_input), name, tool_input),
            show=lambda attachment: files.show_attachment(attachment["path"],
                                                          attachment["content_type"]),
            internet=lambda: None if self.tools_stopped() else self.policies.current().internet,
        )

    def judge_call(self, scope: Scope, name: str, tool_input: dict[str, Any]) -> Decision:
        """A tool call decided by the policy in force now, knowing whether commands are
        sandboxed: the one judgement behind the check, approvals and digests."""
        if self.tools_stopped():
            return Decision("deny", "integrity", "tools are stopped: an integrity check failed; "
                            "the owner was told and decides when they run again", None)
        return check_call(self.policies.current(), scope, name, tool_input,
                          sandboxed=self.sandbox.available)

    def make_draft_approvals(self) -> DraftApprovals:
        """Drafts judged by the policy in force when drafted and again when approved."""

        def judge_recipients(recipients: Sequence[str]) -> Decision:
            if self.tools_stopped():
                return Decision("deny", "integrity", "tools are stopped: an integrity check "
                                "failed, so no mail goes to anyone but the owner", None)
            return decide_recipients(self.policies.current(), recipients)

        def read(task_id: int, path: str, limit: int) -> tuple[Path, bytes]:
            scope = self.scope(self.store.task_work(task_id))
            return read_judged(decide(self.policies.current(), "read", path, scope), limit)

        return DraftApprovals(self.settings, self.store, lambda: self.on_mail(),
                              judge_recipients, read)

    def connector_tools(self, work: TaskWork, scope: Scope) -> ConnectorTools | None:
        """The MCP tools of this task: decided again, by the policy in force, at each call."""
        if self.connectors is None:
            return None
        return ConnectorTools(
            self.connectors,
            judge=lambda name: self.judge_call(scope, name, {}),
            audit=lambda kind, reason, detail: self.store.audit(kind, reason,
                                                                task_id=work.task_id,
                                                                detail=detail))

    def offers_commands(self, policy: Policy) -> bool:
        rule = policy.commands
        return rule is not None and (self.sandbox.available or rule.unsafe_no_sandbox)

    def command_tools(self, work: TaskWork, scope: Scope) -> CommandTools:
        """run_command for one task: policy, view and limits are read again at every call."""
        runner = self.runners.setdefault(
            work.task_id, Runner(self.sandbox if self.sandbox.available else None))
        trash = self.settings.data_dir / "trash" / f"task-{work.task_id}"

        def setup() -> tuple[CommandsRule, View, Limits]:
            policy = self.policies.current()
            if policy.commands is None or not self.offers_commands(policy):
                raise ToolError("run_command is no longer allowed by the policy")
            if policy.commands.hosts and not (self.sandbox.available
                                              and self.sandbox.srt.available):
                raise ToolError(  # never the whole network instead (SECURITY.md E2)
                    f"run_command is refused: {policy.commands.source} lets commands reach only "
                    f"{', '.join(policy.commands.hosts)}, and this computer cannot filter hosts "
                    f"({self.sandbox.srt.detail}); tell the owner (see `mailagent check`)")
            return policy.commands, command_view(policy, scope), command_limits(policy.commands)

        return CommandTools(
            runner=runner, setup=setup,
            judge=lambda action, path: decide(self.policies.current(), action, path, scope),  # type: ignore[arg-type]
            remove_protected=lambda path: keep_in_trash(path, trash),
            watch=lambda command: self.watch(work, command))

    def offers_desktop(self, policy: Policy) -> bool:
        """The virtual display runs only inside bubblewrap, on Linux, with its programs."""
        return (policy.desktop is not None and self.sandbox.kind == "bubblewrap"
                and not missing_programs())

    def desktop_tools(self, work: TaskWork, scope: Scope) -> DesktopTools:
        """computer and start_app for one task: policy, view and limits read at every call;
        the display dies with the task's runner (its end, cancel, tools stopped)."""
        runner = self.runners.setdefault(work.task_id, Runner(self.sandbox))

        def setup() -> tuple[DesktopRule, View, Limits]:
            policy = self.policies.current()
            if policy.desktop is None or not self.offers_desktop(policy):
                raise ToolError("the desktop is no longer allowed by the policy")
            limits = command_limits(policy.commands) if policy.commands else Limits()
            return policy.desktop, command_view(policy, scope), limits

        def find(name: str) -> Path:
            policy = self.policies.current()
            decision = self.judge_call(scope, "start_app", {"name": name})
            if decision.verdict != "allow" or policy.desktop is None:
                raise ToolError(f"denied by {decision.rule}: {decision.reason}")
            app = next(a for a in policy.desktop.apps if app_name(a) == name)
            found = find_app(app)
            if found is None:
                raise ToolError(f"{name!r} is allowed but not installed on this computer; "
                                "tell the owner to install it")
            return found

        trash = self.settings.data_dir / "trash" / f"task-{work.task_id}"
        # Protected paths missing now inside writable folders: an app could make one while it
        # runs, so whatever appears there is moved away after each action and at the end.
        missing = exposed_missing(command_view(self.policies.current(), scope))

        def tidy() -> list[str]:
            moved = []
            for path in (p for p in missing if os.path.lexists(p)):
                try:
                    moved.append(keep_in_trash(path, trash))
                except OSError as exc:  # it stays where it is: say so, and go on
                    log.error("cannot move the protected path %s an app made: %s", path, exc)
                    moved.append(f"{path} (could not be moved: {exc})")
            return moved

        return DesktopTools(runner=runner, sandbox=self.sandbox, setup=setup, find=find,
                            actions_used=lambda: self.store.count_calls(work.task_id,
                                                                        DESKTOP_TOOLS),
                            watch=lambda what: self.watch(work, what), tidy=tidy)

    def system_prompt(self, work: TaskWork, scope: Scope, policy: Policy, nonce: str) -> str:
        """The task's standing orders. Memory notes were written by the model (`remember`), which
        may have been fooled when it wrote them, so they come fenced as data like any content."""
        folders = [{"path": str(f.path), "access": f.access, "delete": f.delete}
                   for f in policy.folders]
        commands = policy.commands if self.offers_commands(policy) else None
        desktop = None if policy.desktop is None or not self.offers_desktop(policy) else {
            "apps": [app_name(a) for a in policy.desktop.apps], "width": WIDTH_PX,
            "height": HEIGHT_PX, "max_actions": policy.desktop.max_actions}
        return render("system.md.j2", today=datetime.now(UTC).date().isoformat(),
                      workspace=str(scope.workspace), folders=folders, commands=commands,
                      desktop=desktop,
                      internet=policy.internet,
                      memory=[fence("memory-note", note, nonce, number=number)
                              for number, note in self.store.memory(work.conversation_id)],
                      skills=self.listed_skills(scope, policy))

    def listed_skills(self, scope: Scope, policy: Policy) -> list[dict[str, str]]:
        """The skills the model is told of: only from the configured folder (never a workspace),
        only those a policy allows, name, description and path alone (the model reads the rest
        with read_file). A folder that cannot be read lists none, and the task goes on."""
        if scope.skills_dir is None or not policy.skills:
            return []
        try:
            catalogue = read_skills(scope.skills_dir)
        except PolicyError as error:
            log.warning("skills: %s", error)
            return []
        for problem in catalogue.problems:
            log.warning("skill %s is not listed: %s", problem.folder, problem.reason)
        return [{"name": skill.name, "description": skill.description, "path": str(skill.path)}
                for skill in allowed_skills(policy, catalogue)]
