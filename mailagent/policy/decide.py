"""Deciding: allow / ask / deny for one file operation or command, and the rule why.

In: a `Policy`, a `Scope` and one operation the model asked for: an action and a path string (or
a command line, or a move). Out: a `Decision` naming the verdict, the rule that decided, a reason
the model can act on, the fully resolved path that was judged and its `Anchor`. Side effects:
looks judged paths up through descriptors walked from their rule's root (mailagent.policy.fsat:
a judged file is never opened, so a FIFO cannot block a check).
It must never judge a path before every symlink in it is followed (F1), compare paths as
strings (F2), or let a rule open a protected path (F3). A decision holds only for the moment it
is made: tools act on `Decision.anchor` and ask again right before they act. Deciding never
raises anything but PolicyError.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailagent.errors import PolicyError
from mailagent.policy.fsat import Anchor, Identity, Lookup, lookup
from mailagent.policy.paths import (
    HOME_PROTECTED,
    SYSTEM_ROOTS,
    expand_path,
    fold_case,
    quoted_path,
    resolve,
    shown_path,
)
from mailagent.policy.rules import (
    DEFAULT_RULE,
    WORKSPACE_RULE,
    Action,
    Decision,
    FolderRule,
    Policy,
    Scope,
    Verdict,
)

_VERBS = {"list": "list", "read": "read", "write": "write to", "delete": "delete"}


_STRICTNESS = {"allow": 0, "ask": 1, "deny": 2}


@dataclass(frozen=True)
class _Case:
    """One path being judged for one action, with what the reasons need to name."""

    subject: str  # "write to ~/x.txt": the action and the path as given
    resolved: Path
    home: Path
    rule: FolderRule
    label: str
    anchor: Anchor  # `resolved` as the rule's root and the names below it
    found: Lookup  # what is there now, seen through descriptors from the root

    def decide(self, verdict: Verdict, why: str) -> Decision:
        outcome = {"allow": "is allowed", "ask": "needs the owner's approval", "deny": "is denied"}
        reason = f"{self.subject} {outcome[verdict]}: {why}"
        return Decision(verdict, self.label, reason, self.resolved, anchor=self.anchor)

    @property
    def root(self) -> str:
        if self.rule.source == WORKSPACE_RULE:
            return "the workspace"
        return shown_path(self.rule.path, self.home)


def decide(policy: Policy, action: Action, path: str, scope: Scope) -> Decision:
    """allow / ask / deny for one file action on the path the model named."""
    return _decide(policy, action, path, scope, None)


def _decide(policy: Policy, action: str, path: str, scope: Scope, subject: str | None) -> Decision:
    if action not in _VERBS:
        reason = f"{quoted_path(str(action))!r} is not list, read, write or delete"
        return Decision("deny", "unknown action", reason, None)
    subject = subject or f"{_VERBS[action]} {quoted_path(str(path))}"
    try:
        return _judge(policy, action, path, scope, subject)
    except (PolicyError, OSError, ValueError) as error:  # whatever a concurrent change makes
        why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        return Decision("deny", "invalid path", f"{subject} is denied: {why}", None)


def _judge(policy: Policy, action: str, path: str, scope: Scope, subject: str) -> Decision:
    resolved = resolve(path, scope)
    home, workspace = Path(os.path.realpath(scope.home)), Path(os.path.realpath(scope.workspace))
    skill = _skill_rule(policy, scope, resolved) if action in ("list", "read") else None
    guard = _protection(resolved, scope.protected, home, workspace,
                        skill.path if skill else None, scope.skills_dir)
    if guard is not None:
        return _protected(subject, guard, resolved)
    rule = skill or _governing_rule(policy, resolved, workspace)
    if rule is None:
        return _uncovered(policy, path, subject, resolved, (home, workspace))
    anchor = Anchor(rule.path, resolved.relative_to(rule.path).parts,
                    frozenset(scope.identities) - _as_entry(scope, skill))
    case = _Case(subject, resolved, home, rule, _describe(rule, home), anchor, lookup(anchor))
    if case.found.protected is not None:
        where = scope.identities.get(case.found.protected)
        label = _protection(where, scope.protected, home, workspace) if where else None
        return _protected(subject, f"{label or 'protected'}, known by identity (a hard link "
                          "to it, or it was moved or renamed)", resolved)
    if case.found.changed is not None:
        return case.decide("deny", case.found.changed)  # a folder became a symlink, say
    try:
        return _CHECKS[action](case, path, scope)
    except OSError as error:  # EACCES, ENAMETOOLONG...: what cannot be examined is not allowed
        return case.decide("deny", f"it cannot be examined ({error.strerror}); try another path")


def _protected(subject: str, guard: str, resolved: Path) -> Decision:
    return Decision(
        "deny",
        guard,
        f"{subject} is denied: it is {guard}; the agent never reads or changes "
        "mailagent's own files, credentials, shell start-up files, .git or system files; "
        "work in the workspace",
        resolved,
    )


def _skill_rule(policy: Policy, scope: Scope, resolved: Path) -> FolderRule | None:
    """A read-only rule for the folder of a skill the policy allows, if `resolved` is in it. A
    skill folder that is a symlink never matches: `resolved` is where it leads."""
    if scope.skills_dir is None:
        return None
    for grant in policy.skills:
        folder = scope.skills_dir / grant.name
        if resolved.is_relative_to(folder):
            return FolderRule(folder, "read", source=f"{grant.source} skill {grant.name}")
    return None


def _as_entry(scope: Scope, skill: FolderRule | None) -> set[Identity]:
    """An allowed skill's folder is known by identity as an entry of the protected skills
    folder; reading below it must not count as reaching a protected path (anything else known
    by identity inside it still does)."""
    if skill is None:
        return set()
    try:
        info = os.lstat(skill.path)
    except OSError:
        return set()
    key = (info.st_dev, info.st_ino)
    return {key} if scope.identities.get(key) == skill.path else set()


def _protection(
    resolved: Path, protected: tuple[Path, ...], home: Path, workspace: Path,
    skill: Path | None = None, skills_dir: Path | None = None,
) -> str | None:
    """The name of what protects `resolved`, or None. `skill` is the folder of an allowed skill
    being read: the protected folders around it (the skills folder, the config folder it sits
    in by default) let the reading through; none inside it does."""
    if any(resolved.is_relative_to(root) for root in SYSTEM_ROOTS):
        return "protected: system files (/proc, /sys, /dev)"
    if any(part.casefold() == ".git" for part in resolved.parts):
        return "protected: .git"
    folded, in_workspace = fold_case(resolved), resolved.is_relative_to(workspace)
    # The data dir is protected, yet the task's own workspace inside it must stay usable.
    matches = [
        root
        for root in protected
        if folded.is_relative_to(fold_case(root))
        and not (in_workspace and fold_case(workspace).is_relative_to(fold_case(root)))
        and not (skill is not None and fold_case(skill) != fold_case(root)
                 and fold_case(skill).is_relative_to(fold_case(root)))
    ]
    if not matches:
        return None
    closest = max(matches, key=lambda root: len(root.parts))
    if skills_dir is not None and fold_case(closest) == fold_case(skills_dir):
        return (f"protected: the skills folder {shown_path(skills_dir, home)} (read-only; only "
                "the skills a policy file allows can be read)")
    for name, label in HOME_PROTECTED:
        if fold_case(closest) == fold_case(home / name):
            return f"protected: {label} (~/{name})"
    return f"protected: {shown_path(closest, home)}"


def _governing_rule(policy: Policy, resolved: Path, workspace: Path) -> FolderRule | None:
    """The most specific rule whose folder holds `resolved`; the workspace wins a tie."""
    rules = [rule for rule in policy.folders if resolved.is_relative_to(rule.path)]
    if resolved.is_relative_to(workspace):
        rules.append(FolderRule(workspace, "write", "allow", "allow", WORKSPACE_RULE))
    if not rules:
        return None
    return max(rules, key=lambda rule: (len(rule.path.parts), rule.source == WORKSPACE_RULE))


def _describe(rule: FolderRule, home: Path) -> str:
    if rule.source == WORKSPACE_RULE:
        return WORKSPACE_RULE
    return f"{rule.source} {shown_path(rule.path, home)} ({rule.access})"


def _uncovered(
    policy: Policy, raw: str, subject: str, resolved: Path, real: tuple[Path, Path]
) -> Decision:
    # Say so when a symlink is what led outside: the model can then use the real location.
    home, workspace = real
    lexical = Path(os.path.normpath(expand_path(raw, home, workspace)))
    inside = _governing_rule(policy, lexical, workspace)
    if inside is not None and lexical != resolved:
        why = (
            f"it leads through a symlink out of {_describe(inside, home)} to a place no "
            "folder rule covers; use the file's real location or a copy in the workspace"
        )
    else:
        why = (
            "no folder rule covers it; work in the workspace, or ask the owner to add a "
            "[[folders]] rule for it"
        )
    return Decision("deny", DEFAULT_RULE, f"{subject} is denied: {why}", resolved)


def _odd_file(info: os.stat_result) -> str | None:
    """Why an existing path may not be written, moved or deleted, or None for a plain file."""
    if stat.S_ISDIR(info.st_mode):
        return "it is a folder; work on the files in it one by one"
    if stat.S_ISLNK(info.st_mode):  # resolved paths hold no symlinks, unless one just appeared
        return "it changed while being checked; try again"
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file (a FIFO, socket or device)"
    if info.st_nlink > 1:
        return (
            f"it has {info.st_nlink} hard links, so changing it could change a file "
            "elsewhere; work on a copy in the workspace"
        )
    return None


def _check_list(case: _Case, raw: str, scope: Scope) -> Decision:
    info = case.found.info
    if info is None:
        return case.decide("deny", "no such folder; list its parent to see what exists")
    if not stat.S_ISDIR(info.st_mode):
        return case.decide("deny", "it is not a folder; use read_file for a file")
    return case.decide("allow", f"it is inside {case.root}")


def _check_read(case: _Case, raw: str, scope: Scope) -> Decision:
    info = case.found.info
    if info is None:
        if os.path.islink(expand_path(raw, scope.home, scope.workspace)):
            return case.decide("deny", "it is a dangling symlink: what it points to does not exist")
        return case.decide("deny", "no such file; list the folder to see what exists")
    if stat.S_ISDIR(info.st_mode):
        return case.decide("deny", "it is a folder; use list_files")
    if not stat.S_ISREG(info.st_mode):
        return case.decide("deny", "it is not a regular file (a FIFO, socket or device)")
    return case.decide("allow", f"it is inside {case.root}")


def _check_write(case: _Case, raw: str, scope: Scope) -> Decision:
    rule = case.rule
    if rule.access != "write":
        return case.decide(
            "deny", f"{case.root} is read-only ({rule.source}); write into the workspace instead"
        )
    info = case.found.info
    if info is None:
        return _check_new_file(case)
    odd = _odd_file(info)
    if odd is not None:
        return case.decide("deny", odd)
    if rule.source == WORKSPACE_RULE or rule.overwrite == "allow":
        return case.decide("allow", f"{case.root} is writable")
    if rule.overwrite == "ask":
        return case.decide(
            "ask",
            f"replacing an existing file in {case.root} needs approval "
            f'(overwrite = "ask", {rule.source})',
        )
    return case.decide(
        "deny",
        f"existing files in {case.root} may not be replaced (overwrite = "
        f'"never", {rule.source}); write a new file instead',
    )


def _check_new_file(case: _Case) -> Decision:
    # The tool creates missing folders: the part that exists must be a real folder in the root.
    if case.found.not_folder is not None:
        return case.decide("deny", f"{shown_path(case.found.not_folder, case.home)} is a file, "
                           "not a folder")
    if case.found.root_missing and case.rule.source != WORKSPACE_RULE:
        return case.decide("deny", f"the folder {case.root} does not exist; ask the owner for it")
    return case.decide("allow", f"{case.root} is writable (a new file)")


def _check_delete(case: _Case, raw: str, scope: Scope) -> Decision:
    rule = case.rule
    if rule.access != "write":
        return case.decide(
            "deny", f"{case.root} is read-only ({rule.source}); nothing in it may be deleted"
        )
    info = case.found.info
    if info is None:
        return case.decide("deny", "no such file; list the folder to see what exists")
    odd = _odd_file(info)
    if odd is not None:
        return case.decide("deny", odd)
    if rule.source == WORKSPACE_RULE or rule.delete == "allow":
        return case.decide("allow", f"deleting is allowed in {case.root}")
    if rule.delete == "ask":
        return case.decide(
            "ask", f'deleting in {case.root} needs approval (delete = "ask", {rule.source})'
        )
    return case.decide(
        "deny",
        f'nothing in {case.root} may be deleted (delete = "never", '
        f"{rule.source}); leave it in place",
    )


_CHECKS: dict[str, Callable[[_Case, str, Scope], Decision]] = {
    "list": _check_list,
    "read": _check_read,
    "write": _check_write,
    "delete": _check_delete,
}


def decide_command(policy: Policy, command: str, *, sandboxed: bool) -> Decision:
    """allow / deny for run_command: the first word of the command line must be a program the
    [commands] table lists, by name; and there must be a sandbox unless the policy waives it."""
    rule = policy.commands
    if rule is None:
        return Decision("deny", "default: deny", "no [commands] table: run_command is not "
                        "offered", None)
    if not sandboxed and not rule.unsafe_no_sandbox:
        return Decision("deny", rule.source, "no OS sandbox is available on this computer; "
                        "run_command is not offered (see `mailagent check`)", None)
    try:
        words = shlex.split(command)
    except ValueError as error:
        return Decision("deny", rule.source, f"the command line cannot be split: {error}", None)
    program = words[0] if words else ""
    if not program or "/" in program or program not in rule.allow:
        return Decision("deny", f"{rule.source} [commands]", f"{quoted_path(program)!r} is not an "
                        f"allowed program; allowed, by name: {', '.join(rule.allow)}", None)
    return Decision("allow", f"{rule.source} [commands]", f"{program} may run", None)


def decide_move(policy: Policy, source: str, destination: str, scope: Scope) -> Decision:
    """A move is a write at the destination plus, at the source, a delete when the file leaves
    its folder rule (or a write when it stays inside). The stricter verdict wins."""
    shown = f"moving {quoted_path(str(source))} to {quoted_path(str(destination))}"
    leaves = _leaves_folder(policy, source, destination, scope)
    how = ": the source (it leaves its folder, so this counts as a delete there)"
    how = how if leaves else ": the source"
    from_side = _decide(policy, "delete" if leaves else "write", source, scope, f"{shown}{how}")
    to_side = _decide(policy, "write", destination, scope, f"{shown}: the destination")
    verdict = max(from_side.verdict, to_side.verdict, key=_STRICTNESS.__getitem__)
    rule = f"source: {from_side.rule}; destination: {to_side.rule}"
    if verdict == "allow":
        reason = f"{shown} is allowed: both the source and the destination allow it"
    else:
        reason = "; ".join(d.reason for d in (from_side, to_side) if d.verdict == verdict)
    return Decision(verdict, rule, reason, to_side.path, from_side.path, to_side.anchor,
                    from_side.anchor)


def _leaves_folder(policy: Policy, source: str, destination: str, scope: Scope) -> bool:
    try:
        from_path, to_path = resolve(source, scope), resolve(destination, scope)
    except PolicyError:
        return True  # the side that does not resolve is denied anyway
    rule = _governing_rule(policy, from_path, Path(os.path.realpath(scope.workspace)))
    return rule is None or not to_path.is_relative_to(rule.path)


def explain(policy: Policy, action: str, path: str, scope: Scope) -> str:
    """`deny: <rule>: <reason>` and the like, for `mailagent policy explain ACTION PATH`."""
    if action not in _VERBS:
        raise PolicyError(f"unknown action {action!r}: use list, read, write or delete")
    decision = _decide(policy, action, path, scope, None)
    return f"{decision.verdict}: {decision.rule}: {decision.reason}"
