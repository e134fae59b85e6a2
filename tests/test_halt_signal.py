"""A halt reaches the worker as a one-time signal (as room after a full store does): the worker
stops the running tasks when the tools stop, not again at every turn of its loop while they stay
stopped; a halt after a resume is a new one and signals again."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from mailagent.agent.loop import Agent
from mailagent.bell import Bell
from mailagent.policy.integrity import Breach
from mailagent.store import Store
from mailagent.store.halts import resume
from mailagent.tasks.stoppage import Stoppage
from mailagent.tasks.worker import Worker
from tests.support.config import settings_for_tests


def test_a_halt_reaches_the_worker_once_and_again_only_after_a_resume(tmp_path: Path) -> None:
    settings = settings_for_tests(tmp_path)
    settings.policies_dir.mkdir()
    settings.config_path.write_text("")
    with contextlib.closing(Store.open(settings.database_url)) as store:
        bell = Bell()
        stoppage = Stoppage(settings, store, mail_bell=Bell(), work_bell=bell)
        agent = Agent(settings.model, settings.agent, store)
        worker = Worker(settings, store, agent, bell=bell, stoppage=stoppage)
        breach = Breach(("policies/main.toml changed",), 7, "main", "sh -c 'edit'")
        stoppage.halt(breach)
        assert stoppage.just_halted.is_set() and bell.rung_early  # the worker is woken
        worker.obey_stoppage()
        assert not stoppage.just_halted.is_set()  # heard: the next turns stop nothing
        assert worker.tools_stopped()
        stoppage.halt(breach)  # seen again while stopped: recorded, no new signal
        assert not stoppage.just_halted.is_set() and worker.tools_stopped()
        assert resume(store) is not None
        stoppage.poll()
        assert not worker.tools_stopped()
        stoppage.halt(breach)  # a new halt after the resume
        assert stoppage.just_halted.is_set()
        asyncio.run(agent.close())
