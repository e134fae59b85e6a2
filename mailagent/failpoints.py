"""Failpoints: die at a named step, as `kill -9` would, for crash tests.

The step is named by MAILAGENT_FAILPOINT (read by config into `Settings.failpoint`). In normal
runs it is unset and every call here is a comparison and nothing else.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)


def failpoint(chosen: str | None, name: str) -> None:
    if chosen == name:
        log.warning("failpoint %s: killing the process", name)
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
