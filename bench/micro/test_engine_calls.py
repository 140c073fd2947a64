"""Per-call cost of the engine's control-plane API (what the Python loop pays).

Why these calls: the router publishes route tables on every change, starts
and cancels timers for heartbeats and idle expiry, drains event batches on
every wake-up, and reads counters and lateness for metrics scrapes.
"""

from __future__ import annotations

import time

from router._native import ffi, lib

from bench.micro.conftest import Benchmark
from router.engine import DRAIN_BATCH, PRIO_HIGH, PRIO_NORMAL, Engine, RouteTarget, Target

PRIME_TIMEOUT_S = 5.0
DRAIN_ROUNDS = 200
TIMER_ROUNDS = 5000


def drain_all(engine: Engine) -> int:
    """Empties every ring (bounded: at most 1,000 batches)."""
    total = 0
    for _ in range(1000):
        got = len(engine.drain(DRAIN_BATCH))
        total += got
        if got == 0:
            break
    return total


def timers_fired(engine: Engine) -> int:
    return sum(engine.worker_stats(w).timers_fired for w in range(engine.workers))


def prime_events(engine: Engine, n: int = DRAIN_BATCH) -> None:
    """Leaves exactly n TIMER events pending: n zero-delay timers, then waits
    (bounded) until the workers fired them all."""
    drain_all(engine)
    before = timers_fired(engine)
    for _ in range(n):
        engine.timer_start(0.0, 0.0, PRIO_NORMAL)
    deadline = time.monotonic() + PRIME_TIMEOUT_S
    while timers_fired(engine) - before < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} zero-delay timers did not fire in {PRIME_TIMEOUT_S} s")
        time.sleep(0.0005)


def test_publish_routes_1_address_4_targets(
    benchmark: Benchmark, engine: Engine, targets: list[Target]
) -> None:
    table = {0: [RouteTarget(t, "127.0.0.1", 9000 + i) for i, t in enumerate(targets)]}
    version = benchmark(engine.publish_routes, table)
    assert version > 0


def test_timer_start_cancel(benchmark: Benchmark, engine: Engine) -> None:
    def start_cancel() -> None:
        engine.timer_cancel(engine.timer_start(10.0, 0.0, PRIO_HIGH))

    # each pair queues a TIMER_CANCELLED event: drain between rounds so the
    # rings never overflow (the drain is not timed)
    def setup() -> None:
        drain_all(engine)

    benchmark.pedantic(start_cancel, setup=setup, rounds=TIMER_ROUNDS, warmup_rounds=100)
    time.sleep(0.05)
    drain_all(engine)
    assert engine.counters()["events_dropped"] == 0


def test_drain_empty(benchmark: Benchmark, engine: Engine) -> None:
    drain_all(engine)
    events = benchmark(engine.drain, DRAIN_BATCH)
    assert events == []


def test_drain_256_events(benchmark: Benchmark, engine: Engine) -> None:
    events = benchmark.pedantic(
        engine.drain,
        args=(DRAIN_BATCH,),
        setup=lambda: prime_events(engine),
        rounds=DRAIN_ROUNDS,
    )
    assert len(events) == DRAIN_BATCH


def test_drain_256_events_raw_c_call(benchmark: Benchmark, engine: Engine) -> None:
    """The same batch through the bare cffi call: what Engine.drain() adds on
    top (Event objects, enum conversion) is the difference."""
    buf = ffi.new("sk_event[]", DRAIN_BATCH)
    overflow = ffi.new("int *")

    def raw() -> int:
        return int(lib.sk_engine_drain(engine._ptr, buf, DRAIN_BATCH, overflow))

    got = benchmark.pedantic(raw, setup=lambda: prime_events(engine), rounds=DRAIN_ROUNDS)
    assert got == DRAIN_BATCH


def test_counters(benchmark: Benchmark, engine: Engine) -> None:
    counters = benchmark(engine.counters)
    assert "accepted" in counters


def test_lateness(benchmark: Benchmark, engine: Engine) -> None:
    hist = benchmark(engine.lateness, PRIO_HIGH)
    assert len(hist.bounds_ns) == len(hist.cumulative)
