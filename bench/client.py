"""Short-connection load clients: connect, send 64 bytes, read the echo, close.

Why processes: one Python load generator saturates a core near 16,000
connections per second (ANCHORS.md), so the load is split over several
spawned processes, each running uvloop with its share of the concurrent
clients. A process stays up for the whole bench and runs one ``RunSpec`` per
round; it answers with a ``ClientResult`` holding exact counts and a
mergeable latency histogram, never pre-computed percentiles.

Why rotate source addresses: at thousands of connections per second every
closed connection leaves a TIME_WAIT entry on its 4-tuple; binding each new
connection to the next of 127.0.0.2…127.0.0.254 spreads them over 253 times
more tuples. EADDRNOTAVAIL (no local port left) is reported apart from other
connect errors so that kernel exhaustion is not mistaken for a router fault.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import hashlib
import multiprocessing as mp
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection, wait
from typing import cast

from bench.histogram import Histogram
from bench.host import raise_nofile_limit

PAYLOAD_SIZE = 64
PRESENTED_BIN_S = 0.1  # TLS: handshakes per certificate are counted per bin of this
_PREFIX = bytes(range(32, 32 + PAYLOAD_SIZE - 8))
MAX_ERROR_SAMPLES = 8
START_TIMEOUT_S = 30.0
TICK_S = 0.5  # live progress and the over-time figures: one tick per interval


class Outcome(enum.Enum):
    """How one connection ended; everything but OK is a failure."""

    OK = "ok"
    CONNECT_ERROR = "connect_errors"
    EPHEMERAL_PORT = "ephemeral_port_errors"
    RESET = "resets"
    CLOSED_EARLY = "closed_early"
    WRONG_ECHO = "wrong_echo"
    TIMEOUT = "timeouts"
    TLS_ERROR = "tls_errors"


FAILURE_KINDS: tuple[str, ...] = tuple(o.value for o in Outcome if o is not Outcome.OK)


def source_addresses(count: int) -> list[str]:
    """The first count of 127.0.0.2 … 127.0.0.254 (none: let the kernel pick)."""
    return [f"127.0.0.{2 + i}" for i in range(max(0, min(count, 253)))]


def make_payload(seq: int) -> bytes:
    """64 bytes unique to one connection, so stale or crossed data is caught."""
    return _PREFIX + (seq & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One process's share of a storm round."""

    host: str
    port: int
    clients: int
    start_at: float  # time.monotonic() (system-wide clock) when clients start
    duration_s: float | None  # stop starting connections after this…
    count: int | None  # …or after this many connections in this process
    timeout_s: float  # per connection: connect + echo
    source_addrs: int  # 127.0.0.x addresses to rotate over; 0 = kernel's choice
    source_offset: int  # where this process starts in the rotation
    seq_base: int  # first payload sequence number of this process
    tls_ca_file: str | None = None  # TLS: trust this CA, verify "localhost"
    tls_fingerprints: bool = False  # TLS: note when each server certificate is first seen


@dataclass(slots=True)
class ClientResult:
    """What one process saw in one round."""

    ok: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_KINDS, 0))
    latency_ns: Histogram = field(default_factory=Histogram)
    started: float = 0.0
    ended: float = 0.0
    cpu_s: float = 0.0
    error_samples: list[str] = field(default_factory=list)
    # TLS: server certificate SHA-256 -> time.monotonic() of its first handshake
    first_seen: dict[str, float] = field(default_factory=dict)
    # TLS: certificate SHA-256 -> {int(time.monotonic() / PRESENTED_BIN_S): handshakes}
    presented: dict[str, dict[int, int]] = field(default_factory=dict)

    def note_presented(self, fp: str, now: float) -> None:
        if fp not in self.first_seen:
            self.first_seen[fp] = now
        bins = self.presented.setdefault(fp, {})
        b = int(now / PRESENTED_BIN_S)
        bins[b] = bins.get(b, 0) + 1

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def add(self, outcome: Outcome, detail: str | None = None) -> None:
        if outcome is Outcome.OK:
            self.ok += 1
            return
        self.failures[outcome.value] += 1
        if detail is not None and len(self.error_samples) < MAX_ERROR_SAMPLES:
            sample = f"{outcome.value}: {detail}"
            if sample not in self.error_samples:
                self.error_samples.append(sample)


@dataclass(slots=True)
class Tick:
    """One process's figures for one TICK_S interval of a round (a delta, so
    the parent adds ticks of several processes exactly)."""

    index: int  # interval number since the round's start_at
    ok: int
    failed: int
    latency_ns: Histogram


class _EchoCheck(asyncio.Protocol):
    """Sends the payload on connect and resolves done with the outcome."""

    __slots__ = ("_buf", "_done", "_payload", "_seen")

    def __init__(
        self, payload: bytes, done: asyncio.Future[Outcome], seen: ClientResult | None = None
    ) -> None:
        self._payload = payload
        self._done = done
        self._buf = b""
        self._seen = seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._seen is not None:
            obj = transport.get_extra_info("ssl_object")
            der = obj.getpeercert(binary_form=True) if obj is not None else None
            if der:
                self._seen.note_presented(hashlib.sha256(der).hexdigest(), time.monotonic())
        # uvloop's transports are not asyncio.Transport subclasses
        cast(asyncio.Transport, transport).write(self._payload)

    def data_received(self, data: bytes) -> None:
        if self._done.done():
            return
        self._buf += data
        if len(self._buf) >= PAYLOAD_SIZE:
            ok = self._buf == self._payload
            self._done.set_result(Outcome.OK if ok else Outcome.WRONG_ECHO)

    def eof_received(self) -> bool:
        if not self._done.done():
            self._done.set_result(Outcome.CLOSED_EARLY)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_result(Outcome.RESET if exc is not None else Outcome.CLOSED_EARLY)


class _Storm:
    """The shared state of one process's clients during one round."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.result = ClientResult()
        self.sources = source_addresses(spec.source_addrs)
        self.deadline = (
            spec.start_at + spec.duration_s if spec.duration_s is not None else float("inf")
        )
        self.remaining = spec.count if spec.count is not None else -1
        self.next_seq = 0
        self.ssl: ssl.SSLContext | None = None
        if spec.tls_ca_file is not None:
            # a fresh handshake per connection: asyncio never resumes a session
            # unless given one, and tickets are not kept
            self.ssl = ssl.create_default_context(cafile=spec.tls_ca_file)
            self.ssl.options |= ssl.OP_NO_TICKET
        self.seen = self.result if spec.tls_fingerprints else None

    def claim(self) -> int | None:
        """The next connection's sequence number, or None when the round is over."""
        if self.remaining == 0 or time.monotonic() >= self.deadline:
            return None
        if self.remaining > 0:
            self.remaining -= 1
        seq = self.next_seq
        self.next_seq += 1
        return seq

    async def one_client(self) -> None:
        loop = asyncio.get_running_loop()
        spec = self.spec
        record = self.result.latency_ns.record
        for _ in range(1 << 40):  # bounded by claim(): count or deadline
            seq = self.claim()
            if seq is None:
                return
            local: tuple[str, int] | None = None
            if self.sources:
                local = (self.sources[(spec.source_offset + seq) % len(self.sources)], 0)
            payload = make_payload(spec.seq_base + seq)
            done: asyncio.Future[Outcome] = loop.create_future()
            transport: asyncio.BaseTransport | None = None
            detail: str | None = None
            t0 = time.perf_counter_ns()
            try:
                async with asyncio.timeout(spec.timeout_s):
                    try:
                        transport, _ = await loop.create_connection(
                            partial(_EchoCheck, payload, done, self.seen),
                            spec.host,
                            spec.port,
                            local_addr=local,
                            ssl=self.ssl,
                            server_hostname="localhost" if self.ssl is not None else None,
                        )
                    except ssl.SSLError as exc:
                        detail = f"{type(exc).__name__}: {exc}"
                        outcome = Outcome.TLS_ERROR
                    except OSError as exc:
                        detail = f"{type(exc).__name__}: {exc}"
                        outcome = (
                            Outcome.EPHEMERAL_PORT
                            if exc.errno == errno.EADDRNOTAVAIL
                            else Outcome.CONNECT_ERROR
                        )
                    else:
                        outcome = await done
            except TimeoutError:
                outcome = Outcome.TIMEOUT
                detail = f"no echo within {spec.timeout_s} s"
            finally:
                if transport is not None:
                    transport.close()
            if outcome is Outcome.OK:
                record(time.perf_counter_ns() - t0)
            self.result.add(outcome, detail)


async def _ticker(storm: _Storm, tick: Callable[[Tick], None]) -> None:
    """Sends what changed every TICK_S until cancelled (then once more)."""
    res = storm.result
    last_ok = last_failed = 0
    last_hist = Histogram()
    index = 0

    def send() -> None:
        nonlocal last_ok, last_failed, last_hist
        h = Histogram(bits=res.latency_ns.bits, highest=res.latency_ns.highest)
        h.counts = [a - b for a, b in zip(res.latency_ns.counts, last_hist.counts, strict=True)]
        h.count = res.latency_ns.count - last_hist.count
        h.total = res.latency_ns.total - last_hist.total
        h.max = res.latency_ns.max  # an upper bound for the interval
        last_hist = Histogram(
            bits=h.bits,
            highest=h.highest,
            counts=list(res.latency_ns.counts),
            count=res.latency_ns.count,
            total=res.latency_ns.total,
        )
        failed = res.failed
        tick(Tick(index, res.ok - last_ok, failed - last_failed, h))
        last_ok, last_failed = res.ok, failed

    try:
        for _ in range(1 << 30):  # bounded: cancelled when the round ends
            await asyncio.sleep(
                max(0.0, storm.spec.start_at + (index + 1) * TICK_S - time.monotonic())
            )
            send()
            index += 1
    except asyncio.CancelledError:
        send()
        raise


async def run_spec(spec: RunSpec, tick: Callable[[Tick], None] | None = None) -> ClientResult:
    """Runs one round in the current (uvloop) event loop; tick, when given,
    receives the figures of every TICK_S interval as they happen."""
    storm = _Storm(spec)
    cpu0 = time.process_time()
    delay = spec.start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    storm.result.started = time.monotonic()
    ticker = asyncio.ensure_future(_ticker(storm, tick)) if tick is not None else None
    await asyncio.gather(*(storm.one_client() for _ in range(spec.clients)))
    storm.result.ended = time.monotonic()
    if ticker is not None:
        ticker.cancel()
        try:
            await ticker
        except asyncio.CancelledError:
            pass  # the final tick went out
    storm.result.cpu_s = time.process_time() - cpu0
    return storm.result


def client_process_main(ctl: Connection) -> None:
    """Entry point of a client process: one RunSpec in, one ClientResult out,
    until the parent sends None or closes its end."""
    import uvloop

    raise_nofile_limit()
    ctl.send("ready")
    for _ in range(1 << 20):  # bounded: one iteration per round
        try:
            spec = ctl.recv()
        except EOFError:
            return
        if spec is None:
            return
        assert isinstance(spec, RunSpec)
        ctl.send(uvloop.run(run_spec(spec, ctl.send)))


class ClientPool:
    """The client processes, started once and reused for every round."""

    def __init__(self, procs: int) -> None:
        ctx = mp.get_context("spawn")
        self.processes: list[mp.process.BaseProcess] = []
        self.controls: list[Connection] = []
        try:
            for i in range(max(1, procs)):
                parent_end, child_end = ctx.Pipe()
                p = ctx.Process(
                    target=client_process_main,
                    args=(child_end,),
                    name=f"skiff-bench-client-{i}",
                    daemon=True,
                )
                p.start()
                child_end.close()
                self.processes.append(p)
                self.controls.append(parent_end)
            for c in self.controls:
                if not c.poll(START_TIMEOUT_S) or c.recv() != "ready":
                    raise RuntimeError("a client process did not start")
        except BaseException:
            self.close()
            raise

    @property
    def size(self) -> int:
        return len(self.processes)

    def submit(self, specs: list[RunSpec]) -> None:
        """Sends one spec to each process (len(specs) == size)."""
        for c, spec in zip(self.controls, specs, strict=True):
            c.send(spec)

    def collect(
        self, timeout_s: float, on_tick: Callable[[int, Tick], None] | None = None
    ) -> list[ClientResult]:
        """Blocks until every process answered (call it from an executor
        thread when an event loop must keep running meanwhile); the ticks
        that arrive meanwhile go to on_tick(process index, tick)."""
        results: dict[int, ClientResult] = {}
        deadline = time.monotonic() + timeout_s
        index = {id(c): i for i, c in enumerate(self.controls)}
        for _ in range(1 << 30):  # bounded by the deadline
            pending = [c for i, c in enumerate(self.controls) if i not in results]
            if not pending:
                break
            left = deadline - time.monotonic()
            ready = wait(pending, timeout=max(0.0, left)) if left > 0 else []
            if not ready:
                raise TimeoutError(f"client process gave no result within {timeout_s:.0f} s")
            for c in ready:
                assert isinstance(c, Connection)
                msg = c.recv()
                if isinstance(msg, Tick):
                    if on_tick is not None:
                        on_tick(index[id(c)], msg)
                else:
                    assert isinstance(msg, ClientResult)
                    results[index[id(c)]] = msg
        return [results[i] for i in range(len(self.controls))]

    def close(self) -> None:
        for c in self.controls:
            try:
                c.send(None)
            except (BrokenPipeError, OSError):
                pass  # already gone
        for p in self.processes:
            p.join(5.0)
            if p.is_alive():
                p.terminate()
                p.join(5.0)
        for c in self.controls:
            c.close()
        self.processes.clear()
        self.controls.clear()

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
