"""The scenarios: each starts fresh servers and a fresh service and returns its raw figures."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from typing import Any

from mailagent.agent.messages import estimate_tokens
from tests.bench.harness import FloorListener, Rig, cpu_seconds, percentile, rig, rss_mb
from tests.support.mail import owner_mail
from tests.support.model_server import RecordedRequest, Reply, text
from tests.support.service import wait_until

SETTLE_SECONDS = 1.0  # after connecting, so that the service is in IDLE, as it mostly is


@dataclass(frozen=True)
class Sizes:
    """How much of each scenario to run; `quick` keeps the whole suite under a minute."""

    pickup_mails: int = 20
    idle_seconds: float = 30.0  # how long the idle service's CPU time is watched
    backlog_mails: int = 200
    prefix_tasks: int = 50
    conversations: int = 5
    model_seconds: float = 2.0
    context_budget: int = 20_000


QUICK = Sizes(pickup_mails=3, idle_seconds=3.0, backlog_mails=10, prefix_tasks=10)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def started(r: Rig) -> int:
    r.service.start().wait_connected()
    time.sleep(SETTLE_SECONDS)
    assert r.service.process is not None
    return r.service.process.pid


def pickup(sizes: Sizes) -> dict[str, Any]:
    """Mail by mail into an idle service with an instant model: delivery to the first model
    request (pickup), to the server's IDLE notification (floor), and to the reply (loop)."""
    with rig() as r:
        pid = started(r)
        idle_rss = rss_mb(pid)
        cpu_before = cpu_seconds(pid)
        time.sleep(sizes.idle_seconds)
        idle_cpu = (cpu_seconds(pid) - cpu_before) * 60 / sizes.idle_seconds
        floor = FloorListener(r.dovecot)
        try:
            time.sleep(0.3)
            pickups, floors, loops = [], [], []
            for n in range(sizes.pickup_mails):
                seen = len(r.model.message_requests)
                delivered = r.deliver(owner_mail(f"Pickup {n}", f"Say hello number {n}."))
                replied = r.wait_replies(n + 1, 30)[n]
                first = r.model.message_requests[seen].received_at
                pickups.append(first - delivered)
                floors.append(floor.first_after(delivered) - delivered)
                loops.append(replied - delivered)
                # Dovecot tells an IDLE client of a change 500 ms after it (NOTIFY_DELAY_MSECS
                # in its mailbox-watch.c), and a mail that arrives while such a timer runs
                # (after the service's own flags on the last mail) rides on it. Each mail
                # starts with no timer running, so the floor is the server's, not a leftover.
                time.sleep(1.0)
        finally:
            floor.close()
    return {
        "rss_idle_mb": round(idle_rss, 1),
        "cpu_idle_s_per_min": round(idle_cpu, 3),
        # The first task of a process also imports the model SDK, which an idle service lacks.
        "first_pickup_ms": ms(pickups[0]),
        "pickup_p50_ms": ms(percentile(pickups, 0.5)),
        "pickup_p95_ms": ms(percentile(pickups, 0.95)),
        "floor_p50_ms": ms(percentile(floors, 0.5)),
        "floor_p95_ms": ms(percentile(floors, 0.95)),
        "loop_p50_ms": ms(percentile(loops, 0.5)),
        "loop_p95_ms": ms(percentile(loops, 0.95)),
        "samples_ms": {"pickup": [ms(v) for v in pickups], "floor": [ms(v) for v in floors],
                       "loop": [ms(v) for v in loops]},
    }


def concurrency(sizes: Sizes) -> dict[str, Any]:
    """Conversations started together while the model takes `model_seconds` per turn, in a
    service that has answered one task since it started (the SDK's one-time import, about a
    second, is the first pickup's figure, not this one's)."""
    with rig() as r:
        started(r)
        r.deliver(owner_mail("[warm] Task", "Say hello."))
        r.wait_replies(1, 60)
        r.model.delay_seconds = sizes.model_seconds
        first = None
        for n in range(sizes.conversations):
            moment = r.deliver(owner_mail(f"[c{n}] Task", f"Conversation {n}: say hello."))
            first = first if first is not None else moment
        assert first is not None
        last = r.wait_replies(sizes.conversations + 1, 60)[-1]
    return {"concurrency_s": round(last - first, 2),
            "conversations": sizes.conversations, "model_seconds": sizes.model_seconds}


def answer(request: RecordedRequest) -> Reply:
    """A short answer to a task; a summary when the service asks for one (compaction)."""
    if is_summary(request):
        return text("Summary: the owner asked for many short notes; all were answered.")
    return text("Answered. " + "Some details of the answer. " * 12)


def is_summary(request: RecordedRequest) -> bool:
    return "transcript" in json.dumps(request.body.get("messages", []))


def backlog(sizes: Sizes) -> dict[str, Any]:
    """Mail delivered while the service is stopped, all in one conversation; then started:
    the time to the last reply, and what the model was sent on the way."""
    budget = sizes.context_budget
    with rig(model_extra=f"max_context_tokens = {budget}") as r:
        r.model.default = answer
        for n in range(sizes.backlog_mails):
            r.deliver(owner_mail(f"Backlog {n}", f"Task number {n}: write one line about {n}."))
        began = time.monotonic()
        r.service.start()
        last = r.wait_replies(sizes.backlog_mails, 600)[-1]
        assert r.service.process is not None
        after_rss = rss_mb(r.service.process.pid)
        service_cpu = cpu_seconds(r.service.process.pid)
        wait_until(lambda: r.model.message_requests, 5, "model requests")
        requests = r.model.message_requests
    tasks = [q for q in requests if not is_summary(q)]
    shares = [prefix_share(a, b) for a, b in itertools.pairwise(tasks[:sizes.prefix_tasks])]
    sizes_seen = [request_tokens(q) for q in requests]
    return {
        "backlog_s": round(last - began, 2),
        "backlog_mails": sizes.backlog_mails,
        # The service's own CPU time for the backlog: steadier than wall time on a busy machine.
        "backlog_cpu_s": round(service_cpu, 2),
        "rss_after_backlog_mb": round(after_rss, 1),
        "prefix_share_mean": round(sum(shares) / len(shares), 4) if shares else 0.0,
        "prefix_share_min": round(min(shares), 4) if shares else 0.0,
        "prefix_tasks": min(sizes.prefix_tasks, len(tasks)),
        "request_tokens_max": max(sizes_seen),
        "request_tokens_last": sizes_seen[-1],
        "context_budget": budget,
        "compactions": len(requests) - len(tasks),
        "model_requests": len(requests),
    }


def blocks(request: RecordedRequest) -> list[str]:
    """The prompt in the order the API caches it (tools, system, messages), one string per
    block, without the cache_control markers (they are not part of the cached text)."""
    body = request.body
    raw: list[tuple[str, object]] = [("tool", t) for t in body.get("tools", [])]
    system = body.get("system")
    raw += [("system", system)] if isinstance(system, str) else \
        [("system", b) for b in system or []]
    for message in body.get("messages", []):
        content = message["content"]
        items = [{"type": "text", "text": content}] if isinstance(content, str) else content
        raw += [(message["role"], b) for b in items]
    return [json.dumps([section, {k: v for k, v in block.items() if k != "cache_control"}
                                 if isinstance(block, dict) else block], sort_keys=True)
            for section, block in raw]


def prefix_share(previous: RecordedRequest, current: RecordedRequest) -> float:
    """The share of `current` (in characters) that repeats `previous` from its start: what a
    prompt cache written by `previous` can serve."""
    before, now = blocks(previous), blocks(current)
    common = 0
    for old, new in zip(before, now, strict=False):
        if old != new:
            break
        common += len(new)
    return common / max(1, sum(len(b) for b in now))


def request_tokens(request: RecordedRequest) -> int:
    """A request's size as the service measures it against model.max_context_tokens."""
    body = request.body
    system = body.get("system")
    system_text = system[0]["text"] if isinstance(system, list) else system
    return estimate_tokens([system_text, body.get("tools", []), body.get("messages", [])])
