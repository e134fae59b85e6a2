"""Running tasks through the real worker and agent in-process, against the model double.

`make_settings` writes a policy and points the model at the double; `add_task` queues a task
as intake would; `settle` runs the worker until no task is queued or running (or `until` says
so), then stops it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailagent.agent.loop import Agent
from mailagent.config import AgentSettings, ModelSettings, Settings
from mailagent.store import NewTask, Store
from mailagent.tasks.worker import Worker
from tests.support.config import settings_for_tests
from tests.support.model_server import ModelServer

__all__ = ["MODEL", "add_task", "make_settings", "open_store", "settle", "settle_async"]

MODEL = "claude-test-model"


def make_settings(tmp_path: Path, model: ModelServer, home: Path, policy: str = "",
                  database_url: str | None = None, **agent: Any) -> Settings:
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "main.toml").write_text(policy or f"""
[[folders]]
path = "{home / 'docs'}"
access = "read"

[[folders]]
path = "{home / 'out'}"
access = "write"
delete = "never"
""")
    model_settings = ModelSettings(name=MODEL, base_url=model.base_url, api_key="test",
                                   max_retries=0, timeout_seconds=30)
    database = {"database_url": database_url} if database_url else {}
    return settings_for_tests(tmp_path, model=model_settings, policies_dir=policies,
                              agent=AgentSettings(**agent), **database)


def add_task(store: Store, instruction: str, conversation: str = "main") -> int:
    return store.record_task(None, NewTask(conversation_name=conversation,
                                           owner_address="owner@example.com",
                                           subject=instruction[:40], message_id=None,
                                           references=(), instruction=instruction, data={}), "t")


async def settle_async(settings: Settings, store: Store, home: Path, timeout: float,
                       until: Callable[[], bool] | None) -> None:
    agent = Agent(settings.model, settings.agent, store)
    worker = Worker(settings, store, agent, home=home)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    deadline = asyncio.get_running_loop().time() + timeout
    settled = until or (lambda: not store.tasks(["queued", "running"]))
    while not settled() and not running.done():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"tasks did not settle: {store.tasks(['queued', 'running'])}")
        await asyncio.sleep(0.05)
    stop.set()
    await running
    await agent.close()


def settle(settings: Settings, store: Store, home: Path, timeout: float = 30,
           until: Callable[[], bool] | None = None) -> None:
    asyncio.run(settle_async(settings, store, home, timeout, until))


def open_store(settings: Settings) -> Store:
    return Store.open(settings.database_url)
