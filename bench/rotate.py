"""TLS storms against the in-process engine, with or without certificate rotation.

``storm --tls``: the engine terminates TLS (P-256, TLS 1.2/1.3) in front of
the echo server; clients make a full handshake per connection (no tickets,
no session reuse); the figure is handshakes/s and worker CPU per handshake.

``rotate``: the same storm while a loader thread rewrites the certificate
and key files in place every ``interval`` and calls tls_load + tls_publish,
as the TlsManager will (router/tls.py replaces this thread once it lands).
Every ``slow_every``-th rotation the loader blocks for ``slow_s`` before its
load, standing in for a large CA bundle. Reported: handshakes/s, failed
handshakes, the time from a file write to the first client handshake that
presented the new certificate (clients read the peer certificate's SHA-256),
and the engine's high-priority timer lateness sampled every 100 ms.

Why the engine in-process: the engine's own counters (worker CPU, timer
lateness) are read directly, and the loader runs on a thread of the same
process, as it does in skiffd.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.client import ClientPool
from bench.echo import EchoServer
from bench.host import environment, raise_nofile_limit
from bench.pki import BenchCA
from bench.progress import Progress
from bench.storm import RoundResult, StormConfig, _run_round
from bench.subjects import ADDRESS_ID, EngineSubject, window_max_ns
from bench.verdict import client_bottleneck
from router.engine import PRIO_HIGH, TlsMaterial, tls_load
from router.engine import Histogram as EngineHistogram

SAMPLE_S = 0.1
MAX_ROTATIONS = 100_000


@dataclass(slots=True)
class RotateConfig:
    clients: int = 100
    duration_s: float = 5.0
    procs: int = 2
    workers: int = 2
    interval_s: float | None = 0.1  # None: no rotation (storm --tls)
    slow_every: int = 10  # every Nth rotation blocks the loader for slow_s first
    slow_s: float = 0.2
    timeout_s: float = 10.0
    source_addrs: int = 253

    def validate(self) -> None:
        if min(self.clients, self.procs, self.workers) < 1 or self.duration_s <= 0:
            raise ValueError("clients, procs, workers must be >= 1 and duration > 0")
        if self.interval_s is not None and self.interval_s < 0.01:
            raise ValueError("interval must be >= 0.01 s")


@dataclass(slots=True)
class Rotation:
    index: int
    fingerprint: str
    t_write: float  # monotonic, both files written
    t_published: float = 0.0
    slow: bool = False
    ok: bool = False
    error: str = ""
    reads: int = 0
    version: int = 0


class Loader(threading.Thread):
    """Rewrites the files and loads + publishes them, every interval."""

    def __init__(
        self,
        cfg: RotateConfig,
        ca: BenchCA,
        cert: Path,
        key: Path,
        probe: EngineSubject,
        slot: int,
        t0: float,
    ) -> None:
        super().__init__(name="skiff-bench-loader", daemon=True)
        self.cfg, self.ca, self.cert, self.key = cfg, ca, cert, key
        self.probe, self.slot, self.t0 = probe, slot, t0
        self.stop_event = threading.Event()
        self.rotations: list[Rotation] = []

    def run(self) -> None:
        assert self.cfg.interval_s is not None
        nxt = time.monotonic() + self.cfg.interval_s
        for i in range(1, MAX_ROTATIONS):  # bounded in count, and by stop_event
            if self.stop_event.wait(max(0.0, nxt - time.monotonic())):
                return
            nxt += self.cfg.interval_s
            cert_pem, key_pem, fp = self.ca.leaf(i)
            # in place, not renamed: a load may see a half-written pair and must retry
            self.cert.write_bytes(cert_pem)
            self.key.write_bytes(key_pem)
            rot = Rotation(
                i,
                fp,
                time.monotonic(),
                slow=self.cfg.slow_every > 0 and i % self.cfg.slow_every == 0,
            )
            self.rotations.append(rot)
            if rot.slow:
                time.sleep(self.cfg.slow_s)  # the stand-in for a 200 ms load
            res = tls_load(TlsMaterial(str(self.cert), str(self.key), ordinal=i))
            rot.reads = res.reads
            if res.ok and res.config is not None:
                rot.version = self.probe.engine.tls_publish(self.slot, res.config)
                rot.ok = True
            else:
                rot.error = res.error or ("unchanged" if res.unchanged else "no config")
            rot.t_published = time.monotonic()
            nxt = max(nxt, time.monotonic())


@dataclass(slots=True)
class RotateResult:
    config: RotateConfig
    round: RoundResult
    rotations: list[Rotation]
    lateness_timeline: list[dict[str, float]]
    lateness_total: dict[str, float]
    environment: dict[str, Any] = field(default_factory=dict)
    t0: float = 0.0

    @property
    def handshakes_per_s(self) -> float:
        return self.round.cps

    def pickup_ms(self, slow: bool | None = None) -> dict[str, float | int | None]:
        """Write → first handshake presenting that certificate, over rotations."""
        delays = [
            (self.round.first_seen[r.fingerprint] - r.t_write) * 1e3
            for r in self.rotations
            if r.fingerprint in self.round.first_seen and (slow is None or r.slow == slow)
        ]
        chosen = [r for r in self.rotations if slow is None or r.slow == slow]
        return {
            "rotations": len(chosen),
            "seen": len(delays),
            "never_seen": len(chosen) - len(delays),
            "p50": statistics.median(delays) if delays else None,
            "max": max(delays) if delays else None,
        }

    @property
    def cpu_us_per_handshake(self) -> float | None:
        cpu = self.round.engine.get("cpu_ns")
        return cpu / 1e3 / self.round.ok if cpu is not None and self.round.ok else None

    @property
    def ok(self) -> bool:
        return self.round.failed == 0 and all(r.ok for r in self.rotations)


def _lateness_point(t: float, h: EngineHistogram) -> dict[str, float]:
    return {
        "t_s": t,
        "count": h.count,
        "p99_us": h.quantile(0.99) / 1e3 if h.count else 0.0,
        "max_us": window_max_ns(h) / 1e3,
    }


async def _sample_lateness(
    probe: EngineSubject, t0: float, out: list[dict[str, float]], stop: asyncio.Event
) -> None:
    prev = probe.engine.lateness(PRIO_HIGH)
    for _ in range(1 << 30):  # bounded by stop
        try:
            await asyncio.wait_for(stop.wait(), SAMPLE_S)
            return
        except TimeoutError:
            pass  # next sample
        cur = probe.engine.lateness(PRIO_HIGH)
        out.append(_lateness_point(time.monotonic() - t0, cur.minus(prev)))
        prev = cur


async def _run(
    cfg: RotateConfig,
    echo: EchoServer,
    pool: ClientPool,
    probe: EngineSubject,
    progress: Progress,
    workdir: Path,
) -> RotateResult:
    loop = asyncio.get_running_loop()
    probe.attach(loop)
    ca = BenchCA()
    ca_file, cert, key = workdir / "ca.pem", workdir / "server.pem", workdir / "server.key"
    ca_file.write_bytes(ca.pem)
    cert_pem, key_pem, _fp = ca.leaf(0)
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    slot = probe.engine.tls_slot()
    first = await loop.run_in_executor(None, tls_load, TlsMaterial(str(cert), str(key)))
    if not first.ok or first.config is None:
        raise RuntimeError(f"initial TLS load failed: {first.error}")
    probe.engine.tls_publish(slot, first.config)
    listener = probe.engine.listen(
        "127.0.0.1", 0, address_id=ADDRESS_ID, backlog=4096, tls_slot=slot
    )

    @dataclass(frozen=True)
    class _Addr:
        name: str
        address: tuple[str, int]

    scfg = StormConfig(
        clients=cfg.clients,
        duration_s=cfg.duration_s,
        procs=cfg.procs,
        workers=cfg.workers,
        timeout_s=cfg.timeout_s,
        source_addrs=cfg.source_addrs,
        tls_ca_file=str(ca_file),
        tls_fingerprints=cfg.interval_s is not None,
    )
    t0 = time.monotonic()
    lat_before = probe.engine.lateness(PRIO_HIGH)
    loader = Loader(cfg, ca, cert, key, probe, slot, t0)
    timeline: list[dict[str, float]] = []
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(_sample_lateness(probe, t0, timeline, stop))
    if cfg.interval_s is not None:
        loader.start()
    name = "rotate" if cfg.interval_s is not None else "storm --tls"
    progress.phase(f"{name} → engine TLS listener :{listener.port}")
    try:
        r = await _run_round(
            scfg,
            _Addr("engine-tls", ("127.0.0.1", listener.port)),
            0,
            pool,
            echo,
            probe,
            on_progress=progress.storm_tick,
        )
    finally:
        loader.stop_event.set()
        stop.set()
        await sampler
        if loader.is_alive():
            await loop.run_in_executor(None, loader.join, 10.0)
    total = probe.engine.lateness(PRIO_HIGH).minus(lat_before)
    return RotateResult(cfg, r, loader.rotations, timeline, _lateness_point(0.0, total), t0=t0)


def run_rotate(cfg: RotateConfig, progress: Progress | None = None) -> RotateResult:
    import uvloop

    cfg.validate()
    progress = progress or Progress.plain()
    raise_nofile_limit()
    with (
        tempfile.TemporaryDirectory(prefix="skiff-bench-tls-") as tmp,
        EchoServer.start(1) as echo,
        ClientPool(cfg.procs) as pool,
    ):
        probe = EngineSubject(echo.port, cfg.workers, 0.01)
        try:
            with progress:
                res = uvloop.run(_run(cfg, echo, pool, probe, progress, Path(tmp)))
        finally:
            probe.stop()
    res.environment = environment()
    res.environment["worker_threads"] = cfg.workers
    return res


def rotate_json(res: RotateResult) -> dict[str, Any]:
    r = res.round
    return {
        "params": asdict(res.config),
        "environment": res.environment,
        "ok": res.ok,
        "figures": {
            "handshakes": r.ok,
            "handshakes_per_s": res.handshakes_per_s,
            "failed_handshakes": r.failed,
            "failures": r.failures,
            "engine_cpu_us_per_handshake": res.cpu_us_per_handshake,
            "latency_us": r.latency_ns.summary(1e3),
            "pickup_ms": res.pickup_ms(),
            "pickup_ms_normal": res.pickup_ms(False),
            "pickup_ms_slow": res.pickup_ms(True),
            "timer_lateness": res.lateness_total,
            "client_bottleneck": client_bottleneck(r.proc_utilisation, r.client_cpu_s, r.elapsed_s),
        },
        "rotations": [
            {**asdict(x), "t_s": x.t_write - res.t0, "t_published_s": x.t_published - res.t0}
            for x in res.rotations
        ],
        "lateness_timeline": res.lateness_timeline,
        "timeline": r.timeline,
        "latency_histogram_ns": r.latency_ns.to_dict(),
        "error_samples": r.error_samples,
    }


def format_rotate(res: RotateResult) -> str:
    d = rotate_json(res)["figures"]
    cfg = res.config
    lines = [
        f"skiff {'rotate' if cfg.interval_s else 'storm --tls'}: engine TLS listener, "
        f"{cfg.clients} clients, {cfg.duration_s:g} s, {cfg.workers} workers"
        + (
            f", rotation every {cfg.interval_s * 1e3:.0f} ms, every {cfg.slow_every}th load "
            f"blocked {cfg.slow_s * 1e3:.0f} ms"
            if cfg.interval_s
            else ""
        ),
        f"  handshakes: {d['handshakes']:,} ok = {d['handshakes_per_s']:,.0f}/s, "
        f"failed {d['failed_handshakes']}",
    ]
    cpu = d["engine_cpu_us_per_handshake"]
    if cpu is not None:
        lines.append(f"  engine worker CPU per handshake: {cpu:.0f} µs")
    if cfg.interval_s:
        bad = [x for x in res.rotations if not x.ok]
        lines.append(f"  rotations: {len(res.rotations)} ({len(bad)} not published)")
        for label, key in (
            ("ordinary", "pickup_ms_normal"),
            ("after 200 ms load", "pickup_ms_slow"),
        ):
            p = d[key]
            if p["seen"]:
                lines.append(
                    f"  write → first handshake with the new certificate ({label}): "
                    f"p50 {p['p50']:.1f} ms, max {p['max']:.1f} ms "
                    f"({p['seen']} seen, {p['never_seen']} replaced before any handshake)"
                )
        lines += [f"  not published: #{x.index} {x.error}" for x in bad[:5]]
    lat = d["timer_lateness"]
    worst = max((p["max_us"] for p in res.lateness_timeline), default=0.0)
    lines.append(
        f"  engine high-priority timer lateness: p99 {lat['p99_us'] / 1e3:.2f} ms, "
        f"max {lat['max_us'] / 1e3:.2f} ms (bucket upper bounds; worst 100 ms window "
        f"{worst / 1e3:.2f} ms)"
    )
    lines.append(f"  note: {d['client_bottleneck']['verdict']}")
    lines += [f"  {e}" for e in res.round.error_samples[:6]]
    lines.append("  result: " + ("OK" if res.ok else "FAILED"))
    return "\n".join(lines)
