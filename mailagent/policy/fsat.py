"""Files reached through descriptors from a folder rule's root: check and use are one act (F1).

In: an `Anchor` from the policy engine (the root folder of the rule that decided, the names below
it, and the identities of the protected files and folders). Out: descriptors of the folder, the
file or the parent folder it names, and a `Lookup` of what is there now, for judging.
Side effects: opens descriptors (the caller closes what it is handed); `parent(create=True)`
makes missing folders. What changes files through these descriptors is mailagent/tools/anchored.py.
It must never follow a symlink, resolve a name again from `/` between the decision and the I/O,
open a FIFO or device for I/O, or raise anything but PolicyError (naming the path and what
happened). Linux's openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS walks the names in one
call; where the kernel or a seccomp filter refuses it, each name is opened from its parent with
O_NOFOLLOW. Both walks are tested. Protected files are also known by (st_dev, st_ino), so a
hard link to one, or one whose folder was renamed, is still refused (F3).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailagent.errors import PolicyError

Identity = tuple[int, int]  # (st_dev, st_ino)

SYS_OPENAT2 = 437  # the same number on x86_64 and aarch64
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
# ENOSYS: a kernel before 5.6; EPERM: a seccomp filter (older container runtimes); EINVAL, E2BIG:
# flags or a struct size this kernel does not know. Then each name is walked on its own, which is
# as strict, so falling back on any of these can never open more.
_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG})
_O_PATH = getattr(os, "O_PATH", os.O_RDONLY)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_WALK_FLAGS = _O_PATH | _O_DIRECTORY
_LIST_FLAGS = os.O_RDONLY | _O_DIRECTORY
_READ_FLAGS = (os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_NOCTTY", 0))
MAX_CLIMB = 512  # folders between a descriptor and its rule's root, at most


@dataclass(frozen=True)
class Anchor:
    """A judged path as the rule's root folder and the names below it (no `..`, no symlinks)."""

    root: Path  # absolute, every symlink followed when the rule was loaded
    parts: tuple[str, ...]  # empty for the root itself
    protected: frozenset[Identity] = frozenset()

    @property
    def path(self) -> Path:
        return self.root.joinpath(*self.parts)


@dataclass(frozen=True)
class Lookup:
    """What an anchor names now, seen through descriptors (a symlink is never followed)."""

    info: os.stat_result | None  # the file or folder itself; None when it does not exist
    root_missing: bool = False  # the rule's folder itself does not exist
    not_folder: Path | None = None  # a file on the way where a folder should be
    changed: str | None = None  # why the way there changed since the path was resolved
    protected: Identity | None = None  # a protected file or folder met on the way


class _MissingError(PolicyError):
    """A name on the way does not exist."""


class _WalkError(Exception):
    """One name of a walk could not be opened: which one (0-based) and the errno."""

    def __init__(self, depth: int, code: int) -> None:
        super().__init__(depth, code)
        self.depth, self.code = depth, code


# ---------------------------------------------------------------------------------------------
# Walking


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


@functools.cache
def _syscall() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function: Any = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_long
    return function  # type: ignore[no-any-return]


def openat2(dir_fd: int, path: str, flags: int) -> int | None:
    """openat2(2) beneath `dir_fd` with no symlink followed: a descriptor, or None where this
    kernel (or a seccomp filter) does not offer it. OSError when the walk is refused."""
    syscall = _syscall()
    if syscall is None:
        return None
    how = _OpenHow(flags | _O_CLOEXEC, 0,
                   RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
    encoded = os.fsencode(path)
    while True:
        fd = syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(encoded),
                     ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        code = ctypes.get_errno()
        if code == errno.EINTR:
            continue
        if code in _UNSUPPORTED:
            return None
        raise OSError(code, os.strerror(code), path)


def _walk(dir_fd: int, names: tuple[str, ...], flags: int, *, create: bool = False,
          partial: bool = False) -> tuple[int, int]:
    """Open each name from its parent with O_NOFOLLOW: (descriptor, how many names were opened).

    A missing folder is made (`create`) or ends the walk early (`partial`); any other refusal
    raises _WalkError. The descriptor is the caller's, `dir_fd` stays open."""
    current = os.open(".", (flags if not names else _WALK_FLAGS) | _O_CLOEXEC, dir_fd=dir_fd)
    for depth, name in enumerate(names):
        step = flags if depth == len(names) - 1 else _WALK_FLAGS
        try:
            try:
                following = os.open(name, step | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=current)
            except FileNotFoundError:
                if partial:
                    return current, depth
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # made meanwhile: opened next
                    os.mkdir(name, dir_fd=current)
                following = os.open(name, step | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=current)
        except (OSError, ValueError) as error:  # ValueError: a name the OS cannot encode
            os.close(current)
            raise _WalkError(depth, getattr(error, "errno", None) or errno.EINVAL) from None
        os.close(current)
        current = following
    return current, len(names)


def _reach(dir_fd: int, names: tuple[str, ...], flags: int, *, create: bool = False,
           partial: bool = False) -> tuple[int, int]:
    """As `_walk`, in one openat2(2) call where the kernel offers it; a refusal is walked again
    name by name, to say which name failed (or to make the missing folders)."""
    if names:
        try:
            fd = openat2(dir_fd, "/".join(names), flags)
        except (OSError, ValueError):
            fd = None
        if fd is not None:
            return fd, len(names)
    return _walk(dir_fd, names, flags, create=create, partial=partial)


def _check_names(anchor: Anchor) -> None:
    for name in anchor.parts:
        if name in ("", ".", "..") or "/" in name or "\x00" in name:
            raise PolicyError(f"{anchor.path} holds the name {name!r}, which no walk accepts")
        try:
            os.fsencode(name)
        except UnicodeError:
            raise PolicyError(f"the name {name!r} cannot be a file name here") from None
    if not anchor.root.is_absolute():
        raise PolicyError(f"{anchor.root} is not an absolute folder")


def _open_root(anchor: Anchor) -> int:
    """The rule's root folder, walked from / with no symlink followed (rule paths hold none)."""
    _check_names(anchor)
    slash = os.open("/", _WALK_FLAGS | _O_CLOEXEC)
    try:
        fd, _ = _reach(slash, anchor.root.parts[1:], _WALK_FLAGS)
    except _WalkError as blocked:
        raise _refusal(slash, anchor.root.parts[1:], blocked, Path("/")) from None
    finally:
        os.close(slash)
    return fd


def _refusal(dir_fd: int, names: tuple[str, ...], blocked: _WalkError, base: Path) -> PolicyError:
    """The PolicyError for a walk that stopped: what the name that failed is now."""
    shown = base.joinpath(*names[: blocked.depth + 1])
    if blocked.code in (errno.ENOTDIR, errno.ELOOP):
        kind = _kind_at(dir_fd, names[: blocked.depth + 1])
        if kind == "symlink":
            return PolicyError(f"{shown} is a symlink now: it changed after the path was "
                               "checked, so nothing was done; try again")
        return PolicyError(f"{shown} is a file, not a folder")
    if blocked.code == errno.ENOENT:
        return _MissingError(f"{shown} does not exist (any more); list its folder to see what "
                             "does")
    if blocked.code == errno.EXDEV:
        return PolicyError(f"{shown} leads out of its folder; nothing was done")
    return PolicyError(f"{shown} cannot be opened ({os.strerror(blocked.code)})")


def _kind_at(dir_fd: int, names: tuple[str, ...]) -> str:
    """'symlink', 'folder', 'file' or 'gone': what the last name is now, for a message."""
    try:
        fd, _ = _walk(dir_fd, names[:-1], _WALK_FLAGS)
    except (_WalkError, OSError):
        return "gone"
    try:
        mode = os.stat(names[-1], dir_fd=fd, follow_symlinks=False).st_mode
    except OSError:
        return "gone"
    finally:
        os.close(fd)
    return "symlink" if stat.S_ISLNK(mode) else "folder" if stat.S_ISDIR(mode) else "file"


def _identity(info: os.stat_result) -> Identity:
    return info.st_dev, info.st_ino


def _climb(fd: int, root: Identity, protected: frozenset[Identity]) -> Identity | None:
    """Go up `..` from a folder to the rule's root: the first protected folder on the way (or
    the root itself, if protected), else None. PolicyError when the root is not reached: the
    folder was moved out of it while in use."""
    current = os.open(".", _WALK_FLAGS | _O_CLOEXEC, dir_fd=fd)
    try:
        for _ in range(MAX_CLIMB):
            here = _identity(os.fstat(current))
            if here in protected:
                return here
            if here == root:
                return None
            parent = os.open("..", _WALK_FLAGS | _O_CLOEXEC, dir_fd=current)
            os.close(current)
            current = parent
            if _identity(os.fstat(current)) == here:  # `..` of / is /
                break
    finally:
        os.close(current)
    raise PolicyError("the folder was moved out of its rule's folder while in use; nothing "
                      "was done")


# ---------------------------------------------------------------------------------------------
# Judging


def lookup(anchor: Anchor) -> Lookup:
    """What `anchor` names now: its lstat, or why the way there fails. PolicyError only when the
    rule's folder cannot be reached for another reason than not existing."""
    with guarded(anchor):
        try:
            root = _open_root(anchor)
        except _MissingError:
            return Lookup(None, root_missing=True)
        try:
            return _look_below(root, anchor)
        except PolicyError as error:
            return Lookup(None, changed=str(error))
        finally:
            os.close(root)


def _look_below(root: int, anchor: Anchor) -> Lookup:
    root_id = _identity(os.fstat(root))
    if not anchor.parts:
        return Lookup(os.fstat(root), protected=root_id if root_id in anchor.protected else None)
    folders = anchor.parts[:-1]
    try:
        parent, depth = _reach(root, folders, _WALK_FLAGS, partial=True)
    except _WalkError as blocked:
        names = folders[: blocked.depth + 1]
        if blocked.code in (errno.ENOTDIR, errno.ELOOP) and _kind_at(root, names) == "file":
            return Lookup(None, not_folder=anchor.root.joinpath(*names))
        return Lookup(None, changed=str(_refusal(root, folders, blocked, anchor.root)))
    try:
        hit = _climb(parent, root_id, anchor.protected)
        if depth < len(folders):
            return Lookup(None, protected=hit)
        try:
            info = os.stat(anchor.parts[-1], dir_fd=parent, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return Lookup(None, protected=hit)
        if hit is None and _identity(info) in anchor.protected:
            hit = _identity(info)
        return Lookup(info, protected=hit)
    finally:
        os.close(parent)


# ---------------------------------------------------------------------------------------------
# Using


@contextlib.contextmanager
def folder(anchor: Anchor) -> Iterator[int]:
    """A read descriptor of the folder `anchor` names (for listing and searching)."""
    fd = _open_checked(anchor, anchor.parts, _LIST_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def parent(anchor: Anchor, *, create: bool = False) -> Iterator[Parent]:
    """The open folder that holds what `anchor` names, and its name; `create` makes missing
    folders on the way (each one beneath the root, none through a symlink)."""
    if not anchor.parts:
        raise PolicyError(f"{anchor.root} is the folder of a rule itself, not a file")
    fd = _open_checked(anchor, anchor.parts[:-1], _WALK_FLAGS, create=create)
    try:
        yield Parent(fd, anchor.parts[-1], anchor.path, anchor.protected)
    finally:
        os.close(fd)


def _open_checked(anchor: Anchor, names: tuple[str, ...], flags: int, *,
                  create: bool = False) -> int:
    """`names` opened below the rule's root, then climbed back up to it: a folder that is (or
    lies in) a protected one, or that was moved out of the root, is refused."""
    with guarded(anchor):
        root = _open_root(anchor)
        try:
            try:
                fd, _ = _reach(root, names, flags, create=create)
            except _WalkError as blocked:
                raise _refusal(root, names, blocked, anchor.root) from None
            try:
                hit = _climb(fd, _identity(os.fstat(root)), anchor.protected)
                if hit is not None:
                    raise PolicyError(f"{anchor.path} lies in one of mailagent's protected "
                                      "folders (it was moved or renamed); it is never read or "
                                      "changed")
            except BaseException:
                os.close(fd)
                raise
            return fd
        finally:
            os.close(root)


@dataclass(frozen=True)
class Parent:
    """An open folder and one name in it: where a file is read, replaced, moved or deleted."""

    fd: int
    name: str
    path: Path  # for messages and records
    protected: frozenset[Identity]

    def stat(self) -> os.stat_result | None:
        """The entry itself (a symlink is not followed), or None when there is none."""
        with guarded(self.path):
            try:
                return os.stat(self.name, dir_fd=self.fd, follow_symlinks=False)
            except FileNotFoundError:
                return None

    def open_file(self, *, for_change: bool) -> tuple[int, os.stat_result]:
        """A read descriptor of the regular file here, judged by fstat: not a symlink, FIFO,
        socket or device, not protected, and for a change no other hard link (F2)."""
        info = self.stat()
        if info is None:
            raise PolicyError(f"{self.path} does not exist (any more)")
        judge_file(info, self.path, self.protected, for_change=for_change)
        with guarded(self.path):
            fd = os.open(self.name, _READ_FLAGS, dir_fd=self.fd)
            opened = os.fstat(fd)
        if _identity(opened) != _identity(info) or not stat.S_ISREG(opened.st_mode):
            os.close(fd)
            raise PolicyError(f"{self.path} changed while it was being opened; nothing was "
                              "done, try again")
        return fd, opened

    def same(self, info: os.stat_result) -> None:
        """PolicyError unless the entry here is still the file `info` describes."""
        now = self.stat()
        if now is None or _identity(now) != _identity(info):
            raise PolicyError(f"{self.path} changed while it was being used; nothing more "
                              "was done, try again")


def judge_file(info: os.stat_result, path: Path, protected: frozenset[Identity], *,
               for_change: bool) -> None:
    """PolicyError unless `info` is a plain file the tools may use."""
    if _identity(info) in protected:
        raise PolicyError(f"{path} is one of mailagent's protected files (a hard link to it, "
                          "or it was moved); it is never read or changed")
    if stat.S_ISLNK(info.st_mode):
        raise PolicyError(f"{path} is a symlink now: it changed after the path was checked, "
                          "so nothing was done; try again")
    if stat.S_ISDIR(info.st_mode):
        raise PolicyError(f"{path} is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise PolicyError(f"{path} is not a regular file (a FIFO, socket or device)")
    if for_change and info.st_nlink > 1:
        raise PolicyError(f"{path} has {info.st_nlink} hard links, so changing it could change "
                          "a file elsewhere; work on a copy in the workspace")


@contextlib.contextmanager
def guarded(what: Anchor | Path) -> Iterator[None]:
    """Every OSError (and an unencodable name) as a PolicyError naming the path."""
    try:
        yield
    except PolicyError:
        raise
    except _WalkError as blocked:
        shown = what.path if isinstance(what, Anchor) else what
        raise PolicyError(f"{shown} cannot be opened ({os.strerror(blocked.code)})") from None
    except (OSError, ValueError) as error:
        raise policy_error(error, what.path if isinstance(what, Anchor) else what) from None
    except NotImplementedError:  # no dir_fd here (Windows): no file is reached by name instead
        raise PolicyError("file tools need a system that opens files relative to a folder "
                          "descriptor (Linux, macOS); nothing was done") from None


def policy_error(error: OSError | ValueError, shown: Path) -> PolicyError:
    """The PolicyError for an OSError (or an unencodable name) met while using `shown`."""
    why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return PolicyError(f"{shown} cannot be used ({why}); nothing was done")


def identities(paths: tuple[Path, ...], *, max_entries: int = 1000) -> dict[Identity, Path]:
    """(st_dev, st_ino) -> path of each path that exists and of what each folder among them
    holds directly (at most `max_entries` a folder): protected files are known by identity, so
    a hard link to one, or a folder renamed around one, does not unprotect it (F3)."""
    found: dict[Identity, Path] = {}
    for path in paths:
        try:
            info = os.lstat(path)
        except (OSError, ValueError):
            continue
        if stat.S_ISLNK(info.st_mode):
            continue
        found.setdefault(_identity(info), path)
        if stat.S_ISDIR(info.st_mode):
            found.update({key: where for key, where in _entries(path, max_entries).items()
                          if key not in found})
    return found


def _entries(folder_path: Path, limit: int) -> dict[Identity, Path]:
    """The identities of what a folder holds directly (no symlinks), at most `limit` entries."""
    found: dict[Identity, Path] = {}
    try:
        with os.scandir(folder_path) as entries:
            for count, entry in enumerate(entries):
                if count >= limit:
                    break
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    if not stat.S_ISLNK(info.st_mode):
                        found.setdefault(_identity(info), folder_path / entry.name)
    except OSError:
        pass
    return found
