"""``compare``: the same workloads against several subjects in one run.

Why interleaved round by round (A B A B …): the machine drifts (TIME_WAIT
build-up, thermal state, neighbours), so each round runs every subject once
and the figures compared are medians over rounds, with min and max shown so
that a noisy run is visible as such. The ratio Skiff/HAProxy of medians is
the headline; ``minrelay`` (the simplest correct C relay, built from
../shared/minrelay at run time, see bench/minrelay.py) is the physical limit
of a relay on this machine, ``minrelay-splice`` its splice() variant, and
``direct`` (no relay at all) the limit of the machine and the clients.

Two short-connection storms: ``storm`` is the TIME_WAIT-heavy default (one
long-lived relay per subject, every relayed connection leaves a TIME_WAIT
entry on the relay→echo 4-tuple, and past ~14,000 of them connect() scans
for a free port); ``storm_fresh`` gives every sample a fresh echo port and a
fresh relay instance and stops after ``fresh_conns`` connections, so no
4-tuple it uses has TIME_WAIT history: the difference is the kernel's
port search, the rest the relay's own work.

Costs come from each proxy's own accounting: the schedstat CPU time of its
threads (/proc/<pid>/task/*/schedstat, ns; ticks of /proc/<pid>/stat where
missing) and VmRSS for processes (skiffd, haproxy, minrelay), the worker
threads' own CPU clock and the engine's allocation counters for the
in-process engine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench import minrelay
from bench.bulk import BulkFigures, SinkServer, run_streams
from bench.client import ClientPool
from bench.echo import EchoServer
from bench.histogram import Histogram
from bench.host import environment, raise_nofile_limit
from bench.idle import IdleHold
from bench.pki import TlsFiles, client_context, count_session_tickets, write_tls_files
from bench.progress import Progress
from bench.proxies import (
    HAPROXY_MISSING,
    ProxyProcess,
    haproxy_binary,
    read_rss_kib,
    start_haproxy,
    start_skiffd,
)
from bench.storm import StormConfig, run_round
from bench.subjects import ADDRESS_ID, AddressSubject, EngineSubject
from bench.verdict import client_bottleneck, port_pressure, time_wait_by_tuple
from router.engine import RouteTarget

SUBJECTS = ("skiffd", "haproxy", "minrelay", "minrelay-splice", "engine", "direct")
# only when named in --subjects: skiffd run from another build's tree (an A/B of
# engine builds in one interleaved run), the tree given by $SKIFF_BENCH_BASE
BASE_SUBJECT = "skiffd-base"
BASE_ENV = "SKIFF_BENCH_BASE"
TLS_SUBJECTS = ("skiffd", "haproxy")  # the proxies that terminate TLS in a compare
# only with --tls and when named: skiffd with tlsResumption: cache, the ticket
# mode HAProxy's no-tls-tickets runs (stateful tickets into a server cache)
CACHE_SUBJECT = "skiffd-cache"
# mixed only when named: four bulk streams with short connections beside them
WORKLOADS = ("idle", "storm", "storm_fresh", "bulk1", "bulk4", "mixed", "serial")
DEFAULT_WORKLOADS = ("idle", "storm", "storm_fresh", "bulk1", "bulk4")
MIXED_STREAMS = 4
MIXED_PROBE_INTERVAL_S = 0.02  # one short connection per 20 ms beside the streams
STORMS = ("storm", "storm_fresh")
# ratio columns shown when both subjects ran: (numerator, denominator)
RATIOS = (
    ("skiffd", "haproxy"),
    ("skiffd", "minrelay"),
    ("haproxy", "minrelay"),
    ("skiffd", "minrelay-splice"),
    ("skiffd", BASE_SUBJECT),
    (CACHE_SUBJECT, "haproxy"),
)
SINK_ADDRESS_ID = ADDRESS_ID + 1
IDLE_SETTLE_S = 0.5

# per workload: (metric, unit, lower is better)
_STORM_METRICS = [
    ("connections_per_s", "conn/s", False),
    ("cpu_us_per_conn", "µs CPU/conn", True),
    ("latency_p99_ms", "p99 ms", True),
]
METRICS: dict[str, list[tuple[str, str, bool]]] = {
    "storm": _STORM_METRICS,
    "storm_fresh": _STORM_METRICS,
    "bulk1": [("gbit_s", "Gbit/s", False), ("cpu_s_per_gb", "CPU s/GB", True)],
    "bulk4": [("gbit_s", "Gbit/s", False), ("cpu_s_per_gb", "CPU s/GB", True)],
    "mixed": [
        ("gbit_s", "Gbit/s", False),
        ("cpu_s_per_gb", "CPU s/GB", True),
        ("probe_p50_ms", "probe p50 ms", True),
        ("probe_p99_ms", "probe p99 ms", True),
    ],
    "idle": [("kib_per_conn", "KiB/conn", True)],
    "serial": [
        ("serial_p50_us", "p50 µs", True),
        ("serial_p90_us", "p90 µs", True),
        ("cpu_us_per_conn", "µs CPU/conn", True),
    ],
}


@dataclass(slots=True)
class CompareConfig:
    """Every parameter of a comparison (all land in the JSON)."""

    subjects: tuple[str, ...] = SUBJECTS
    workloads: tuple[str, ...] = DEFAULT_WORKLOADS
    rounds: int = 3
    workers: int = 2
    clients: int = 100
    procs: int = 2
    storm_duration_s: float = 3.0
    bulk_duration_s: float = 3.0
    idle_conns: int = 2000
    # storm_fresh: connections per sample after a warm-up of a tenth (at most
    # 500); far under the ~14,000 TIME_WAIT entries where the port scan starts
    fresh_conns: int = 5000
    source_addrs: int = 253
    timeout_s: float = 10.0
    pause_s: float = 0.3
    idle_settle_s: float = IDLE_SETTLE_S  # before and after opening: RSS settles
    # clients speak TLS; skiffd (sslProfile) and haproxy (bind ... ssl crt) terminate
    # it with the same certificate; the clients keep no ticket, so every connection
    # is a full handshake. By default each proxy still sends its tickets (skiffd one
    # stateless, HAProxy's no-tls-tickets two stateful ones); no_tickets: neither
    # sends any (skiffd tlsResumption: off, HAProxy OpenSSL's NumTickets = 0)
    tls: bool = False
    no_tickets: bool = False

    def validate(self) -> None:
        if not self.subjects or set(self.subjects) - set(SUBJECTS) - {BASE_SUBJECT, CACHE_SUBJECT}:
            raise ValueError(f"subjects must be among {SUBJECTS}, got {self.subjects}")
        if self.tls and set(self.subjects) - set(TLS_SUBJECTS) - {BASE_SUBJECT, CACHE_SUBJECT}:
            raise ValueError(
                f"with --tls, subjects must be among {TLS_SUBJECTS} (or {BASE_SUBJECT}, "
                f"{CACHE_SUBJECT})"
            )
        if not self.tls and CACHE_SUBJECT in self.subjects:
            raise ValueError(f"{CACHE_SUBJECT} is a TLS subject: add --tls")
        if self.no_tickets and not self.tls:
            raise ValueError("--no-tickets is about TLS session tickets: add --tls")
        if self.no_tickets and CACHE_SUBJECT in self.subjects:
            raise ValueError(f"{CACHE_SUBJECT} sends tickets: leave it out with --no-tickets")
        if not self.workloads or set(self.workloads) - set(WORKLOADS):
            raise ValueError(f"workloads must be among {WORKLOADS}, got {self.workloads}")
        if (
            min(self.rounds, self.workers, self.clients, self.procs, self.idle_conns) < 1
            or self.fresh_conns < 1
        ):
            raise ValueError(
                "rounds, workers, clients, procs, idle conns and fresh conns must be >= 1"
            )


@dataclass(slots=True)
class Sample:
    """One subject, one workload, one round."""

    workload: str
    subject: str
    round: int
    figures: dict[str, float | None]
    failures: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class _Target:
    """What a workload needs of a subject: two addresses and its costs."""

    name: str
    echo: tuple[str, int]
    sink: tuple[str, int]
    cpu_s: Callable[[], float | None]
    memory_kib: Callable[[], float | None]
    memory_source: str
    engine_counters: Callable[[], dict[str, int]] | None = None
    tls_ca: str | None = None  # clients speak TLS, trusting this CA
    # storm_fresh: a fresh instance relaying to this echo address, and its stop
    fresh: Callable[[tuple[str, int]], tuple[_Target, Callable[[], None]]] | None = None


class _Relay(Protocol):
    """A relay running as processes of its own (ProxyProcess, MinrelayPair)."""

    @property
    def name(self) -> str: ...

    @property
    def echo_port(self) -> int: ...

    @property
    def sink_port(self) -> int: ...

    @property
    def memory_source(self) -> str: ...

    def cpu_s(self) -> float: ...

    def rss_kib(self) -> int: ...

    def stop(self) -> None: ...


def _none() -> float | None:
    return None


def _self_rss() -> float | None:
    import os

    return float(read_rss_kib(os.getpid()))


def _noop() -> None:
    return None


def _proxy_target(
    p: _Relay,
    tls: TlsFiles | None = None,
    restart: Callable[[tuple[str, int]], _Relay] | None = None,
) -> _Target:
    """restart(echo address): a new instance of the same relay for storm_fresh."""

    def fresh(echo: tuple[str, int]) -> tuple[_Target, Callable[[], None]]:
        assert restart is not None
        q = restart(echo)
        return _proxy_target(q, tls), q.stop

    return _Target(
        p.name,
        ("127.0.0.1", p.echo_port),
        ("127.0.0.1", p.sink_port),
        p.cpu_s,
        lambda: float(p.rss_kib()),
        p.memory_source,
        tls_ca=tls.ca_file if tls is not None else None,
        fresh=fresh if restart is not None else None,
    )


def _direct_target(echo: tuple[str, int], sink: tuple[str, int]) -> _Target:
    def fresh(new_echo: tuple[str, int]) -> tuple[_Target, Callable[[], None]]:
        return _direct_target(new_echo, sink), _noop

    return _Target("direct", echo, sink, _none, _none, "-", fresh=fresh)


def _engine_target(probe: EngineSubject, sink_port: int, echo_port: int) -> _Target:
    """The bench's in-process engine, with a second listener to the sink."""
    eng = probe.engine
    sink_target = eng.target()
    routes = {
        ADDRESS_ID: [RouteTarget(t, "127.0.0.1", echo_port) for t in probe.targets[:1]],
        SINK_ADDRESS_ID: [RouteTarget(sink_target, "127.0.0.1", sink_port)],
    }
    eng.publish_routes(routes)
    sink_listener = eng.listen("127.0.0.1", 0, address_id=SINK_ADDRESS_ID, backlog=4096)

    def restore() -> None:
        eng.publish_routes(routes)

    def fresh(echo: tuple[str, int]) -> tuple[_Target, Callable[[], None]]:
        # the same engine and listener, a new target: only the echo side is fresh
        eng.publish_routes({**routes, ADDRESS_ID: [RouteTarget(eng.target(), *echo)]})
        return target, restore

    target = _Target(
        "engine",
        probe.address,
        ("127.0.0.1", sink_listener.port),
        lambda: eng.workers_cpu_ns() / 1e9,
        _self_rss,
        "bench process VmRSS (engine in-process) and engine counters",
        eng.counters,
        fresh=fresh,
    )
    return target


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "n": float(len(values)),
    }


@dataclass(slots=True)
class CompareReport:
    config: CompareConfig
    environment: dict[str, Any]
    samples: list[Sample]
    skipped: dict[str, str]
    versions: dict[str, str]
    wall_s: float
    # TLS: NewSessionTickets each subject sent on one probe handshake
    tickets: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, dict[str, dict[str, float] | None]]]:
        """workload -> metric -> subject -> min/median/max over ok rounds.

        idle memory uses the max over rounds: later rounds reuse memory a
        proxy pooled in the first, so only first-touch growth is real cost."""
        out: dict[str, dict[str, dict[str, dict[str, float] | None]]] = {}
        for wl in self.config.workloads:
            out[wl] = {}
            for metric, _unit, _low in METRICS[wl]:
                out[wl][metric] = {}
                for subj in self.config.subjects:
                    vals = [
                        v
                        for s in self.samples
                        if s.workload == wl
                        and s.subject == subj
                        and s.ok
                        and (v := s.figures.get(metric)) is not None
                    ]
                    st = _stats(vals)
                    if st is not None and metric == "kib_per_conn":
                        st["median"] = st["max"]
                    out[wl][metric][subj] = st
        return out

    def ratio(
        self, workload: str, metric: str, num: str = "skiffd", den: str = "haproxy"
    ) -> float | None:
        s = self.summary().get(workload, {}).get(metric, {})
        a, b = s.get(num), s.get(den)
        if a is None or b is None or b["median"] == 0:
            return None
        return a["median"] / b["median"]


class _Runner:
    def __init__(self, cfg: CompareConfig, progress: Progress) -> None:
        self.cfg = cfg
        self.progress = progress

    async def storm_fresh(
        self, t: _Target, rnd: int, pool: ClientPool, probe: EngineSubject
    ) -> Sample:
        """A storm of fresh_conns to a fresh echo port through a fresh instance."""
        loop = asyncio.get_running_loop()
        if t.fresh is None:
            return Sample("storm_fresh", t.name, rnd, {}, ["no fresh instance for this subject"])
        echo = await loop.run_in_executor(None, EchoServer.start, 1)
        try:
            ft, stop = await loop.run_in_executor(None, t.fresh, ("127.0.0.1", echo.port))
            try:
                # a short warm-up first: a fresh process pays its first touches
                # (allocator, pools) there, not in the figure
                warm = max(1, min(500, self.cfg.fresh_conns // 10))
                await self.storm(ft, rnd, pool, echo, probe, "storm_fresh", warm)
                return await self.storm(
                    ft, rnd, pool, echo, probe, "storm_fresh", self.cfg.fresh_conns
                )
            finally:
                await loop.run_in_executor(None, stop)
        finally:
            await loop.run_in_executor(None, echo.stop)

    async def storm(
        self,
        t: _Target,
        rnd: int,
        pool: ClientPool,
        echo: EchoServer,
        probe: EngineSubject,
        workload: str = "storm",
        count: int | None = None,
    ) -> Sample:
        cfg = self.cfg
        scfg = StormConfig(
            clients=cfg.clients,
            duration_s=cfg.storm_duration_s,
            count=count,
            procs=cfg.procs,
            workers=cfg.workers,
            timeout_s=cfg.timeout_s,
            source_addrs=cfg.source_addrs,
            tls_ca_file=t.tls_ca,
        )

        cpu0 = t.cpu_s()
        r = await run_round(
            scfg,
            AddressSubject(t.name, t.echo),
            rnd,
            pool,
            echo,
            probe,
            on_progress=self.progress.storm_tick,
        )
        cpu1 = t.cpu_s()
        cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        # storm_fresh: the fresh echo port's own pairs, not the host's worst
        tw = time_wait_by_tuple(remote_port=echo.port if workload == "storm_fresh" else None)
        failures = [f"{k}: {v}" for k, v in r.failures.items() if v]
        per_proc = r.proc_utilisation
        return Sample(
            workload,
            t.name,
            rnd,
            {
                "connections_per_s": r.cps,
                "cpu_us_per_conn": cpu * 1e6 / r.ok if cpu is not None and r.ok else None,
                "latency_p50_ms": r.latency_ns.quantile(0.5) / 1e6,
                "latency_p99_ms": r.latency_ns.quantile(0.99) / 1e6,
                "ok": float(r.ok),
                "client_cpu_s": r.client_cpu_s,
            },
            failures,
            {
                "latency_histogram_ns": r.latency_ns.to_dict(),
                "timeline": r.timeline,
                "client_bottleneck": client_bottleneck(per_proc, r.client_cpu_s, r.elapsed_s),
                "ports": port_pressure(r.failures.get("ephemeral_port_errors", 0), tw),
                "error_samples": r.error_samples,
                "proxy_cpu_s": cpu,
            },
        )

    async def bulk(self, t: _Target, rnd: int, streams: int) -> Sample:
        loop = asyncio.get_running_loop()
        cpu0 = t.cpu_s()
        res = await loop.run_in_executor(
            None,
            run_streams,
            t.sink[0],
            t.sink[1],
            streams,
            self.cfg.bulk_duration_s,
            (rnd << 20) + streams * 1000,
            0.3,
            t.tls_ca,
        )
        cpu1 = t.cpu_s()
        f = BulkFigures.of(res)
        cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        return Sample(
            f"bulk{streams}",
            t.name,
            rnd,
            {
                "gbit_s": f.gbit_s,
                "cpu_s_per_gb": cpu / (f.bytes / 1e9) if cpu is not None and f.bytes else None,
                "bytes": float(f.bytes),
                "sender_cpu_s": f.sender_cpu_s,
            },
            f.failures,
            {"timeline_bytes": f.timeline_bytes, "sample_s": 0.1, "proxy_cpu_s": cpu},
        )

    async def serial(self, t: _Target, rnd: int) -> Sample:
        """One client, one connection at a time, for storm_duration_s:
        connect (with --tls, a full handshake), 64 bytes echoed and checked,
        close. What a relay adds to each connection when nothing queues in
        front of it, the client's side of the handshake included: a longer
        chain, an extra round trip or a late flush shows here and not in the
        storm's CPU figures (docs/benchmarks.md, "The root in the chain")."""
        cpu0 = t.cpu_s()
        lat_ns, failures = await _probe_short(
            t.echo, t.tls_ca, self.cfg.storm_duration_s, interval_s=0.0
        )
        cpu1 = t.cpu_s()
        n = lat_ns.count
        cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        figures: dict[str, float | None] = {
            "connections": float(n),
            "serial_p50_us": lat_ns.quantile(0.5) / 1e3 if n else None,
            "serial_p90_us": lat_ns.quantile(0.9) / 1e3 if n else None,
            "serial_max_us": lat_ns.max / 1e3 if n else None,
            "cpu_us_per_conn": cpu / n * 1e6 if cpu is not None and n else None,
        }
        return Sample("serial", t.name, rnd, figures, failures, {"proxy_cpu_s": cpu})

    async def mixed(self, t: _Target, rnd: int) -> Sample:
        """bulk4 with short connections beside it: while MIXED_STREAMS streams
        run through the relay's sink port, one connect + 64-byte echo + close
        every MIXED_PROBE_INTERVAL_S through its echo port. The probes'
        latency shows what the bulk flows' turns cost the other work of a
        worker (docs/benchmarks.md, "Bulk turns"); on two shared cores most
        of it is the machine's own scheduling, so compare subjects, not
        absolute figures."""
        loop = asyncio.get_running_loop()
        dur = self.cfg.bulk_duration_s
        start_delay = 0.3
        cpu0 = t.cpu_s()
        streams = loop.run_in_executor(
            None,
            run_streams,
            t.sink[0],
            t.sink[1],
            MIXED_STREAMS,
            dur,
            (rnd << 20) + 77_000,
            start_delay,
            t.tls_ca,
        )
        # run_streams starts its senders together after this delay
        await asyncio.sleep(start_delay + 0.2 * MIXED_STREAMS)
        lat_ns, probe_failures = await _probe_short(t.echo, t.tls_ca, dur)
        res = await streams
        cpu1 = t.cpu_s()
        f = BulkFigures.of(res)
        cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        probed = lat_ns.count > 0
        figures: dict[str, float | None] = {
            "gbit_s": f.gbit_s,
            "cpu_s_per_gb": cpu / (f.bytes / 1e9) if cpu is not None and f.bytes else None,
            "bytes": float(f.bytes),
            "probes": float(lat_ns.count),
            "probe_p50_ms": lat_ns.quantile(0.5) / 1e6 if probed else None,
            "probe_p99_ms": lat_ns.quantile(0.99) / 1e6 if probed else None,
            "probe_max_ms": lat_ns.max / 1e6 if probed else None,
        }
        return Sample(
            "mixed",
            t.name,
            rnd,
            figures,
            f.failures + probe_failures,
            {"proxy_cpu_s": cpu, "probe_interval_s": MIXED_PROBE_INTERVAL_S},
        )

    async def idle(self, t: _Target, rnd: int) -> Sample:
        loop = asyncio.get_running_loop()
        n = self.cfg.idle_conns
        await asyncio.sleep(self.cfg.idle_settle_s)
        mem0 = t.memory_kib()
        c0 = t.engine_counters() if t.engine_counters else None
        hold = IdleHold(
            t.echo[0],
            t.echo[1],
            n,
            procs=max(1, min(self.cfg.procs, 4, n // 1000)),  # a spawn costs ~0.3 s
            source_addrs=self.cfg.source_addrs,
            tls_ca=t.tls_ca,
        )
        try:
            held = await loop.run_in_executor(None, hold.wait_held)
            await asyncio.sleep(self.cfg.idle_settle_s)
            mem1 = t.memory_kib()
            c1 = t.engine_counters() if t.engine_counters else None
        finally:
            await loop.run_in_executor(None, hold.release)
        failures = [] if held.failed == 0 else [f"{held.failed} of {n} idle connections failed"]
        failures += held.error_samples[:4] if held.failed else []
        kib = None if mem0 is None or mem1 is None or not held.held else (mem1 - mem0) / held.held
        detail: dict[str, Any] = {
            "memory_source": t.memory_source,
            "held": held.held,
            "open_s": held.open_s,
            "rss_before_kib": mem0,
            "rss_after_kib": mem1,
        }
        if c0 is not None and c1 is not None and held.held:
            detail["engine_buf_bytes_per_conn"] = (
                c1["buf_bytes_live"] - c0["buf_bytes_live"]
            ) / held.held
            detail["engine_conns_live_delta"] = c1["conns_live"] - c0["conns_live"]
        return Sample(
            "idle", t.name, rnd, {"kib_per_conn": kib, "held": float(held.held)}, failures, detail
        )


async def _run_all(
    cfg: CompareConfig,
    targets: list[_Target],
    pool: ClientPool,
    echo: EchoServer,
    probe: EngineSubject,
    progress: Progress,
) -> list[Sample]:
    probe.attach(asyncio.get_running_loop())
    runner = _Runner(cfg, progress)
    out: list[Sample] = []
    for rnd in range(cfg.rounds):
        for wl in cfg.workloads:
            for t in targets:
                progress.phase(f"round {rnd + 1}/{cfg.rounds} {wl} → {t.name}")
                if wl == "storm":
                    s = await runner.storm(t, rnd, pool, echo, probe)
                elif wl == "storm_fresh":
                    s = await runner.storm_fresh(t, rnd, pool, probe)
                elif wl == "idle":
                    s = await runner.idle(t, rnd)
                elif wl == "mixed":
                    s = await runner.mixed(t, rnd)
                elif wl == "serial":
                    s = await runner.serial(t, rnd)
                else:
                    s = await runner.bulk(t, rnd, int(wl[4:]))
                progress.result(format_sample(s))
                out.append(s)
                await asyncio.sleep(cfg.pause_s)
    return out


async def _probe_short(
    echo: tuple[str, int],
    tls_ca: str | None,
    duration_s: float,
    interval_s: float = MIXED_PROBE_INTERVAL_S,
) -> tuple[Histogram, list[str]]:
    """Short connections one after another, interval_s apart (0: back to
    back), for duration_s: the nanoseconds each took (connect, TLS handshake
    when tls_ca, 64 bytes echoed and checked, close) and the failures."""
    ctx = client_context(tls_ca) if tls_ca is not None else None
    payload = b"skiff-bench mixed probe".ljust(64, b".")
    lat = Histogram()
    failures: list[str] = []
    end = time.monotonic() + duration_s
    while time.monotonic() < end:
        t0 = time.perf_counter_ns()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    echo[0], echo[1], ssl=ctx, server_hostname="localhost" if ctx else None
                ),
                10.0,
            )
            writer.write(payload)
            got = await asyncio.wait_for(reader.readexactly(len(payload)), 10.0)
            writer.close()
            if got != payload:
                failures.append("a probe's echo came back different")
            else:
                lat.record(time.perf_counter_ns() - t0)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            failures.append(f"probe: {exc!r}")
        if interval_s > 0:
            await asyncio.sleep(interval_s)
    if not lat.count:
        failures.append("no probe completed")
    return lat, failures[:8]


def format_sample(s: Sample) -> str:
    figs = ", ".join(
        f"{unit} {v:,.3g}" if v is not None else f"{unit} -"
        for metric, unit, _ in METRICS[s.workload]
        for v in [s.figures.get(metric)]
    )
    state = "ok" if s.ok else "FAILED " + "; ".join(s.failures[:3])
    return f"round {s.round + 1} {s.workload:<5} {s.subject:<8} {figs} [{state}]"


def run_compare(cfg: CompareConfig, progress: Progress | None = None) -> CompareReport:
    """Starts servers, proxies and the engine; runs every round; stops all."""
    cfg.validate()
    progress = progress or Progress.plain()
    raise_nofile_limit()
    t0 = time.monotonic()
    skipped: dict[str, str] = {}
    versions: dict[str, str] = {}
    proxies: list[_Relay] = []
    tickets: dict[str, int] = {}
    tls_dir = Path(tempfile.mkdtemp(prefix="skiff-bench-tls-")) if cfg.tls else None
    build_dir = Path(tempfile.mkdtemp(prefix="skiff-bench-build-"))
    try:
        tls = write_tls_files(tls_dir) if tls_dir is not None else None
        samples = _run_subjects(cfg, progress, skipped, versions, proxies, tls, build_dir, tickets)
    finally:
        if tls_dir is not None:
            shutil.rmtree(tls_dir, ignore_errors=True)
        shutil.rmtree(build_dir, ignore_errors=True)
    cfg.subjects = tuple(s for s in cfg.subjects if s not in skipped)
    return CompareReport(
        cfg, environment(), samples, skipped, versions, time.monotonic() - t0, tickets
    )


def _minrelay_binary(build_dir: Path) -> Path:
    """minrelay built once per run (MinrelayUnavailable says why not)."""
    binary = build_dir / "minrelay"
    return binary if binary.is_file() else minrelay.build(build_dir)


def _run_subjects(
    cfg: CompareConfig,
    progress: Progress,
    skipped: dict[str, str],
    versions: dict[str, str],
    proxies: list[_Relay],
    tls: TlsFiles | None,
    build_dir: Path,
    tickets: dict[str, int],
) -> list[Sample]:
    import uvloop

    with EchoServer.start(1) as echo, SinkServer.start() as sink, ClientPool(cfg.procs) as pool:
        echo_addr, sink_addr = ("127.0.0.1", echo.port), ("127.0.0.1", sink.port)
        probe = EngineSubject(echo.port, cfg.workers, 0.01)
        w = cfg.workers
        resumption = "off" if cfg.no_tickets else None
        try:
            targets: list[_Target] = []
            for name in cfg.subjects:
                restart: Callable[[tuple[str, int]], _Relay]
                if name == "skiffd":

                    def restart(e: tuple[str, int]) -> _Relay:
                        return start_skiffd(w, e, sink_addr, tls, tls_resumption=resumption)

                elif name == CACHE_SUBJECT:

                    def restart(e: tuple[str, int]) -> _Relay:
                        return start_skiffd(w, e, sink_addr, tls, CACHE_SUBJECT, None, "cache")

                elif name == BASE_SUBJECT:
                    base = os.environ.get(BASE_ENV)
                    if not base:
                        why = f"set {BASE_ENV} to another build's tree (with its router/_native)"
                        progress.result(f"skipping {name}: {why}")
                        skipped[name] = why
                        continue

                    def restart(e: tuple[str, int], b: str = base) -> _Relay:
                        return start_skiffd(w, e, sink_addr, tls, BASE_SUBJECT, b, resumption)

                elif name == "haproxy":
                    if haproxy_binary() is None:
                        progress.result(HAPROXY_MISSING)
                        skipped["haproxy"] = HAPROXY_MISSING
                        continue

                    def restart(e: tuple[str, int]) -> _Relay:
                        return start_haproxy(w, e, sink_addr, tls, cfg.no_tickets)

                elif name in minrelay.NAMES:
                    try:
                        binary = _minrelay_binary(build_dir)
                    except minrelay.MinrelayUnavailable as exc:
                        progress.result(f"skipping {name}: {exc}")
                        skipped[name] = str(exc)
                        continue
                    splice = name == "minrelay-splice"

                    def restart(e: tuple[str, int], b: Path = binary, sp: bool = splice) -> _Relay:
                        return minrelay.start(b, w, e, sink_addr, sp)

                elif name == "engine":
                    targets.append(_engine_target(probe, sink.port, echo.port))
                    continue
                else:
                    targets.append(_direct_target(echo_addr, sink_addr))
                    continue
                p = restart(echo_addr)
                proxies.append(p)
                if isinstance(p, ProxyProcess) and p.version:
                    versions[name] = p.version
                if tls is not None:
                    tickets[name] = _probe_tickets(name, p.echo_port, tls, cfg.no_tickets)
                targets.append(_proxy_target(p, tls, restart))
            with progress:
                samples = uvloop.run(_run_all(cfg, targets, pool, echo, probe, progress))
        finally:
            for p in proxies:
                p.stop()
            probe.stop()
    return samples


def _probe_tickets(name: str, port: int, tls: TlsFiles, none_expected: bool) -> int:
    """The session tickets a TLS subject sends per full handshake; with
    --no-tickets any ticket makes the comparison something else: stop."""
    sent = count_session_tickets(port, tls.ca_file)
    if none_expected and sent:
        raise RuntimeError(
            f"{name} sent {sent} session ticket(s) on a full handshake with --no-tickets: "
            "its figures would include ticket work"
        )
    return sent


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def unit_label(unit: str, tls: bool) -> str:
    """Under TLS every storm connection is one full handshake: say so."""
    if not tls:
        return unit
    return unit.replace("conn/s", "handshakes/s").replace("CPU/conn", "CPU/handshake")


def tickets_label(report: CompareReport) -> str:
    """What each TLS subject sent after a handshake (the probe's count)."""
    if not report.tickets:
        return "no session tickets" if report.config.no_tickets else "session tickets not probed"
    sent = ", ".join(f"{s} {n}" for s, n in report.tickets.items())
    if report.config.no_tickets:
        return f"--no-tickets: tickets sent {sent}"
    return f"session tickets sent per handshake: {sent}"


def ratio_pairs(subjects: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """The RATIOS whose two subjects both ran."""
    return [(a, b) for a, b in RATIOS if a in subjects and b in subjects]


def time_wait_effect(report: CompareReport) -> list[str]:
    """Which dominates a short connection's CPU: the relay's own work, or the
    kernel's port search that a TIME_WAIT-heavy 4-tuple causes (storm vs
    storm_fresh, per subject)."""
    if not set(STORMS) <= set(report.config.workloads):
        return []
    summ = report.summary()
    out = []
    for subj in report.config.subjects:
        tw = summ["storm"]["cpu_us_per_conn"].get(subj)
        fresh = summ["storm_fresh"]["cpu_us_per_conn"].get(subj)
        if tw is None or fresh is None or tw["median"] <= 0:
            continue
        extra = tw["median"] - fresh["median"]
        share = extra / tw["median"]
        if share >= 0.5:
            verdict = "the port search dominates"
        elif share >= 0.2:
            verdict = "the port search is a large share"
        elif share > -0.2:
            verdict = "no difference beyond noise (~20 %): the relay's own work dominates"
        else:
            verdict = "fresh costs more: noise, or the fresh instance's first touches"
        out.append(
            f"  {subj}: {tw['median']:.1f} µs with TIME_WAIT build-up vs {fresh['median']:.1f} "
            f"µs on fresh 4-tuples ({share:+.0%} of the default figure): {verdict}"
        )
    worst = [
        int(s.detail["ports"].get("time_wait_max_per_tuple", 0))
        for s in report.samples
        if s.workload == "storm" and "ports" in s.detail
    ]
    if not out:
        return []
    head = "storm vs storm_fresh, CPU per connection (median)"
    if worst:
        head += f"; TIME_WAIT on one address pair after storm rounds: up to {max(worst):,}"
    return [head + ":", *out]


def format_compare(report: CompareReport) -> str:
    cfg = report.config
    env = report.environment
    lines = [
        (
            f"skiff compare --tls (P-256, full handshakes; {tickets_label(report)}): "
            if cfg.tls
            else "skiff compare: "
        )
        + f"{cfg.rounds} round(s), {cfg.workers} worker threads, "
        f"storm {cfg.clients} clients x {cfg.storm_duration_s:g} s, "
        f"bulk {cfg.bulk_duration_s:g} s, "
        f"idle {cfg.idle_conns} conns, storm_fresh {cfg.fresh_conns} conns, "
        f"{cfg.procs} client procs, {env.get('cpu_count')} CPUs",
        "",
    ]
    summ = report.summary()
    subj = list(cfg.subjects)
    uw = 17 if cfg.tls else 13
    pairs = ratio_pairs(subj)
    head = f"{'workload':<11} {'figure':<{uw}} " + " ".join(f"{s:>22}" for s in subj)
    head += "".join(f" {f'{a}/{b}':>{max(15, len(a) + len(b) + 1)}}" for a, b in pairs)
    lines += [head, "-" * len(head)]
    for wl in cfg.workloads:
        for metric, unit, _ in METRICS[wl]:
            cells = []
            for s in subj:
                st = summ[wl][metric].get(s)
                cells.append(
                    "-"
                    if st is None
                    else f"{_fmt(st['median'])} [{_fmt(st['min'])}..{_fmt(st['max'])}]"
                )
            label = unit_label(unit, cfg.tls)
            row = f"{wl:<11} {label:<{uw}} " + " ".join(f"{c:>22}" for c in cells)
            for a, b in pairs:
                r = report.ratio(wl, metric, a, b)
                row += f" {'-' if r is None else f'{r:.2f}':>{max(15, len(a) + len(b) + 1)}}"
            lines.append(row)
    lines.append("")
    lines.append("cells: median [min..max] over rounds; idle: max over rounds (first-touch growth)")
    lines += time_wait_effect(report)
    bad = [s for s in report.samples if not s.ok]
    if bad:
        lines.append(f"FAILED samples ({len(bad)}): correctness or errors, excluded from figures:")
        lines += ["  " + format_sample(s) for s in bad[:12]]
    else:
        lines.append("correctness: every echoed and every bulk byte checked, no failure")
    notes = {
        str(s.detail["client_bottleneck"]["verdict"])
        for s in report.samples
        if s.workload == "storm" and s.detail.get("client_bottleneck", {}).get("bound")
    }
    lines += [f"note: {n}" for n in sorted(notes)]
    ports = {
        str(s.detail["ports"]["verdict"])
        for s in report.samples
        if s.workload == "storm" and s.detail.get("ports", {}).get("limited")
    }
    lines += [f"note: {n}" for n in sorted(ports)]
    for name, why in report.skipped.items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)
