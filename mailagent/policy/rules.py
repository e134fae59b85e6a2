"""Policy rules: the frozen shapes a policy is made of, and what a decision says.

In: nothing (definitions only). Out: `Policy` (folder rules, the commands rule, MCP server rules,
the mail rule, the skills it allows, the internet rule, the desktop rule), `Scope` (the
conversation's workspace, `~`, the protected paths, the skills folder) and `Decision` (verdict,
the rule that decided, a reason the model can act on, the resolved path and its `Anchor`).
Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mailagent.policy.fsat import Anchor, Identity, identities
from mailagent.policy.mcp import McpServerRule

Verdict = Literal["allow", "ask", "deny"]


Action = Literal["list", "read", "write", "delete"]


MAX_PATH_CHARS = 4096


MAX_POLICY_FILE_BYTES = 1024 * 1024


ACCESS_VALUES = ("read", "write")


DELETE_VALUES = ("never", "ask", "allow")


OVERWRITE_VALUES = ("allow", "ask", "never")


FOLDER_KEYS = ("path", "access", "delete", "overwrite")


COMMANDS_KEYS = ("allow", "network", "timeout_seconds", "memory_mb", "max_processes",
                 "max_output_bytes", "unsafe_no_sandbox")


MAIL_KEYS = ("may_write_to",)


INTERNET_KEYS = ("web_search", "web_fetch", "allowed_domains", "blocked_domains", "max_uses",
                 "max_content_tokens")


DESKTOP_KEYS = ("apps", "max_actions")


WORKSPACE_RULE = "workspace"


DEFAULT_RULE = "default: deny (no folder rule covers this path)"


@dataclass(frozen=True)
class FolderRule:
    path: Path  # absolute, ~ expanded, every symlink followed at load time
    access: str  # read | write
    delete: str = "never"  # never | ask | allow
    overwrite: str = "allow"  # allow | ask | never: replacing a file (outside the workspace)
    source: str = ""  # "reports.toml:3", where the [[folders]] entry starts


@dataclass(frozen=True)
class CommandsRule:
    allow: tuple[str, ...]
    network: bool = False  # the whole network
    timeout_seconds: float = 60.0
    source: str = ""
    memory_mb: int = 2048  # address space of each process
    max_processes: int = 256
    max_output_bytes: int = 65536  # what the model sees of the output
    unsafe_no_sandbox: bool = False  # run even where no OS sandbox exists: no isolation at all
    hosts: tuple[str, ...] = ()  # network = [...]: only these hosts, through srt's proxy


@dataclass(frozen=True)
class MailRule:
    """Who `draft_mail` may address: glob patterns on the whole lower-cased address. Every
    draft still goes out only after the owner approves that exact mail."""

    may_write_to: tuple[str, ...]
    source: str = ""  # "mail.toml:1", where the [mail] table starts


@dataclass(frozen=True)
class SkillGrant:
    """One name of a `skills = [...]` list: that skill of the configured skills folder is
    listed to the model and readable, never writable."""

    name: str
    source: str = ""  # "main.toml:2", the line of the skills key


@dataclass(frozen=True)
class InternetRule:
    """Which of the Messages API's server tools a task is offered (web search, web fetch),
    on which domains, and how often each may run in one task. The API runs them, not this
    machine; the domain lists and `max_uses` go with every request, and the uses are counted
    again from each response's usage."""

    web_search: bool = False
    web_fetch: bool = False
    allowed_domains: tuple[str, ...] = ()  # only these (and their subdomains); () = any
    blocked_domains: tuple[str, ...] = ()  # never these; the API takes one list or the other
    max_uses: int = 5  # per tool, per task
    max_content_tokens: int | None = None  # a fetched page's text is cut at about this
    source: str = ""  # "web.toml:1", where the [internet] table starts


@dataclass(frozen=True)
class DesktopRule:
    """Which desktop applications the computer-use tool may start on the task's virtual
    display (inside the command sandbox, never the owner's screen), and how many actions one
    task may take there. Each app is a name found on the sandbox's PATH, or an absolute path."""

    apps: tuple[str, ...]
    max_actions: int = 50  # screenshots, clicks, keys and app starts, per task
    source: str = ""  # "desktop.toml:1", where the [desktop] table starts


@dataclass(frozen=True)
class Policy:
    folders: tuple[FolderRule, ...] = ()
    commands: CommandsRule | None = None
    files: tuple[str, ...] = ()  # the file names it was loaded from
    mcp: tuple[McpServerRule, ...] = ()  # [mcp.<server>] tables: connectors and their tools
    mail: MailRule | None = None  # [mail]: absent or empty, draft_mail is not offered
    skills: tuple[SkillGrant, ...] = ()  # skills = [...]: absent, no skill is listed
    internet: InternetRule | None = None  # [internet]: absent, no web tool is offered
    desktop: DesktopRule | None = None  # [desktop]: absent, no computer-use tool is offered


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    rule: str  # which rule decided, e.g. "reports.toml:3 ~/Documents/reports (read)"
    reason: str  # one sentence for the model: the path as given, why, and what to do instead
    path: Path | None  # the fully resolved path that was judged (None if it did not resolve)
    source: Path | None = None  # a move's resolved source (`path` is its destination)
    anchor: Anchor | None = None  # how tools reach `path`: its rule's root and the names below
    source_anchor: Anchor | None = None  # likewise for a move's source


@dataclass(frozen=True)
class Scope:
    """What is fixed for one task: where relative paths go and what is always protected."""

    workspace: Path  # the conversation's workspace, always writable
    home: Path  # what ~ means
    protected: tuple[Path, ...]  # never readable or writable, whatever a rule says
    # The configured skills folder, resolved (it is one of `protected` too): the skills a policy
    # allows are readable in it, and nothing in it is ever writable.
    skills_dir: Path | None = None
    # The protected files and folders by (st_dev, st_ino), taken when the scope is made (a task
    # starts): a hard link to one, or one whose folder is renamed later, is still refused.
    identities: dict[Identity, Path] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "identities", identities(self.protected))
