"""``compare``: the same workloads against several subjects in one run.

Why interleaved round by round (A B A B …): the machine drifts (TIME_WAIT
build-up, thermal state, neighbours), so each round runs every subject once
and the figures compared are medians over rounds, with min and max shown so
that a noisy run is visible as such. The ratio Skiff/HAProxy of medians is
the headline; ``direct`` (no proxy) is the physical limit of the machine.

Costs come from each proxy's own accounting: /proc/<pid>/stat utime+stime
and VmRSS for processes (skiffd, haproxy), the worker threads' own CPU clock
and the engine's allocation counters for the in-process engine.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.bulk import BulkFigures, SinkServer, run_streams
from bench.client import ClientPool
from bench.echo import EchoServer
from bench.host import environment, raise_nofile_limit
from bench.idle import IdleHold
from bench.pki import TlsFiles, write_tls_files
from bench.progress import Progress
from bench.proxies import HAPROXY_MISSING, ProxyProcess, read_rss_kib, start_haproxy, start_skiffd
from bench.storm import StormConfig, run_round
from bench.subjects import ADDRESS_ID, EngineSubject
from bench.verdict import client_bottleneck, port_pressure, time_wait_by_tuple
from router.engine import RouteTarget

SUBJECTS = ("skiffd", "haproxy", "engine", "direct")
TLS_SUBJECTS = ("skiffd", "haproxy")  # the proxies that terminate TLS in a compare
WORKLOADS = ("idle", "storm", "bulk1", "bulk4")
SINK_ADDRESS_ID = ADDRESS_ID + 1
IDLE_SETTLE_S = 0.5

# per workload: (metric, unit, lower is better)
METRICS: dict[str, list[tuple[str, str, bool]]] = {
    "storm": [
        ("connections_per_s", "conn/s", False),
        ("cpu_us_per_conn", "µs CPU/conn", True),
        ("latency_p99_ms", "p99 ms", True),
    ],
    "bulk1": [("gbit_s", "Gbit/s", False), ("cpu_s_per_gb", "CPU s/GB", True)],
    "bulk4": [("gbit_s", "Gbit/s", False), ("cpu_s_per_gb", "CPU s/GB", True)],
    "idle": [("kib_per_conn", "KiB/conn", True)],
}


@dataclass(slots=True)
class CompareConfig:
    """Every parameter of a comparison (all land in the JSON)."""

    subjects: tuple[str, ...] = SUBJECTS
    workloads: tuple[str, ...] = WORKLOADS
    rounds: int = 3
    workers: int = 2
    clients: int = 100
    procs: int = 2
    storm_duration_s: float = 3.0
    bulk_duration_s: float = 3.0
    idle_conns: int = 2000
    source_addrs: int = 253
    timeout_s: float = 10.0
    pause_s: float = 0.3
    idle_settle_s: float = IDLE_SETTLE_S  # before and after opening: RSS settles
    # clients speak TLS; skiffd (sslProfile) and haproxy (bind ... ssl crt) terminate
    # it with the same certificate, no session tickets: a full handshake per connection
    tls: bool = False

    def validate(self) -> None:
        if not self.subjects or set(self.subjects) - set(SUBJECTS):
            raise ValueError(f"subjects must be among {SUBJECTS}, got {self.subjects}")
        if self.tls and set(self.subjects) - set(TLS_SUBJECTS):
            raise ValueError(f"with --tls, subjects must be among {TLS_SUBJECTS}")
        if not self.workloads or set(self.workloads) - set(WORKLOADS):
            raise ValueError(f"workloads must be among {WORKLOADS}, got {self.workloads}")
        if min(self.rounds, self.workers, self.clients, self.procs, self.idle_conns) < 1:
            raise ValueError("rounds, workers, clients, procs and idle conns must be >= 1")


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


def _none() -> float | None:
    return None


def _self_rss() -> float | None:
    import os

    return float(read_rss_kib(os.getpid()))


def _proxy_target(p: ProxyProcess, tls: TlsFiles | None = None) -> _Target:
    return _Target(
        p.name,
        ("127.0.0.1", p.echo_port),
        ("127.0.0.1", p.sink_port),
        p.cpu_s,
        lambda: float(p.rss_kib()),
        f"/proc/{p.pid}/status VmRSS",
        tls_ca=tls.ca_file if tls is not None else None,
    )


def _engine_target(probe: EngineSubject, sink_port: int, echo_port: int) -> _Target:
    """The bench's in-process engine, with a second listener to the sink."""
    eng = probe.engine
    sink_target = eng.target()
    eng.publish_routes(
        {
            ADDRESS_ID: [RouteTarget(t, "127.0.0.1", echo_port) for t in probe.targets[:1]],
            SINK_ADDRESS_ID: [RouteTarget(sink_target, "127.0.0.1", sink_port)],
        }
    )
    sink_listener = eng.listen("127.0.0.1", 0, address_id=SINK_ADDRESS_ID, backlog=4096)
    return _Target(
        "engine",
        probe.address,
        ("127.0.0.1", sink_listener.port),
        lambda: eng.workers_cpu_ns() / 1e9,
        _self_rss,
        "bench process VmRSS (engine in-process) and engine counters",
        eng.counters,
    )


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

    async def storm(
        self, t: _Target, rnd: int, pool: ClientPool, echo: EchoServer, probe: EngineSubject
    ) -> Sample:
        cfg = self.cfg
        scfg = StormConfig(
            clients=cfg.clients,
            duration_s=cfg.storm_duration_s,
            procs=cfg.procs,
            workers=cfg.workers,
            timeout_s=cfg.timeout_s,
            source_addrs=cfg.source_addrs,
            tls_ca_file=t.tls_ca,
        )

        @dataclass(frozen=True)
        class _Addr:
            name: str
            address: tuple[str, int]

        cpu0 = t.cpu_s()
        r = await run_round(
            scfg,
            _Addr(t.name, t.echo),
            rnd,
            pool,
            echo,
            probe,
            on_progress=self.progress.storm_tick,
        )
        cpu1 = t.cpu_s()
        cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        tw = time_wait_by_tuple()
        failures = [f"{k}: {v}" for k, v in r.failures.items() if v]
        per_proc = r.proc_utilisation
        return Sample(
            "storm",
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
                elif wl == "idle":
                    s = await runner.idle(t, rnd)
                else:
                    s = await runner.bulk(t, rnd, int(wl[4:]))
                progress.result(format_sample(s))
                out.append(s)
                await asyncio.sleep(cfg.pause_s)
    return out


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
    proxies: list[ProxyProcess] = []
    tls_dir = Path(tempfile.mkdtemp(prefix="skiff-bench-tls-")) if cfg.tls else None
    try:
        tls = write_tls_files(tls_dir) if tls_dir is not None else None
        samples = _run_subjects(cfg, progress, skipped, versions, proxies, tls)
    finally:
        if tls_dir is not None:
            shutil.rmtree(tls_dir, ignore_errors=True)
    cfg.subjects = tuple(s for s in cfg.subjects if s not in skipped)
    return CompareReport(cfg, environment(), samples, skipped, versions, time.monotonic() - t0)


def _run_subjects(
    cfg: CompareConfig,
    progress: Progress,
    skipped: dict[str, str],
    versions: dict[str, str],
    proxies: list[ProxyProcess],
    tls: TlsFiles | None,
) -> list[Sample]:
    import uvloop

    with EchoServer.start(1) as echo, SinkServer.start() as sink, ClientPool(cfg.procs) as pool:
        echo_addr, sink_addr = ("127.0.0.1", echo.port), ("127.0.0.1", sink.port)
        probe = EngineSubject(echo.port, cfg.workers, 0.01)
        try:
            targets: list[_Target] = []
            for name in cfg.subjects:
                if name == "skiffd":
                    p = start_skiffd(cfg.workers, echo_addr, sink_addr, tls)
                    proxies.append(p)
                    targets.append(_proxy_target(p, tls))
                elif name == "haproxy":
                    try:
                        p = start_haproxy(cfg.workers, echo_addr, sink_addr, tls)
                    except FileNotFoundError:
                        progress.result(HAPROXY_MISSING)
                        skipped["haproxy"] = HAPROXY_MISSING
                        continue
                    versions["haproxy"] = p.version
                    proxies.append(p)
                    targets.append(_proxy_target(p, tls))
                elif name == "engine":
                    targets.append(_engine_target(probe, sink.port, echo.port))
                else:
                    targets.append(_Target("direct", echo_addr, sink_addr, _none, _none, "-"))
            with progress:
                samples = uvloop.run(_run_all(cfg, targets, pool, echo, probe, progress))
        finally:
            for p in proxies:
                p.stop()
            probe.stop()
    return samples


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


def format_compare(report: CompareReport) -> str:
    cfg = report.config
    env = report.environment
    lines = [
        ("skiff compare --tls (P-256, no session tickets): " if cfg.tls else "skiff compare: ")
        + f"{cfg.rounds} round(s), {cfg.workers} worker threads, "
        f"storm {cfg.clients} clients x {cfg.storm_duration_s:g} s, "
        f"bulk {cfg.bulk_duration_s:g} s, "
        f"idle {cfg.idle_conns} conns, {cfg.procs} client procs, {env.get('cpu_count')} CPUs",
        "",
    ]
    summ = report.summary()
    subj = list(cfg.subjects)
    uw = 17 if cfg.tls else 13
    head = f"{'workload':<7} {'figure':<{uw}} " + " ".join(f"{s:>22}" for s in subj)
    has_ratio = "skiffd" in subj and "haproxy" in subj
    if has_ratio:
        head += f" {'skiffd/haproxy':>15}"
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
            row = f"{wl:<7} {label:<{uw}} " + " ".join(f"{c:>22}" for c in cells)
            if has_ratio:
                r = report.ratio(wl, metric)
                row += f" {'-' if r is None else f'{r:.2f}':>15}"
            lines.append(row)
    lines.append("")
    lines.append("cells: median [min..max] over rounds; idle: max over rounds (first-touch growth)")
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
