"""``network --chain``: the data plane's cost per hop.

The same workloads as ``compare`` (the short-connection storm, a verified
bulk stream, N idle relayed connections) through chains of 1, 2 and 3
skiffd routers built with bench/netharness (interior routers, A→B→C links;
the tcpListener on the first router, the tcpConnector on the last one to
the bench's echo and sink servers), beside a direct baseline and HAProxy
chained the same way (each haproxy forwards to the next).

Why interleaved round by round: the machine drifts, so each round runs
every subject once and the figures compared are medians over rounds. Every
chain stays up for the whole run; a subject's CPU is the sum over all of
its processes (schedstat of every thread, like ``compare``) over its own
window only, divided by the connections (or GB) and by the number of
routers: the cost per flow per router. On a chain of N every flow is
relayed N times, so a data plane whose hops cost what a single router's
relay costs has the same CPU per flow per router on every chain.

Idle memory per flow per router is the RSS growth of every router process
while the flows are held, over the flows and the routers; the engines'
own ``buf_bytes_live`` (from /metrics) is kept beside it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import re
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.bulk import BulkFigures, SinkServer, run_streams
from bench.client import ClientPool
from bench.compare import Sample, _stats
from bench.echo import EchoServer
from bench.host import environment, raise_nofile_limit, read_process_cpu_s, read_threads_cpu_s
from bench.idle import IdleHold
from bench.netharness import Network
from bench.pki import CertAuthority, write
from bench.progress import Progress
from bench.proxies import (
    HAPROXY_MISSING,
    ProxyProcess,
    free_port,
    haproxy_binary,
    read_rss_kib,
    start_haproxy,
)
from bench.results import envelope
from bench.storm import StormConfig, run_round

SUBJECTS = (
    "direct",
    "chain1",
    "chain2",
    "chain3",
    "tls-chain2",
    "tls-chain3",
    "haproxy1",
    "haproxy2",
    "haproxy3",
)
TLS_PREFIX = "tls-"  # a chain whose inter-router links are mutual TLS
WORKLOADS = ("storm", "latency", "bulk", "idle")
LOG_ENTITY = "log {\n    module: DEFAULT\n    enable: warning+\n}"
ECHO_ADDRESS = "chain-echo"
SINK_ADDRESS = "chain-sink"
IR_MAX_CONNECTIONS = 100_000

# per workload: (metric, unit, lower is better)
METRICS: dict[str, list[tuple[str, str, bool]]] = {
    "storm": [
        ("connections_per_s", "conn/s", False),
        ("cpu_us_per_flow_router", "µs CPU/flow/router", True),
        ("cpu_us_per_flow", "µs CPU/flow (all routers)", True),
        ("latency_p50_ms", "p50 ms", True),
        ("latency_p99_ms", "p99 ms", True),
        ("pool_hit_ratio", "pooled data conns/claims", False),
        ("tls_handshakes_per_flow", "TLS handshakes/flow", True),
    ],
    "latency": [
        ("latency_p50_ms", "p50 ms (unloaded)", True),
        ("latency_p99_ms", "p99 ms (unloaded)", True),
        ("cpu_us_per_flow_router", "µs CPU/flow/router", True),
        ("pool_hit_ratio", "pooled data conns/claims", False),
        ("tls_handshakes_per_flow", "TLS handshakes/flow", True),
    ],
    "bulk": [
        ("gbit_s", "Gbit/s", False),
        ("cpu_s_per_gb_router", "CPU s/GB/router", True),
    ],
    "idle": [
        ("kib_per_flow_router", "KiB/flow/router", True),
        ("engine_buf_bytes_per_flow", "engine buf B/flow", True),
    ],
}

# the goals of the issue: (name, text, check(summary medians) -> (value, met))
GOAL_CPU = 1.2
GOAL_GBIT = 0.8
GOAL_IDLE_KIB = 1.0
GOAL_P50 = 1.3
GOAL_WARM = 0.99  # claims that found a pooled data connection (no handshake on the path)


def routers_of(subject: str) -> int:
    """Relaying processes of a subject (0 for direct)."""
    return int(subject[-1]) if subject[-1].isdigit() else 0


@dataclass(slots=True)
class ChainConfig:
    """Every parameter of a chain run (all land in the JSON)."""

    subjects: tuple[str, ...] = SUBJECTS
    workloads: tuple[str, ...] = WORKLOADS
    rounds: int = 3
    workers: int = 1  # workerThreads of every skiffd, nbthread of every haproxy
    clients: int = 50
    procs: int = 2
    storm_duration_s: float = 3.0
    storm_count: int | None = None  # connections per storm sample instead of a duration
    # latency: a storm of a few clients, far from saturating the machine, so
    # that p50 is the path's latency and not the queue of a saturated storm
    latency_clients: int = 2
    latency_duration_s: float = 2.0
    bulk_duration_s: float = 3.0
    bulk_streams: int = 1
    idle_conns: int = 1000
    source_addrs: int = 253
    timeout_s: float = 10.0
    pause_s: float = 0.3
    idle_settle_s: float = 0.5
    workdir: Path | None = None

    def validate(self) -> None:
        if not self.subjects or set(self.subjects) - set(SUBJECTS):
            raise ValueError(f"subjects must be among {SUBJECTS}, got {self.subjects}")
        if not self.workloads or set(self.workloads) - set(WORKLOADS):
            raise ValueError(f"workloads must be among {WORKLOADS}, got {self.workloads}")
        if (
            min(
                self.rounds,
                self.workers,
                self.clients,
                self.procs,
                self.idle_conns,
                self.bulk_streams,
            )
            < 1
        ):
            raise ValueError("rounds, workers, clients, procs, idle conns, streams must be >= 1")
        if self.storm_count is not None and self.storm_count < 1:
            raise ValueError("storm count must be >= 1")
        if self.latency_clients < 1:
            raise ValueError("latency clients must be >= 1")
        if min(self.storm_duration_s, self.bulk_duration_s, self.latency_duration_s) <= 0:
            raise ValueError("durations must be positive")


# ---------------------------------------------------------------- subjects


@dataclass
class Subject:
    """A chain (or nothing, for direct): its two entry points and its processes."""

    name: str
    echo: tuple[str, int]
    sink: tuple[str, int]
    pids: list[int]
    # engine gauges summed over the routers (skiffd chains only)
    gauges: Callable[[], dict[str, float]] | None = None
    # data-plane counters summed over the routers (skiffd chains only)
    counters: Callable[[], dict[str, float]] | None = None
    logs: Callable[[], dict[str, str]] | None = None
    stop: Callable[[], None] = lambda: None

    @property
    def routers(self) -> int:
        return len(self.pids)

    @property
    def address(self) -> tuple[str, int]:  # what run_round dials
        return self.echo

    def cpu_by_process(self) -> list[float]:
        out = []
        for pid in self.pids:
            s = read_threads_cpu_s(pid)
            out.append(s if s is not None else read_process_cpu_s(pid))
        return out

    def rss_kib(self) -> list[int]:
        return [read_rss_kib(pid) for pid in self.pids]


def _listener(name: str, port: int, address: str) -> str:
    return (
        f"tcpListener {{\n    name: {name}\n    host: 127.0.0.1\n    port: {port}\n"
        f"    address: {address}\n    backlog: 4096\n}}"
    )


def _connector(name: str, target: tuple[str, int], address: str) -> str:
    return (
        f"tcpConnector {{\n    name: {name}\n    host: {target[0]}\n    port: {target[1]}\n"
        f"    address: {address}\n}}"
    )


_GAUGE = re.compile(r"^skiff_engine_(conns_live|buf_bytes_live|bufs_live)\s+([0-9.eE+-]+)$", re.M)


def engine_gauges(text: str) -> dict[str, float]:
    """The engine gauges of one /metrics exposition."""
    return {m.group(1): float(m.group(2)) for m in _GAUGE.finditer(text)}


_COUNTER = re.compile(
    r"^skiff_(engine_tls_handshakes_total|dataplane_peer_pool_hits_total"
    r"|dataplane_peer_pool_misses_total)(?:\{[^}]*\})?\s+([0-9.eE+-]+)$",
    re.M,
)


def dataplane_counters(text: str) -> dict[str, float]:
    """TLS handshakes and pool claims of one /metrics exposition, summed
    over the neighbours: a claim that found no pooled data connection (a
    miss) dials, and over TLS handshakes, on the flow's path."""
    out = {"tls_handshakes": 0.0, "pool_hits": 0.0, "pool_misses": 0.0}
    for m in _COUNTER.finditer(text):
        key = {
            "engine_tls_handshakes_total": "tls_handshakes",
            "dataplane_peer_pool_hits_total": "pool_hits",
            "dataplane_peer_pool_misses_total": "pool_misses",
        }[m.group(1)]
        out[key] += float(m.group(2))
    return out


def _pool_figures(
    before: dict[str, float] | None, after: dict[str, float] | None, flows: int
) -> dict[str, float | None]:
    if before is None or after is None:
        return {"pool_hit_ratio": None, "tls_handshakes_per_flow": None}
    hits = after["pool_hits"] - before["pool_hits"]
    misses = after["pool_misses"] - before["pool_misses"]
    hs = after["tls_handshakes"] - before["tls_handshakes"]
    return {
        "pool_hit_ratio": hits / (hits + misses) if hits + misses else None,
        "tls_handshakes_per_flow": hs / flows if flows else None,
    }


def round_trip(address: tuple[str, int], payload: bytes = b"chain-probe") -> bool:
    try:
        with socket.create_connection(address, timeout=2) as s:
            s.settimeout(2)
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            return got == payload
    except OSError:
        return False


def start_chain(
    n: int,
    workers: int,
    echo: tuple[str, int],
    sink: tuple[str, int],
    tmp: Path,
    timeout_s: float = 60.0,
    tls: bool = False,
) -> Subject:
    """n interior routers A→B→…, listeners on the first, connectors on the
    last; with ``tls``, every inter-router link (and so every data
    connection) is mutual TLS with certificates of one CA."""
    names = [chr(ord("A") + i) for i in range(n)]
    net = Network(tmp)
    ca = CertAuthority("chain CA") if tls else None
    for name in names:
        spec = net.router(name, workerThreads=workers)
        spec.extra.append(LOG_ENTITY)
        # the AMQP links are few; the cap is lifted so that it never matters
        spec.listener_attrs["maxConnections"] = IR_MAX_CONNECTIONS
        if ca is not None:
            issued = ca.issue(name)
            pki = tmp / "pki"
            pki.mkdir(parents=True, exist_ok=True)
            cert = write(pki / f"{name}.pem", issued.cert_pem)
            key = write(pki / f"{name}.key", issued.key_pem)
            cas = write(pki / "ca.pem", ca.pem)
            spec.extra.append(
                f"sslProfile {{\n    name: link-tls\n    certFile: {cert}\n"
                f"    privateKeyFile: {key}\n    caCertFile: {cas}\n}}"
            )
            spec.listener_attrs.update(
                {"sslProfile": "link-tls", "authenticatePeer": "true", "requireSsl": "true"}
            )
    for a, b in itertools.pairwise(names):
        if ca is not None:
            net.link(a, b, sslProfile="link-tls")
        else:
            net.link(a, b)
    echo_port, sink_port = free_port(), free_port()
    while sink_port == echo_port:
        sink_port = free_port()
    first, last = net.specs[names[0]], net.specs[names[-1]]
    first.extra += [
        _listener("l-echo", echo_port, ECHO_ADDRESS),
        _listener("l-sink", sink_port, SINK_ADDRESS),
    ]
    last.extra += [
        _connector("c-echo", echo, ECHO_ADDRESS),
        _connector("c-sink", sink, SINK_ADDRESS),
    ]
    try:
        net.start()
        net.wait_converged(timeout=timeout_s)
        entry = ("127.0.0.1", echo_port)
        net.wait(lambda: round_trip(entry), f"a flow through chain{n}", timeout_s)
    except BaseException:
        net.close()
        raise
    routers = [net[name] for name in names]

    def gauges() -> dict[str, float]:
        total: dict[str, float] = {}
        for r in routers:
            for k, v in engine_gauges(r.http("/metrics")[1]).items():
                total[k] = total.get(k, 0.0) + v
        return total

    def counters() -> dict[str, float]:
        total: dict[str, float] = {}
        for r in routers:
            for k, v in dataplane_counters(r.http("/metrics")[1]).items():
                total[k] = total.get(k, 0.0) + v
        return total

    pids = []
    for r in routers:
        assert r.proc is not None
        pids.append(r.proc.pid)
    return Subject(
        f"{TLS_PREFIX if tls else ''}chain{n}",
        entry,
        ("127.0.0.1", sink_port),
        pids,
        gauges,
        counters,
        lambda: {r.name: r.log() for r in routers},
        net.close,
    )


def start_haproxy_chain(
    n: int, workers: int, echo: tuple[str, int], sink: tuple[str, int]
) -> tuple[Subject, str]:
    """n haproxy processes, each forwarding to the next; (subject, version)."""
    procs: list[ProxyProcess] = []
    e, s = echo, sink
    try:
        for _ in range(n):  # the last one first: each needs its successor's ports
            p = start_haproxy(workers, e, s)
            procs.append(p)
            e, s = ("127.0.0.1", p.echo_port), ("127.0.0.1", p.sink_port)
    except BaseException:
        for p in procs:
            p.stop()
        raise

    def stop() -> None:
        for p in procs:
            p.stop()

    procs.reverse()  # entry first
    subj = Subject(f"haproxy{n}", e, s, [p.pid for p in procs], stop=stop)
    return subj, procs[0].version


def direct_subject(echo: tuple[str, int], sink: tuple[str, int]) -> Subject:
    return Subject("direct", echo, sink, [])


# ---------------------------------------------------------------- workloads


class _Runner:
    def __init__(self, cfg: ChainConfig, pool: ClientPool, echo: EchoServer) -> None:
        self.cfg = cfg
        self.pool = pool
        self.echo = echo

    async def storm(self, t: Subject, rnd: int, workload: str = "storm") -> Sample:
        cfg = self.cfg
        unloaded = workload == "latency"
        scfg = StormConfig(
            clients=cfg.latency_clients if unloaded else cfg.clients,
            duration_s=cfg.latency_duration_s if unloaded else cfg.storm_duration_s,
            count=None if unloaded else cfg.storm_count,
            procs=cfg.procs,
            workers=cfg.workers,
            timeout_s=cfg.timeout_s,
            source_addrs=cfg.source_addrs,
        )
        by0 = t.cpu_by_process()
        c0 = t.counters() if t.counters is not None else None
        r = await run_round(scfg, t, rnd, self.pool, self.echo, None)
        by = [b - a for a, b in zip(by0, t.cpu_by_process(), strict=True)]
        pool = _pool_figures(c0, t.counters() if t.counters is not None else None, r.ok)
        cpu = sum(by) if t.routers else None
        failures = [f"{k}: {v}" for k, v in r.failures.items() if v]
        if r.ok == 0:
            failures.append("no connection completed")
        per_flow = cpu * 1e6 / r.ok if cpu is not None and r.ok else None
        return Sample(
            workload,
            t.name,
            rnd,
            {
                "connections_per_s": r.cps,
                "cpu_us_per_flow": per_flow,
                "cpu_us_per_flow_router": per_flow / t.routers if per_flow is not None else None,
                "latency_p50_ms": r.latency_ns.quantile(0.5) / 1e6,
                "latency_p99_ms": r.latency_ns.quantile(0.99) / 1e6,
                "flows": float(r.ok),
                "failed_flows": float(sum(r.failures.values())),
                "client_cpu_s": r.client_cpu_s,
                **pool,
            },
            failures,
            {
                "router_cpu_s": cpu,
                "router_cpu_us_per_flow_by_process": [c * 1e6 / r.ok for c in by] if r.ok else [],
                "error_samples": r.error_samples[:4],
                "elapsed_s": r.elapsed_s,
                "latency_histogram_ns": r.latency_ns.to_dict(),
            },
        )

    async def bulk(self, t: Subject, rnd: int) -> Sample:
        loop = asyncio.get_running_loop()
        streams = self.cfg.bulk_streams
        by0 = t.cpu_by_process()
        res = await loop.run_in_executor(
            None,
            run_streams,
            t.sink[0],
            t.sink[1],
            streams,
            self.cfg.bulk_duration_s,
            (rnd << 20) + streams * 1000 + t.routers,
            0.3,
            None,
        )
        by = [b - a for a, b in zip(by0, t.cpu_by_process(), strict=True)]
        cpu = sum(by) if t.routers else None
        f = BulkFigures.of(res)
        failures = list(f.failures)
        if not f.bytes:
            failures.append("no byte carried")
        per_gb = cpu / (f.bytes / 1e9) if cpu is not None and f.bytes else None
        return Sample(
            "bulk",
            t.name,
            rnd,
            {
                "gbit_s": f.gbit_s,
                "cpu_s_per_gb": per_gb,
                "cpu_s_per_gb_router": per_gb / t.routers if per_gb is not None else None,
                "bytes": float(f.bytes),
                "failed_flows": float(len(f.failures)),
                "sender_cpu_s": f.sender_cpu_s,
            },
            failures,
            {"router_cpu_s": cpu, "router_cpu_s_by_process": by},
        )

    async def idle(self, t: Subject, rnd: int) -> Sample:
        loop = asyncio.get_running_loop()
        n = self.cfg.idle_conns
        await asyncio.sleep(self.cfg.idle_settle_s)
        rss0, g0 = t.rss_kib(), (t.gauges() if t.gauges else None)
        hold = IdleHold(
            t.echo[0],
            t.echo[1],
            n,
            procs=max(1, min(self.cfg.procs, 4, n // 1000)),
            source_addrs=self.cfg.source_addrs,
        )
        try:
            held = await loop.run_in_executor(None, hold.wait_held)
            await asyncio.sleep(self.cfg.idle_settle_s)
            rss1, g1 = t.rss_kib(), (t.gauges() if t.gauges else None)
        finally:
            await loop.run_in_executor(None, hold.release)
        failures = [] if held.failed == 0 else [f"{held.failed} of {n} idle flows failed"]
        failures += held.error_samples[:4] if held.failed else []
        if not held.held:
            failures.append("no idle flow held")
        figures: dict[str, float | None] = {
            "held": float(held.held),
            "failed_flows": float(held.failed),
            "kib_per_flow_router": None,
            "engine_buf_bytes_per_flow": None,
        }
        detail: dict[str, Any] = {
            "rss_before_kib": rss0,
            "rss_after_kib": rss1,
            "open_s": held.open_s,
        }
        if t.routers and held.held:
            growth = [b - a for a, b in zip(rss0, rss1, strict=True)]
            detail["rss_growth_kib_per_flow_by_router"] = [g / held.held for g in growth]
            figures["kib_per_flow_router"] = sum(growth) / held.held / t.routers
        if g0 is not None and g1 is not None and held.held:
            figures["engine_buf_bytes_per_flow"] = (
                g1.get("buf_bytes_live", 0) - g0.get("buf_bytes_live", 0)
            ) / held.held
            detail["engine_conns_live_delta"] = g1.get("conns_live", 0) - g0.get("conns_live", 0)
        return Sample("idle", t.name, rnd, figures, failures, detail)


# ---------------------------------------------------------------- report


@dataclass(slots=True)
class ChainReport:
    config: ChainConfig
    environment: dict[str, Any]
    samples: list[Sample]
    skipped: dict[str, str]
    versions: dict[str, str]
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    wall_s: float = 0.0
    router_findings: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def subjects(self) -> list[str]:
        return [s for s in self.config.subjects if s not in self.skipped]

    def summary(self) -> dict[str, dict[str, dict[str, dict[str, float] | None]]]:
        """workload -> metric -> subject -> min/median/max over ok rounds
        (idle memory: the max over rounds, first-touch growth being the cost)."""
        out: dict[str, dict[str, dict[str, dict[str, float] | None]]] = {}
        for wl in self.config.workloads:
            out[wl] = {}
            for metric, _unit, _low in METRICS[wl]:
                out[wl][metric] = {}
                for subj in self.subjects:
                    vals = [
                        v
                        for s in self.samples
                        if s.workload == wl
                        and s.subject == subj
                        and s.ok
                        and (v := s.figures.get(metric)) is not None
                    ]
                    st = _stats(vals)
                    if st is not None and wl == "idle":
                        st["median"] = st["max"]
                    out[wl][metric][subj] = st
        return out

    def median(self, wl: str, metric: str, subject: str) -> float | None:
        st = self.summary().get(wl, {}).get(metric, {}).get(subject)
        return None if st is None else st["median"]

    def ratio(self, wl: str, metric: str, num: str, den: str) -> float | None:
        a, b = self.median(wl, metric, num), self.median(wl, metric, den)
        return None if a is None or b is None or b == 0 else a / b

    def ratios(self) -> dict[str, dict[str, float | None]]:
        """metric -> "chainN/chain1" and "chainN/haproxyN" -> ratio of medians."""
        out: dict[str, dict[str, float | None]] = {}
        for wl in self.config.workloads:
            for metric, _unit, _low in METRICS[wl]:
                row: dict[str, float | None] = {}
                for n in (1, 2, 3):
                    c = f"chain{n}"
                    if c not in self.subjects:
                        continue
                    if n > 1 and "chain1" in self.subjects:
                        row[f"{c}/chain1"] = self.ratio(wl, metric, c, "chain1")
                    if f"haproxy{n}" in self.subjects:
                        row[f"{c}/haproxy{n}"] = self.ratio(wl, metric, c, f"haproxy{n}")
                    if f"{TLS_PREFIX}{c}" in self.subjects:
                        row[f"{TLS_PREFIX}{c}/{c}"] = self.ratio(wl, metric, TLS_PREFIX + c, c)
                out[f"{wl}.{metric}"] = row
        return out

    def cpu_by_router(self) -> dict[str, list[float]]:
        """subject -> storm µs CPU per flow of each of its processes (median)."""
        out: dict[str, list[float]] = {}
        for subj in self.subjects:
            rows = [
                s.detail.get("router_cpu_us_per_flow_by_process") or []
                for s in self.samples
                if s.workload == "storm" and s.subject == subj and s.ok
            ]
            rows = [r for r in rows if r]
            if rows:
                out[subj] = [statistics.median(col) for col in zip(*rows, strict=True)]
        return out

    def failed_flows(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in self.samples:
            out[s.subject] = out.get(s.subject, 0.0) + (s.figures.get("failed_flows") or 0.0)
            if not s.ok and not s.figures.get("failed_flows"):
                out[s.subject] += 1  # a failed sample without a count still fails
        return out

    def goals(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        subj = self.subjects
        wl = self.config.workloads

        def goal(name: str, text: str, value: float | None, met: bool | None) -> None:
            out[name] = {"goal": text, "value": value, "met": met}

        if "storm" in wl and "chain1" in subj:
            for n in (2, 3):
                if f"chain{n}" in subj:
                    r = self.ratio("storm", "cpu_us_per_flow_router", f"chain{n}", "chain1")
                    goal(
                        f"cpu_per_flow_router_chain{n}",
                        f"CPU per flow per router, chain{n}/chain1 <= {GOAL_CPU}",
                        r,
                        None if r is None else r <= GOAL_CPU,
                    )
        # p50 from the unloaded workload when it ran: a saturated storm's
        # latency is its queue (clients / rate), not the path's
        lat = "latency" if "latency" in wl else "storm"
        if lat in wl and "chain1" in subj and "chain3" in subj:
            r = self.ratio(lat, "latency_p50_ms", "chain3", "chain1")
            goal(
                "latency_p50_chain3",
                f"p50 connection latency ({lat}), chain3/chain1 <= {GOAL_P50}",
                r,
                None if r is None else r <= GOAL_P50,
            )
        if "bulk" in wl and "chain1" in subj and "chain3" in subj:
            r = self.ratio("bulk", "gbit_s", "chain3", "chain1")
            goal(
                "bulk_gbit_chain3",
                f"bulk Gbit/s, chain3/chain1 >= {GOAL_GBIT}",
                r,
                None if r is None else r >= GOAL_GBIT,
            )
        if "idle" in wl:
            for n in (1, 2, 3):
                if f"chain{n}" in subj:
                    v = self.median("idle", "kib_per_flow_router", f"chain{n}")
                    goal(
                        f"idle_kib_per_flow_router_chain{n}",
                        f"idle RSS per flow per router, chain{n} <= {GOAL_IDLE_KIB} KiB",
                        v,
                        None if v is None else v <= GOAL_IDLE_KIB,
                    )
        if lat in wl:
            for n in (2, 3):
                if f"{TLS_PREFIX}chain{n}" in subj:
                    v = self.median(lat, "pool_hit_ratio", f"{TLS_PREFIX}chain{n}")
                    goal(
                        f"tls_links_warm_pool_chain{n}",
                        f"TLS links: flows that claimed a warm (already handshaken) data "
                        f"connection ({lat}), {TLS_PREFIX}chain{n} >= {GOAL_WARM}",
                        v,
                        None if v is None else v >= GOAL_WARM,
                    )
        ff = self.failed_flows()
        total = sum(ff.values())
        goal(
            "zero_failed_flows",
            "zero failed flows in every sample of every subject",
            total,
            total == 0,
        )
        return out

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.samples)


def to_json(report: ChainReport, argv: Sequence[str]) -> dict[str, Any]:
    params = dataclasses.asdict(report.config)
    params["workdir"] = str(report.config.workdir) if report.config.workdir else None
    env = dict(report.environment)
    env["versions"] = report.versions
    env["loadavg_start"] = list(report.load_start)
    env["loadavg_end"] = list(report.load_end)
    out = envelope("network-chain/1", argv, params, env, report.ok)
    out.update(
        {
            "subjects": report.subjects,
            "routers": {s: routers_of(s) for s in report.subjects},
            "units": {wl: {m: u for m, u, _ in METRICS[wl]} for wl in report.config.workloads},
            "summary": report.summary(),
            "ratios": report.ratios(),
            "goals": report.goals(),
            "failed_flows": report.failed_flows(),
            "storm_cpu_us_per_flow_by_router": report.cpu_by_router(),
            "skipped": report.skipped,
            "router_findings": report.router_findings,
            "samples": [dataclasses.asdict(s) for s in report.samples],
            "wall_s": report.wall_s,
        }
    )
    return out


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def format_sample(s: Sample) -> str:
    figs = ", ".join(
        f"{unit} {_fmt(s.figures.get(metric))}" for metric, unit, _ in METRICS[s.workload]
    )
    state = "ok" if s.ok else "FAILED " + "; ".join(s.failures[:3])
    return f"round {s.round + 1} {s.workload:<5} {s.subject:<8} {figs} [{state}]"


def format_report(report: ChainReport, argv: Sequence[str] = ()) -> str:
    cfg = report.config
    lines = []
    if argv:
        lines.append("command: " + " ".join(["python -m bench", *argv[1:]]))
    lines += [
        f"network --chain: {cfg.rounds} round(s), workerThreads/nbthread {cfg.workers}, "
        f"storm {cfg.clients} clients x "
        + (f"{cfg.storm_count} conns" if cfg.storm_count else f"{cfg.storm_duration_s:g} s")
        + f", bulk {cfg.bulk_streams} stream(s) x {cfg.bulk_duration_s:g} s, "
        f"idle {cfg.idle_conns} flows, latency {cfg.latency_clients} clients x "
        f"{cfg.latency_duration_s:g} s, {report.environment.get('cpu_count')} CPUs",
        "load average at start "
        + " ".join(f"{x:.2f}" for x in report.load_start)
        + ", at end "
        + " ".join(f"{x:.2f}" for x in report.load_end),
        "",
    ]
    summ = report.summary()
    subj = report.subjects
    head = f"{'workload':<7} {'figure':<26} " + " ".join(f"{s:>20}" for s in subj)
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
            lines.append(f"{wl:<7} {unit:<26} " + " ".join(f"{c:>20}" for c in cells))
    lines += [
        "",
        "cells: median [min..max] over rounds; idle: max over rounds",
        "",
        "ratios of medians:",
    ]
    for key, row in report.ratios().items():
        if row:
            lines.append(f"  {key:<34} " + "  ".join(f"{k} {_fmt(v)}" for k, v in row.items()))
    by = report.cpu_by_router()
    if by:
        lines += ["", "storm µs CPU per flow by router (median over rounds, entry first):"]
        lines += [f"  {k:<9} " + "  ".join(_fmt(v) for v in vs) for k, vs in by.items()]
    lines += ["", "goals:"]
    for g in report.goals().values():
        state = "n/a" if g["met"] is None else ("met" if g["met"] else "NOT MET")
        lines.append(f"  {g['goal']:<58} {_fmt(g['value']):>8}  {state}")
    bad = [s for s in report.samples if not s.ok]
    if bad:
        lines.append(f"FAILED samples ({len(bad)}):")
        lines += ["  " + format_sample(s) for s in bad[:12]]
    for name, f in report.router_findings.items():
        if f.get("warnings") or f.get("errors"):
            lines.append(
                f"router log {name}: {f['warnings']} warning(s), {f['errors']} error(s)"
                + (f"; first: {f['first']}" if f.get("first") else "")
            )
    for name, why in report.skipped.items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)


# ---------------------------------------------------------------- run

_WARN = re.compile(r"\b(warning|error|critical|traceback)\b", re.I)


def _findings(logs: dict[str, str]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, text in logs.items():
        hits = [ln for ln in text.splitlines() if _WARN.search(ln)]
        errs = [ln for ln in hits if re.search(r"error|critical|traceback", ln, re.I)]
        out[name] = {
            "warnings": len(hits) - len(errs),
            "errors": len(errs),
            "first": hits[0][:200] if hits else None,
        }
    return out


async def _run_all(
    cfg: ChainConfig,
    subjects: list[Subject],
    pool: ClientPool,
    echo: EchoServer,
    progress: Progress,
) -> list[Sample]:
    runner = _Runner(cfg, pool, echo)
    out: list[Sample] = []
    for rnd in range(cfg.rounds):
        for wl in cfg.workloads:
            for t in subjects:
                progress.phase(f"round {rnd + 1}/{cfg.rounds} {wl} → {t.name}")
                if wl in ("storm", "latency"):
                    s = await runner.storm(t, rnd, wl)
                elif wl == "bulk":
                    s = await runner.bulk(t, rnd)
                else:
                    s = await runner.idle(t, rnd)
                progress.result(format_sample(s))
                out.append(s)
                await asyncio.sleep(cfg.pause_s)
    return out


def run_chain(cfg: ChainConfig, progress: Progress | None = None) -> ChainReport:
    """Starts the servers and every chain; runs every round; stops all."""
    import uvloop

    cfg.validate()
    progress = progress or Progress.plain()
    raise_nofile_limit()
    t0 = time.monotonic()
    report = ChainReport(cfg, environment(), [], {}, {}, os.getloadavg())
    own_dir = cfg.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="chainbench-")) if own_dir else cfg.workdir
    assert workdir is not None
    started: list[Subject] = []
    try:
        with EchoServer.start(1) as echo, SinkServer.start() as sink, ClientPool(cfg.procs) as pool:
            e, s = ("127.0.0.1", echo.port), ("127.0.0.1", sink.port)
            for name in cfg.subjects:
                n = routers_of(name)
                if name == "direct":
                    started.append(direct_subject(e, s))
                elif "chain" in name:
                    progress.phase(f"starting {name}")
                    tls = name.startswith(TLS_PREFIX)
                    started.append(start_chain(n, cfg.workers, e, s, workdir / name, tls=tls))
                elif haproxy_binary() is None:
                    progress.result(f"skipping {name}: {HAPROXY_MISSING}")
                    report.skipped[name] = HAPROXY_MISSING
                else:
                    subj, version = start_haproxy_chain(n, cfg.workers, e, s)
                    started.append(subj)
                    report.versions["haproxy"] = version
            with progress:
                report.samples = uvloop.run(_run_all(cfg, started, pool, echo, progress))
            for subj in started:
                if subj.logs is not None:
                    for r, text in subj.logs().items():
                        report.router_findings[f"{subj.name}/{r}"] = _findings({r: text})[r]
    finally:
        for subj in started:
            subj.stop()
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    report.load_end = os.getloadavg()
    report.wall_s = time.monotonic() - t0
    return report
