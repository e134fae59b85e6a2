"""A wall clock the tests move, for the service process only, with Debian's libfaketime.

The service runs with libfaketime preloaded, reading its offset from a file on every call
(`FAKETIME_NO_CACHE`), so a test can move the service's clock (the wall clock and, with it, the
monotonic one, as a machine waking from sleep would see) without any hook in the product.
`scripts/test.sh` installs the `faketime` package when it is missing.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

LIBRARIES = (Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
             Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
             Path("/usr/lib/faketime/libfaketime.so.1"))


def faketime_library() -> Path:
    for path in LIBRARIES:
        if path.exists():
            return path
    raise AssertionError("libfaketime is missing: install the Debian package `faketime` "
                         "(scripts/test.sh does when run as root)")


class FakeClock:
    """The service's clock: `set` moves it (forward only), `now` reads it."""

    def __init__(self, folder: Path, start: datetime) -> None:
        self.path = folder / "faketime.offset"
        self.library = faketime_library()
        self.offset = 0.0
        self.set(start)

    def set(self, when: datetime) -> None:
        offset = when.timestamp() - time.time()
        assert offset >= self.offset - 1, "the fake clock only moves forward"
        self.offset = offset
        self.path.write_text(f"{offset:+.3f}\n")

    def now(self) -> datetime:
        return datetime.fromtimestamp(time.time() + self.offset, UTC)

    def env(self) -> dict[str, str]:
        return {"LD_PRELOAD": str(self.library), "FAKETIME_TIMESTAMP_FILE": str(self.path),
                "FAKETIME_NO_CACHE": "1"}
