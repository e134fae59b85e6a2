"""The benchmark suite still runs end to end and reports every figure (it times nothing here)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench import report
from tests.bench.__main__ import main


def test_the_quick_benchmark_writes_every_figure_with_sane_values(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    figures = data["figures"]
    assert data["quick"] is True
    assert {f.key for f in report.FIGURES} <= figures.keys()
    assert set(data["verdicts"]) == {f.key for f in report.FIGURES if f.met}
    assert set(data["verdicts"].values()) <= {"PASS", "MISS"}
    # Latencies: positive, and in causal order (notified, then asked the model, then replied).
    assert 0 < figures["floor_p50_ms"] <= figures["floor_p95_ms"] < 10_000
    assert 0 < figures["pickup_p50_ms"] <= figures["pickup_p95_ms"] < 30_000
    assert figures["pickup_p50_ms"] < figures["loop_p50_ms"] <= figures["loop_p95_ms"]
    assert len(data["details"]["pickup"]["pickup"]) == 3
    # The model took 2 s per turn, so no run of the conversations can be quicker than that.
    assert figures["model_seconds"] <= figures["concurrency_s"] < 120
    assert figures["backlog_mails"] == 10 and 0 < figures["backlog_s"] < 300
    assert figures["model_requests"] >= 10
    assert 0.5 < figures["prefix_share_min"] <= figures["prefix_share_mean"] <= 1
    assert 0 < figures["request_tokens_last"] <= figures["request_tokens_max"]
    assert figures["context_budget"] > 0
    assert 10 < figures["rss_idle_mb"] < 2000 and 10 < figures["rss_after_backlog_mb"] < 2000
    assert data["machine"]["cpus"] >= 1
