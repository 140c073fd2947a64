"""One router, wired in one place: engine, registry, TLS manager, adaptors
and management.

skiffd, the tests' in-process routers and the bench all build a router
through ``Node``, so that a change to the wiring (a new adaptor, the router
network's links) is made once and every user of a router gets it.  The life
cycle has libuv's shape: construct (the engine's workers start), ``start``
on the control loop (observers subscribe; nothing is configured yet),
``apply`` entities, ``settle`` until loads and look-ups are done, ``close``
to stop accepting, ``drain`` to let open flows finish, ``stop`` to end.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import platform
import struct
import threading
import time
from collections.abc import Sequence

from adaptors.app_listener import AppListenerAdaptor
from adaptors.tcp import TcpAdaptor
from router.config import ConfigEntity, ConfigFile
from router.configs import RouterConfig
from router.engine import Engine, EngineError, EngineOptions
from router.log import LogConfigObserver, get_logger
from router.management.agent import Agent
from router.management.service import Management
from router.network.service import NetworkService
from router.registry import ApplyResult, Registry
from router.schema import format_cpu_list
from router.tls import TlsManager

_log = get_logger("ROUTER")

DRAIN_POLL_S = 0.05

# The control loop's time slice (Linux EEVDF, 6.12 and later): a thread that
# asks for a slice shorter than the default (about 3 ms) gets an earlier
# virtual deadline, so on waking it preempts a busy worker or another
# process sooner; it gets no more CPU than before, only in shorter turns.
CONTROL_SLICE_MIN_US = 100  # the kernel's bounds for sched_runtime
CONTROL_SLICE_MAX_US = 100_000
_SCHED_ATTR = struct.Struct("=IIQiIQQQ")  # struct sched_attr, version 0 (48 bytes)
_SCHED_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}  # set, get


def _sched_attr(tid: int, libc: ctypes.CDLL, get_nr: int) -> tuple[int, ...] | None:
    buf = ctypes.create_string_buffer(_SCHED_ATTR.size)
    if libc.syscall(get_nr, tid, buf, _SCHED_ATTR.size, 0) != 0:
        return None
    return _SCHED_ATTR.unpack(buf.raw)


def set_thread_slice(tid: int, slice_us: int) -> str | None:
    """Asks the kernel for a time slice of ``slice_us`` for thread ``tid``
    (0: the default again), keeping its policy and nice value; None when
    done, else why not (an old kernel keeps its default slice, which is no
    error, only no effect)."""
    nrs = _SCHED_SYSCALLS.get(platform.machine())
    if nrs is None:
        return f"no sched_setattr number known for {platform.machine()}"
    set_nr, get_nr = nrs
    libc = ctypes.CDLL(None, use_errno=True)
    attr = _sched_attr(tid, libc, get_nr)
    if attr is None:
        return f"sched_getattr: {os.strerror(ctypes.get_errno())}"
    _size, policy, _flags, nice, _prio, _runtime, _deadline, _period = attr
    if policy not in (os.SCHED_OTHER, os.SCHED_BATCH):
        return f"the thread runs under scheduling policy {policy}"
    new = _SCHED_ATTR.pack(_SCHED_ATTR.size, policy, 0, nice, 0, slice_us * 1000, 0, 0)
    if libc.syscall(set_nr, tid, ctypes.create_string_buffer(new, len(new)), 0) != 0:
        return f"sched_setattr: {os.strerror(ctypes.get_errno())}"
    after = _sched_attr(tid, libc, get_nr)
    if slice_us and (after is None or after[5] == 0):  # older kernels report none
        return "this kernel does not take a time slice for normal threads (Linux 6.12 and later do)"
    return None


def check_cpus(attribute: str, cpus: Sequence[int]) -> None:
    """Refuses CPUs this process may not use (its affinity, a cgroup cpuset),
    naming the attribute: pinning to them would fail or silently shrink."""
    allowed = os.sched_getaffinity(0)
    outside = [c for c in cpus if c not in allowed]
    if outside:
        raise EngineError(
            f"router attribute '{attribute}': CPU {format_cpu_list(outside)} is not in this "
            f"process's allowed set ({format_cpu_list(allowed)})"
        )


def router_config(config: ConfigFile) -> RouterConfig:
    """The file's router entity, or the schema's defaults when it has none."""
    for ce in config.entities:
        if ce.type == "router":
            return RouterConfig.from_values(ce.name, ce.attributes)
    return RouterConfig.from_attributes("router", {})


class Node:
    """A router on one control loop.

    ``engine`` lets a caller that already runs an engine (the bench's
    in-process subject) build the rest of the router on it; the node then
    leaves stopping that engine to its owner.
    """

    def __init__(
        self, router: RouterConfig, *, engine: Engine | None = None, control_slice_us: int = 0
    ) -> None:
        """``control_slice_us``: the control loop thread's time slice (see
        ``set_thread_slice``); 0 leaves the kernel's default."""
        if control_slice_us and not (
            CONTROL_SLICE_MIN_US <= control_slice_us <= CONTROL_SLICE_MAX_US
        ):
            raise EngineError(
                f"control loop time slice {control_slice_us} us: 0 (the kernel's default) "
                f"or {CONTROL_SLICE_MIN_US} to {CONTROL_SLICE_MAX_US}"
            )
        self.control_slice_us = control_slice_us
        self.router = router
        self.started = time.monotonic()
        self.registry = Registry()
        self.registry.subscribe("log", LogConfigObserver())
        # the router entity exists from the start, so that what adaptors read
        # of it (dropTcpConnections) is this config until a file replaces it
        self.registry.create("router", router.attributes(), source="builtin", check_operation=False)
        self._owns_engine = engine is None
        # before the engine: its workers inherit this thread's set
        check_cpus("controlCpus", router.control_cpu_list)
        if engine is None:
            check_cpus("workerCpus", router.worker_cpu_list)
            opts = EngineOptions(
                worker_threads=router.worker_threads,
                worker_cpus=router.worker_cpu_list,
                worker_nice=router.worker_nice,
            )
            try:
                engine = Engine(opts)
            except EngineError as e:
                # the engine's own message names its option: say which attribute set it
                if router.worker_nice is None or ": worker_nice " not in str(e):
                    raise
                raise EngineError(f"router attribute 'workerNice': {e}") from e
        self.engine = engine
        # (thread id, its set before) while the control loop's thread is pinned
        self._control_pinned: tuple[int, set[int]] | None = None
        self._control_sliced: int | None = None  # its thread id while its slice is set
        self._tls: TlsManager | None = None
        self._tcp: TcpAdaptor | None = None
        self._listeners: AppListenerAdaptor | None = None
        self._management: Management | None = None
        self._network: NetworkService | None = None
        self._closed = False
        self._stopped = False

    # ------------------------------------------------------------ parts

    @property
    def tls(self) -> TlsManager:
        assert self._tls is not None, "Node.start() has not run"
        return self._tls

    @property
    def tcp(self) -> TcpAdaptor:
        assert self._tcp is not None, "Node.start() has not run"
        return self._tcp

    @property
    def listeners(self) -> AppListenerAdaptor:
        """The adaptor of ``listener`` entities (AMQP management, HTTP pages)."""
        assert self._listeners is not None, "Node.start() has not run"
        return self._listeners

    @property
    def network(self) -> NetworkService | None:
        """The router network's control plane (router mode interior or edge)."""
        return self._network

    @property
    def management(self) -> Management:
        assert self._management is not None, "Node.start() has not run"
        return self._management

    # ------------------------------------------------------------ life cycle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attaches the engine to ``loop`` and subscribes every observer."""
        if self._owns_engine:
            self.engine.attach(loop)
        self._pin_control()
        self._slice_control()
        self._tls = TlsManager(self.engine, self.registry, loop, self.router.tls_loader_threads)
        self._tcp = TcpAdaptor(self.engine, self.registry, loop, self._tls)
        agent = Agent(self.registry)
        self._listeners = AppListenerAdaptor(self.engine, self.registry, loop, agent, self._tls)
        if self.router.mode != "standalone":
            self._start_network(loop, self._tcp, self._listeners)
        self._management = Management(
            self.engine,
            self.registry,
            loop,
            agent,
            self._listeners,
            self._tcp,
            self._tls,
            self.started,
            self._network,
        )
        if self._network is not None:
            self._network.serve_management(agent)
        # the pages need the management views, which need the listeners
        self._listeners.serve_pages(self._management.pages())

    def _start_network(
        self, loop: asyncio.AbstractEventLoop, tcp: TcpAdaptor, listeners: AppListenerAdaptor
    ) -> None:
        if not self.router.id:
            raise EngineError(
                f"router mode {self.router.mode} needs an id: routers in a network are told "
                "apart by it (set router { id: ... }, unique in the network)"
            )
        network = NetworkService(
            self.engine, self.registry, loop, self.router, self.router.id, self._tls
        )
        tcp.on_local_addresses(network.set_local_addresses)
        network.on_routes(
            lambda table: tcp.set_remote_addresses(
                frozenset(a for a, r in table.routes.items() if r.remote)
            )
        )
        network.on_remote_routes(tcp.set_remote_routes)
        listeners.serve_network(network)
        self._network = network

    def _pin_control(self) -> None:
        """Pins the calling thread (the control loop's) to ``controlCpus``;
        ``stop`` gives it back its set, so a test's loop is not left pinned."""
        cpus = self.router.control_cpu_list
        if not cpus or self._control_pinned is not None:
            return
        tid = threading.get_native_id()
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(tid, cpus)
        self._control_pinned = (tid, before)
        _log.info(f"control loop pinned to CPUs {format_cpu_list(cpus)}")

    def _slice_control(self) -> None:
        """Gives the calling thread (the control loop's) its time slice;
        ``stop`` gives it back the default. Where the kernel cannot, the
        loop runs with the default slice and says so."""
        if not self.control_slice_us or self._control_sliced is not None:
            return
        tid = threading.get_native_id()
        why = set_thread_slice(tid, self.control_slice_us)
        if why is not None:
            _log.info(f"control loop keeps the default time slice: {why}")
            return
        self._control_sliced = tid
        _log.info(f"control loop time slice {self.control_slice_us} us")

    def apply(self, entities: Sequence[ConfigEntity]) -> ApplyResult:
        """Makes the file-configured entities match ``entities`` (all or nothing)."""
        return self.registry.apply_file(entities)

    async def settle(self) -> None:
        """Waits for TLS loads and DNS look-ups started so far, then publishes
        the route table they complete."""
        await self.tls.settle()
        await self.tcp.settle()
        self.tcp.publish()

    def close(self) -> None:
        """Stops accepting on every listener and stops loading; flows stay."""
        if self._closed or self._tcp is None:
            return
        self._closed = True
        if self._network is not None:
            self._network.close()
        self.tcp.close()
        self.listeners.close()
        self.management.close()
        self.tls.close()

    async def drain(self, grace_s: float) -> int:
        """Waits up to ``grace_s`` for open connections to finish; returns how
        many are still open."""
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self._busy():
            await asyncio.sleep(DRAIN_POLL_S)
        return self._busy()

    def _busy(self) -> int:
        """Open connections that carry something: warm data connections kept
        idle in pools (this router's, or its neighbours' here) carry nothing."""
        c = self.engine.counters()
        return max(0, c["conns_live"] - c["pool_idle_in"] - c["pool_idle_out"])

    def stop(self) -> None:
        """Closes everything; the engine too when this node started it."""
        if self._stopped:
            return
        self._stopped = True
        self.close()
        if self._owns_engine:
            self.engine.stop()
        if self._control_sliced is not None:
            set_thread_slice(self._control_sliced, 0)  # a gone thread: nothing to undo
            self._control_sliced = None
        if self._control_pinned is not None:
            tid, before = self._control_pinned
            self._control_pinned = None
            try:
                os.sched_setaffinity(tid, before)
            except OSError:  # that thread is gone
                pass
