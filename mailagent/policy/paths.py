"""Paths under policy: what no rule can open, and a model's path string as the path it names.

In: a path string from the model and a `Scope`. Out: the fully resolved path (every symlink
followed, `~` and relative paths expanded against the scope), the protected paths, and how a
path is shown to the owner. Side effects: none but resolving (stat, readlink). Paths are
compared as paths, never as strings (F2); every path string is assumed hostile.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from mailagent.errors import PolicyError
from mailagent.policy.rules import MAX_PATH_CHARS, Scope

SYSTEM_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


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


def protected_paths(
    *, config_path: Path, policies_dir: Path, data_dir: Path, home: Path,
    skills_dir: Path | None = None, others: tuple[Path, ...] = (),
) -> tuple[Path, ...]:
    """What no rule can open (F3), resolved. `decide` leaves the task's own workspace usable
    although it lies inside the protected data dir; other conversations' workspaces stay shut.
    Likewise the skills folder: only reading the skills a policy allows is let through.
    `others`: what the other agents of one deployment own, shut to this one's tools."""
    home = real_path(home, str(home))
    named = [config_path, policies_dir, data_dir, *(home / name for name, _ in HOME_PROTECTED)]
    named += [skills_dir] if skills_dir is not None else []
    named += others
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
        raise PolicyError(f"{quoted_path(path)!r} holds a character no file name can hold (a lone "
                          "surrogate); name the file in plain text") from None
    return real_path(expand_path(path, scope.home, scope.workspace), path)


def expand_path(raw: str, home: Path, base: Path) -> Path:
    if raw == "~" or raw.startswith(("~/", "~" + os.sep)):
        return home / raw[1:].lstrip("/" + os.sep)
    if raw.startswith("~"):
        raise PolicyError(
            f"{quoted_path(raw)}: ~user paths are not supported; write ~/... for the home folder "
            f"or ./{quoted_path(raw)} for a file in the workspace"
        )
    return base / raw  # an absolute raw path replaces the base


def real_path(path: Path, raw: str) -> Path:
    try:
        resolved = Path(os.path.realpath(path))
    except (OSError, ValueError):  # realpath's readlink of a link that was just swapped away
        raise PolicyError(f"{quoted_path(raw)} changed while its symlinks were being followed; "
                          "try again") from None
    try:
        # realpath gives up silently on a loop and leaves the link in place; stat names it.
        os.stat(resolved)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise PolicyError(f"{quoted_path(raw)} runs into a symlink loop; name the file "
                              "without going through it") from None
    return resolved


def quoted_path(raw: str) -> str:
    # The path as the model gave it, bounded and printable: reasons reach logs, audit and mail.
    text = "".join(ch if ch.isprintable() else "?" for ch in raw[:200])
    return text + ("..." if len(raw) > 200 else "")


def shown_path(path: Path, home: Path) -> str:
    if path == home:
        return "~"
    if path.is_relative_to(home):
        return "~/" + path.relative_to(home).as_posix()
    return str(path)


def fold_case(path: Path) -> Path:
    # Protection matches without case: on macOS and Windows ~/.SSH is ~/.ssh. Stricter on Linux.
    return Path(str(path).casefold())
