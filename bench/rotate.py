"""TLS storms against the in-process engine, with or without certificate rotation.

``storm --tls``: the engine terminates TLS (P-256, TLS 1.2/1.3) in front of
the echo server; clients make a full handshake per connection (no tickets,
no session reuse); the figure is handshakes/s and worker CPU per handshake.

``rotate``: the same storm while a writer thread rewrites the certificate
and key files in place every ``interval``. Nothing else is done: the
product path picks the change up (router/tls.py's TlsManager: inotify on the
directory, debounce, a native load on its loader pool, publication). Every
``slow_every``-th rotation also rewrites the CA bundle with enough
certificates that parsing it takes about ``slow_s`` on the loader — the
original failure's large bundle — in a second sslProfile, so that its
slow load runs on the loader pool beside the ordinary profile's loads, as
in a router with several profiles. With ``bundle_same_profile`` the bundle is
instead the ``caCertFile`` of the rotating profile itself (the original
failure: every second the profile's own 4,000-CA bundle is rewritten, so
every load of the profile after that parses all of it), and
``bundle_certs`` makes it that many distinct CA certificates (1: the
control run), the two bundles written in turn differing in one certificate
(the engine's certificate cache then parses one per rewrite); without it
the two bundles hold disjoint sets of distinct CAs, each sized so that a
cold parse takes about ``slow_s``. Reported: handshakes/s, failed handshakes, the slowest
connection, the time from a file write to the first client handshake that
presented the new certificate (clients read the peer certificate's SHA-256),
rotations never presented to any client, stale handshakes (ones that
presented a certificate although a newer one had been written at least
``stale_after_s`` before), when each rewritten bundle was in force (from its
write to the first publication whose trust store is that bundle's, matched
by the bundle's fingerprint; a bundle replaced by the next rewrite before it
went out counts as superseded), the engine's high-priority timer lateness
sampled every 100 ms, and the control loop's lag (how late a 10 ms sleep of
the asyncio loop wakes: what a management request would wait, since the
TlsManager and the agent share that loop and the GIL with the loader pool).

Why the engine in-process: the engine's own counters (worker CPU, timer
lateness) are read directly, and the loader runs on a thread of the same
process, as it does in skiffd.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import statistics
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.client import PRESENTED_BIN_S, ClientPool
from bench.echo import EchoServer
from bench.histogram import Histogram
from bench.host import environment, raise_nofile_limit
from bench.pki import CertAuthority, ca_bundle, write_tls_files
from bench.progress import Progress
from bench.proxies import start_skiffd
from bench.report import format_timer_goals, timer_goal_figures
from bench.storm import RoundResult, StormConfig, run_round
from bench.subjects import ADDRESS_ID, AddressSubject, EngineSubject, window_max_ns
from bench.verdict import client_bottleneck
from router.configs import RouterConfig
from router.engine import PRIO_HIGH, tls_load_store
from router.engine import Histogram as EngineHistogram
from router.node import Node

PROFILE = "bench"

SAMPLE_S = 0.1
LOOP_TICK_S = 0.01  # the control loop's own lag is sampled this often
MAX_ROTATIONS = 5_000


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
    bundle_same_profile: bool = False  # the bundle is the rotating profile's caCertFile
    bundle_certs: int | None = None  # distinct CAs in the bundle (None: sized for slow_s)
    stale_after_s: float = 0.5  # a handshake this long after a newer write is stale
    worker_nice: int | None = None  # the workers' nice value (engine and baseline skiffd)

    def validate(self) -> None:
        if min(self.clients, self.procs, self.workers) < 1 or self.duration_s <= 0:
            raise ValueError("clients, procs, workers must be >= 1 and duration > 0")
        if self.bundle_certs is not None and self.bundle_certs < 1:
            raise ValueError("bundle certs must be >= 1")
        if self.bundle_same_profile and self.slow_every < 1:
            raise ValueError("--bundle-same-profile rewrites the bundle every --slow-every")
        if self.stale_after_s <= 0:
            raise ValueError("stale-after must be > 0")
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
    """Rewrites the files every interval (in place: a load may see a
    half-written pair and must retry); the TlsManager does the rest."""

    def __init__(
        self,
        cfg: RotateConfig,
        ca: CertAuthority,
        cert: Path,
        key: Path,
        bundle: Path,
        bundles: tuple[bytes, bytes],
        t0: float,
    ) -> None:
        super().__init__(name="skiff-bench-writer", daemon=True)
        self.cfg, self.ca, self.cert, self.key = cfg, ca, cert, key
        self.bundle, self.bundles, self.t0 = bundle, bundles, t0
        self.stop_event = threading.Event()
        self.rotations: list[Rotation] = []

    def run(self) -> None:
        assert self.cfg.interval_s is not None
        nxt = time.monotonic() + self.cfg.interval_s
        # one new certificate per rotation, made ahead: signing is not what
        # this bench measures
        count = min(MAX_ROTATIONS, int(self.cfg.duration_s / self.cfg.interval_s) + 2)
        leaves = [self.ca.leaf(i) for i in range(1, count + 1)]
        for i in range(1, count + 1):  # bounded in count, and by stop_event
            if self.stop_event.wait(max(0.0, nxt - time.monotonic())):
                return
            nxt += self.cfg.interval_s
            cert_pem, key_pem, fp = leaves[i - 1]
            slow = self.cfg.slow_every > 0 and i % self.cfg.slow_every == 0
            if slow:  # a changed bundle: the next load parses all of it
                self.bundle.write_bytes(bundle_bytes(self.bundles, i // self.cfg.slow_every))
            self.cert.write_bytes(cert_pem)
            self.key.write_bytes(key_pem)
            self.rotations.append(Rotation(i, fp, time.monotonic(), slow=slow))
            nxt = max(nxt, time.monotonic())


def _distinct_bundles(ca_pem: bytes, count: int) -> tuple[bytes, bytes]:
    """Two bundles of count distinct CAs, the server's own CA first (so the
    certificate chains to it), that differ in content: in one certificate,
    or for a single CA in a blank line."""
    others = ca_bundle(count)
    return (
        ca_pem + b"".join(others[: count - 1]),
        ca_pem + b"\n" + b"".join(others[1:count]),
    )


PROBE_CAS = 200
MAX_SIZED_CAS = 20_000


def _bundle(ca_pem: bytes, target_s: float) -> tuple[bytes, bytes]:
    """Two CA bundles of disjoint distinct CAs whose cold parse takes about
    target_s each (the server's CA first). Disjoint: the certificate cache
    holds the certificates of the store in force only, so each rewrite is a
    cold parse of the other bundle."""
    probe = ca_bundle(PROBE_CAS, tag="probe")
    with tempfile.NamedTemporaryFile(suffix=".pem") as f:
        f.write(b"".join(probe))
        f.flush()
        t = time.monotonic()
        r = tls_load_store(f.name, max_reads=2)
        per_cert = max((time.monotonic() - t) / PROBE_CAS, 1e-6)  # read twice, parsed once
        if r.store is not None:
            r.store.free()
    n = min(MAX_SIZED_CAS, max(10, int(target_s / per_cert)))
    return (
        ca_pem + b"".join(ca_bundle(n, tag="sized a")),
        ca_pem + b"".join(ca_bundle(n, tag="sized b")),
    )


def bundle_bytes(bundles: tuple[bytes, bytes], k: int) -> bytes:
    """The bundle of the k-th rewrite (0: the initial one): the two bundles in
    turn, each time with a comment line of its own, so that every rewrite has
    bytes (and a trust store fingerprint) of its own while the certificates
    alternate (PEM readers skip text between blocks)."""
    return bundles[k % 2] + f"# bench rewrite {k}\n".encode()


def bundle_fingerprint(data: bytes) -> str:
    """The trust store fingerprint the engine gives these bundle bytes (its
    content hash: SHA-256 over a tag, the length and the bytes; checked
    against the engine once per run by _check_fingerprint)."""
    h = hashlib.sha256(b"ca\0")
    h.update(struct.pack("=Q", len(data)))
    h.update(data)
    return h.hexdigest()


def _check_fingerprint(workdir: Path, data: bytes) -> None:
    path = workdir / "fingerprint.pem"
    path.write_bytes(data)
    r = tls_load_store(str(path), max_reads=2)
    path.unlink()
    if r.store is not None:
        r.store.free()
    if not r.ok:
        raise RuntimeError(f"bench bundle does not load: {r.error}")
    if r.fingerprint != bundle_fingerprint(data):
        raise RuntimeError("bundle_fingerprint no longer matches the engine's trust store hash")


def bundle_in_force(
    rotations: list[Rotation],
    publications: list[tuple[float, str | None]],
    fingerprint_of: Callable[[int], str],
    slow_every: int,
) -> tuple[list[float], int, int]:
    """Per bundle rewrite, ms from its write to the first publication whose
    trust store is that rewrite's bundle (rotation i writes rewrite
    i // slow_every, whose fingerprint is fingerprint_of(i // slow_every)),
    looked for until the next rewrite; how many rewrites were replaced by
    the next before going out; and how many publications went out with an
    older rewrite's bundle after a newer one's (must be 0)."""
    slow = [r for r in rotations if r.slow]
    delays: list[float] = []
    superseded = 0
    rewrite_of = {fingerprint_of(0): 0}
    rewrite_of.update({fingerprint_of(r.index // slow_every): r.index // slow_every for r in slow})
    newest = -1
    regressions = 0
    for _, ca in publications:
        k = rewrite_of.get(ca or "")
        if k is not None and k < newest:
            regressions += 1
        newest = max(newest, k if k is not None else -1)
    for j, rot in enumerate(slow):
        fp = fingerprint_of(rot.index // slow_every)
        end = slow[j + 1].t_write if j + 1 < len(slow) else float("inf")
        hit = next((t for t, ca in publications if ca == fp and rot.t_write <= t < end), None)
        if hit is None:
            superseded += 1
        else:
            delays.append((hit - rot.t_write) * 1e3)
    return delays, superseded, regressions


@dataclass(slots=True)
class RotateResult:
    config: RotateConfig
    round: RoundResult
    rotations: list[Rotation]
    lateness_timeline: list[dict[str, float]]
    lateness_total: dict[str, float]
    environment: dict[str, Any] = field(default_factory=dict)
    t0: float = 0.0
    bundle_load_ms: list[float] = field(default_factory=list)  # write → in force
    bundle_superseded: int = 0  # rewrites replaced by the next before in force
    bundle_regressions: int = 0  # publications of an older bundle after a newer one
    loop_lag_ns: Histogram = field(default_factory=Histogram)  # control loop wake-up lag
    initial_fingerprint: str = ""  # the certificate before the first rotation
    # storm --tls: the same storm through a spawned skiffd while this engine
    # idles (its timer lateness is the run's baseline); None for rotate
    baseline: RoundResult | None = None

    def timer_goals(self) -> dict[str, Any] | None:
        """Issue 13's timer goals: this engine's dispatch CPU under the storm
        and its lateness against the baseline round's; None without one."""
        if self.baseline is None:
            return None
        lat, cpu = self.round.engine.get("lateness"), self.round.engine.get("dispatch_cpu")
        base = self.baseline.engine.get("lateness")
        if not (
            isinstance(lat, EngineHistogram)
            and isinstance(cpu, EngineHistogram)
            and isinstance(base, EngineHistogram)
        ):
            return None
        solo = self.round.engine.get("dispatch_cpu_unpreempted")
        return timer_goal_figures(
            lat, cpu, base, solo if isinstance(solo, EngineHistogram) else None
        )

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

    def stale(self) -> dict[str, float | int]:
        """Handshakes that presented a certificate when a newer one had been
        written at least stale_after_s before (counted per PRESENTED_BIN_S
        bin, from the bin's start: a lower bound), and the longest such wait."""
        order = [(self.t0 - 1.0, self.initial_fingerprint)]
        order += [(r.t_write, r.fingerprint) for r in self.rotations]
        index = {fp: i for i, (_, fp) in enumerate(order)}
        stale = total = 0
        longest = 0.0
        for fp, bins in self.round.presented.items():
            k = index.get(fp)
            for b, n in bins.items():
                total += n
                if k is None or k + 1 >= len(order):
                    continue  # unknown certificate, or the newest: never stale
                age = b * PRESENTED_BIN_S - order[k + 1][0]  # since the next write
                if age >= self.config.stale_after_s:
                    stale += n
                    longest = max(longest, age)
        return {
            "handshakes": total,
            "stale": stale,
            "share": stale / total if total else 0.0,
            "longest_s": longest,
            "threshold_s": self.config.stale_after_s,
        }

    @property
    def cpu_us_per_handshake(self) -> float | None:
        cpu = self.round.engine.get("cpu_ns")
        return cpu / 1e3 / self.round.ok if cpu is not None and self.round.ok else None

    @property
    def ok(self) -> bool:
        """No failed handshake, and the last rotation's certificate was
        published (rotations superseded while a load ran are skipped, as the
        newest material is what counts)."""
        last = self.rotations[-1] if self.rotations else None
        base_ok = self.baseline is None or self.baseline.failed == 0
        return self.round.failed == 0 and (last is None or last.ok) and base_ok


def _lateness_point(t: float, h: EngineHistogram) -> dict[str, float]:
    return {
        "t_s": t,
        "count": h.count,
        "p99_us": h.quantile(0.99) / 1e3 if h.count else 0.0,
        "max_us": window_max_ns(h) / 1e3,
    }


async def _sample_loop_lag(out: Histogram, stop: asyncio.Event) -> None:
    """How late the control loop wakes from a LOOP_TICK_S sleep."""
    for _ in range(1 << 30):  # bounded by stop
        t = time.perf_counter_ns()
        await asyncio.sleep(LOOP_TICK_S)
        out.record(max(0, time.perf_counter_ns() - t - int(LOOP_TICK_S * 1e9)))
        if stop.is_set():
            return


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
    ca = CertAuthority("skiff-bench CA")
    ca_file, cert, key = workdir / "ca.pem", workdir / "server.pem", workdir / "server.key"
    ca_file.write_bytes(ca.pem)
    bundle = workdir / "bundle.pem"
    if cfg.bundle_certs is not None:
        bundles = await loop.run_in_executor(None, _distinct_bundles, ca.pem, cfg.bundle_certs)
    else:
        bundles = await loop.run_in_executor(None, _bundle, ca.pem, cfg.slow_s)
    bundle.write_bytes(bundle_bytes(bundles, 0))
    await loop.run_in_executor(None, _check_fingerprint, workdir, bundle_bytes(bundles, 0))
    cert_pem, key_pem, fp0 = ca.leaf(0)
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    router = RouterConfig.from_attributes("router", {"tlsLoaderThreads": 2})
    node = Node(router, engine=probe.engine)
    node.start(loop)
    registry, tls = node.registry, node.tls
    published: list[tuple[float, str | None, int]] = []

    # (time, trust store in force) of each publication of the bundle's profile
    carrier = PROFILE if cfg.bundle_same_profile else "bundle"
    bundle_pubs: list[tuple[float, str | None]] = []

    def on_published(name: str) -> None:
        st = tls.profiles()[name]
        if name == PROFILE:
            published.append((time.monotonic(), st.cert_subject, st.version))
        if name == carrier:
            bundle_pubs.append((time.monotonic(), st.ca_in_force))

    tls.on_published(on_published)
    attrs = {"name": PROFILE, "certFile": str(cert), "privateKeyFile": str(key)}
    if cfg.bundle_same_profile:
        # the profile's own trust bundle: a load after each rewrite parses all of it
        attrs["caCertFile"] = str(bundle)
    registry.create("sslProfile", attrs, check_operation=False)
    if not cfg.bundle_same_profile:
        # the large trust bundle of another profile: reloaded on the same pool
        registry.create(
            "sslProfile", {"name": "bundle", "caCertFile": str(bundle)}, check_operation=False
        )
    await tls.settle()
    slot = tls.slot(PROFILE)
    if slot is None or not tls.ready(PROFILE):
        raise RuntimeError(f"initial TLS load failed: {tls.error(PROFILE)}")
    listener = probe.engine.listen(
        "127.0.0.1", 0, address_id=ADDRESS_ID, backlog=4096, tls_slot=slot
    )

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
    baseline = None
    if cfg.interval_s is None:
        baseline = await _baseline_round(cfg, scfg, workdir, ca, echo, pool, probe, progress)
    t0 = time.monotonic()
    lat_before = probe.engine.lateness(PRIO_HIGH)
    loader = Loader(cfg, ca, cert, key, bundle, bundles, t0)
    timeline: list[dict[str, float]] = []
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(_sample_lateness(probe, t0, timeline, stop))
    loop_lag = Histogram()
    lag_sampler = asyncio.ensure_future(_sample_loop_lag(loop_lag, stop))
    if cfg.interval_s is not None:
        loader.start()
    name = "rotate" if cfg.interval_s is not None else "storm --tls"
    progress.phase(f"{name} → engine TLS listener :{listener.port}")
    try:
        r = await _storm_round(scfg, "engine-tls", listener.port, pool, echo, probe, progress)
    finally:
        loader.stop_event.set()
        stop.set()
        await sampler
        await lag_sampler
        if loader.is_alive():
            await loop.run_in_executor(None, loader.join, 10.0)
        await asyncio.sleep(0.3)  # the last write's debounce and load
        await tls.settle()
        failures = tls.profiles()[PROFILE].reload_failures
        node.stop()  # the probe's engine stays up: its owner stops it
    _match_publications(loader.rotations, published)
    if loader.rotations and failures and not loader.rotations[-1].ok:
        loader.rotations[-1].error = f"{failures} loads failed; last: {tls.error(PROFILE)}"
    total = probe.engine.lateness(PRIO_HIGH).minus(lat_before)
    bundle_ms, superseded, regressions = bundle_in_force(
        loader.rotations,
        bundle_pubs,
        lambda k: bundle_fingerprint(bundle_bytes(bundles, k)),
        max(1, cfg.slow_every),
    )
    return RotateResult(
        cfg,
        r,
        loader.rotations,
        timeline,
        _lateness_point(0.0, total),
        t0=t0,
        bundle_load_ms=bundle_ms,
        bundle_superseded=superseded,
        bundle_regressions=regressions,
        initial_fingerprint=fp0,
        loop_lag_ns=loop_lag,
        baseline=baseline,
    )


async def _storm_round(
    scfg: StormConfig,
    name: str,
    port: int,
    pool: ClientPool,
    echo: EchoServer,
    probe: EngineSubject,
    progress: Progress,
) -> RoundResult:
    """One storm round against 127.0.0.1:port, the probe's engine watched."""
    subject = AddressSubject(name, ("127.0.0.1", port))
    return await run_round(scfg, subject, 0, pool, echo, probe, on_progress=progress.storm_tick)


async def _baseline_round(
    cfg: RotateConfig,
    scfg: StormConfig,
    workdir: Path,
    ca: CertAuthority,
    echo: EchoServer,
    pool: ClientPool,
    probe: EngineSubject,
    progress: Progress,
) -> RoundResult:
    """The same TLS storm through a spawned skiffd (the same engine code in
    another process, a certificate of the same CA) while the probe's engine
    idles with its timer running: that engine's lateness here is what the
    machine's load alone costs it, the baseline of the storm round's."""
    loop = asyncio.get_running_loop()
    files = await loop.run_in_executor(None, write_tls_files, workdir / "baseline", ca)
    echo_addr = ("127.0.0.1", echo.port)
    proxy = await loop.run_in_executor(
        None,
        functools.partial(
            start_skiffd,
            cfg.workers,
            echo_addr,
            echo_addr,
            files,
            "skiffd-baseline",
            worker_nice=cfg.worker_nice,
        ),
    )
    try:
        progress.phase(f"baseline: the storm through skiffd pid {proxy.pid}, engine idle")
        return await _storm_round(scfg, "baseline", proxy.echo_port, pool, echo, probe, progress)
    finally:
        await loop.run_in_executor(None, proxy.stop)


def _match_publications(
    rotations: list[Rotation], published: list[tuple[float, str | None, int]]
) -> None:
    """Marks each rotation with the first publication of its certificate made
    after its write (the subject names the rotation's certificate)."""
    for rot in rotations:
        cn = f"CN=skiff-bench server {rot.index}"
        for t, subject, version in published:
            if t >= rot.t_write and subject == cn:
                rot.ok, rot.t_published, rot.version = True, t, version
                break
        else:
            rot.error = "superseded by a later rotation before it was loaded"


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
        probe = EngineSubject(echo.port, cfg.workers, 0.01, worker_nice=cfg.worker_nice)
        try:
            with progress:
                res = uvloop.run(_run(cfg, echo, pool, probe, progress, Path(tmp)))
        finally:
            probe.stop()
    res.environment = environment()
    res.environment["worker_threads"] = cfg.workers
    res.environment["worker_nice"] = cfg.worker_nice
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
            "bundle_load_ms": res.bundle_load_ms,
            "bundle_in_force_ms": {
                "p50": statistics.median(res.bundle_load_ms) if res.bundle_load_ms else None,
                "max": max(res.bundle_load_ms) if res.bundle_load_ms else None,
                "in_force": len(res.bundle_load_ms),
                "superseded": res.bundle_superseded,
                "older_after_newer": res.bundle_regressions,
            },
            "rotations_never_presented": res.pickup_ms()["never_seen"],
            "stale_handshakes": res.stale(),
            "slowest_connection_ms": r.latency_ns.max / 1e6 if r.ok else None,
            "timer_lateness": res.lateness_total,
            "timer_goals": res.timer_goals(),
            "baseline": None
            if res.baseline is None
            else {
                "handshakes": res.baseline.ok,
                "failed_handshakes": res.baseline.failed,
                "handshakes_per_s": res.baseline.cps,
            },
            "control_loop_lag_us": res.loop_lag_ns.summary(1e3),
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
    size = (
        f"{cfg.bundle_certs:,} distinct CA certificates"
        if cfg.bundle_certs is not None
        else f"~{cfg.slow_s * 1e3:.0f} ms to parse on an idle machine"
    )
    whose = "the same profile's caCertFile" if cfg.bundle_same_profile else "another profile's"
    lines = [
        f"skiff {'rotate' if cfg.interval_s else 'storm --tls'}: engine TLS listener, "
        f"{cfg.clients} clients, {cfg.duration_s:g} s, {cfg.workers} workers"
        + (
            f", rotation every {cfg.interval_s * 1e3:.0f} ms; every {cfg.slow_every}th "
            f"rotation also rewrites {whose} CA bundle ({size})"
            if cfg.interval_s and cfg.slow_every
            else f", rotation every {cfg.interval_s * 1e3:.0f} ms"
            if cfg.interval_s
            else ""
        ),
        f"  handshakes: {d['handshakes']:,} ok = {d['handshakes_per_s']:,.0f}/s, "
        f"failed {d['failed_handshakes']}",
    ]
    if d["slowest_connection_ms"] is not None:
        lat = d["latency_us"]
        lines.append(
            f"  connection (connect + handshake + echo): p99 {lat['p99'] / 1e3:.1f} ms, "
            f"slowest {d['slowest_connection_ms']:.1f} ms"
        )
    cpu = d["engine_cpu_us_per_handshake"]
    if cpu is not None:
        lines.append(f"  engine worker CPU per handshake: {cpu:.0f} µs")
    if cfg.interval_s:
        bad = [x for x in res.rotations if not x.ok]
        lines.append(
            f"  rotations: {len(res.rotations)} written, {len(res.rotations) - len(bad)} "
            f"published by the TlsManager ({len(bad)} superseded while a load ran)"
        )
        for label, key in (
            ("ordinary", "pickup_ms_normal"),
            ("while the large bundle loads", "pickup_ms_slow"),
        ):
            p = d[key]
            if p["seen"]:
                lines.append(
                    f"  write → first handshake with the new certificate ({label}): "
                    f"p50 {p['p50']:.1f} ms, max {p['max']:.1f} ms "
                    f"({p['seen']} seen, {p['never_seen']} replaced before any handshake)"
                )
        st = d["stale_handshakes"]
        lines.append(
            f"  rotations never presented to any client: {d['rotations_never_presented']} "
            f"of {len(res.rotations)}; stale handshakes (a newer certificate written "
            f">= {st['threshold_s'] * 1e3:.0f} ms before): {st['stale']:,} of "
            f"{st['handshakes']:,} ({st['share']:.1%}), longest wait {st['longest_s']:.2f} s"
        )
        if res.bundle_load_ms or res.bundle_superseded:
            b = d["bundle_in_force_ms"]
            figures = (
                f"p50 {b['p50']:.0f} ms, max {b['max']:.0f} ms" if res.bundle_load_ms else "never"
            )
            lines.append(
                f"  CA bundle in force ({'same' if cfg.bundle_same_profile else 'other'} "
                f"profile; write → its store published): {figures} over {b['in_force']} "
                f"rewrites, {b['superseded']} replaced by the next rewrite before in force, "
                f"{b['older_after_newer']} publications of an older bundle after a newer one"
            )
        lines += [f"  not published: #{x.index} {x.error}" for x in bad[:5]]
    lat = d["timer_lateness"]
    worst = max((p["max_us"] for p in res.lateness_timeline), default=0.0)
    lines.append(
        f"  engine high-priority timer lateness: p99 {lat['p99_us'] / 1e3:.2f} ms, "
        f"max {lat['max_us'] / 1e3:.2f} ms (bucket upper bounds; worst 100 ms window "
        f"{worst / 1e3:.2f} ms)"
    )
    goals = res.timer_goals()
    if goals is not None and res.baseline is not None:
        lines.append(
            f"  baseline round (the same storm through a spawned skiffd, this engine idle): "
            f"{res.baseline.ok:,} handshakes = {res.baseline.cps:,.0f}/s, "
            f"failed {res.baseline.failed}"
        )
        lines.append("  " + format_timer_goals(goals))
    fired = sum(int(w.get("timers_fired", 0)) for w in res.round.engine.get("workers", []))
    yields = int(res.round.engine.get("counters", {}).get("tls_yields", 0))
    lines.append(
        f"  timers fired on the workers: {fired:,}; handshakes paused inside OpenSSL "
        f"for a due high-priority timer: {yields:,}"
    )
    lag = d["control_loop_lag_us"]
    if lag["count"]:
        lines.append(
            f"  control loop lag (a {LOOP_TICK_S * 1e3:.0f} ms sleep's late wake-up): "
            f"p99 {lag['p99'] / 1e3:.1f} ms, max {lag['max'] / 1e3:.1f} ms"
        )
    lines.append(f"  note: {d['client_bottleneck']['verdict']}")
    lines += [f"  {e}" for e in res.round.error_samples[:6]]
    lines.append("  result: " + ("OK" if res.ok else "FAILED"))
    return "\n".join(lines)
