"""Python face of the native engine (router._native, built by cffi).

The engine's I/O workers are C threads that never call into Python. They
report through per-worker event rings; this module reads them when the
engine's event fd becomes readable on the asyncio (uvloop) loop, in bounded
batches, high priority first. Everything else here is a thin, typed wrapper
over the calls in native/include/skiff.h.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import errno
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from router._native import ffi, lib
from router.log import get_logger

_log = get_logger("ENGINE")

PRIO_HIGH = 0
PRIO_NORMAL = 1
APP_POLL_BATCH = 64  # sockets a direct-read poll serves at most (sk_engine_app_poll)
DRAIN_BATCH = 256


_TLS_RESUMPTION = {
    "tickets": lib.SK_TLS_RESUME_TICKETS,
    "cache": lib.SK_TLS_RESUME_CACHE,
    "off": lib.SK_TLS_RESUME_OFF,
}


class EngineError(RuntimeError):
    """A call into the engine failed; the message says which and why."""


class EventType(enum.IntEnum):
    """What an Event reports (native/include/skiff.h has the fields of each).

    App connections: APP_OPEN's ``a`` is the accepting listener's user id and
    ``b`` 0, or, for a connection dialled by ``Engine.app_connect``, the user
    id given there and ``b`` 1. APP_CLOSED ends every app connection id
    exactly once; its ``a`` is 0, or for a dial that failed before any
    APP_OPEN the reason (``Engine.app_close_reason`` words it): an errno
    (ECONNREFUSED, ETIMEDOUT, ...), EPROTO for a failed TLS handshake,
    minus an X509_V_ERR code for a peer certificate that failed
    verification, or ECANCELED when ``app_close`` or the engine's stop ended
    the dial.
    """

    TIMER = lib.SK_EV_TIMER
    TIMER_CANCELLED = lib.SK_EV_TIMER_CANCELLED
    LISTENER_CLOSED = lib.SK_EV_LISTENER_CLOSED
    TARGET_DOWN = lib.SK_EV_TARGET_DOWN
    TARGET_UP = lib.SK_EV_TARGET_UP
    ACCEPT_PAUSED = lib.SK_EV_ACCEPT_PAUSED
    APP_OPEN = lib.SK_EV_APP_OPEN
    APP_READABLE = lib.SK_EV_APP_READABLE
    APP_CLOSED = lib.SK_EV_APP_CLOSED
    CLOSE_DONE = lib.SK_EV_CLOSE_DONE


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    worker: int
    id: int
    a: int
    b: int


@dataclass(frozen=True, slots=True)
class FlowStats:
    opened: int
    closed: int
    bytes_in: int
    bytes_out: int
    failed: int
    active: int


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative histogram (Prometheus shape): cumulative[i] counts values
    <= bounds_ns[i] (1, 1.5, 2, 2.5, 3, 4, 5, 7.5 times each power of ten
    from 1 µs, up to 10 s); the last bound is infinite."""

    bounds_ns: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    sum_ns: int
    max_ns: int

    def quantile(self, q: float) -> float:
        """Upper bound (ns) of the bucket holding quantile q, capped by max."""
        if self.count == 0:
            return 0.0
        rank = q * self.count
        for bound, cum in zip(self.bounds_ns, self.cumulative, strict=True):
            if cum >= rank:
                return float(min(bound, self.max_ns))
        return float(self.max_ns)

    def minus(self, earlier: Histogram) -> Histogram:
        """The histogram of what happened since `earlier` (max stays overall)."""
        return Histogram(
            self.bounds_ns,
            tuple(a - b for a, b in zip(self.cumulative, earlier.cumulative, strict=True)),
            self.count - earlier.count,
            self.sum_ns - earlier.sum_ns,
            self.max_ns,
        )


@dataclass(frozen=True, slots=True)
class WorkerStats:
    busy_ns: int
    cpu_ns: int
    wakeups: int
    io_events: int
    timers_fired: int
    high_rechecks: int
    connections: int


@dataclass(frozen=True, slots=True)
class ConnInfo:
    id: int
    listener_id: int
    target_id: int
    worker: int
    app: bool
    peer: str
    target: str
    bytes_in: int
    bytes_out: int
    opened_ns: int
    tls_version: int
    tls_ordinal: int
    peer_subject: str
    tls_protocol: str = ""
    tls_cipher: str = ""
    outbound: bool = False  # an app connection dialled by Engine.app_connect
    remote_router: str = ""  # a flow across routers: the router at its other end
    remote_incoming: bool = False  # ... which it came from (else goes to)


def _conn_info(c: Any) -> ConnInfo:
    return ConnInfo(
        c.id,
        c.listener_id,
        c.target_id,
        c.worker,
        bool(c.app),
        _str(c.peer),
        _str(c.target),
        c.bytes_in,
        c.bytes_out,
        c.opened_ns,
        c.tls_version,
        c.tls_ordinal,
        _str(c.peer_subject),
        _str(c.tls_protocol),
        _str(c.tls_cipher),
        bool(c.outbound),
        _str(c.remote_router),
        bool(c.remote_incoming),
    )


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """One way to reach an address: a resolved numeric address and its target."""

    target: Target
    ip: str
    port: int
    host: str = ""
    weight: int = 1
    tls_slot: int = -1
    verify_host: bool = True


@dataclass(frozen=True, slots=True)
class RemoteRoute:
    """A remote destination of an address: router ``dest_router`` serves it
    (with ``targets`` targets there), reached through the neighbour ``peer``
    at ``cost`` (> 0; local targets cost 0). Data connections are dialled to
    the peer per flow; the engine chooses the lowest cost, then the fewest
    open flows, and backs off a destination whose attempt failed."""

    dest_router: str
    cost: int
    peer: Peer
    targets: int = 1


@dataclass(frozen=True, slots=True)
class PeerStats:
    flows: int  # data connections dialled to it that got VERDICT OK
    active: int  # data connections to it open now (dialling included)
    bytes_in: int
    bytes_out: int
    failures: int  # dials that failed before OK (connect, TLS, EOF, time-out, verdict)
    resets: int  # data connections ended by a reset after OK
    destinations: int  # remote destinations (address, router) reached through it
    destinations_down: int  # of those, backing off after a failed attempt
    pool_idle: int  # warm pooled connections waiting now (all workers)
    pool_hits: int  # flows that claimed a pooled connection
    pool_misses: int  # flows dialled because the worker's pool was empty
    pool_stale: int = 0  # idle pooled connections closed: an older TLS config
    # INBOUND direction (docs/dataplane.md, "Pools (INBOUND)")
    inbound_idle: int = 0  # dialler: idle INBOUND connections kept at the peer now
    inbound_claims: int = 0  # dialler: INBOUND connections the peer claimed (FLOW REVERSE)
    inbound_failures: int = 0  # dialler: INBOUND dials that failed before OK
    inbound_accepted: int = 0  # reverse: INBOUND HELLOs answered OK
    hello_refused: int = 0  # reverse: INBOUND HELLOs refused (instance, closing)
    hello_overloaded: int = 0  # reverse: INBOUND HELLOs over inbound_cap
    pool_waits: int = 0  # reverse: flows that waited for an idle connection
    pool_exhausted: int = 0  # reverse: waits timed out or queue full (like OVERLOADED)
    pool_handoffs: int = 0  # reverse: idle connections moved between workers
    pool_target: int = 0  # current per-worker pool target (demand sizing; max over workers)


@dataclass(frozen=True, slots=True)
class DataplaneCounters:
    data_accepted: int  # data connections accepted (first bytes "SK")
    flows_originated: int  # local clients carried to a remote router (OK)
    flows_transited: int  # flows forwarded to a next hop (OK)
    flows_terminated: int  # flows delivered to a local target (OK)
    origin_retries: int  # remote attempts of local clients that failed (retried if any left)
    verdicts_sent: dict[str, int]  # by verdict name: ok, no_route, refused, ...
    verdicts_received: dict[str, int]
    header_errors: dict[str, int]  # refused incoming messages by reason (bad_magic, ...)
    hello_unknown: int = 0  # INBOUND HELLOs from a router with no reverse peer (REFUSED)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """What an sslProfile names; paths are read by the loader, never a worker."""

    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    password: str | None = None
    ciphers: str | None = None
    protocols: str | None = None
    ordinal: int = 0


class TlsConfig:
    """A loaded TLS config (one reference to the C object). Publishing gives
    the engine its own reference; keep this one as ``previous`` so an
    unchanged CA bundle is not parsed again."""

    def __init__(self, ptr: Any) -> None:
        self._ptr: Any = ptr

    def free(self) -> None:
        if self._ptr != ffi.NULL:
            ptr, self._ptr = self._ptr, ffi.NULL
            lib.sk_tls_config_free(ptr)

    def __del__(self) -> None:
        self.free()


class TlsStore:
    """A parsed CA bundle (one reference to the C trust store): give it to
    ``tls_load(store=...)`` to build a config without reading the CA file."""

    def __init__(self, ptr: Any) -> None:
        self._ptr: Any = ptr

    @property
    def fingerprint(self) -> str:
        return _str(lib.sk_tls_store_fingerprint(self._ptr)) if self._ptr != ffi.NULL else ""

    @property
    def certs(self) -> int:
        return int(lib.sk_tls_store_certs(self._ptr)) if self._ptr != ffi.NULL else 0

    def free(self) -> None:
        if self._ptr != ffi.NULL:
            ptr, self._ptr = self._ptr, ffi.NULL
            lib.sk_tls_store_free(ptr)

    def __del__(self) -> None:
        self.free()


class TlsNewer:
    """Raised while a bundle load runs to say a newer write may be pending:
    the load re-reads the file before its next certificate and goes on with
    the newest bytes (sk_tls_newer in skiff.h). Any thread may raise it."""

    def __init__(self) -> None:
        self._ptr: Any = lib.sk_tls_newer_new()
        if self._ptr == ffi.NULL:
            raise EngineError("sk_tls_newer_new: out of memory")
        self.raised = 0  # times raised (for status and tests)

    def raise_(self) -> None:
        self.raised += 1
        lib.sk_tls_newer_raise(self._ptr)

    def __del__(self) -> None:
        if self._ptr != ffi.NULL:
            ptr, self._ptr = self._ptr, ffi.NULL
            lib.sk_tls_newer_free(ptr)


@dataclass(frozen=True, slots=True)
class TlsCaCacheStats:
    entries: int  # CA certificates cached now (held by live stores or running loads)
    parsed: int  # certificates parsed since start (cache misses)
    reused: int  # certificate blocks found in the cache since start


def tls_ca_cache_stats() -> TlsCaCacheStats:
    """The process-wide CA certificate cache trust stores are built from."""
    s = ffi.new("sk_tls_ca_cache_stats *")
    lib.sk_tls_ca_cache_stats_get(s)
    return TlsCaCacheStats(int(s.entries), int(s.parsed), int(s.reused))


@dataclass(frozen=True, slots=True)
class TlsStoreResult:
    status: int  # lib.SK_TLS_OK / SK_TLS_UNCHANGED / SK_TLS_ERROR
    error: str
    fingerprint: str  # content hash of the bundle
    reads: int
    certs: int
    store: TlsStore | None
    parsed: int = 0  # certificates this load parsed (the others came from the cache)
    restarts: int = 0  # times a newer write replaced the bytes being parsed

    @property
    def ok(self) -> bool:
        return bool(self.status == lib.SK_TLS_OK)

    @property
    def unchanged(self) -> bool:
        return bool(self.status == lib.SK_TLS_UNCHANGED)


@dataclass(frozen=True, slots=True)
class TlsLoadResult:
    status: int  # lib.SK_TLS_OK / SK_TLS_UNCHANGED / SK_TLS_ERROR
    error: str
    warnings: str
    fingerprint: str
    expired: bool
    not_yet_valid: bool
    untrusted: bool
    reads: int
    ca_reused: bool
    not_after: int
    leaf_der: bytes
    config: TlsConfig | None
    ca_fingerprint: str = ""  # the trust store's content hash ("" without one)

    @property
    def ok(self) -> bool:
        return bool(self.status == lib.SK_TLS_OK)

    @property
    def unchanged(self) -> bool:
        return bool(self.status == lib.SK_TLS_UNCHANGED)


def tls_load(
    material: TlsMaterial,
    *,
    previous: TlsConfig | None = None,
    unchanged_if: str | None = None,
    max_reads: int = 5,
    retry_delay_ms: int = 5,
    store: TlsStore | None = None,
) -> TlsLoadResult:
    """Reads, hashes, verifies and builds a TLS config (blocking: call it on a
    loader thread; cffi releases the GIL for the whole native call). With
    ``store`` the config trusts that store and the CA file is not read."""
    p = ffi.new("sk_tls_load_params *")
    lib.sk_tls_load_params_init(p)
    keep = []

    def cstr(v: str | None) -> Any:
        if v is None:
            return ffi.NULL
        b = ffi.new("char[]", v.encode())
        keep.append(b)
        return b

    p.cert_file = cstr(material.cert_file)
    p.key_file = cstr(material.key_file)
    p.ca_file = cstr(material.ca_file)
    p.password = cstr(material.password)
    p.ciphers = cstr(material.ciphers)
    p.protocols = cstr(material.protocols)
    p.ordinal = material.ordinal
    p.max_reads = max_reads
    p.retry_delay_ms = retry_delay_ms
    p.previous = previous._ptr if previous is not None else ffi.NULL
    p.unchanged_if = cstr(unchanged_if)
    if store is not None:
        if store._ptr == ffi.NULL:
            raise EngineError("TLS trust store already released")
        p.ca_store = store._ptr
    r = ffi.new("sk_tls_load_result *")
    lib.sk_tls_load(p, r)
    try:
        config = TlsConfig(r.config) if r.config != ffi.NULL else None
        r.config = ffi.NULL
        return TlsLoadResult(
            status=int(r.status),
            error=_str(r.error),
            warnings=_str(r.warnings),
            fingerprint=_str(r.fingerprint),
            expired=bool(r.expired),
            not_yet_valid=bool(r.not_yet_valid),
            untrusted=bool(r.untrusted),
            reads=int(r.reads),
            ca_reused=bool(r.ca_reused),
            not_after=int(r.not_after),
            leaf_der=bytes(ffi.buffer(r.leaf_der, r.leaf_der_len)) if r.leaf_der_len else b"",
            config=config,
            ca_fingerprint=_str(r.ca_fingerprint),
        )
    finally:
        lib.sk_tls_result_clear(r)


def tls_load_store(
    ca_file: str,
    *,
    unchanged_if: str | None = None,
    max_reads: int = 5,
    retry_delay_ms: int = 5,
    newer: TlsNewer | None = None,
    in_force: TlsStore | None = None,
) -> TlsStoreResult:
    """Reads and parses a CA bundle into a trust store (blocking, possibly for
    seconds: call it on a loader thread; the GIL is released). Raising
    ``newer`` meanwhile makes it go on with the file's newest bytes. With
    ``in_force`` (the store now used) a file whose stat is still the one that
    store was read with is reported unchanged without being read."""
    p = ffi.new("sk_tls_load_params *")
    lib.sk_tls_load_params_init(p)
    path = ffi.new("char[]", ca_file.encode())
    same = ffi.new("char[]", unchanged_if.encode()) if unchanged_if is not None else ffi.NULL
    p.ca_file = path
    p.unchanged_if = same
    p.max_reads = max_reads
    p.retry_delay_ms = retry_delay_ms
    if newer is not None:
        p.newer = newer._ptr
    if in_force is not None and in_force._ptr != ffi.NULL:
        p.in_force = in_force._ptr
    r = ffi.new("sk_tls_store_result *")
    lib.sk_tls_store_load(p, r)
    try:
        store = TlsStore(r.store) if r.store != ffi.NULL else None
        r.store = ffi.NULL
        return TlsStoreResult(
            status=int(r.status),
            error=_str(r.error),
            fingerprint=_str(r.fingerprint),
            reads=int(r.reads),
            certs=int(r.certs),
            store=store,
            parsed=int(r.parsed),
            restarts=int(r.restarts),
        )
    finally:
        lib.sk_tls_store_result_clear(r)


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """What the caller sets; ``None`` keeps the engine's own default.

    The defaults are written once, in ``sk_engine_options_init`` (C), and
    documented beside ``sk_engine_options`` in ``native/include/skiff.h``.
    """

    worker_threads: int | None = None  # 0: one per CPU
    connect_timeout_ms: int | None = None
    max_connect_attempts: int | None = None
    backoff_initial_ms: int | None = None
    backoff_max_ms: int | None = None
    relay_buffer_bytes: int | None = None
    keepalive: bool | None = None
    event_ring_size: int | None = None
    high_check_budget_us: int | None = None
    events_per_wakeup: int | None = None
    splice_pipes: int | None = None  # 0: plain relays copy instead of splice(2)
    # worker i runs on worker_cpus[i % len]; () or None: no pinning
    worker_cpus: tuple[int, ...] | None = None
    # the workers' nice value (-20 to 19); None: they inherit the creating thread's
    worker_nice: int | None = None


def _err() -> Any:
    return ffi.new("char[]", lib.SK_ERRLEN)


def _str(buf: Any) -> str:
    return str(ffi.string(buf).decode("utf-8", "replace"))


def _flow(stats: Any) -> FlowStats:
    return FlowStats(
        stats.opened, stats.closed, stats.bytes_in, stats.bytes_out, stats.failed, stats.active
    )


class Target:
    """Shared state of one connect target (a tcpConnector): open-flow count,
    back-off and counters, kept across route-table versions."""

    def __init__(self, engine: Engine, user_id: int) -> None:
        ptr = lib.sk_target_create(engine._ptr, user_id)
        if ptr == ffi.NULL:
            raise EngineError("out of memory creating a target")
        self._ptr = ffi.gc(ptr, lib.sk_target_release)
        self.user_id = user_id

    def stats(self) -> FlowStats:
        out = ffi.new("sk_flow_stats *")
        lib.sk_target_stats(self._ptr, out)
        return _flow(out)

    @property
    def down(self) -> bool:
        return bool(lib.sk_target_is_down(self._ptr))


class Peer:
    """A neighbour router that data connections are dialled to: its router
    id, the numeric ip:port of its inter-router listener, and the link's
    sslProfile slot (-1: plain; else mutual TLS, the slot's config pinned per
    connection). Shared by every route table that names it.

    pool_size > 0 keeps that many warm OUTBOUND data connections per worker
    (HELLO answered OK), claimed by flows and refilled as they are used; idle
    ones close after pool_idle_ms (0: 60 s). instance and link_id go in the
    HELLO.

    inbound_pool_size > 0 (the router that dialled the link) keeps that many
    idle INBOUND connections per worker at the peer, for the peer to claim
    for flows towards this router; filled at once, refilled when claimed or
    dead (with back-off). pool_max caps demand sizing (0: 4 x the size, at
    least 8).

    reverse=True (Engine.reverse_peer; the router that accepted the link)
    makes a peer with no address that is never dialled: flows to it claim
    the INBOUND connections the neighbour keeps here (FLOW REVERSE).

    release() ends the peer (sk_peer_close): a reverse peer leaves the
    engine's registry and refuses later HELLOs, pools stop refilling and
    their idle connections close; flows already running are untouched."""

    def __init__(
        self,
        engine: Engine,
        router_id: str,
        ip: str,
        port: int,
        *,
        host: str = "",
        tls_slot: int = -1,
        verify_host: bool = True,
        user_id: int = 0,
        pool_size: int = 0,
        pool_idle_ms: int = 0,
        instance: int = 0,
        link_id: int = 0,
        reverse: bool = False,
        inbound_pool_size: int = 0,
        pool_max: int = 0,
        inbound_cap: int = 0,
        pool_wait_ms: int = 0,
        pool_wait_max: int = 0,
    ) -> None:
        for name, value in (
            ("pool_size", pool_size),
            ("pool_idle_ms", pool_idle_ms),
            ("inbound_pool_size", inbound_pool_size),
            ("pool_max", pool_max),
            ("inbound_cap", inbound_cap),
            ("pool_wait_ms", pool_wait_ms),
            ("pool_wait_max", pool_wait_max),
        ):
            if not 0 <= value <= 0xFFFFFFFF:
                raise EngineError(f"peer {router_id!r}: {name} {value} out of range 0-4294967295")
        opts = ffi.new("sk_peer_options *")
        lib.sk_peer_options_init(opts)
        keep = [ffi.new("char[]", v.encode()) for v in (router_id, ip, host)]
        opts.router_id, opts.ip, opts.host = keep
        opts.port = port
        opts.tls_slot = tls_slot
        opts.verify_host = int(verify_host)
        opts.user_id = user_id
        opts.pool_size = pool_size
        opts.pool_idle_ms = pool_idle_ms
        opts.instance = instance
        opts.link_id = link_id
        opts.reverse = int(reverse)
        opts.inbound_pool_size = inbound_pool_size
        opts.pool_max = pool_max
        opts.inbound_cap = inbound_cap
        opts.pool_wait_ms = pool_wait_ms
        opts.pool_wait_max = pool_wait_max
        err = _err()
        ptr = lib.sk_peer_create(engine._ptr, opts, err, lib.SK_ERRLEN)
        if ptr == ffi.NULL:
            raise EngineError(_str(err))
        # sk_peer_close: the owner's end (the same as a release for a peer
        # with no INBOUND pool that is not reverse)
        self._ptr = ffi.gc(ptr, lib.sk_peer_close)
        self.reverse = reverse
        self.router_id = router_id
        self.ip = ip
        self.port = port
        self.user_id = user_id
        self.released = False

    def stats(self) -> PeerStats:
        if self.released:
            raise EngineError("peer released")
        out = ffi.new("sk_peer_stats *")
        lib.sk_peer_stats_get(self._ptr, out)
        return PeerStats(
            out.flows,
            out.active,
            out.bytes_in,
            out.bytes_out,
            out.failures,
            out.resets,
            out.destinations,
            out.destinations_down,
            out.pool_idle,
            out.pool_hits,
            out.pool_misses,
            out.pool_stale,
            out.inbound_idle,
            out.inbound_claims,
            out.inbound_failures,
            out.inbound_accepted,
            out.hello_refused,
            out.hello_overloaded,
            out.pool_waits,
            out.pool_exhausted,
            out.pool_handoffs,
            out.pool_target,
        )

    def release(self) -> None:
        """Ends the peer now (see the class); route tables and open data
        connections keep their own references."""
        if not self.released:
            self.released = True
            ffi.release(self._ptr)


class Listener:
    """A listening address; one SO_REUSEPORT socket per worker."""

    def __init__(self, engine: Engine, ptr: Any, user_id: int) -> None:
        self._engine = engine
        self._ptr = ffi.gc(ptr, lib.sk_listener_release)
        self.user_id = user_id
        self.port = int(lib.sk_listener_port(ptr))
        self.closed = False

    def stats(self) -> FlowStats:
        out = ffi.new("sk_flow_stats *")
        lib.sk_listener_stats(self._ptr, out)
        return _flow(out)

    def close(self, drop_flows: bool = False) -> None:
        """Stops accepting and frees the port now; LISTENER_CLOSED follows when
        every worker let go."""
        if not self.closed:
            self.closed = True
            lib.sk_listener_close(self._ptr, int(drop_flows))


EventHandler = Callable[[Event], None]


class Engine:
    """The running engine: its workers start on construction."""

    def __init__(self, options: EngineOptions | None = None) -> None:
        o = options or EngineOptions()
        self.options = o
        copts = ffi.new("sk_engine_options *")
        lib.sk_engine_options_init(copts)
        for f in dataclasses.fields(o):
            value = getattr(o, f.name)
            if f.name == "worker_cpus":
                for cpu in value or ():
                    if not 0 <= cpu < lib.SK_CPU_WORDS * 64:
                        raise EngineError(f"cannot start the engine: worker_cpus: no CPU {cpu}")
                    copts.worker_cpus[cpu // 64] |= 1 << (cpu % 64)
            elif f.name == "worker_nice":
                if value is not None:
                    copts.set_worker_nice = 1
                    copts.worker_nice = int(value)
            elif value is not None:
                setattr(copts, f.name, int(value))
        err = _err()
        ptr = lib.sk_engine_create(copts, err, lib.SK_ERRLEN)
        if ptr == ffi.NULL:
            raise EngineError(f"cannot start the engine: {_str(err)}")
        self._ptr = ptr
        self.workers = int(lib.sk_engine_worker_count(ptr))
        self._listeners: dict[int, Listener] = {}
        self._next_user_id = 1
        self._handlers: list[EventHandler] = []
        self._overflow_handlers: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_scheduled = False
        self._stopped = False
        self.final_counters: dict[str, int] = {}
        self.handler_errors = 0  # event handlers that raised (logged, contained)
        self._events = ffi.new("sk_event[]", DRAIN_BATCH)
        self._app_ids = ffi.new("uint64_t[]", APP_POLL_BATCH)
        self._overflow = ffi.new("int *")

    def worker_cpu(self, worker: int) -> int | None:
        """The CPU ``worker`` was pinned to at start, or None."""
        cpu = int(lib.sk_engine_worker_cpu(self._ptr, worker))
        return None if cpu < 0 else cpu

    def worker_affinity(self, worker: int) -> tuple[int, ...]:
        """The CPUs ``worker`` may run on, as the kernel reports them now."""
        words = lib.SK_CPU_WORDS
        mask = ffi.new("uint64_t[]", words)
        if lib.sk_engine_worker_affinity(self._ptr, worker, mask, words) < 0:
            raise EngineError(f"no affinity for worker {worker}")
        return tuple(c for c in range(words * 64) if (mask[c // 64] >> (c % 64)) & 1)

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Joins every worker and closes every socket. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.detach()
        lib.sk_engine_stop(self._ptr)
        # what is still allocated once every worker is gone: tests expect zeros
        self.final_counters = self.counters()
        for listener in self._listeners.values():
            listener.close()
        self._listeners.clear()
        lib.sk_engine_destroy(self._ptr)
        self._ptr = ffi.NULL

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def new_user_id(self) -> int:
        uid = self._next_user_id
        self._next_user_id += 1
        return uid

    # ------------------------------------------------------------ events

    def on_event(self, handler: EventHandler) -> None:
        self._handlers.append(handler)

    def on_overflow(self, handler: Callable[[], None]) -> None:
        """Called when a ring overflowed: resynchronise from the counters."""
        self._overflow_handlers.append(handler)

    @property
    def event_fd(self) -> int:
        return int(lib.sk_engine_event_fd(self._ptr))

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drains events on loop whenever the engine signals its event fd,
        and reads plain app connections (management, router links) opened
        from now on on the loop's thread (direct reads, skiff.h): a request
        then never waits for a busy worker to be scheduled."""
        self._loop = loop
        loop.add_reader(self.event_fd, self._readable)
        loop.add_reader(int(lib.sk_engine_app_poll_fd(self._ptr)), self._app_poll)
        lib.sk_engine_app_direct_reads(self._ptr, 1)

    def detach(self) -> None:
        if self._loop is not None:
            lib.sk_engine_app_direct_reads(self._ptr, 0)
            for fd in (self.event_fd, int(lib.sk_engine_app_poll_fd(self._ptr))):
                try:
                    self._loop.remove_reader(fd)
                except (ValueError, RuntimeError):
                    pass  # loop already closed: nothing is registered any more
            self._loop = None

    def _app_poll(self) -> None:
        """Direct reads: what the ready sockets hold is read now; each
        connection with new input is handed to the handlers as an
        APP_READABLE event, after the events already pending (its APP_OPEN
        among them)."""
        if self._stopped:
            return
        n = int(lib.sk_engine_app_poll(self._ptr, self._app_ids, APP_POLL_BATCH))
        if n == 0:
            return
        self.dispatch_pending()
        for i in range(n):
            self._dispatch(Event(EventType.APP_READABLE, -1, int(self._app_ids[i]), 0, 0))

    def _readable(self) -> None:
        lib.sk_engine_ack_event_fd(self._ptr)
        self._drain_batch()

    def _drain_batch(self) -> None:
        self._drain_scheduled = False
        if self._stopped:
            return
        events = self.drain(DRAIN_BATCH)
        for ev in events:
            self._dispatch(ev)
        if len(events) == DRAIN_BATCH and self._loop is not None and not self._drain_scheduled:
            # leave the loop a turn before the next batch
            self._drain_scheduled = True
            self._loop.call_soon(self._drain_batch)

    def _dispatch(self, ev: Event) -> None:
        if ev.type == EventType.LISTENER_CLOSED:
            self._listeners.pop(ev.id, None)
        for handler in self._handlers:
            try:
                handler(ev)
            # Handlers are the control plane's code: one that raises must not
            # cost the other handlers, or the rest of the batch, their events.
            except Exception:  # noqa: BLE001 - logged with its traceback and counted
                self.handler_errors += 1
                _log.exception(f"engine event {ev.type.name} (id {ev.id}): handler failed")

    def dispatch_pending(self, max_batches: int = 8) -> None:
        """Hands pending events to the handlers now, ahead of the loop's turn
        (a timer that ran late first lets the input that waited be seen)."""
        for _ in range(max_batches):
            if self._stopped:
                return
            events = self.drain(DRAIN_BATCH)
            for ev in events:
                self._dispatch(ev)
            if len(events) < DRAIN_BATCH:
                return

    def drain(self, max_events: int = DRAIN_BATCH) -> list[Event]:
        """One bounded batch of pending events (high priority first)."""
        n = min(max_events, DRAIN_BATCH)
        got = lib.sk_engine_drain(self._ptr, self._events, n, self._overflow)
        out = []
        for i in range(got):
            e = self._events[i]
            out.append(Event(EventType(e.type), e.worker, e.id, e.a, e.b))
        if self._overflow[0]:
            for handler in self._overflow_handlers:
                try:
                    handler()
                except Exception:  # noqa: BLE001 - as in _dispatch
                    self.handler_errors += 1
                    _log.exception("engine event ring overflow: resynchronisation failed")
        return out

    # ------------------------------------------------------------ timers

    def timer_start(
        self, delay_s: float, period_s: float = 0.0, prio: int = PRIO_NORMAL, worker: int = -1
    ) -> int:
        tid = int(
            lib.sk_timer_start(self._ptr, worker, prio, int(delay_s * 1e9), int(period_s * 1e9))
        )
        if tid == 0:
            raise EngineError(f"cannot start a timer (worker={worker}, prio={prio})")
        return tid

    def timer_cancel(self, timer_id: int) -> None:
        if lib.sk_timer_cancel(self._ptr, timer_id) != 0:
            raise EngineError(f"unknown timer id {timer_id}")

    # ------------------------------------------------------------ listeners

    def listen(
        self,
        host: str,
        port: int,
        *,
        address_id: int = 0,
        backlog: int | None = None,
        app: bool = False,
        max_connections: int = 0,
        user_id: int | None = None,
        tls_slot: int = -1,
        authenticate_peer: bool = False,
        tls_optional: bool = False,
        data_ok: bool = False,
        data_pool_cap: int = 0,
        balanced: bool = False,
        tls_resumption: str = "tickets",
    ) -> Listener:
        """Binds host:port (numeric; "" = every address) and accepts on every worker.

        data_ok: an inter-router listener; a connection whose first bytes are
        the data-plane magic "SK" is a data connection the engine handles
        (FLOW, VERDICT, relay), any other stays on the usual path.
        data_pool_cap: pooled (HELLO) connections idle at once on it; beyond,
        a HELLO is answered OVERLOADED (0: no cap).
        balanced: a client's target is the one with the fewest open flows plus
        path cost over the whole network (tcpListener distribution
        "balanced"), not the lowest cost first.
        tls_resumption: "tickets" (a stateless ticket), "cache" (a ticket
        naming a session in the profile's bounded server cache, as HAProxy's
        no-tls-tickets) or "off" (no ticket: every handshake a full one)."""
        if tls_resumption not in _TLS_RESUMPTION:
            raise EngineError(
                f"tls_resumption '{tls_resumption}': one of {', '.join(_TLS_RESUMPTION)}"
            )
        opts = ffi.new("sk_listener_options *")
        lib.sk_listener_options_init(opts)
        chost = ffi.new("char[]", host.encode())
        opts.host = chost
        opts.port = port
        if backlog is not None:
            opts.backlog = backlog
        opts.address_id = address_id
        opts.app = int(app)
        opts.max_connections = max_connections
        opts.tls_slot = tls_slot
        opts.authenticate_peer = int(authenticate_peer)
        opts.tls_optional = int(tls_optional)
        opts.data_ok = int(data_ok)
        opts.data_pool_cap = data_pool_cap
        opts.balanced = int(balanced)
        opts.tls_resumption = _TLS_RESUMPTION[tls_resumption]
        uid = self.new_user_id() if user_id is None else user_id
        opts.user_id = uid
        err = _err()
        ptr = lib.sk_listener_open(self._ptr, opts, err, lib.SK_ERRLEN)
        if ptr == ffi.NULL:
            raise EngineError(_str(err))
        listener = Listener(self, ptr, uid)
        self._listeners[uid] = listener
        return listener

    # ------------------------------------------------------------ routes

    def target(self, user_id: int | None = None) -> Target:
        return Target(self, self.new_user_id() if user_id is None else user_id)

    def peer(
        self,
        router_id: str,
        ip: str,
        port: int,
        *,
        host: str = "",
        tls_slot: int = -1,
        verify_host: bool = True,
        user_id: int | None = None,
        pool_size: int = 0,
        pool_idle_ms: int = 0,
        instance: int = 0,
        link_id: int = 0,
        inbound_pool_size: int = 0,
        pool_max: int = 0,
    ) -> Peer:
        """A neighbour router this router dialled (see Peer)."""
        uid = self.new_user_id() if user_id is None else user_id
        return Peer(
            self,
            router_id,
            ip,
            port,
            host=host,
            tls_slot=tls_slot,
            verify_host=verify_host,
            user_id=uid,
            pool_size=pool_size,
            pool_idle_ms=pool_idle_ms,
            instance=instance,
            link_id=link_id,
            inbound_pool_size=inbound_pool_size,
            pool_max=pool_max,
        )

    def reverse_peer(
        self,
        router_id: str,
        *,
        user_id: int | None = None,
        instance: int = 0,
        inbound_cap: int = 64,
        pool_wait_ms: int = 0,
        pool_wait_max: int = 64,
    ) -> Peer:
        """A neighbour router that dialled this one: flows to it claim the idle
        INBOUND connections it keeps here (it needs inbound_pool_size > 0).
        instance: its HELLOs must carry it (0: any). inbound_cap: its idle
        INBOUND connections accepted at once (more: OVERLOADED). A flow that
        finds none waits up to pool_wait_ms (0: connect_timeout_ms), at most
        pool_wait_max flows per worker, then fails like OVERLOADED and is
        retried elsewhere. A newer reverse peer for the same router id takes
        its HELLOs from an older one still open."""
        uid = self.new_user_id() if user_id is None else user_id
        return Peer(
            self,
            router_id,
            "",
            0,
            user_id=uid,
            instance=instance,
            reverse=True,
            inbound_cap=inbound_cap,
            pool_wait_ms=pool_wait_ms,
            pool_wait_max=pool_wait_max,
        )

    def set_router_id(self, router_id: str) -> None:
        """This router's id: the origin of the flows it sends to other
        routers, and the destination it delivers locally."""
        if lib.sk_engine_set_router_id(self._ptr, router_id.encode()) != 0:
            raise EngineError(f"bad router id {router_id!r} (1-255 bytes of UTF-8, no control)")

    def publish_routes(
        self,
        table: Mapping[int, Iterable[RouteTarget | RemoteRoute]],
        on_refused: Callable[[RouteTarget, str], None] | None = None,
        names: Mapping[int, str] | None = None,
    ) -> int:
        """Builds a route table (address id -> local targets and remote
        destinations) and swaps it in atomically; returns its version. Flows
        already relayed are untouched. ``names`` gives the addresses' names
        (needed for remote destinations: the FLOW header carries the name,
        and an incoming flow is looked up by it).

        A target the engine refuses raises EngineError and nothing is
        published, unless ``on_refused`` is given: then that target is left
        out, ``on_refused(target, reason)`` is told, and the others publish.
        A refused remote route or name always raises.
        """
        names = names or {}
        size = max([*table, *names], default=-1) + 1
        routes = lib.sk_routes_create(size)
        if routes == ffi.NULL:
            raise EngineError("out of memory building a route table")
        err = _err()
        try:
            for address_id, name in names.items():
                if lib.sk_routes_set_address(routes, address_id, name.encode(), err, lib.SK_ERRLEN):
                    raise EngineError(_str(err))
            for address_id, targets in table.items():
                for rt in targets:
                    if isinstance(rt, RemoteRoute):
                        if rt.peer.released:
                            raise EngineError(f"remote route to {rt.dest_router}: peer released")
                        rc = lib.sk_routes_add_remote(
                            routes,
                            address_id,
                            rt.dest_router.encode(),
                            rt.cost,
                            rt.peer._ptr,
                            rt.targets,
                            err,
                            lib.SK_ERRLEN,
                        )
                        if rc != 0:
                            raise EngineError(f"remote route to {rt.dest_router}: {_str(err)}")
                        continue
                    rc = lib.sk_routes_add(
                        routes,
                        address_id,
                        rt.target._ptr,
                        rt.ip.encode(),
                        rt.port,
                        rt.host.encode(),
                        rt.weight,
                        rt.tls_slot,
                        int(rt.verify_host),
                        err,
                        lib.SK_ERRLEN,
                    )
                    if rc != 0:
                        reason = f"route to {rt.ip}:{rt.port}: {_str(err)}"
                        if on_refused is None:
                            raise EngineError(reason)
                        on_refused(rt, reason)
        except BaseException:
            lib.sk_routes_free(routes)
            raise
        return int(lib.sk_engine_publish_routes(self._ptr, routes))

    def close_target_flows(self, target: Target) -> int:
        """Closes every open flow of target; CLOSE_DONE(id) reports completion."""
        return int(lib.sk_engine_close_target_flows(self._ptr, target._ptr))

    # ------------------------------------------------------------ TLS

    def tls_slot(self) -> int:
        """A publication slot for one sslProfile."""
        slot = int(lib.sk_tls_slot_create(self._ptr))
        if slot < 0:
            raise EngineError(f"no TLS slot left (at most {lib.SK_TLS_SLOTS} sslProfiles)")
        return slot

    def tls_publish(self, slot: int, config: TlsConfig) -> int:
        """Swaps config in; new connections of the slot use it. Returns its
        version. The caller keeps its own reference (e.g. as `previous`)."""
        if config._ptr == ffi.NULL:
            raise EngineError("TLS config already released")
        version = int(lib.sk_tls_publish(self._ptr, slot, lib.sk_tls_config_ref(config._ptr)))
        if version == 0:
            raise EngineError(f"cannot publish to TLS slot {slot}")
        return version

    def tls_close_older(self, slot: int, oldest_valid_ordinal: int) -> None:
        if lib.sk_tls_close_older(self._ptr, slot, oldest_valid_ordinal) != 0:
            raise EngineError(f"unknown TLS slot {slot}")

    # ------------------------------------------------------------ stats

    def counters(self) -> dict[str, int]:
        out = ffi.new("sk_engine_counters *")
        lib.sk_engine_counters_get(self._ptr, out)
        return {name: int(getattr(out, name)) for name in dir(out)}

    def dataplane_counters(self) -> DataplaneCounters:
        """Data connections and flows across routers, verdicts by code and
        refused headers by reason (labels as in docs/dataplane.md)."""
        out = ffi.new("sk_dataplane_counters *")
        lib.sk_engine_dataplane_counters(self._ptr, out)

        def verdicts(arr: Any) -> dict[str, int]:
            return {
                _str(lib.sk_dp_verdict_name(i)): int(arr[i]) for i in range(lib.SK_DP_VERDICTS)
            }

        reasons = {}
        for i in range(1, lib.SK_DP_REASONS):
            name = _str(lib.sk_dp_reason_name(i))
            if name != "?":
                reasons[name] = int(out.header_errors[i])
        return DataplaneCounters(
            int(out.data_accepted),
            int(out.flows_originated),
            int(out.flows_transited),
            int(out.flows_terminated),
            int(out.origin_retries),
            verdicts(out.verdicts_sent),
            verdicts(out.verdicts_received),
            reasons,
            int(out.hello_unknown),
        )

    def lateness(self, prio: int = PRIO_HIGH, worker: int = -1) -> Histogram:
        """Timer lateness: actual minus scheduled firing time."""
        return self._hist(lib.sk_engine_timer_lateness, prio, worker)

    def dispatch_delay(self, prio: int = PRIO_HIGH, worker: int = -1) -> Histogram:
        """The engine's own part of the lateness (work done before the timer
        once the worker was awake); the rest is the OS scheduler's."""
        return self._hist(lib.sk_engine_timer_dispatch_delay, prio, worker)

    def dispatch_cpu(self, prio: int = PRIO_HIGH, worker: int = -1) -> Histogram:
        """The worker's own CPU time over the dispatch delay (its thread CPU
        clock): what the engine's work before the timer cost, which the OS
        preempting the worker cannot inflate. An upper bound when the timer
        came due mid-batch (counted from the last in-batch check)."""
        return self._hist(lib.sk_engine_timer_dispatch_cpu, prio, worker)

    def dispatch_cpu_unpreempted(self, prio: int = PRIO_HIGH, worker: int = -1) -> Histogram:
        """The figures of ``dispatch_cpu`` whose span the worker was not
        preempted in (no involuntary context switch between the CPU sample it
        counts from and the timer's run): the CPU clock of a preempted span
        also grows with cold caches, and counts its unit's CPU from before the
        deadline."""
        return self._hist(lib.sk_engine_timer_dispatch_cpu_unpreempted, prio, worker)

    def app_input_wait(self) -> Histogram:
        """App connections: from a worker receiving bytes to ``app_read``
        taking them, i.e. how long input waited for the control loop."""
        return self._app_wait(lib.SK_APP_WAIT_INPUT)

    def app_output_wait(self) -> Histogram:
        """App connections: from ``app_write`` queueing into an empty queue to
        the owning worker taking the queue to send, i.e. how long output
        waited for the worker."""
        return self._app_wait(lib.SK_APP_WAIT_OUTPUT)

    def app_receive_wait(self) -> Histogram:
        """Plain app connections: from the kernel queueing received bytes on
        the socket to the owning worker reading them, i.e. how long input
        waited for the worker."""
        return self._app_wait(lib.SK_APP_WAIT_RECEIVE)

    def _app_wait(self, which: int) -> Histogram:
        out = ffi.new("sk_hist *")
        if lib.sk_engine_app_wait(self._ptr, which, out) != 0:
            raise EngineError(f"no app wait histogram {which}")
        return self._histogram(out)

    def _hist(self, fn: Any, prio: int, worker: int) -> Histogram:
        out = ffi.new("sk_hist *")
        if fn(self._ptr, prio, worker, out) != 0:
            raise EngineError(f"no timer histogram for prio={prio} worker={worker}")
        return self._histogram(out)

    @staticmethod
    def _histogram(out: Any) -> Histogram:
        bounds = tuple(
            float("inf") if i == lib.SK_HIST_BUCKETS - 1 else float(lib.sk_hist_bound_ns(i))
            for i in range(lib.SK_HIST_BUCKETS)
        )
        return Histogram(bounds, tuple(out.cumulative), out.count, out.sum_ns, out.max_ns)

    def worker_stats(self, worker: int) -> WorkerStats:
        out = ffi.new("sk_worker_stats *")
        if lib.sk_engine_worker_stats(self._ptr, worker, out) != 0:
            raise EngineError(f"no worker {worker}")
        return WorkerStats(
            out.busy_ns,
            out.cpu_ns,
            out.wakeups,
            out.io_events,
            out.timers_fired,
            out.high_rechecks,
            out.connections,
        )

    def workers_cpu_ns(self) -> int:
        return sum(self.worker_stats(i).cpu_ns for i in range(self.workers))

    def connections(self, limit: int = 10000) -> list[ConnInfo]:
        buf = ffi.new("sk_conn_info[]", max(1, limit))
        total = int(lib.sk_engine_list_connections(self._ptr, buf, limit))
        return [_conn_info(buf[i]) for i in range(min(total, limit))]

    def conn_info(self, conn_id: int) -> ConnInfo | None:
        """One connection (e.g. of SK_EV_APP_OPEN), or None once it is gone."""
        out = ffi.new("sk_conn_info *")
        if lib.sk_engine_conn_info(self._ptr, conn_id, out) != 0:
            return None
        return _conn_info(out)

    # ------------------------------------------------------------ app conns

    def app_read(self, conn_id: int, max_bytes: int = 65536) -> bytes | None:
        """Received bytes (b"" when none wait), or None at end of stream."""
        buf = ffi.new("char[]", max_bytes)
        n = int(lib.sk_app_read(self._ptr, conn_id, buf, max_bytes))
        if n == -1:
            return None
        if n == -2:
            raise EngineError(f"no connection {conn_id}")
        return bytes(ffi.buffer(buf, n))

    def app_write(self, conn_id: int, data: bytes) -> None:
        rc = int(lib.sk_app_write(self._ptr, conn_id, data, len(data)))
        if rc == -2:
            raise EngineError(f"no connection {conn_id}")
        if rc == -3:
            raise EngineError(f"connection {conn_id} is closing")
        if rc != 0:
            raise EngineError(f"connection {conn_id}: {os.strerror(errno.ENOMEM)}")

    def app_pending(self, conn_id: int) -> int:
        return int(lib.sk_app_pending(self._ptr, conn_id))

    def app_set_keepalive(self, conn_id: int, frame: bytes, interval_s: float) -> None:
        rc = int(
            lib.sk_app_set_keepalive(self._ptr, conn_id, frame, len(frame), int(interval_s * 1000))
        )
        if rc != 0:
            raise EngineError(f"connection {conn_id}: cannot set keep-alive (code {rc})")

    def app_close(self, conn_id: int, abort: bool = False) -> None:
        """Closes after the queued bytes are written (or at once with RST when
        ``abort``). A connection still dialling is cancelled: APP_CLOSED with
        ECANCELED, no APP_OPEN."""
        lib.sk_app_close(self._ptr, conn_id, int(abort))

    def app_connect(
        self,
        ip: str,
        port: int,
        *,
        user_id: int,
        host: str = "",
        tls_slot: int = -1,
        verify_host: bool = False,
        timeout_s: float = 10.0,
        worker: int = -1,
    ) -> int:
        """Dials an app connection (an inter-router link) and returns its id.

        ``ip`` is numeric: name resolution is the caller's. The engine
        connects without blocking and, with ``tls_slot`` >= 0, runs the TLS
        client side with the slot's current config pinned (its certificate
        is offered; with a CA the peer's is verified, and with
        ``verify_host`` it must match ``host``, a DNS name also sent as SNI,
        or the IP). ``timeout_s`` bounds connect and handshake together.
        Then APP_OPEN(id, a=user_id, b=1) follows and the connection is like
        an accepted one; or the dial fails and APP_CLOSED(id, a=reason)
        comes alone. Bytes written and keep-alive set before APP_OPEN are
        sent once open. Raises EngineError when the engine refuses at once
        (bad address, port or worker, nothing published in the slot).
        """
        if not 0 < port < 65536:
            raise EngineError(f"cannot connect to {ip}:{port}: port out of range 1-65535")
        opts = ffi.new("sk_app_connect_options *")
        lib.sk_app_connect_options_init(opts)
        cip = ffi.new("char[]", ip.encode())
        chost = ffi.new("char[]", host.encode())
        opts.ip = cip
        opts.port = port
        opts.host = chost
        opts.tls_slot = tls_slot
        opts.verify_host = int(verify_host)
        opts.user_id = user_id
        opts.timeout_ms = max(1, min(int(timeout_s * 1000), 0xFFFFFFFF))
        opts.worker = worker
        err = _err()
        conn_id = int(lib.sk_app_connect(self._ptr, opts, err, lib.SK_ERRLEN))
        if conn_id == 0:
            raise EngineError(_str(err))
        return conn_id

    @staticmethod
    def app_close_reason(code: int) -> str:
        """Words APP_CLOSED's ``a``: "" for 0, else why a dial failed."""
        if code == 0:
            return ""
        if code < 0:
            what = _str(lib.sk_tls_verify_error(-code))
            return f"certificate verification failed: {what}"
        if code == errno.EPROTO:
            return "TLS handshake failed"
        if code == errno.ECANCELED:
            return "cancelled"
        return os.strerror(code)


@dataclass(slots=True)
class EventCollector:
    """Collects events by type; handy for tests and tools."""

    events: list[Event] = field(default_factory=list)

    def __call__(self, ev: Event) -> None:
        self.events.append(ev)

    def of(self, kind: EventType) -> list[Event]:
        return [e for e in self.events if e.type == kind]
