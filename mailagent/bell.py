"""Bell: wakes one loop of the event loop at once, rung from any thread.

Each stage that sleeps until it has work (the worker, the postman) waits on its bell; whatever
gives it work rings it: the mailbox watcher's thread, the held-mail thread, another stage. A bell
made before the event loop runs takes the loop of its first wait, and a ring before that wait is
kept, so the stages can be built, and given each other's bells, before anything runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class Bell:
    """A wake-up call for one waiter; `ring` is safe from any thread, the rest on the loop."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.rung_early = False
        self._lock = threading.Lock()

    def ring(self) -> None:
        with self._lock:
            loop = self.loop
            if loop is None:  # nobody waits yet: the first wait finds it rung
                self.rung_early = True
                return
        if _running_loop() is loop:
            self.event.set()
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to wake
            loop.call_soon_threadsafe(self.event.set)

    def clear(self) -> None:
        self.event.clear()

    async def wait(self) -> None:
        with self._lock:
            if self.loop is None:
                self.loop = asyncio.get_running_loop()
                if self.rung_early:
                    self.event.set()
        await self.event.wait()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # a thread without a loop
        return None
