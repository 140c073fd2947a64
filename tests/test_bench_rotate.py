"""``rotate``'s rewritten-bundle case and its stale/never-presented figures.

Why: these figures are the measure of the original failure (a profile's own
large CA bundle rewritten every second); a miscount would hide it or invent
it. The arithmetic is pinned with hand-made results, and one short run of
the same-profile case shows the figures are produced end to end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.client import PRESENTED_BIN_S
from bench.histogram import Histogram
from bench.pki import CertAuthority
from bench.report import count_above, format_timer_goals, timer_goal_figures
from bench.rotate import (
    RotateConfig,
    RotateResult,
    Rotation,
    _check_fingerprint,
    _distinct_bundles,
    bundle_bytes,
    bundle_fingerprint,
    bundle_in_force,
    format_rotate,
    rotate_json,
    run_rotate,
)
from bench.storm import RoundResult
from router.engine import Histogram as EngineHistogram


def _result(presented: dict[str, dict[int, int]], stale_after: float = 0.5) -> RotateResult:
    rnd = RoundResult(
        subject="engine-tls",
        index=0,
        elapsed_s=1.0,
        ok=sum(sum(b.values()) for b in presented.values()),
        failures={},
        latency_ns=Histogram(),
        client_cpu_s=0.0,
        echo_cpu_s=0.0,
        engine={},
        event_lateness_ns=Histogram(),
        error_samples=[],
        presented=presented,
        first_seen={},
    )
    rots = [Rotation(1, "fp1", t_write=10.0), Rotation(2, "fp2", t_write=11.0)]
    cfg = RotateConfig(stale_after_s=stale_after)
    return RotateResult(cfg, rnd, rots, [], {}, t0=9.0, initial_fingerprint="fp0")


def bin_at(t: float) -> int:
    return round(t / PRESENTED_BIN_S)


def test_stale_counts_handshakes_after_a_newer_write() -> None:
    res = _result(
        {
            # the initial certificate: fine before 10.5, stale from 10.5 (rotation 1 at 10.0)
            "fp0": {bin_at(9.5): 3, bin_at(10.2): 4, bin_at(10.5): 5, bin_at(10.9): 6},
            # rotation 1: stale from 11.5 (rotation 2 written at 11.0)
            "fp1": {bin_at(11.2): 7, bin_at(11.7): 8},
            # the newest certificate is never stale
            "fp2": {bin_at(30.0): 9},
        }
    )
    st = res.stale()
    assert st["handshakes"] == 3 + 4 + 5 + 6 + 7 + 8 + 9
    assert st["stale"] == 5 + 6 + 8
    assert st["longest_s"] == pytest.approx(0.9)
    assert _result(res.round.presented, stale_after=2.0).stale()["stale"] == 0


def test_never_presented_counts_rotations_no_client_saw() -> None:
    res = _result({"fp2": {bin_at(12.0): 1}})
    res.round.first_seen = {"fp2": 11.05}
    assert res.pickup_ms()["never_seen"] == 1
    figures = rotate_json(res)["figures"]
    assert figures["rotations_never_presented"] == 1


def test_distinct_bundles_differ_and_start_with_the_ca() -> None:
    ca = b"-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
    for n in (1, 3):
        a, b = _distinct_bundles(ca, n)
        assert a != b and a.startswith(ca) and b.startswith(ca)
        assert a.count(b"BEGIN CERTIFICATE") == n == b.count(b"BEGIN CERTIFICATE")


def test_bundle_in_force_matches_the_written_bundle() -> None:
    """A rewrite is in force at the first publication of its own store
    before the next rewrite; a publication of the other bundle does not
    count, and a rewrite that never went out is superseded."""
    rots = [
        Rotation(10, "c10", t_write=1.0, slow=True),  # rewrite 1
        Rotation(15, "c15", t_write=1.5),
        Rotation(20, "c20", t_write=2.0, slow=True),  # rewrite 2
        Rotation(30, "c30", t_write=3.0, slow=True),  # rewrite 3
    ]
    pubs = [
        (1.2, "fp0"),  # the old store still (published with a new certificate)
        (1.4, "fp1"),  # rewrite 1: in force 400 ms after its write
        (2.5, "fp1"),  # rewrite 2 never went out before rewrite 3
        (3.1, "fp3"),  # rewrite 3
        (3.2, "fp2"),  # an older bundle after a newer one is not rewrite 2 in force
    ]
    delays, superseded, regressions = bundle_in_force(rots, pubs, lambda k: f"fp{k}", 10)
    assert delays == pytest.approx([400.0, 100.0])
    assert superseded == 1
    assert regressions == 1  # fp2 after fp3


def test_bundle_fingerprint_is_the_engines(tmp_path: Path) -> None:
    data = bundle_bytes((CertAuthority().pem, CertAuthority().pem), 3)
    _check_fingerprint(tmp_path, data)  # raises if they disagree
    assert bundle_fingerprint(data) != bundle_fingerprint(data + b"\n")


def test_rotate_same_profile_bundle_short_run() -> None:
    cfg = RotateConfig(
        clients=8,
        duration_s=1.5,
        procs=1,
        interval_s=0.1,
        slow_every=5,
        bundle_same_profile=True,
        bundle_certs=50,
    )
    res = run_rotate(cfg)
    figures = rotate_json(res)["figures"]
    assert res.round.failed == 0 and res.ok
    assert figures["stale_handshakes"]["handshakes"] == res.round.ok
    assert 0 <= figures["rotations_never_presented"] <= len(res.rotations)
    assert figures["slowest_connection_ms"] > 0
    assert any(r.slow for r in res.rotations)
    assert res.bundle_load_ms  # the profile was republished after bundle rewrites
    assert figures["bundle_in_force_ms"]["in_force"] == len(res.bundle_load_ms)
    assert figures["bundle_in_force_ms"]["older_after_newer"] == 0
    assert figures["control_loop_lag_us"]["count"] > 10
    assert res.baseline is None and res.timer_goals() is None  # rotate: no baseline


def test_storm_tls_has_a_baseline_round_and_judges_the_timer_goals() -> None:
    """storm --tls (no rotation): the same storm first through a spawned
    skiffd while the bench's engine idles; the timer goals compare the
    engine's lateness under its own storm with that baseline."""
    res = run_rotate(RotateConfig(clients=8, duration_s=1.0, procs=1, interval_s=None))
    assert res.ok
    assert res.baseline is not None and res.baseline.ok > 0 and res.baseline.failed == 0
    assert res.round.ok > 0
    # the engine made no handshake in the baseline round, every one after
    assert res.baseline.engine["counters"]["tls_handshakes"] == 0
    assert res.round.engine["counters"]["tls_handshakes"] >= res.round.ok
    goals = res.timer_goals()
    assert goals is not None
    assert goals["dispatch_cpu_us"]["count"] > 0
    assert goals["idle_engine_lateness_us"]["count"] > 0
    assert set(goals["met"]) == {"dispatch_cpu_p99", "dispatch_cpu_max", "lateness_ratio"}
    assert 0 <= goals["dispatch_cpu_us"]["over_goal"] <= goals["dispatch_cpu_us"]["count"]
    solo = goals["dispatch_cpu_unpreempted_us"]
    assert solo["count"] <= goals["dispatch_cpu_us"]["count"]
    assert solo["over_goal"] <= goals["dispatch_cpu_us"]["over_goal"]
    assert "timer goals" in format_rotate(res)
    assert f"of {goals['dispatch_cpu_us']['count']} firings over it" in format_rotate(res)
    assert rotate_json(res)["figures"]["timer_goals"] == goals


def test_firings_over_the_dispatch_goal_are_counted_from_the_histogram() -> None:
    """The timer line's "k of n firings over it": the values above 250 µs,
    read at that bound of the engine's histogram (1, 1.5, 2, 2.5, 3, 4, 5,
    7.5 x powers of ten: 250 µs is one)."""
    bounds = (100e3, 150e3, 200e3, 250e3, 300e3, float("inf"))
    h = EngineHistogram(bounds, (5, 7, 9, 12, 14, 15), 15, 0, 2_000_000)
    assert count_above(h, 250e3) == 3
    assert count_above(h, 100e3) == 10
    assert count_above(None, 250e3) == 0
    with pytest.raises(ValueError, match="not a bound"):
        count_above(h, 260e3)
    goals = timer_goal_figures(h, h, h)
    assert goals["dispatch_cpu_us"]["over_goal"] == 3
    assert "3 of 15 firings over it" in format_timer_goals(goals)
    assert "not preempted" not in format_timer_goals(goals)  # none given
    solo = EngineHistogram(bounds, (5, 7, 9, 11, 11, 11), 11, 0, 240_000)
    goals = timer_goal_figures(h, h, h, solo)
    assert goals["dispatch_cpu_unpreempted_us"]["over_goal"] == 0
    assert goals["met"]["dispatch_cpu_p99"] is False  # judged on every firing
    assert "firings not preempted in their span (11): dispatch CPU p99 240 µs" in (
        format_timer_goals(goals)
    )
