"""The short-connection storm: the same client load against each subject,
in interleaved rounds, with every figure kept exact until it is reported.

Why interleaved (direct, engine, direct, engine…): absolute rates drift with
the machine (thermal, other tenants, TIME_WAIT build-up), so rounds of the
two subjects alternate and the comparison is the ratio inside one run.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bench.client import FAILURE_KINDS, TICK_S, ClientPool, ClientResult, RunSpec, Tick
from bench.echo import EchoServer
from bench.histogram import Histogram
from bench.host import environment, raise_nofile_limit
from bench.subjects import (
    DirectSubject,
    EngineSubject,
    ProbeSnapshot,
    Subject,
    add_engine_histograms,
    window,
)
from router.engine import Histogram as EngineHistogram

SUBJECTS = ("direct", "engine")
START_DELAY_S = 0.2  # lets every client process reach its start line
COLLECT_SLACK_S = 30.0
COUNT_MODE_CAP_S = 300.0  # a --count round still stops after this long


@dataclass(slots=True)
class StormConfig:
    """Run parameters (all of them land in the JSON report)."""

    clients: int = 100
    duration_s: float = 5.0
    count: int | None = None
    procs: int = 2
    workers: int = 2
    worker_cpus: tuple[int, ...] = ()  # pin the engine's workers (round robin); (): no
    worker_nice: int | None = None  # the engine's workers' nice value; None: inherited
    rounds: int = 1
    subjects: tuple[str, ...] = SUBJECTS
    timeout_s: float = 10.0
    source_addrs: int = 253
    echo_procs: int = 1
    echo_addrs: int = 1  # engine targets: the echo server on this many addresses
    corrupt_echo: bool = False
    timer_period_s: float = 0.01
    pause_s: float = 0.5
    tls_ca_file: str | None = None  # TLS clients trusting this CA (engine TLS listener)
    tls_fingerprints: bool = False  # note when each server certificate is first seen

    def round_cap_s(self) -> float:
        return self.duration_s if self.count is None else COUNT_MODE_CAP_S

    def validate(self) -> None:
        if self.clients < 1 or self.procs < 1 or self.rounds < 1 or self.workers < 0:
            raise ValueError("clients, procs and rounds must be >= 1, workers >= 0")
        if self.count is None and self.duration_s <= 0:
            raise ValueError("give a positive duration or a count")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be >= 1")
        unknown = set(self.subjects) - set(SUBJECTS)
        if unknown or not self.subjects:
            raise ValueError(f"subjects must be among {SUBJECTS}, got {self.subjects}")


def split(total: int, parts: int) -> list[int]:
    """total spread over parts as evenly as integers allow."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    """One TICK_S interval of a round, every process's ticks added."""

    t_s: float  # end of the interval, seconds since the round's start
    ok: int
    failed: int
    total_ok: int
    total_failed: int
    latency_ns: Histogram

    def as_dict(self) -> dict[str, float]:
        return {
            "t_s": self.t_s,
            "ok": self.ok,
            "failed": self.failed,
            "connections_per_s": self.ok / TICK_S,
            "p50_ms": self.latency_ns.quantile(0.5) / 1e6,
            "p99_ms": self.latency_ns.quantile(0.99) / 1e6,
        }


class Timeline:
    """Ticks of several processes merged per interval; an interval is
    complete (and reported) once every process sent it."""

    def __init__(self, procs: int) -> None:
        self.procs = procs
        self._lock = threading.Lock()
        self._parts: dict[int, list[Tick]] = {}
        self._done: list[TimelinePoint] = []
        self._total_ok = 0
        self._total_failed = 0

    def add(self, proc: int, tick: Tick) -> TimelinePoint | None:
        with self._lock:
            parts = self._parts.setdefault(tick.index, [])
            parts.append(tick)
            if len(parts) < self.procs:
                return None
            del self._parts[tick.index]
            ok = sum(t.ok for t in parts)
            failed = sum(t.failed for t in parts)
            self._total_ok += ok
            self._total_failed += failed
            point = TimelinePoint(
                (tick.index + 1) * TICK_S,
                ok,
                failed,
                self._total_ok,
                self._total_failed,
                Histogram.merged(t.latency_ns for t in parts),
            )
            self._done.append(point)
            return point

    def points(self) -> list[dict[str, float]]:
        """Every interval, including the last ones only some processes reached."""
        with self._lock:
            done = list(self._done)
            for index, parts in sorted(self._parts.items()):
                done.append(
                    TimelinePoint(
                        (index + 1) * TICK_S,
                        sum(t.ok for t in parts),
                        sum(t.failed for t in parts),
                        0,
                        0,
                        Histogram.merged(t.latency_ns for t in parts),
                    )
                )
            return [p.as_dict() for p in sorted(done, key=lambda p: p.t_s)]


def _earliest(maps: Iterable[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in maps:
        for k, t in m.items():
            if k not in out or t < out[k]:
                out[k] = t
    return out


def _added(maps: Iterable[dict[str, dict[int, int]]]) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = {}
    for m in maps:
        for k, bins in m.items():
            mine = out.setdefault(k, {})
            for b, n in bins.items():
                mine[b] = mine.get(b, 0) + n
    return out


@dataclass(slots=True)
class RoundResult:
    """One subject's round: client-side counts plus the engine's window."""

    subject: str
    index: int
    elapsed_s: float
    ok: int
    failures: dict[str, int]
    latency_ns: Histogram
    client_cpu_s: float
    echo_cpu_s: float
    engine: dict[str, Any]
    event_lateness_ns: Histogram
    error_samples: list[str]
    proc_cpu_s: list[float] = field(default_factory=list)  # per client process
    timeline: list[dict[str, float]] = field(default_factory=list)  # per TICK_S
    first_seen: dict[str, float] = field(default_factory=dict)  # TLS cert -> first use
    # TLS cert -> {time bin (client.PRESENTED_BIN_S): handshakes presenting it}
    presented: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def cps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def proc_utilisation(self) -> list[float]:
        """Each client process's CPU time over the round's wall time (1.0 = a full core)."""
        return [c / self.elapsed_s for c in self.proc_cpu_s] if self.elapsed_s > 0 else []

    @classmethod
    def combine(
        cls,
        subject: str,
        index: int,
        start_at: float,
        parts: list[ClientResult],
        echo_cpu_s: float,
        engine: dict[str, Any],
        event_lateness_ns: Histogram,
    ) -> RoundResult:
        failures = dict.fromkeys(FAILURE_KINDS, 0)
        samples: list[str] = []
        for p in parts:
            for k, v in p.failures.items():
                failures[k] += v
            samples.extend(s for s in p.error_samples if s not in samples)
        return cls(
            subject=subject,
            index=index,
            elapsed_s=max((p.ended for p in parts), default=start_at) - start_at,
            ok=sum(p.ok for p in parts),
            failures=failures,
            latency_ns=Histogram.merged(p.latency_ns for p in parts),
            client_cpu_s=sum(p.cpu_s for p in parts),
            echo_cpu_s=echo_cpu_s,
            engine=engine,
            event_lateness_ns=event_lateness_ns,
            error_samples=samples,
            proc_cpu_s=[p.cpu_s for p in parts],
            first_seen=_earliest(p.first_seen for p in parts),
            presented=_added(p.presented for p in parts),
        )


def _summed(total: EngineHistogram | None, h: object) -> EngineHistogram:
    """total plus one round's engine histogram h (h alone for the first)."""
    assert isinstance(h, EngineHistogram)
    return h if total is None else add_engine_histograms(total, h)


@dataclass(slots=True)
class SubjectSummary:
    """Every round of one subject, combined exactly (counts and histograms add)."""

    subject: str
    rounds: list[RoundResult]
    ok: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latency_ns: Histogram = field(default_factory=Histogram)
    cps_rounds: list[float] = field(default_factory=list)
    engine_cpu_ns: int = 0
    relayed: int = 0
    lateness: EngineHistogram | None = None
    dispatch: EngineHistogram | None = None
    dispatch_cpu: EngineHistogram | None = None
    dispatch_cpu_unpreempted: EngineHistogram | None = None
    event_lateness_ns: Histogram = field(default_factory=Histogram)
    client_cpu_s: float = 0.0
    echo_cpu_s: float = 0.0
    elapsed_s: float = 0.0

    @classmethod
    def of(cls, subject: str, rounds: list[RoundResult]) -> SubjectSummary:
        s = cls(subject, rounds, failures=dict.fromkeys(FAILURE_KINDS, 0))
        for r in rounds:
            s.ok += r.ok
            for k, v in r.failures.items():
                s.failures[k] += v
            s.latency_ns.merge(r.latency_ns)
            s.cps_rounds.append(r.cps)
            s.engine_cpu_ns += int(r.engine["cpu_ns"])
            s.relayed += int(r.engine["listener"]["opened"])
            s.lateness = _summed(s.lateness, r.engine["lateness"])
            s.dispatch = _summed(s.dispatch, r.engine["dispatch"])
            s.dispatch_cpu = _summed(s.dispatch_cpu, r.engine["dispatch_cpu"])
            s.dispatch_cpu_unpreempted = _summed(
                s.dispatch_cpu_unpreempted, r.engine["dispatch_cpu_unpreempted"]
            )
            s.event_lateness_ns.merge(r.event_lateness_ns)
            s.client_cpu_s += r.client_cpu_s
            s.echo_cpu_s += r.echo_cpu_s
            s.elapsed_s += r.elapsed_s
        return s

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def cps(self) -> float:
        """Median over rounds (one round: that round's rate)."""
        return statistics.median(self.cps_rounds) if self.cps_rounds else 0.0

    @property
    def engine_cpu_us_per_conn(self) -> float | None:
        """Engine worker CPU per relayed connection; None when nothing was relayed."""
        return self.engine_cpu_ns / self.relayed / 1e3 if self.relayed else None

    @property
    def completed(self) -> int:
        return self.ok + self.failed


@dataclass(slots=True)
class StormReport:
    config: StormConfig
    environment: dict[str, Any]
    rounds: list[RoundResult]
    summaries: dict[str, SubjectSummary]
    engine_final_counters: dict[str, int]
    engine_other_events: dict[str, int]
    engine_workers: int
    wall_s: float

    @property
    def ratio_cps(self) -> float | None:
        """engine / direct connections per second, when both ran."""
        d = self.summaries.get("direct")
        e = self.summaries.get("engine")
        if d is None or e is None or d.cps == 0:
            return None
        return e.cps / d.cps


def round_specs(
    cfg: StormConfig, procs: int, address: tuple[str, int], index: int, start_at: float
) -> list[RunSpec]:
    """Round index of cfg's load split over procs client processes: each
    its share of the clients (and of the count), its own stretch of the
    source addresses and of the payload sequence numbers."""
    host, port = address
    clients = split(cfg.clients, procs)
    counts: list[int | None] = (
        [None] * procs if cfg.count is None else list(split(cfg.count, procs))
    )
    stride = max(1, cfg.source_addrs // procs)
    return [
        RunSpec(
            host=host,
            port=port,
            clients=clients[i],
            start_at=start_at,
            duration_s=cfg.round_cap_s(),
            count=counts[i],
            timeout_s=cfg.timeout_s,
            source_addrs=cfg.source_addrs,
            source_offset=i * stride,
            seq_base=(index * procs + i) << 40,
            tls_ca_file=cfg.tls_ca_file,
            tls_fingerprints=cfg.tls_fingerprints,
        )
        for i in range(procs)
    ]


async def run_round(
    cfg: StormConfig,
    subject: Subject,
    index: int,
    pool: ClientPool,
    echo: EchoServer | None,
    probe: EngineSubject | None,
    on_progress: Callable[[TimelinePoint], None] | None = None,
) -> RoundResult:
    """One round against subject; probe and echo are None when the bench
    does not own them (a --target run), and their figures are left empty."""
    loop = asyncio.get_running_loop()
    start_at = time.monotonic() + START_DELAY_S
    specs = round_specs(cfg, pool.size, subject.address, index, start_at)
    before: ProbeSnapshot | None = probe.snapshot() if probe is not None else None
    if probe is not None:
        probe.take_event_lateness()
    echo_cpu0 = echo.cpu_s() if echo is not None else 0.0
    pool.submit(specs)
    limit = START_DELAY_S + cfg.round_cap_s() + cfg.timeout_s + COLLECT_SLACK_S
    timeline = Timeline(pool.size)

    def on_tick(proc: int, tick: Tick) -> None:
        # runs on the executor thread: hand the point over to the loop
        point = timeline.add(proc, tick)
        if point is not None and on_progress is not None:
            loop.call_soon_threadsafe(on_progress, point)

    # the loop keeps draining engine events while an executor thread waits
    parts = await loop.run_in_executor(None, pool.collect, limit, on_tick)
    if probe is not None and before is not None:
        engine = window(probe.snapshot(), before)
        event_lateness = probe.take_event_lateness()
    else:
        engine, event_lateness = {}, Histogram()
    result = RoundResult.combine(
        subject.name,
        index,
        start_at,
        parts,
        (echo.cpu_s() if echo is not None else 0.0) - echo_cpu0,
        engine,
        event_lateness,
    )
    result.timeline = timeline.points()
    return result


async def _run_rounds(
    cfg: StormConfig, pool: ClientPool, echo: EchoServer, probe: EngineSubject
) -> list[RoundResult]:
    probe.attach(asyncio.get_running_loop())
    by_name: dict[str, Subject] = {
        "direct": DirectSubject(echo.port),
        "engine": probe,
    }
    out: list[RoundResult] = []
    for r in range(cfg.rounds):
        for name in cfg.subjects:
            out.append(await run_round(cfg, by_name[name], r, pool, echo, probe))
            await asyncio.sleep(cfg.pause_s)
    return out


def run_storm(cfg: StormConfig) -> StormReport:
    """Starts echo server, client processes and engine; runs every round; stops all."""
    import uvloop

    cfg.validate()
    raise_nofile_limit()
    t0 = time.monotonic()
    with (
        EchoServer.start(cfg.echo_procs, corrupt=cfg.corrupt_echo, addrs=cfg.echo_addrs) as echo,
        ClientPool(cfg.procs) as pool,
    ):
        probe = EngineSubject(
            echo.port,
            cfg.workers,
            cfg.timer_period_s,
            tuple(echo.addresses),
            cfg.worker_cpus,
            cfg.worker_nice,
        )
        try:
            rounds = uvloop.run(_run_rounds(cfg, pool, echo, probe))
        finally:
            final = probe.stop()
    summaries = {
        name: SubjectSummary.of(name, [r for r in rounds if r.subject == name])
        for name in cfg.subjects
    }
    return StormReport(
        config=cfg,
        environment=environment(),
        rounds=rounds,
        summaries=summaries,
        engine_final_counters=final,
        engine_other_events=dict(probe.other_events),
        engine_workers=probe.engine.workers,
        wall_s=time.monotonic() - t0,
    )
