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
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shlex
import stat
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mailagent.errors import PolicyError, nearest
from mailagent.policy.fsat import Anchor, Identity, Lookup, identities, lookup
from mailagent.policy.mcp import McpServerRule, parse_servers

logger = logging.getLogger(__name__)

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
SYSTEM_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))
WORKSPACE_RULE = "workspace"
DEFAULT_RULE = "default: deny (no folder rule covers this path)"
_VERBS = {"list": "list", "read": "read", "write": "write to", "delete": "delete"}
_STRICTNESS = {"allow": 0, "ask": 1, "deny": 2}
_TOML_AT = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")

# Always protected under the owner's home (F3): credentials, and files that a shell, git or the
# desktop runs by themselves later, which would let a hijacked model run code outside any sandbox.
HOME_PROTECTED = (
    (".ssh", "SSH keys"),
    (".gnupg", "GnuPG keys"),
    (".aws", "AWS credentials"),
    (".netrc", "network passwords"),
    (".git-credentials", "git credentials"),
    (".gitconfig", "git settings"),
    (".config/git", "git settings"),
    (".config/mailagent", "mailagent settings"),
    (".bashrc", "shell start-up files"),
    (".bash_profile", "shell start-up files"),
    (".bash_login", "shell start-up files"),
    (".bash_logout", "shell start-up files"),
    (".profile", "shell start-up files"),
    (".zshrc", "shell start-up files"),
    (".zshenv", "shell start-up files"),
    (".zprofile", "shell start-up files"),
    (".zlogin", "shell start-up files"),
    (".config/fish", "shell start-up files"),
    (".config/autostart", "desktop start-up files"),
    (".config/systemd", "systemd user services"),
    ("Library/LaunchAgents", "macOS launch agents"),
)


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
    network: bool = False
    timeout_seconds: float = 60.0
    source: str = ""
    memory_mb: int = 2048  # address space of each process
    max_processes: int = 256
    max_output_bytes: int = 65536  # what the model sees of the output
    unsafe_no_sandbox: bool = False  # run even where no OS sandbox exists: no isolation at all


@dataclass(frozen=True)
class Policy:
    folders: tuple[FolderRule, ...] = ()
    commands: CommandsRule | None = None
    files: tuple[str, ...] = ()  # the file names it was loaded from
    mcp: tuple[McpServerRule, ...] = ()  # [mcp.<server>] tables: connectors and their tools


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
    # The protected files and folders by (st_dev, st_ino), taken when the scope is made (a task
    # starts): a hard link to one, or one whose folder is renamed later, is still refused.
    identities: dict[Identity, Path] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "identities", identities(self.protected))


# ---------------------------------------------------------------------------------------------
# Loading


def load_policy(policies_dir: Path, *, home: Path | None = None) -> Policy:
    """Every *.toml file in `policies_dir`, by name; a missing or empty folder is the empty Policy.

    `home` is what `~` means in rule paths (default: the user's home). Raises PolicyError naming
    the file, the line and what to fix; never returns a partial policy.
    """
    home = Path.home() if home is None else home
    files = _policy_files(policies_dir)
    folders: list[FolderRule] = []
    commands: CommandsRule | None = None
    servers: list[McpServerRule] = []
    for file in files:
        text = _read_policy_text(file)
        document = _parse_toml(text, file)
        file_folders, file_commands = _validate(document, text, file, home)
        for server in parse_servers(document.get("mcp"), text, file):
            if any(other.name == server.name for other in servers):
                raise PolicyError(f"{file} line {server.source.rpartition(':')[2]}: a second "
                                  f"[mcp.{server.name}] table; keep only one")
            servers.append(server)
        for rule in file_folders:
            _refuse_duplicate(rule, folders, file, home)
            folders.append(rule)
        if file_commands is not None and commands is not None:
            raise PolicyError(
                f"{file} line {file_commands.source.rpartition(':')[2]}: a second [commands] "
                f"table (the first is at {commands.source}); keep only one"
            )
        commands = commands or file_commands
    return Policy(tuple(folders), commands, tuple(file.name for file in files), tuple(servers))


def _is_policy_name(name: str) -> bool:
    # Hidden names are editor lock and backup files (Emacs' .#x.toml is a dangling symlink);
    # skipping a file can only drop rules, never add one.
    return name.endswith(".toml") and not name.startswith(".")


def _policy_files(policies_dir: Path) -> list[Path]:
    if not os.path.lexists(policies_dir):
        return []
    if not policies_dir.is_dir():
        raise PolicyError(f"{policies_dir} is not a folder: make it a folder of *.toml files")
    try:
        names = sorted(entry.name for entry in os.scandir(policies_dir))
    except OSError as error:
        raise PolicyError(f"{policies_dir} cannot be listed ({error.strerror}): fix it") from None
    return [policies_dir / name for name in names if _is_policy_name(name)]


def _read_policy_text(file: Path) -> str:
    try:
        with open(file, "rb") as handle:
            data = handle.read(MAX_POLICY_FILE_BYTES + 1)
    except OSError as error:
        raise PolicyError(f"{file} cannot be read ({error.strerror}): fix or remove it") from None
    if len(data) > MAX_POLICY_FILE_BYTES:
        raise PolicyError(f"{file} is over {MAX_POLICY_FILE_BYTES} bytes: split or shorten it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise PolicyError(f"{file} line {line}: not UTF-8 text; save it as UTF-8") from None


def _parse_toml(text: str, file: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        match = _TOML_AT.search(message)
        where = "at the end"
        if match and match.group(1):
            where = f"line {match.group(1)}, column {match.group(2)}"
        problem = message[: match.start()] if match else message
        raise PolicyError(f"{file} {where}: invalid TOML ({problem}); fix it there") from None


@dataclass(frozen=True)
class _Location:
    """Where a table starts in a policy file, to name the line of an offending key."""

    file: Path
    text: str
    line: int

    def error(self, message: str, key: str | None = None) -> PolicyError:
        line = self.line if key is None else _key_line(self.text, key, self.line)
        return PolicyError(f"{self.file} line {line}: {message}")


def _key_line(text: str, key: str, header_line: int) -> int:
    """The line of `key = ...` in the table starting at `header_line` (that line if not found)."""
    pattern = re.compile(rf"""^\s*["']?{re.escape(key)}["']?\s*[=.]""")
    lines = text.splitlines()
    for number in range(header_line + 1, len(lines) + 1):
        line = lines[number - 1]
        if line.lstrip().startswith("["):
            break
        if pattern.match(line):
            return number
    return max(header_line, 1)


def _top_level_line(text: str, key: str) -> int:
    pattern = re.compile(rf"""^\s*(\[\[?\s*)?["']?{re.escape(key)}["']?\s*[=.\]]""")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return 1


def _header_lines(text: str, array_table: str) -> list[int]:
    pattern = re.compile(rf"""^\s*\[\[\s*["']?{re.escape(array_table)}["']?\s*\]\]""")
    return [n for n, line in enumerate(text.splitlines(), start=1) if pattern.match(line)]


def _validate(
    document: dict[str, Any], text: str, file: Path, home: Path
) -> tuple[list[FolderRule], CommandsRule | None]:
    for key in document:
        if key not in ("folders", "commands", "mcp"):
            raise _Location(file, text, _top_level_line(text, key)).error(
                f"unknown table or key {key!r}; a policy file holds only [[folders]], "
                "[commands] and [mcp.<server>] (check the spelling: a misspelt table would "
                "drop its rule)"
            )
    entries = document.get("folders", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise _Location(file, text, _top_level_line(text, "folders")).error(
            "folders must be written as [[folders]] tables with path, access and delete"
        )
    headers = _header_lines(text, "folders")
    if len(headers) != len(entries):  # an inline array: point at its key instead
        headers = [_top_level_line(text, "folders")] * len(entries)
    rules = [
        _folder_rule(e, _Location(file, text, h), home)
        for e, h in zip(entries, headers, strict=True)
    ]
    commands = document.get("commands")
    if commands is None:
        return rules, None
    where = _Location(file, text, _top_level_line(text, "commands"))
    if not isinstance(commands, dict):
        raise where.error("commands must be a [commands] table: allow, network, timeout_seconds")
    return rules, _commands_rule(commands, where)


def _folder_rule(entry: dict[str, Any], where: _Location, home: Path) -> FolderRule:
    for key in entry:
        if key not in FOLDER_KEYS:
            raise where.error(
                f"unknown key {key!r} in [[folders]]{_did_you_mean(key, FOLDER_KEYS)}; "
                f"allowed keys: {', '.join(FOLDER_KEYS)}",
                key,
            )
    if "path" not in entry:
        raise where.error('[[folders]] has no path; add path = "~/some/folder" (absolute or ~)')
    raw = entry["path"]
    if not isinstance(raw, str):
        raise where.error("path must be a string in quotes, absolute or starting with ~/", "path")
    try:
        path = _rule_path(raw, home)
    except PolicyError as error:
        raise where.error(str(error), "path") from None
    access = _choice(entry, "access", ACCESS_VALUES, "read", where)
    delete = _choice(entry, "delete", DELETE_VALUES, "never", where)
    overwrite = _choice(entry, "overwrite", OVERWRITE_VALUES, "allow", where)
    if access == "read" and delete != "never":
        raise where.error(f'delete = "{delete}" needs access = "write"; fix one of them', "delete")
    source = f"{where.file.name}:{where.line}"
    return FolderRule(path, access, delete, overwrite, source)


def _choice(
    entry: dict[str, Any], key: str, allowed: tuple[str, ...], default: str, where: _Location
) -> str:
    value = entry.get(key, default)
    if isinstance(value, str) and value in allowed:
        return value
    options = " | ".join(f'"{option}"' for option in allowed)
    hint = _did_you_mean(value, allowed) if isinstance(value, str) else ""
    raise where.error(f"{key} = {value!r} is not one of {options}{hint}", key)


def _did_you_mean(value: str, allowed: tuple[str, ...]) -> str:
    close = nearest(value, allowed)
    return f' (did you mean "{close}"?)' if close else ""


def _rule_path(raw: str, home: Path) -> Path:
    if not raw or "\x00" in raw or len(raw) > MAX_PATH_CHARS:
        raise PolicyError(f"path {raw[:80]!r} is empty, too long or holds a NUL byte; fix it")
    if not (raw.startswith("~") or Path(raw).is_absolute()):
        raise PolicyError(
            f"path {raw!r} is relative; write it absolute or starting with ~/ so it cannot "
            "depend on the directory mailagent runs in"
        )
    return _real_path(_expand(raw, home, home), raw)


def _commands_rule(table: dict[str, Any], where: _Location) -> CommandsRule:
    for key in table:
        if key not in COMMANDS_KEYS:
            raise where.error(
                f"unknown key {key!r} in [commands]{_did_you_mean(key, COMMANDS_KEYS)}; "
                f"allowed keys: {', '.join(COMMANDS_KEYS)}",
                key,
            )
    allow = table.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(a, str) and a.strip() for a in allow):
        raise where.error('allow must be a list of program names, e.g. ["python3"]', "allow")
    network, unsafe = (_flag(table, key, where) for key in ("network", "unsafe_no_sandbox"))
    timeout = table.get("timeout_seconds", 60.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise where.error(
            f"timeout_seconds = {timeout!r} must be a number of seconds above 0", "timeout_seconds"
        )
    counts = {key: _count(table, key, default, where) for key, default in
              (("memory_mb", 2048), ("max_processes", 256), ("max_output_bytes", 65536))}
    source = f"{where.file.name}:{where.line}"
    return CommandsRule(tuple(allow), network, float(timeout), source,
                        unsafe_no_sandbox=unsafe, **counts)


def _flag(table: dict[str, Any], key: str, where: _Location) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise where.error(f"{key} = {value!r} must be true or false", key)
    return value


def _count(table: dict[str, Any], key: str, default: int, where: _Location) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise where.error(f"{key} = {value!r} must be a whole number above 0", key)
    return value


def _refuse_duplicate(rule: FolderRule, earlier: list[FolderRule], file: Path, home: Path) -> None:
    # Two rules for one folder would leave "most specific wins" undecided: make the owner choose.
    for other in earlier:
        if other.path == rule.path:
            raise PolicyError(
                f"{file} line {rule.source.rpartition(':')[2]}: {_shown(rule.path, home)} is "
                f"already listed at {other.source}; keep one entry for it"
            )


# ---------------------------------------------------------------------------------------------
# Watching for edits


class PolicyWatcher:
    """Hands out the policy in force, reloading when the policies folder changes (no restart).

    A broken edit keeps the last good policy (or the empty one: deny everything) and is reported
    through `on_error` once per distinct message.
    """

    def __init__(
        self,
        policies_dir: Path,
        on_error: Callable[[PolicyError], None],
        *,
        home: Path | None = None,
    ) -> None:
        self._policies_dir = policies_dir
        self._on_error = on_error
        self._home = home
        self._lock = threading.Lock()
        self._policy = Policy()
        self._stamp: object = None
        self._reported: str | None = None

    def current(self) -> Policy:
        with self._lock:
            error = self._refresh()
            policy = self._policy
        if error is not None:  # outside the lock: on_error may well ask for the policy again
            self._on_error(error)
        return policy

    def _refresh(self) -> PolicyError | None:
        stamp = _fingerprint(self._policies_dir)
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            self._policy = load_policy(self._policies_dir, home=self._home)
        except PolicyError as error:
            if str(error) == self._reported:
                return None
            self._reported = str(error)
            logger.error("policy not loaded, the last good policy stays in force: %s", error)
            return error
        self._reported = None
        logger.info(
            "policy loaded from %s: %d folder rules, commands %s",
            ", ".join(self._policy.files) or "no files",
            len(self._policy.folders),
            "offered" if self._policy.commands else "not offered",
        )
        return None


def _fingerprint(policies_dir: Path) -> object:
    """Names, sizes and times of the folder and its policy files: any edit changes it."""
    try:
        folder = os.stat(policies_dir)
        names = sorted(name for name in os.listdir(policies_dir) if _is_policy_name(name))
    except OSError as error:
        return ("unreadable", error.errno)
    files: list[tuple[object, ...]] = []
    for name in names:
        try:
            info = os.stat(policies_dir / name)
        except OSError as error:
            files.append((name, "error", error.errno))
            continue
        # ctime too: it changes on every write and cannot be set back the way mtime can.
        files.append((name, info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino))
    return (folder.st_mtime_ns, folder.st_ino, tuple(files))


# ---------------------------------------------------------------------------------------------
# Paths


def protected_paths(
    *, config_path: Path, policies_dir: Path, data_dir: Path, home: Path
) -> tuple[Path, ...]:
    """What no rule can open (F3), resolved. `decide` leaves the task's own workspace usable
    although it lies inside the protected data dir; other conversations' workspaces stay shut."""
    home = _real_path(home, str(home))
    named = [config_path, policies_dir, data_dir, *(home / name for name, _ in HOME_PROTECTED)]
    return tuple(dict.fromkeys(Path(os.path.realpath(path)) for path in named))


def resolve(path: str, scope: Scope) -> Path:
    """The path the model named, with every symlink followed; PolicyError if it cannot be.

    Relative paths go into the workspace, `~` is `scope.home`. The target need not exist.
    """
    if not isinstance(path, str) or not path:
        raise PolicyError("the path is empty: name a file in the workspace or an absolute path")
    if len(path) > MAX_PATH_CHARS:
        raise PolicyError(f"the path is {len(path)} characters long; the limit is {MAX_PATH_CHARS}")
    if "\x00" in path:
        raise PolicyError("the path holds a NUL byte; file names cannot contain one")
    try:
        os.fsencode(path)
    except UnicodeError:
        raise PolicyError(f"{_quoted(path)!r} holds a character no file name can hold (a lone "
                          "surrogate); name the file in plain text") from None
    return _real_path(_expand(path, scope.home, scope.workspace), path)


def _expand(raw: str, home: Path, base: Path) -> Path:
    if raw == "~" or raw.startswith(("~/", "~" + os.sep)):
        return home / raw[1:].lstrip("/" + os.sep)
    if raw.startswith("~"):
        raise PolicyError(
            f"{_quoted(raw)}: ~user paths are not supported; write ~/... for the home folder "
            f"or ./{_quoted(raw)} for a file in the workspace"
        )
    return base / raw  # an absolute raw path replaces the base


def _real_path(path: Path, raw: str) -> Path:
    try:
        resolved = Path(os.path.realpath(path))
    except (OSError, ValueError):  # realpath's readlink of a link that was just swapped away
        raise PolicyError(f"{_quoted(raw)} changed while its symlinks were being followed; "
                          "try again") from None
    try:
        # realpath gives up silently on a loop and leaves the link in place; stat names it.
        os.stat(resolved)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise PolicyError(
                f"{_quoted(raw)} runs into a symlink loop; name the file without going through it"
            ) from None
    return resolved


def _quoted(raw: str) -> str:
    # The path as the model gave it, bounded and printable: reasons reach logs, audit and mail.
    text = "".join(ch if ch.isprintable() else "?" for ch in raw[:200])
    return text + ("..." if len(raw) > 200 else "")


def _shown(path: Path, home: Path) -> str:
    if path == home:
        return "~"
    if path.is_relative_to(home):
        return "~/" + path.relative_to(home).as_posix()
    return str(path)


def _folded(path: Path) -> Path:
    # Protection matches without case: on macOS and Windows ~/.SSH is ~/.ssh. Stricter on Linux.
    return Path(str(path).casefold())


# ---------------------------------------------------------------------------------------------
# Deciding


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
        return _shown(self.rule.path, self.home)


def decide(policy: Policy, action: Action, path: str, scope: Scope) -> Decision:
    """allow / ask / deny for one file action on the path the model named."""
    return _decide(policy, action, path, scope, None)


def _decide(policy: Policy, action: str, path: str, scope: Scope, subject: str | None) -> Decision:
    if action not in _VERBS:
        reason = f"{_quoted(str(action))!r} is not list, read, write or delete"
        return Decision("deny", "unknown action", reason, None)
    subject = subject or f"{_VERBS[action]} {_quoted(str(path))}"
    try:
        return _judge(policy, action, path, scope, subject)
    except (PolicyError, OSError, ValueError) as error:  # whatever a concurrent change makes
        why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        return Decision("deny", "invalid path", f"{subject} is denied: {why}", None)


def _judge(policy: Policy, action: str, path: str, scope: Scope, subject: str) -> Decision:
    resolved = resolve(path, scope)
    home, workspace = Path(os.path.realpath(scope.home)), Path(os.path.realpath(scope.workspace))
    guard = _protection(resolved, scope.protected, home, workspace)
    if guard is not None:
        return _protected(subject, guard, resolved)
    rule = _governing_rule(policy, resolved, workspace)
    if rule is None:
        return _uncovered(policy, path, subject, resolved, (home, workspace))
    anchor = Anchor(rule.path, resolved.relative_to(rule.path).parts,
                    frozenset(scope.identities))
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


def _protection(
    resolved: Path, protected: tuple[Path, ...], home: Path, workspace: Path
) -> str | None:
    """The name of what protects `resolved`, or None."""
    if any(resolved.is_relative_to(root) for root in SYSTEM_ROOTS):
        return "protected: system files (/proc, /sys, /dev)"
    if any(part.casefold() == ".git" for part in resolved.parts):
        return "protected: .git"
    folded, in_workspace = _folded(resolved), resolved.is_relative_to(workspace)
    # The data dir is protected, yet the task's own workspace inside it must stay usable.
    matches = [
        root
        for root in protected
        if folded.is_relative_to(_folded(root))
        and not (in_workspace and _folded(workspace).is_relative_to(_folded(root)))
    ]
    if not matches:
        return None
    closest = max(matches, key=lambda root: len(root.parts))
    for name, label in HOME_PROTECTED:
        if _folded(closest) == _folded(home / name):
            return f"protected: {label} (~/{name})"
    return f"protected: {_shown(closest, home)}"


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
    return f"{rule.source} {_shown(rule.path, home)} ({rule.access})"


def _uncovered(
    policy: Policy, raw: str, subject: str, resolved: Path, real: tuple[Path, Path]
) -> Decision:
    # Say so when a symlink is what led outside: the model can then use the real location.
    home, workspace = real
    lexical = Path(os.path.normpath(_expand(raw, home, workspace)))
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
        if os.path.islink(_expand(raw, scope.home, scope.workspace)):
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
        return case.decide("deny", f"{_shown(case.found.not_folder, case.home)} is a file, "
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
        return Decision("deny", f"{rule.source} [commands]", f"{_quoted(program)!r} is not an "
                        f"allowed program; allowed, by name: {', '.join(rule.allow)}", None)
    return Decision("allow", f"{rule.source} [commands]", f"{program} may run", None)


def decide_move(policy: Policy, source: str, destination: str, scope: Scope) -> Decision:
    """A move is a write at the destination plus, at the source, a delete when the file leaves
    its folder rule (or a write when it stays inside). The stricter verdict wins."""
    shown = f"moving {_quoted(str(source))} to {_quoted(str(destination))}"
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
