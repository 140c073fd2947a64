"""The things a storm is pointed at, and the engine probe that watches them.

Why a probe separate from the subject: the engine runs (with its 10 ms
high-priority timer) for the whole bench, so its timer lateness is measured
in every round, including the ``direct`` rounds where it relays nothing: that
is the baseline that tells scheduler noise from the engine's own delays.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from bench.histogram import Histogram
from router.engine import (
    PRIO_HIGH,
    Engine,
    EngineOptions,
    Event,
    EventType,
    FlowStats,
    RouteTarget,
    WorkerStats,
)
from router.engine import Histogram as EngineHistogram

ADDRESS_ID = 0
LISTEN_BACKLOG = 4096


class Subject(Protocol):
    """Where the clients connect to."""

    @property
    def name(self) -> str: ...

    @property
    def address(self) -> tuple[str, int]: ...


@dataclass(frozen=True, slots=True)
class AddressSubject:
    """Any address, under a name: a relay the bench started, or a target."""

    name: str
    address: tuple[str, int]


@dataclass(frozen=True, slots=True)
class DirectSubject:
    """The echo server itself: the ceiling of the machine and the clients."""

    echo_port: int
    name: str = "direct"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.echo_port)


@dataclass(frozen=True, slots=True)
class ProbeSnapshot:
    """Cumulative engine figures at one instant; subtract two for a window."""

    cpu_ns: int
    lateness: EngineHistogram
    dispatch: EngineHistogram  # the engine's own share of the lateness
    dispatch_cpu: EngineHistogram  # the worker's own CPU time over that share
    dispatch_cpu_unpreempted: EngineHistogram  # of those, the spans not preempted
    listener: FlowStats
    target: FlowStats
    counters: dict[str, int]
    timer_events: int
    workers: tuple[WorkerStats, ...]


def add_engine_histograms(a: EngineHistogram, b: EngineHistogram) -> EngineHistogram:
    """Sum of two window histograms of the engine (its API has minus(), no plus)."""
    return EngineHistogram(
        a.bounds_ns,
        tuple(x + y for x, y in zip(a.cumulative, b.cumulative, strict=True)),
        a.count + b.count,
        a.sum_ns + b.sum_ns,
        max(a.max_ns, b.max_ns),
    )


def window_max_ns(window: EngineHistogram) -> float:
    """An upper bound of the largest value inside a window.

    The engine's minus() keeps the lifetime max, so the window's own max is
    bounded by the upper edge of its highest non-empty bucket instead."""
    prev = 0
    top = 0.0
    for bound, cum in zip(window.bounds_ns, window.cumulative, strict=True):
        if cum > prev:
            top = bound
        prev = cum
    return float(min(top, window.max_ns)) if window.count else 0.0


def sum_flows(stats: list[FlowStats]) -> FlowStats:
    """Several targets' counters as one."""
    return FlowStats(*(sum(getattr(s, f) for s in stats) for f in FlowStats.__dataclass_fields__))


def flow_delta(after: FlowStats, before: FlowStats) -> dict[str, int]:
    """Counters of a window (active is a level, kept as seen at the end)."""
    return {
        "opened": after.opened - before.opened,
        "closed": after.closed - before.closed,
        "bytes_in": after.bytes_in - before.bytes_in,
        "bytes_out": after.bytes_out - before.bytes_out,
        "failed": after.failed - before.failed,
        "active_at_end": after.active,
    }


class EngineSubject:
    """A Skiff engine relaying 127.0.0.1:<ephemeral> to the echo server.

    Created in the bench's parent process; its events are drained by the
    parent's asyncio loop (attach()), which is what a router does."""

    name = "engine"

    def __init__(
        self,
        echo_port: int,
        worker_threads: int = 2,
        timer_period_s: float = 0.01,
        echo_hosts: tuple[str, ...] = ("127.0.0.1",),
        worker_cpus: tuple[int, ...] = (),
        worker_nice: int | None = None,
    ) -> None:
        self.engine = Engine(
            EngineOptions(
                worker_threads=worker_threads, worker_cpus=worker_cpus, worker_nice=worker_nice
            )
        )
        try:
            # one target per echo address (all the same service)
            self.targets = [self.engine.target() for _ in echo_hosts]
            self.routes_version = self.engine.publish_routes(
                {
                    ADDRESS_ID: [
                        RouteTarget(t, host, echo_port)
                        for t, host in zip(self.targets, echo_hosts, strict=True)
                    ]
                }
            )
            self.listener = self.engine.listen(
                "127.0.0.1", 0, address_id=ADDRESS_ID, backlog=LISTEN_BACKLOG
            )
            # one periodic high-priority timer per worker, so every worker's
            # lateness is in the histogram (worker -1 would pick just one)
            self.timer_ids = [
                self.engine.timer_start(timer_period_s, timer_period_s, PRIO_HIGH, worker=w)
                for w in range(self.engine.workers)
            ]
        except BaseException:
            self.engine.stop()
            raise
        self.timer_events = 0
        self.event_lateness_ns = Histogram()
        self.other_events: dict[str, int] = {}
        self.engine.on_event(self._on_event)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.listener.port)

    def _on_event(self, ev: Event) -> None:
        if ev.type == EventType.TIMER:
            self.timer_events += 1
            self.event_lateness_ns.record(ev.a)
        else:
            self.other_events[ev.type.name] = self.other_events.get(ev.type.name, 0) + 1

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.engine.attach(loop)

    def snapshot(self) -> ProbeSnapshot:
        return ProbeSnapshot(
            cpu_ns=self.engine.workers_cpu_ns(),
            lateness=self.engine.lateness(PRIO_HIGH),
            dispatch=self.engine.dispatch_delay(PRIO_HIGH),
            dispatch_cpu=self.engine.dispatch_cpu(PRIO_HIGH),
            dispatch_cpu_unpreempted=self.engine.dispatch_cpu_unpreempted(PRIO_HIGH),
            listener=self.listener.stats(),
            target=sum_flows([t.stats() for t in self.targets]),
            counters=self.engine.counters(),
            timer_events=self.timer_events,
            workers=tuple(self.engine.worker_stats(w) for w in range(self.engine.workers)),
        )

    def take_event_lateness(self) -> Histogram:
        """The timer lateness seen in events since the last call (exact max)."""
        h, self.event_lateness_ns = self.event_lateness_ns, Histogram()
        return h

    def stop(self) -> dict[str, int]:
        """Stops the engine; returns what it still had allocated (expect zeros)."""
        for tid in self.timer_ids:
            self.engine.timer_cancel(tid)
        self.engine.stop()
        return dict(self.engine.final_counters)


def window(after: ProbeSnapshot, before: ProbeSnapshot) -> dict[str, Any]:
    """The engine's figures between two snapshots."""
    counters = {
        k: after.counters[k] - before.counters.get(k, 0)
        for k in after.counters
        if k not in ("conns_live", "bufs_live", "buf_bytes_live", "routes_version")
    }
    return {
        "cpu_ns": after.cpu_ns - before.cpu_ns,
        "lateness": after.lateness.minus(before.lateness),
        "dispatch": after.dispatch.minus(before.dispatch),
        "dispatch_cpu": after.dispatch_cpu.minus(before.dispatch_cpu),
        "dispatch_cpu_unpreempted": after.dispatch_cpu_unpreempted.minus(
            before.dispatch_cpu_unpreempted
        ),
        "listener": flow_delta(after.listener, before.listener),
        "target": flow_delta(after.target, before.target),
        "counters": counters,
        "levels_at_end": {
            k: after.counters[k] for k in ("conns_live", "bufs_live", "buf_bytes_live")
        },
        "timer_events": after.timer_events - before.timer_events,
        # per worker: spots imbalance and preemption (busy wall time >> CPU time)
        "workers": [
            {
                f: getattr(a, f) - getattr(b, f)
                for f in WorkerStats.__dataclass_fields__
                if f != "connections"
            }
            for a, b in zip(after.workers, before.workers, strict=True)
        ],
    }
