"""Changing a folder through its descriptor: atomic replacement, unlinking, renaming, and copies
and moves into the trash, each an `*at` call on a folder that mailagent.policy.fsat opened from a
rule's root (or, for the protected paths a command made, from `/` with no symlink followed).

In: `Parent`s (an open folder and a name in it) and open file descriptors. Out: the change on
disk, or PolicyError naming the path. Side effects: exactly the change asked for; a temporary
file beside the target while it is written.
It must never reach a file by a path resolved again from `/` (only the trash, the service's own
folder, is named by path), and never leave a half-written file under the target's name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from mailagent.errors import PolicyError
from mailagent.policy.fsat import Parent, guarded, policy_error

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NEW_FILE = os.O_CREAT | os.O_EXCL | os.O_WRONLY | _O_NOFOLLOW | _O_CLOEXEC
_FOLDER = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_NOFOLLOW | _O_CLOEXEC
COPY_CHUNK_BYTES = 1024 * 1024


def replace_contents(place: Parent, payload: bytes | int, *, like: os.stat_result | None = None
                     ) -> None:
    """Write a new file beside `place.name` and rename it over the name: a crash leaves the old
    file or the new one, never half of each. `payload` is bytes, or a descriptor to copy from;
    `like` gives the mode and times to keep (a move across file systems)."""
    temporary = f".mailagent-{secrets.token_hex(8)}"
    with guarded(place.path):
        _write_new(place.fd, temporary, payload, like)
        try:
            os.replace(temporary, place.name, src_dir_fd=place.fd, dst_dir_fd=place.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=place.fd)
            raise


def _write_new(dir_fd: int, name: str, payload: bytes | int, like: os.stat_result | None) -> None:
    """Create `name` (O_EXCL, mode 0600 unless `like` says otherwise) and fill it; a failure
    removes it again. FileExistsError when the name is taken."""
    fd = os.open(name, _NEW_FILE, 0o600, dir_fd=dir_fd)
    try:
        try:
            _fill(fd, payload)
            if like is not None:
                os.fchmod(fd, stat.S_IMODE(like.st_mode))
                os.utime(fd, ns=(like.st_atime_ns, like.st_mtime_ns))
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        raise


def _fill(fd: int, payload: bytes | int) -> None:
    if isinstance(payload, bytes):
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        return
    os.lseek(payload, 0, os.SEEK_SET)
    while chunk := os.read(payload, COPY_CHUNK_BYTES):
        _fill(fd, chunk)


def unlink(place: Parent, info: os.stat_result) -> None:
    """Remove `place.name` if it is still the file `info` describes."""
    place.same(info)
    with guarded(place.path):
        os.unlink(place.name, dir_fd=place.fd)


def rename(source: Parent, info: os.stat_result, destination: Parent) -> bool:
    """Move the file `info` describes from `source` to `destination` in one rename (over what
    is there); False when they lie on different file systems, for the caller to copy."""
    source.same(info)
    try:
        os.rename(source.name, destination.name, src_dir_fd=source.fd,
                  dst_dir_fd=destination.fd)
    except OSError as error:
        if error.errno == errno.EXDEV:
            return False
        raise policy_error(error, source.path) from None
    return True


def copy_into(source_fd: int, info: os.stat_result, folder_path: Path, name: str) -> Path:
    """Copy an open file into a folder of the service's own (the trash) as `<n>-<name>`, keeping
    its mode and times; returns where it went."""
    with guarded(folder_path):
        folder_path.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder_path, _FOLDER)
        try:
            number = len(os.listdir(fd)) + 1
            for attempt in range(100):
                kept = f"{number + attempt}-{name}"
                try:
                    _write_new(fd, kept, source_fd, info)
                except FileExistsError:
                    continue
                return folder_path / kept
        finally:
            os.close(fd)
    raise PolicyError(f"no free name for a copy of {name} in {folder_path}")


def move_into(place: Parent, folder_path: Path, name: str) -> Path:
    """Move what `place` names (a file, a folder or a symlink, never followed) into a folder of
    the service's own (the trash) as `name`, in one rename from the parent's descriptor."""
    with guarded(place.path):
        folder_path.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder_path, _FOLDER)
        try:
            os.rename(place.name, name, src_dir_fd=place.fd, dst_dir_fd=fd)
        finally:
            os.close(fd)
    return folder_path / name
