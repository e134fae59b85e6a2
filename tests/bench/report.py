"""Targets, the table, and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    target: str
    met: Callable[[dict[str, Any]], bool] | None = None


def _over_floor(f: dict[str, Any]) -> float:
    return float(f["pickup_p50_ms"]) - float(f["floor_p50_ms"])


FIGURES = (
    Figure("pickup_p50_ms", "pickup p50 (delivery -> first model request)", "ms",
           "<= floor p50 + 50 ms", lambda f: _over_floor(f) <= 50),
    Figure("first_pickup_ms", "pickup of a process's first task (imports the model SDK)", "ms",
           "<= pickup p50 + 1000 ms",
           lambda f: float(f["first_pickup_ms"]) <= float(f["pickup_p50_ms"]) + 1000),
    Figure("pickup_p95_ms", "pickup p95", "ms", ""),
    Figure("floor_p50_ms", "floor p50 (bare IMAP IDLE client notified)", "ms", ""),
    Figure("floor_p95_ms", "floor p95", "ms", ""),
    Figure("loop_p50_ms", "loop p50 (delivery -> reply at SMTP, instant model)", "ms", ""),
    Figure("loop_p95_ms", "loop p95", "ms", ""),
    Figure("backlog_s", "backlog (mails delivered while stopped -> last reply)", "s",
           "<= 10 s", lambda f: float(f["backlog_s"]) <= 10),
    Figure("backlog_cpu_s", "service CPU time for the backlog", "s", ""),
    Figure("concurrency_s", "conversations at once, model 2 s per turn: wall time", "s",
           "< 3 s", lambda f: float(f["concurrency_s"]) < 3),
    Figure("prefix_share_mean", "cacheable prefix, mean share per request", "",
           ">= 0.95", lambda f: float(f["prefix_share_mean"]) >= 0.95),
    Figure("prefix_share_min", "cacheable prefix, lowest share", "", ""),
    Figure("request_tokens_max", "largest request (estimated tokens)", "tokens",
           "<= model.max_context_tokens",
           lambda f: int(f["request_tokens_max"]) <= int(f["context_budget"])),
    Figure("rss_idle_mb", "service RSS, idle", "MiB", "<= 85 MiB",
           lambda f: float(f["rss_idle_mb"]) <= 85),
    Figure("cpu_idle_s_per_min", "service CPU, idle", "s/min", "<= 0.1 s/min",
           lambda f: float(f["cpu_idle_s_per_min"]) <= 0.1),
    Figure("rss_after_backlog_mb", "service RSS after the backlog", "MB", "< 150 MB",
           lambda f: float(f["rss_after_backlog_mb"]) < 150),
)


def verdicts(figures: dict[str, Any]) -> dict[str, str]:
    return {f.key: ("PASS" if f.met(figures) else "MISS") for f in FIGURES if f.met}


def table(figures: dict[str, Any]) -> str:
    """The figures beside their targets, as a Markdown table (readable in a terminal too)."""
    results = verdicts(figures)
    rows = ["| figure | value | target | |", "|---|---|---|---|"]
    for f in FIGURES:
        value = figures[f.key]
        shown = f"{value} {f.unit}".strip()
        rows.append(f"| {f.label} | {shown} | {f.target} | {results.get(f.key, '')} |")
    context = (f"backlog: {figures['backlog_mails']} mails, {figures['model_requests']} model "
               f"requests, {figures['compactions']} compactions; prefix over the first "
               f"{figures['prefix_tasks']} tasks; budget {figures['context_budget']} tokens; "
               f"{figures['conversations']} conversations")
    return "\n".join([*rows, "", context])


def machine() -> dict[str, Any]:
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "cpus": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
            "at": datetime.now(UTC).isoformat(timespec="seconds")}


def write(path: Path, figures: dict[str, Any], details: dict[str, Any], quick: bool) -> None:
    payload = {"quick": quick, "machine": machine(), "figures": figures,
               "targets": {f.key: f.target for f in FIGURES if f.target},
               "verdicts": verdicts(figures), "details": details}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
