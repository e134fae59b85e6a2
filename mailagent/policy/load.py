"""Loading policies: policies/*.toml -> one frozen `Policy`, or a PolicyError naming the file,
the line and what to do.

In: the policies folder (TOML written by the owner) and the owner's home. Out: a `Policy`.
Side effects: reads the policy files. It must never return anything more permissive when a
policy file is broken (SECURITY.md A4): a broken file is an error, never a skipped file.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mailagent.errors import PolicyError, nearest, unknown_key
from mailagent.policy.desktop import parse_desktop
from mailagent.policy.internet import count, flag, parse_internet
from mailagent.policy.mcp import McpServerRule, parse_servers
from mailagent.policy.paths import expand_path, real_path, shown_path
from mailagent.policy.rules import (
    ACCESS_VALUES,
    COMMANDS_KEYS,
    DELETE_VALUES,
    FOLDER_KEYS,
    MAIL_KEYS,
    MAX_PATH_CHARS,
    MAX_POLICY_FILE_BYTES,
    OVERWRITE_VALUES,
    CommandsRule,
    DesktopRule,
    FolderRule,
    InternetRule,
    MailRule,
    Policy,
    SkillGrant,
)
from mailagent.policy.skills import name_problem

_TOML_AT = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


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
    mail: MailRule | None = None
    skills: dict[str, SkillGrant] = {}
    internet: InternetRule | None = None
    desktop: DesktopRule | None = None
    for file in files:
        text = _read_policy_text(file)
        document = _parse_toml(text, file)
        file_folders, file_commands = _validate(document, text, file, home)
        mail = _only_one("[mail]", mail, _mail_rule(document.get("mail"), text, file), file)
        for grant in _skill_grants(document.get("skills"), text, file):
            skills.setdefault(grant.name, grant)  # the first file that allows it is named
        internet = _only_one("[internet]", internet,
                             _internet_rule(document.get("internet"), text, file), file)
        desktop = _only_one("[desktop]", desktop,
                            _desktop_rule(document.get("desktop"), text, file), file)
        for server in parse_servers(document.get("mcp"), text, file):
            first = next((other for other in servers if other.name == server.name), None)
            _only_one(f"[mcp.{server.name}]", first, server, file)
            servers.append(server)
        for rule in file_folders:
            _refuse_duplicate(rule, folders, file, home)
            folders.append(rule)
        commands = _only_one("[commands]", commands, file_commands, file)
    return Policy(tuple(folders), commands, tuple(file.name for file in files), tuple(servers),
                  mail, tuple(skills.values()), internet, desktop)


class _Sourced(Protocol):
    @property
    def source(self) -> str: ...  # "a.toml:3", where the table starts


_Rule = TypeVar("_Rule", bound=_Sourced)


def _only_one(table: str, first: _Rule | None, found: _Rule | None, file: Path) -> _Rule | None:
    """The one `table` rule so far: `first`, or `found` if it is the first; both is an error."""
    if found is not None and first is not None:
        raise PolicyError(f"{file} line {found.source.rpartition(':')[2]}: a second {table} "
                          f"table (the first is at {first.source}); keep only one")
    return first or found


def is_policy_name(name: str) -> bool:
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
    return [policies_dir / name for name in names if is_policy_name(name)]


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
        if key not in ("folders", "commands", "mcp", "mail", "internet", "desktop", "skills"):
            raise _Location(file, text, _top_level_line(text, key)).error(
                f"unknown table or key {key!r}; a policy file holds only skills = [...], "
                "[[folders]], [commands], [mail], [internet], [desktop] and [mcp.<server>] "
                "(check the spelling: a misspelt table would drop its rule)"
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
            raise where.error(unknown_key(key, FOLDER_KEYS, "[[folders]]"), key)
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
    return real_path(expand_path(raw, home, home), raw)


def _commands_rule(table: dict[str, Any], where: _Location) -> CommandsRule:
    for key in table:
        if key not in COMMANDS_KEYS:
            raise where.error(unknown_key(key, COMMANDS_KEYS, "[commands]"), key)
    allow = table.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(a, str) and a.strip() for a in allow):
        raise where.error('allow must be a list of program names, e.g. ["python3"]', "allow")
    network, hosts = _network(table, where)
    unsafe = flag(table, "unsafe_no_sandbox", where.error)
    timeout = table.get("timeout_seconds", 60.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise where.error(
            f"timeout_seconds = {timeout!r} must be a number of seconds above 0", "timeout_seconds"
        )
    counts = {key: count(table, key, default, where.error) for key, default in
              (("memory_mb", 2048), ("max_processes", 256), ("max_output_bytes", 65536))}
    source = f"{where.file.name}:{where.line}"
    return CommandsRule(tuple(allow), network, float(timeout), source,
                        unsafe_no_sandbox=unsafe, hosts=hosts, **counts)


_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(
    rf"^(?:(?:\*\.)?{_LABEL}(?:\.{_LABEL})*|\d{{1,3}}(?:\.\d{{1,3}}){{3}}|\[[0-9a-f:.]+\])"
    r"(?::(?P<port>\d{1,5}))?$")


def _network(table: dict[str, Any], where: _Location) -> tuple[bool, tuple[str, ...]]:
    """network = false | true | ["pypi.org", "*.github.com", "localhost:8000"]: no network, the
    whole network, or only these hosts (a name, `*.` and a name for every name under it, an IP
    address; each with an optional `:port`)."""
    value = table.get("network", False)
    if isinstance(value, bool):
        return value, ()
    example = '["pypi.org", "*.github.com"]'
    if not isinstance(value, list) or not all(isinstance(h, str) for h in value):
        raise where.error(f"network = {value!r} must be true or false, or a list of host names, "
                          f"e.g. {example}", "network")
    hosts: list[str] = []
    for host in value:
        name = host.strip().lower().rstrip(".")
        match = _HOST.match(name)
        if match is None or len(name) > 253 or int(match.group("port") or 1) not in range(1, 65536):
            raise where.error(f"network: {host[:80]!r} is not a host name, `*.` and a name, or an "
                              f"IP address (each with an optional :port), e.g. {example}",
                              "network")
        hosts.append(name)
    return False, tuple(dict.fromkeys(hosts))


_PATTERN = re.compile(r"^[^\s@]+@[^\s@]+$")


def _mail_rule(table: Any, text: str, file: Path) -> MailRule | None:
    """[mail] may_write_to = ["*@example.org", ...]: whom draft_mail may address. Each pattern
    is a glob on the whole lower-cased address, so it must have one @ (a bare domain would
    match nothing, silently)."""
    if table is None:
        return None
    where = _Location(file, text, _top_level_line(text, "mail"))
    if not isinstance(table, dict):
        raise where.error('mail must be a [mail] table: may_write_to = ["name@example.org"]')
    for key in table:
        if key not in MAIL_KEYS:
            raise where.error(unknown_key(key, MAIL_KEYS, "[mail]"), key)
    patterns = table.get("may_write_to", [])
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise where.error('may_write_to must be a list of addresses or patterns, e.g. '
                          '["*@example.org", "landlord@example.net"]', "may_write_to")
    for pattern in patterns:
        if not _PATTERN.match(pattern) or any(ord(c) < 32 or ord(c) == 127 for c in pattern):
            raise where.error(f"may_write_to: {pattern[:80]!r} is not an address or a pattern "
                              'with one @, e.g. "*@example.org"', "may_write_to")
    return MailRule(tuple(p.lower() for p in patterns), f"{file.name}:{where.line}")


def _skill_grants(value: Any, text: str, file: Path) -> list[SkillGrant]:
    """skills = ["expenses", ...]: names of skills in the configured skills folder, each a
    valid skill name (a misspelt one would allow nothing, silently)."""
    if value is None:
        return []
    where = _Location(file, text, _top_level_line(text, "skills"))
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise where.error('skills must be a list of skill names, e.g. skills = ["expenses"], '
                          "written above the first [table] of the file")
    source = f"{file.name}:{where.line}"
    for name in value:
        problem = name_problem(name)
        if problem is not None:
            raise where.error(f"skills: {problem}; write the name of a folder of the skills "
                              "folder")
    return [SkillGrant(name, source) for name in value]


def _internet_rule(table: Any, text: str, file: Path) -> InternetRule | None:
    """[internet]: the API's web search and web fetch, off unless a key turns one on."""
    if table is None:
        return None
    where = _Location(file, text, _top_level_line(text, "internet"))
    if not isinstance(table, dict):
        raise where.error("internet must be an [internet] table: web_search = true, ...")
    return parse_internet(table, where.error, f"{file.name}:{where.line}")


def _desktop_rule(table: Any, text: str, file: Path) -> DesktopRule | None:
    """[desktop]: the computer-use tool on a virtual display, off unless the table is there."""
    if table is None:
        return None
    where = _Location(file, text, _top_level_line(text, "desktop"))
    if not isinstance(table, dict):
        raise where.error('desktop must be a [desktop] table: apps = ["mousepad"]')
    return parse_desktop(table, where.error, f"{file.name}:{where.line}")


def _refuse_duplicate(rule: FolderRule, earlier: list[FolderRule], file: Path, home: Path) -> None:
    # Two rules for one folder would leave "most specific wins" undecided: make the owner choose.
    for other in earlier:
        if other.path == rule.path:
            raise PolicyError(
                f"{file} line {rule.source.rpartition(':')[2]}: {shown_path(rule.path, home)} is "
                f"already listed at {other.source}; keep one entry for it"
            )
