"""One service per data directory: the lock it holds while it runs (SECURITY.md L5).

In: the data directory. Out: the lock, held for the life of `mailagent run`, and whether some
process holds it now (for `mailagent init --wait-for-first-task`). Side effects: the file
`mailagent.lock` in the data directory. The only importer of `filelock`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from mailagent.errors import AlreadyRunningError

LOCK_NAME = "mailagent.lock"
# A prober holds the lock for an instant: a starting service waits this long rather than
# mistaking the prober for another service.
ACQUIRE_SECONDS = 2.0


@contextmanager
def instance_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data directory's lock, or raise AlreadyRunningError."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(data_dir / LOCK_NAME))
    try:
        lock.acquire(timeout=ACQUIRE_SECONDS)
    except filelock.Timeout:
        raise AlreadyRunningError(
            f"another mailagent is running on {data_dir}: stop it first (or give this one "
            "another data_dir)"
        ) from None
    try:
        yield
    finally:
        lock.release()


def is_service_running(data_dir: Path) -> bool:
    """Whether a service holds the lock of `data_dir` now (taken and let go at once if not)."""
    path = data_dir / LOCK_NAME
    if not path.exists():
        return False
    lock = filelock.FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return True
    lock.release()
    return False
