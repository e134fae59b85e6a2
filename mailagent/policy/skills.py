"""Skills: the owner's folder of Agent Skills as a catalogue, and which ones a policy allows.

In: the configured skills folder (`skills_dir`, the owner's configuration) and a `Policy` (its
`skills = [...]` grants). Out: a `Catalogue` of valid skills (name, description, the path of
its SKILL.md) and of invalid ones with the reason, the skills a policy allows, and one line
for `mailagent policy explain skill NAME`. Side effects: reads the folder and the front matter
of each SKILL.md, through descriptors that follow no symlink.

The format is Anthropic's Agent Skills: a folder holding a SKILL.md that starts with YAML front
matter (`name`, `description`), then instructions; scripts and files may sit beside it.
The rules checked are those of https://platform.claude.com/docs/en/agents-and-tools/agent-skills/overview
("Skill structure") and https://agentskills.io/specification: `name` at most 64 characters of
lowercase letters, digits and hyphens (no hyphen first, last or twice in a row), the folder's
own name, without the reserved words "anthropic" and "claude", no XML tags; `description`
non-empty, at most 1024 characters, no XML tags.

It must never list anything from outside the configured folder: a "skill" the model wrote into
a workspace is data, and the catalogue is built only here, from this folder, by this code. It
is the only importer of PyYAML, and loads it only when a folder is read (safe_load: no tags
that build objects).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailagent.errors import PolicyError
from mailagent.policy.paths import shown_path
from mailagent.policy.rules import Policy, SkillGrant

SKILL_FILE = "SKILL.md"


MAX_SKILLS = 50  # listed in every system prompt: bounded like memory notes


MAX_FRONT_MATTER_BYTES = 64 * 1024  # the front matter is a few lines at the top


MAX_NAME_CHARS = 64


MAX_DESCRIPTION_CHARS = 1024


RESERVED_WORDS = ("anthropic", "claude")


_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


_XML_TAG = re.compile(r"<\s*/?\s*[A-Za-z][^<>]*>")


@dataclass(frozen=True)
class Skill:
    name: str
    description: str  # one line: runs of white space made one space
    path: Path  # its SKILL.md, in the configured folder


@dataclass(frozen=True)
class SkillProblem:
    folder: str  # the folder's name in the skills folder
    reason: str  # what is wrong and what to do


@dataclass(frozen=True)
class Catalogue:
    """What the skills folder holds now: the valid skills, and what is wrong with the rest."""

    folder: Path
    skills: tuple[Skill, ...] = ()
    problems: tuple[SkillProblem, ...] = ()

    def named(self, name: str) -> Skill | None:
        return next((skill for skill in self.skills if skill.name == name), None)


def name_problem(name: object) -> str | None:
    """Why `name` is not a skill name, or None: the format's rules for `name`."""
    if not isinstance(name, str) or not name:
        return "name is missing or not text"
    if len(name) > MAX_NAME_CHARS:
        return f"name {name[:80]!r} is over {MAX_NAME_CHARS} characters"
    if not _NAME.fullmatch(name):
        return (f"name {name[:80]!r} may hold only lowercase letters, digits and single hyphens "
                "between them (e.g. expense-receipts)")
    word = next((w for w in RESERVED_WORDS if w in name), None)
    if word is not None:
        return f"name {name!r} holds the reserved word {word!r}"
    return None


def read_skills(folder: Path) -> Catalogue:
    """Every skill folder in `folder`, valid or with the reason it is not. A missing folder is
    an empty catalogue; one that cannot be listed raises PolicyError saying so."""
    if not os.path.lexists(folder):
        return Catalogue(folder)
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as error:
        raise PolicyError(f"the skills folder {folder} cannot be listed ({error.strerror}): "
                          "make it a folder mailagent can read") from None
    skills: list[Skill] = []
    problems: list[SkillProblem] = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=True):
            continue  # hidden names and loose files (a README) are not skills
        if len(skills) >= MAX_SKILLS:
            problems.append(SkillProblem(entry.name, f"more than {MAX_SKILLS} skills: this one "
                                         "is left out; remove skills you do not use"))
            continue
        try:
            skills.append(_read_skill(Path(entry.path), entry.name))
        except PolicyError as error:
            problems.append(SkillProblem(entry.name, str(error)))
    return Catalogue(folder, tuple(skills), tuple(problems))


def _read_skill(folder: Path, name: str) -> Skill:
    if os.path.islink(folder):
        raise PolicyError("it is a symlink; a skill must be a real folder inside the skills "
                          "folder (copy it there)")
    front = _front_matter(_read_head(folder / SKILL_FILE))
    problem = name_problem(front.get("name"))
    if problem is not None:
        raise PolicyError(f"{SKILL_FILE}: {problem}")
    if front["name"] != name:
        raise PolicyError(f"{SKILL_FILE}: name {front['name']!r} is not the folder's name "
                          f"{name!r}; rename one of them")
    return Skill(name, _description(front.get("description")), folder / SKILL_FILE)


def _description(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(f"{SKILL_FILE}: description is missing or empty; say what the skill "
                          "does and when to use it")
    if len(value) > MAX_DESCRIPTION_CHARS:
        raise PolicyError(f"{SKILL_FILE}: description is {len(value)} characters long; the "
                          f"format allows {MAX_DESCRIPTION_CHARS}")
    if _XML_TAG.search(value):
        raise PolicyError(f"{SKILL_FILE}: description holds an XML tag; the format allows none")
    if any((ord(ch) < 32 and ch not in "\t\n\r") or ord(ch) == 127 for ch in value):
        raise PolicyError(f"{SKILL_FILE}: description holds control characters")
    return " ".join(value.split())


def _read_head(path: Path) -> bytes:
    """The first bytes of SKILL.md, opened without following a symlink."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ENOENT:
            raise PolicyError(f"no {SKILL_FILE} in it; a skill is a folder with a "
                              f"{SKILL_FILE}") from None
        if error.errno == errno.ELOOP:
            raise PolicyError(f"{SKILL_FILE} is a symlink; make it a plain file") from None
        raise PolicyError(f"{SKILL_FILE} cannot be read ({error.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise PolicyError(f"{SKILL_FILE} is not a plain file")
        return os.read(handle, MAX_FRONT_MATTER_BYTES + 1)
    finally:
        os.close(handle)


def _front_matter(head: bytes) -> dict[str, Any]:
    """The YAML between a first line `---` and the next `---` line, as a mapping."""
    if len(head) > MAX_FRONT_MATTER_BYTES:  # whole lines only: a cut may split a character
        head = head[: head.rfind(b"\n", 0, MAX_FRONT_MATTER_BYTES) + 1]
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PolicyError(f"{SKILL_FILE} is not UTF-8 text; save it as UTF-8") from None
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise PolicyError(f"{SKILL_FILE} does not start with YAML front matter: its first line "
                          "must be --- and a --- line must end it (name and description)")
    end = next((n for n, line in enumerate(lines[1:], start=1) if line.strip() == "---"), None)
    if end is None:
        raise PolicyError(f"{SKILL_FILE}: the front matter has no closing --- line within its "
                          f"first {MAX_FRONT_MATTER_BYTES // 1024} KiB")
    return _parse_yaml("\n".join(lines[1:end]))


def _parse_yaml(text: str) -> dict[str, Any]:
    import yaml  # only where a skills folder is read

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 2}" if mark is not None else ""  # +1: the --- line
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise PolicyError(f"{SKILL_FILE}: the front matter{where} is not valid YAML "
                          f"({problem}); fix it there") from None
    if not isinstance(document, dict):
        raise PolicyError(f"{SKILL_FILE}: the front matter is not a mapping of keys "
                          "(name: ..., description: ...)")
    return document


def allowed_skills(policy: Policy, catalogue: Catalogue) -> tuple[Skill, ...]:
    """The valid skills of the folder that some policy file allows, in the folder's order."""
    granted = {grant.name for grant in policy.skills}
    return tuple(skill for skill in catalogue.skills if skill.name in granted)


def skill_folders(policy: Policy, skills_dir: Path | None) -> tuple[Path, ...]:
    """The folders of the skills the policy allows (by name; a folder need not be valid to be
    readable, only to be listed). Never a symlink: its target is not in the skills folder."""
    if skills_dir is None:
        return ()
    folders = (skills_dir / grant.name for grant in policy.skills)
    return tuple(f for f in folders if f.is_dir() and not f.is_symlink())


def grant_for(policy: Policy, name: str) -> SkillGrant | None:
    return next((grant for grant in policy.skills if grant.name == name), None)


def explain_skill(policy: Policy, catalogue: Catalogue, name: str, home: Path) -> str:
    """`allow: <file:line>: ...` or `deny: ...` for `mailagent policy explain skill NAME`."""
    grant = grant_for(policy, name)
    skill = catalogue.named(name)
    problem = next((p for p in catalogue.problems if p.folder == name), None)
    folder = shown_path(catalogue.folder, home)
    if grant is None:
        why = "no policy file allows it; add it to a skills = [...] list"
        if skill is None and problem is None:
            why = f"there is no such skill in {folder}, and no policy file allows it"
        return f"deny: default: deny (no skills entry names it): skill {name} is denied: {why}"
    if skill is not None:
        return (f"allow: {grant.source} skills: skill {name} is listed to the model ("
                f"{shown_path(skill.path, home)}, read-only)")
    if problem is not None:
        return (f"deny: {grant.source} skills: skill {name} is allowed but not listed: "
                f"{problem.reason}")
    return (f"deny: {grant.source} skills: skill {name} is allowed but there is no folder "
            f"{name} in {folder}")


def describe_catalogue(policy: Policy | None, catalogue: Catalogue,
                       home: Path) -> tuple[list[str], list[str]]:
    """`mailagent check`'s lines about skills: the folder and each valid skill (allowed or
    not), and an error for each invalid one with the reason."""
    folder = shown_path(catalogue.folder, home)
    if not catalogue.skills and not catalogue.problems:
        where = "" if catalogue.folder.exists() else " (no such folder)"
        return [f"skills in {folder}: none{where}"], []
    granted = {g.name: g.source for g in policy.skills} if policy is not None else {}
    lines = [f"skills in {folder}: {len(catalogue.skills)} valid, "
             f"{len(catalogue.problems)} invalid"]
    for skill in catalogue.skills:
        allowed = (f"allowed by {granted[skill.name]}" if skill.name in granted
                   else "not allowed by any policy file")
        lines.append(f"  {skill.name}: {allowed}: {skill.description[:100]}")
    errors = [f"skill {folder}/{p.folder} is not listed to the model: {p.reason}"
              for p in catalogue.problems]
    return lines, errors
