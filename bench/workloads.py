"""Single-subject workloads: storm, bulk, idle and mixed against one target.

Why a target rather than a fixed subject: people load-test their own Skiff
networks, other proxies or services directly. ``--target host:port`` points
the load anywhere (it must lead to a bench echo server for storm and idle,
to a bench sink for bulk: ``python -m bench serve`` starts both);
``--spawn`` starts a local skiffd on a generated configuration in front of
the bench's own echo and sink servers, and then also reports the router's
CPU and memory from its process accounting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.bulk import BulkFigures, SinkServer, run_streams
from bench.client import ClientPool
from bench.echo import EchoServer
from bench.host import environment, raise_nofile_limit
from bench.idle import IdleHold
from bench.pki import write_tls_files
from bench.progress import Progress
from bench.proxies import ProxyProcess, start_skiffd
from bench.storm import RoundResult, StormConfig, run_round
from bench.subjects import AddressSubject
from bench.verdict import client_bottleneck, port_pressure, time_wait_by_tuple

WORKLOADS = ("storm", "bulk", "idle", "mixed")


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


@dataclass(slots=True)
class TargetConfig:
    """Where the load goes and how much of it (every field lands in the JSON)."""

    workload: str = "storm"
    target: str | None = None  # host:port (echo for storm/idle, sink for bulk)
    bulk_target: str | None = None  # mixed: the sink side
    spawn: bool = False
    workers: int = 2
    clients: int = 100
    count: int | None = None
    duration_s: float = 5.0
    procs: int = 2
    streams: int = 1
    idle_conns: int = 2000
    hold_s: float = 1.0
    timeout_s: float = 10.0
    source_addrs: int = 253
    tls: bool = False  # clients speak TLS (spawn: skiffd's listeners terminate it)
    tls_ca: str | None = None  # --target with TLS: the CA file to trust

    def validate(self) -> None:
        if self.workload not in WORKLOADS:
            raise ValueError(f"workload must be among {WORKLOADS}")
        if self.tls_ca is not None and not self.tls:
            raise ValueError("--tls-ca needs --tls")
        if self.tls and self.target is not None and self.tls_ca is None:
            raise ValueError("--tls with --target needs --tls-ca FILE (the CA to trust)")
        if self.tls and self.spawn and self.tls_ca is not None:
            raise ValueError("--tls-ca is for --target; --spawn makes its own CA")
        if self.spawn == (self.target is not None):
            raise ValueError("give exactly one of --target host:port and --spawn")
        if self.workload == "mixed" and self.target is not None and self.bulk_target is None:
            raise ValueError("mixed with --target also needs --bulk-target (a sink)")
        if min(self.clients, self.procs, self.streams, self.idle_conns) < 1:
            raise ValueError("clients, procs, streams and idle conns must be >= 1")
        for t in (self.target, self.bulk_target):
            if t is not None:
                parse_hostport(t)


@dataclass
class Endpoint:
    """The resolved target: addresses and, when spawned, the router's accounting."""

    echo: tuple[str, int]
    sink: tuple[str, int]
    cpu_s: Callable[[], float | None]
    rss_kib: Callable[[], float | None]
    description: str
    tls_ca: str | None = None  # clients speak TLS, trusting this CA


@dataclass(slots=True)
class TargetResult:
    config: TargetConfig
    endpoint: str
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timeline: list[dict[str, float]] = field(default_factory=list)
    bulk_timeline_bytes: list[int] = field(default_factory=list)
    latency_histogram_ns: dict[str, Any] | None = None
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


def _nothing() -> float | None:
    return None


@contextlib.contextmanager
def endpoint(cfg: TargetConfig) -> Iterator[Endpoint]:
    """The target as given, or a spawned skiffd with echo and sink behind it."""
    if not cfg.spawn:
        assert cfg.target is not None
        t = parse_hostport(cfg.target)
        bt = parse_hostport(cfg.bulk_target) if cfg.bulk_target else t
        mark = " (TLS)" if cfg.tls else ""
        yield Endpoint(t, bt, _nothing, _nothing, f"target {cfg.target}{mark}", cfg.tls_ca)
        return
    tls_dir = Path(tempfile.mkdtemp(prefix="skiff-bench-tls-")) if cfg.tls else None
    try:
        tls = write_tls_files(tls_dir) if tls_dir is not None else None
        with EchoServer.start(1) as echo, SinkServer.start() as sink:
            proxy: ProxyProcess = start_skiffd(
                cfg.workers, ("127.0.0.1", echo.port), ("127.0.0.1", sink.port), tls
            )
            try:
                yield Endpoint(
                    ("127.0.0.1", proxy.echo_port),
                    ("127.0.0.1", proxy.sink_port),
                    proxy.cpu_s,
                    lambda: float(proxy.rss_kib()),
                    f"spawned skiffd pid {proxy.pid} ({cfg.workers} workers"
                    + (", TLS sslProfile)" if tls else ")"),
                    tls.ca_file if tls is not None else None,
                )
            finally:
                proxy.stop()
    finally:
        if tls_dir is not None:
            shutil.rmtree(tls_dir, ignore_errors=True)


def _storm_figures(r: RoundResult, cpu: float | None, res: TargetResult) -> None:
    res.figures["storm"] = {
        "ok": r.ok,
        "failed": r.failed,
        "failures": r.failures,
        "elapsed_s": r.elapsed_s,
        "connections_per_s": r.cps,
        "latency_us": r.latency_ns.summary(1e3),
        "router_cpu_us_per_conn": cpu * 1e6 / r.ok if cpu is not None and r.ok else None,
        "client_cpu_s": r.client_cpu_s,
    }
    res.timeline = r.timeline
    res.latency_histogram_ns = r.latency_ns.to_dict()
    if r.failed:
        res.failures.append("storm: " + ", ".join(f"{k} {v}" for k, v in r.failures.items() if v))
        res.failures += [f"  {e}" for e in r.error_samples[:4]]
    cb = client_bottleneck(r.proc_utilisation, r.client_cpu_s, r.elapsed_s)
    ports = port_pressure(r.failures.get("ephemeral_port_errors", 0), time_wait_by_tuple())
    res.figures["client_bottleneck"] = cb
    res.figures["ports"] = ports
    res.notes += [str(cb["verdict"]), str(ports["verdict"])]


def _bulk_figures(f: BulkFigures, cpu: float | None, res: TargetResult) -> None:
    res.figures["bulk"] = {
        "streams": f.streams,
        "bytes": f.bytes,
        "elapsed_s": f.elapsed_s,
        "gbit_s": f.gbit_s,
        "router_cpu_s_per_gb": cpu / (f.bytes / 1e9) if cpu is not None and f.bytes else None,
        "sender_cpu_s": f.sender_cpu_s,
        "verified": "every byte compared with the sender's pattern by the sink",
    }
    res.bulk_timeline_bytes = f.timeline_bytes
    res.failures += [f"bulk: {x}" for x in f.failures]


def _cpu_delta(before: float | None, after: float | None) -> float | None:
    """The router's CPU seconds between two readings (None when unknown)."""
    return None if before is None or after is None else after - before


async def _run(cfg: TargetConfig, ep: Endpoint, progress: Progress) -> TargetResult:
    loop = asyncio.get_running_loop()
    res = TargetResult(cfg, ep.description)
    scfg = StormConfig(
        clients=cfg.clients,
        duration_s=cfg.duration_s,
        count=cfg.count,
        procs=cfg.procs,
        timeout_s=cfg.timeout_s,
        source_addrs=cfg.source_addrs,
        tls_ca_file=ep.tls_ca,
    )

    async def storm(pool: ClientPool) -> RoundResult:
        return await run_round(
            scfg, AddressSubject("target", ep.echo), 0, pool, None, None,
            on_progress=progress.storm_tick,
        )  # fmt: skip

    cpu0 = ep.cpu_s()
    if cfg.workload == "storm":
        progress.phase(f"storm → {ep.description}")
        with ClientPool(cfg.procs) as pool:
            cpu0 = ep.cpu_s()
            r = await storm(pool)
            cpu1 = ep.cpu_s()
        _storm_figures(r, _cpu_delta(cpu0, cpu1), res)
    elif cfg.workload == "bulk":
        progress.phase(f"bulk x{cfg.streams} → {ep.description}")
        streams = await loop.run_in_executor(
            None,
            run_streams,
            ep.sink[0],
            ep.sink[1],
            cfg.streams,
            cfg.duration_s,
            1,
            0.3,
            ep.tls_ca,
        )
        cpu1 = ep.cpu_s()
        _bulk_figures(BulkFigures.of(streams), _cpu_delta(cpu0, cpu1), res)
    elif cfg.workload == "idle":
        progress.phase(f"idle {cfg.idle_conns} → {ep.description}")
        mem0 = ep.rss_kib()
        hold = IdleHold(
            ep.echo[0], ep.echo[1], cfg.idle_conns, min(cfg.procs, 4), cfg.source_addrs, ep.tls_ca
        )
        try:
            held = await loop.run_in_executor(None, hold.wait_held)
            await asyncio.sleep(cfg.hold_s)
            mem1 = ep.rss_kib()
        finally:
            await loop.run_in_executor(None, hold.release)
        res.figures["idle"] = {
            "held": held.held,
            "failed": held.failed,
            "open_s": held.open_s,
            "router_kib_per_conn": (mem1 - mem0) / held.held
            if mem0 is not None and mem1 is not None and held.held
            else None,
        }
        if held.failed:
            res.failures.append(f"idle: {held.failed} of {cfg.idle_conns} connections failed")
            res.failures += [f"  {e}" for e in held.error_samples[:4]]
    else:  # mixed: bulk streams and a storm at once
        progress.phase(f"mixed: storm + bulk x{cfg.streams} → {ep.description}")
        with ClientPool(cfg.procs) as pool:
            cpu0 = ep.cpu_s()
            bulk_job = loop.run_in_executor(
                None,
                run_streams,
                ep.sink[0],
                ep.sink[1],
                cfg.streams,
                cfg.duration_s + 1.0,
                7,
                0.0,
                ep.tls_ca,
            )
            r = await storm(pool)
            streams = await bulk_job
            cpu1 = ep.cpu_s()
        _storm_figures(r, None, res)
        _bulk_figures(BulkFigures.of(streams), None, res)
        res.figures["mixed"] = {"router_cpu_s": _cpu_delta(cpu0, cpu1)}
    return res


def run_target(cfg: TargetConfig, progress: Progress | None = None) -> TargetResult:
    import uvloop

    cfg.validate()
    progress = progress or Progress.plain()
    raise_nofile_limit()
    t0 = time.monotonic()
    with endpoint(cfg) as ep, progress:
        res = uvloop.run(_run(cfg, ep, progress))
    res.environment = environment()
    res.environment["wall_s"] = time.monotonic() - t0
    res.environment["pid"] = os.getpid()
    return res


def format_target(res: TargetResult) -> str:
    cfg = res.config
    lines = [f"skiff {cfg.workload}{' --tls' if cfg.tls else ''}: {res.endpoint}"]
    st = res.figures.get("storm")
    if st:
        lat = st["latency_us"]
        cpu = st["router_cpu_us_per_conn"]
        lines.append(
            f"  storm: {st['ok']:,} ok, {st['failed']:,} failed in {st['elapsed_s']:.1f} s = "
            f"{st['connections_per_s']:,.0f} conn/s; latency p50 {lat['p50'] / 1e3:.2f} ms "
            f"p99 {lat['p99'] / 1e3:.2f} ms max {lat['max'] / 1e3:.1f} ms"
            + (f"; router CPU {cpu:.1f} µs/conn" if cpu is not None else "")
        )
    bk = res.figures.get("bulk")
    if bk:
        cpu = bk["router_cpu_s_per_gb"]
        lines.append(
            f"  bulk: {bk['streams']} stream(s), {bk['bytes'] / 1e9:.2f} GB verified in "
            f"{bk['elapsed_s']:.1f} s = {bk['gbit_s']:.2f} Gbit/s"
            + (f"; router CPU {cpu:.3f} s/GB" if cpu is not None else "")
        )
    idle = res.figures.get("idle")
    if idle:
        kib = idle["router_kib_per_conn"]
        lines.append(
            f"  idle: {idle['held']:,} connections held ({idle['failed']} failed), opened in "
            f"{idle['open_s']:.1f} s" + (f"; router memory {kib:.2f} KiB/conn" if kib else "")
        )
    mixed = res.figures.get("mixed")
    if mixed and mixed["router_cpu_s"] is not None:
        lines.append(f"  router CPU during the mixed run: {mixed['router_cpu_s']:.2f} s")
    lines += [f"  note: {n}" for n in res.notes]
    lines.append("  result: " + ("OK" if res.ok else "FAILED"))
    lines += [f"  {f}" for f in res.failures[:12]]
    return "\n".join(lines)


def target_json(res: TargetResult) -> dict[str, Any]:
    return {
        "params": asdict(res.config),
        "environment": res.environment,
        "ok": res.ok,
        "endpoint": res.endpoint,
        "figures": res.figures,
        "failures": res.failures,
        "notes": res.notes,
        "timeline": res.timeline,
        "bulk_timeline_bytes": res.bulk_timeline_bytes,
        "bulk_sample_s": 0.1,
        "latency_histogram_ns": res.latency_histogram_ns,
    }
