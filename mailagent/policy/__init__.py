"""Policy engine: policies/*.toml -> allow / ask / deny for one file operation, and the rule why.

In: the policies folder (TOML written by the owner), a `Scope` (the conversation's workspace, what
`~` means, the protected paths) and one operation the model asked for: an action and a path string.
Out: a frozen `Policy`, and per operation a `Decision` naming the verdict, the rule that decided, a
reason the model can act on, and the fully resolved path that was judged.
Side effects: reads the policy files; looks judged paths up through descriptors walked from their
rule's root (mailagent.policy.fsat: a judged file is never opened, so a FIFO cannot block a check);
logs policy errors.
It must never: return anything more permissive when a policy file is broken (SECURITY.md A4);
judge a path before every symlink in it is followed (F1); compare paths as strings (F2); let a
rule open a protected path (F3). The model is assumed hijacked, so every path string is hostile.
A decision holds only for the moment it is made: tools act on `Decision.anchor` (the rule's root
and the names below it, never the model's string), through descriptors with no symlink
followed, and ask again right before they act. Deciding never raises anything but PolicyError.

The package, by concern: `rules` (the frozen shapes), `load` (TOML to a `Policy`), `watch`
(reloading on edits), `paths` (resolving and protecting paths), `decide` (the verdicts), `calls`
(which rule judges each tool call), `mail` (whom drafts may address), `internet` (the web
tools), `desktop` (the computer-use tool and its apps), `display` (the virtual display in the
sandbox), `mcp` (MCP server rules), `fsat` (files reached by descriptors from a rule's root),
`sandbox` (bubblewrap), `integrity` (the protected files by identity). This module is the
face the rest of mailagent imports.
"""

from __future__ import annotations

from mailagent.policy.calls import PATH_ACTIONS, check_call, describe_operation, operation_digest
from mailagent.policy.decide import decide, decide_command, decide_move, explain
from mailagent.policy.desktop import explain_desktop
from mailagent.policy.internet import explain_internet
from mailagent.policy.load import load_policy
from mailagent.policy.mail import decide_recipients, explain_recipient
from mailagent.policy.paths import HOME_PROTECTED, SYSTEM_ROOTS, protected_paths, resolve
from mailagent.policy.rules import (
    ACCESS_VALUES,
    COMMANDS_KEYS,
    DEFAULT_RULE,
    DELETE_VALUES,
    FOLDER_KEYS,
    MAX_PATH_CHARS,
    MAX_POLICY_FILE_BYTES,
    OVERWRITE_VALUES,
    WORKSPACE_RULE,
    Action,
    CommandsRule,
    Decision,
    DesktopRule,
    FolderRule,
    InternetRule,
    MailRule,
    Policy,
    Scope,
    Verdict,
)
from mailagent.policy.watch import PolicyWatcher

__all__ = [
    "ACCESS_VALUES",
    "COMMANDS_KEYS",
    "DEFAULT_RULE",
    "DELETE_VALUES",
    "FOLDER_KEYS",
    "HOME_PROTECTED",
    "MAX_PATH_CHARS",
    "MAX_POLICY_FILE_BYTES",
    "OVERWRITE_VALUES",
    "PATH_ACTIONS",
    "SYSTEM_ROOTS",
    "WORKSPACE_RULE",
    "Action",
    "CommandsRule",
    "Decision",
    "DesktopRule",
    "FolderRule",
    "InternetRule",
    "MailRule",
    "Policy",
    "PolicyWatcher",
    "Scope",
    "Verdict",
    "check_call",
    "decide",
    "decide_command",
    "decide_move",
    "decide_recipients",
    "describe_operation",
    "explain",
    "explain_desktop",
    "explain_internet",
    "explain_recipient",
    "load_policy",
    "operation_digest",
    "protected_paths",
    "resolve",
]
