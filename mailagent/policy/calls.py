"""Calls under policy: which rule judges each tool call, and what an approval is bound to.

In: the `Policy` in force, the task's `Scope`, a tool's name and its input. Out: the `Decision`
for the call before it runs (file tools by their path, `move_file` by both ends, `run_command`
by its command and folder, the desktop tools by the [desktop] rule, `draft_mail` by its
recipients and attachments, MCP tools by their server's rule; an unknown tool is denied),
and the digest and words of an operation the owner is asked to approve. Side effects: reads
the files an approval is bound to (their identity, size and hash), through the decision's
anchors, never by name. It never raises: a bad path is a denial.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mailagent.errors import PolicyError
from mailagent.policy.binding import Binding, FileState, state_at, state_json
from mailagent.policy.decide import decide, decide_command, decide_move
from mailagent.policy.desktop import DESKTOP_TOOLS, decide_desktop
from mailagent.policy.fsat import Anchor
from mailagent.policy.mail import decide_draft
from mailagent.policy.mcp import PREFIX as MCP_PREFIX
from mailagent.policy.mcp import decide_mcp, split_name
from mailagent.policy.rules import Decision, Policy, Scope


def bind_operation(decision: Decision, name: str, tool_input: dict[str, Any]) -> Binding:
    """What an approval is bound to: the operation, its input, the resolved paths, and the
    identity, size and content hash of each file as it is now, read through the rule's anchor
    (for a move, the source's and the destination's: a file changed or swapped after the
    question does not move on the old answer, SECURITY.md A1)."""
    files = {str(decision.path): _state(decision.anchor)}
    state: dict[str, Any] = {"name": name, "input": tool_input, "path": str(decision.path),
                             "file": state_json(files[str(decision.path)])}
    if decision.source is not None:
        files[str(decision.source)] = _state(decision.source_anchor)
        state |= {"source": str(decision.source),
                  "source_file": state_json(files[str(decision.source)])}
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
    return Binding(digest, files if decision.path is not None else {})


def operation_digest(decision: Decision, name: str, tool_input: dict[str, Any]) -> str:
    return bind_operation(decision, name, tool_input).digest


def _state(anchor: Anchor | None) -> FileState | str | None:
    return None if anchor is None else state_at(anchor)


def describe_operation(name: str, tool_input: dict[str, Any], decision: Decision) -> str:
    if (parts := split_name(name)) is not None:  # the exact arguments: what the digest binds
        return (f"call the tool {parts[1]} of the MCP server {parts[0]} with "
                f"{json.dumps(tool_input, ensure_ascii=False, sort_keys=True)[:2000]}")
    where = str(decision.path) if decision.path else str(tool_input.get("path", ""))
    if name == "delete_file":
        return f"delete {where}"
    if name == "move_file":
        return f"move {tool_input.get('source')} to {where}"
    if name in ("write_file", "edit_file"):
        return f"replace the contents of {where}"
    return f"{name} on {where}"


# Which policy action judges each tool that takes one path.
PATH_ACTIONS = {"list_files": "list", "search_files": "list", "read_file": "read",
                "attach_file": "read", "write_file": "write", "edit_file": "write",
                "delete_file": "delete"}


def check_call(policy: Policy, scope: Scope, name: str, tool_input: dict[str, Any],
               sandboxed: bool) -> Decision:
    """The policy decision for one tool call, before it runs (never raises)."""
    try:
        if name == "remember":
            return Decision("allow", "memory", "notes are always allowed", None)
        if name.startswith(MCP_PREFIX):
            mcp = decide_mcp(policy.mcp, name)
            return Decision(mcp.verdict, mcp.rule, mcp.reason, None)
        if name == "run_command":
            cwd = tool_input.get("cwd")
            if cwd and (where := decide(policy, "list", str(cwd), scope)).verdict != "allow":
                return where
            return decide_command(policy, str(tool_input.get("command", "")), sandboxed=sandboxed)
        if name in DESKTOP_TOOLS:  # only on the task's virtual display, in the sandbox
            return decide_desktop(policy, scope, name, tool_input, sandboxed)
        if name == "schedule_task":
            return Decision("allow", "schedules", "a schedule of this conversation, bounded by "
                            "the [schedules] limits", None)
        if name == "draft_mail":  # sends nothing: the owner approves each mail (E1)
            return decide_draft(policy, scope, tool_input)
        if name == "move_file":
            return decide_move(policy, str(tool_input.get("source", "")),
                               str(tool_input.get("destination", "")), scope)
        if name in PATH_ACTIONS:
            path = tool_input.get("path") or "."
            return decide(policy, PATH_ACTIONS[name], str(path), scope)  # type: ignore[arg-type]
        return Decision("deny", "default: deny", f"no tool named {name!r} is offered", None)
    except PolicyError as exc:
        return Decision("deny", "path", str(exc), None)
