"""Tests of the load bench's own logic (not of the engine's speed).

Why: a bench that merges histograms wrongly, misses corrupted echoes or
drops keys from its JSON would report confident nonsense. These runs are
short (20 clients, about a second per subject).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.histogram import Histogram, bucket_index, bucket_range
from bench.report import format_table
from bench.storm import StormConfig, run_storm


def exact_quantile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank quantile, the definition Histogram.quantile approximates."""
    rank = max(1, min(len(sorted_values), math.ceil(q * len(sorted_values) - 1e-9)))
    return sorted_values[rank - 1]


def test_bucket_layout_is_contiguous_and_covers_every_value() -> None:
    bits = 8
    prev_hi = -1
    for i in range(bucket_index(1 << 30, bits) + 1):
        lo, hi = bucket_range(i, bits)
        assert lo == prev_hi + 1
        assert bucket_index(lo, bits) == i
        assert bucket_index(hi, bits) == i
        prev_hi = hi


def test_merge_equals_histogram_of_concatenated_samples() -> None:
    rng = random.Random(7)
    a = [int(rng.lognormvariate(13, 1.5)) for _ in range(5000)]
    b = [int(rng.expovariate(1 / 50_000)) for _ in range(3000)] + [0, 1, 255, 256]
    ha, hb, hall = Histogram(), Histogram(), Histogram()
    ha.record_many(a)
    hb.record_many(b)
    hall.record_many(a + b)
    merged = Histogram.merged([ha, hb])
    assert merged.counts == hall.counts
    assert (merged.count, merged.total, merged.min, merged.max) == (
        hall.count,
        hall.total,
        hall.min,
        hall.max,
    )
    ordered = sorted(a + b)
    for q in (0.0, 0.5, 0.9, 0.99, 0.999, 1.0):
        got, want = merged.quantile(q), exact_quantile(ordered, q)
        assert got >= want
        assert got - want <= max(1, want * merged.precision), (q, got, want)


def test_histogram_survives_json_round_trip() -> None:
    h = Histogram()
    h.record_many([5, 500, 5_000_000, 5_000_000_000])
    back = Histogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert back.counts == h.counts
    assert back.quantile(0.5) == h.quantile(0.5)


def test_merge_rejects_other_layouts() -> None:
    with pytest.raises(ValueError):
        Histogram().merge(Histogram(bits=6))


def _quick(**kw: object) -> StormConfig:
    cfg = StormConfig(clients=20, duration_s=0.8, procs=2, workers=2, timeout_s=3.0, pause_s=0.0)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_storm_both_subjects_clean() -> None:
    report = run_storm(_quick())
    assert set(report.summaries) == {"direct", "engine"}
    for name, s in report.summaries.items():
        assert s.failed == 0, (name, s.failures, [r.error_samples for r in s.rounds])
        assert s.ok > 0 and s.cps > 0
        assert s.latency_ns.count == s.ok
    engine = report.summaries["engine"]
    assert engine.relayed >= engine.ok
    cpu = engine.engine_cpu_us_per_conn
    assert cpu is not None and cpu > 0
    # the 10 ms high-priority timer was running and its events were drained
    assert engine.lateness is not None and engine.lateness.count > 0
    assert engine.event_lateness_ns.count > 0
    # fired high timers also recorded their dispatch delay in CPU time (those
    # that came due while the worker had its CPU clock sampled: nearly all)
    assert engine.dispatch_cpu is not None
    assert 0 < engine.dispatch_cpu.count <= engine.lateness.count
    assert report.ratio_cps is not None and report.ratio_cps > 0
    text = format_table(report)
    assert "timer goals" in text and "dispatch CPU p99" in text
    assert "lateness p99 engine/idle-engine" in text


def test_corrupting_echo_server_is_detected() -> None:
    report = run_storm(_quick(corrupt_echo=True, count=200))
    for name, s in report.summaries.items():
        assert s.ok == 0, name
        assert s.failures["wrong_echo"] == 200, (name, s.failures)


def test_json_output_has_expected_keys(tmp_path: Path) -> None:
    out = tmp_path / "storm.json"
    rc = main(
        [
            "storm",
            "--clients",
            "10",
            "--count",
            "300",
            "--procs",
            "2",
            "--pause",
            "0",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert {"params", "environment", "subjects", "ratio_engine_direct_cps", "rounds"} <= set(data)
    assert {"cpu_count", "python", "worker_threads", "client_procs"} <= set(data["environment"])
    assert data["params"]["clients"] == 10
    assert data["params"]["count"] == 300
    for name in ("direct", "engine"):
        s = data["subjects"][name]
        assert {
            "connections_per_s",
            "failed",
            "failures",
            "latency_us",
            "engine_cpu_us_per_conn",
            "timer_lateness",
        } <= set(s)
        assert {"p50", "p99", "max"} <= set(s["latency_us"])
        assert {"p50_us", "p99_us", "max_us"} <= set(s["timer_lateness"])
        assert {"count", "p99_us", "max_us"} <= set(s["timer_dispatch_cpu"])
        assert "ephemeral_port_errors" in s["failures"]
        assert s["ok"] == 300
    assert data["subjects"]["engine"]["engine_cpu_us_per_conn"] > 0
    assert len(data["rounds"]) == 2
