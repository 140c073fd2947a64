"""Management latency under load: ``python -m bench mgmt``.

Starts skiffd (a subprocess) with a management listener and a TCP service
in front of the bench's echo server, then measures QUERY round trips back
to back over one AMQP connection, first idle, then during a storm of short
TCP connections made by the bench's storm clients (500 concurrent by
default). A second AMQP connection with a 2-second idle timeout is held
open throughout without sending anything but its own heartbeats; the bench
reports whether the router ever let it time out and the largest gap between
frames the router sent on it.

The echo server and the storm clients run in their own processes, so
that the measuring process only measures.
"""

from __future__ import annotations

import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from proton import Connection, Endpoint, Transport

from bench.client import ClientPool
from bench.echo import EchoServer
from bench.host import raise_nofile_limit
from bench.proxies import free_port, wait_listening
from bench.storm import START_DELAY_S, StormConfig, round_specs
from router.tools.client import ManagementClient

STARTUP_S = 30.0
RAMP_UP_S = 0.5  # lets the storm reach full speed before the busy phase


@dataclass(slots=True)
class MgmtConfig:
    seconds: float = 5.0  # length of each phase
    clients: int = 500  # concurrent storm clients
    workers: int = 2  # skiffd workerThreads
    heartbeat: float = 2.0  # idle timeout of the watcher connection, seconds
    control_slice_us: int = 0  # skiffd --control-slice-us (0: the kernel's default)


class HeartbeatWatcher(threading.Thread):
    """Holds an AMQP connection with a short idle timeout; records arrivals."""

    def __init__(self, port: int, idle_timeout: float) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setblocking(False)
        self.transport = Transport()
        self.transport.idle_timeout = idle_timeout
        self.connection = Connection()
        self.transport.bind(self.connection)
        self.connection.open()
        self.stop = threading.Event()
        self.arrivals: list[float] = []
        self.empty_frames = 0
        self.frames = 0
        self.lost: str | None = None
        self._wire = bytearray()
        self._skip = 8  # the protocol header

    def _count(self, data: bytes) -> None:
        self._wire += data
        if self._skip:
            cut = min(self._skip, len(self._wire))
            del self._wire[:cut]
            self._skip -= cut
        while len(self._wire) >= 8:
            (size,) = struct.unpack_from("!I", self._wire)
            if len(self._wire) < size:
                return
            self.frames += 1
            self.empty_frames += size == 8
            del self._wire[:size]

    def run(self) -> None:
        t = self.transport
        while not self.stop.is_set():
            now = time.monotonic()
            deadline = t.tick(now)
            pending = t.pending()
            if pending > 0:
                try:
                    t.pop(self.sock.send(t.peek(pending) or b""))
                except BlockingIOError:
                    pass  # socket full; try again next turn
            if t.condition is not None or self.connection.state & Endpoint.REMOTE_CLOSED:
                self.lost = str(t.condition or self.connection.remote_condition)
                return
            wait = 0.05 if not deadline else max(0.0, min(0.05, deadline - now))
            if select.select([self.sock], [], [], wait)[0]:
                try:
                    data = self.sock.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    self.lost = "router closed the connection"
                    return
                self.arrivals.append(time.monotonic())
                self._count(data)
                t.push(data)

    def max_gap(self) -> float:
        return max(
            (b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)), default=0
        )


def _skiffd_config(
    cfg: MgmtConfig, mgmt: int, http: int, service: int, echo_port: int
) -> str:
    return (
        f"router {{\n    id: bench\n    workerThreads: {cfg.workers}\n}}\n"
        f"listener {{\n    host: 127.0.0.1\n    port: {mgmt}\n}}\n"
        f"listener {{\n    name: metrics\n    host: 127.0.0.1\n    port: {http}\n"
        "    http: true\n}\n"
        f"tcpListener {{\n    host: 127.0.0.1\n    port: {service}\n    address: echo\n"
        "    backlog: 4096\n}\n"
        f"tcpConnector {{\n    host: 127.0.0.1\n    port: {echo_port}\n    address: echo\n}}\n"
        "log {\n    module: DEFAULT\n    enable: warning+\n}\n"
    )


Waits = dict[str, list[tuple[float, float]]]  # direction -> (bound s, cumulative)


def _app_waits(port: int) -> Waits:
    """skiff_app_wait_seconds from /metrics: cumulative buckets per direction."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out: Waits = {}
    for family in text_string_to_metric_families(text):
        if family.name != "skiff_app_wait_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                out.setdefault(sample.labels["direction"], []).append(
                    (float(sample.labels["le"]), sample.value)
                )
    return out


def _wait_summary(before: Waits, after: Waits) -> str:
    """p50/p99 (bucket upper bounds, a factor of 2 apart) of each direction
    over the phase between the two scrapes."""
    parts = []
    for direction in ("receive", "input", "output"):
        b = dict(before.get(direction, []))
        rows = [(le, c - b.get(le, 0.0)) for le, c in after.get(direction, [])]
        total = rows[-1][1] if rows else 0.0

        def q(frac: float, rows: list[tuple[float, float]] = rows, total: float = total) -> str:
            for le, c in rows:
                if c >= frac * total:
                    return "inf" if le == float("inf") else f"{le * 1000:g}"
            return "-"

        parts.append(f"{direction} p50 <= {q(0.5)} ms, p99 <= {q(0.99)} ms ({total:.0f})")
    return "; ".join(parts)


def _queries(client: ManagementClient, seconds: float) -> list[float]:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        client.query("io.skupper.router.tcpListener", ["name", "connectionsOpened"])
        out.append(time.perf_counter() - t0)
    return out


def _summary(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{name:>6}: {len(ms)} QUERY round trips, p50 {statistics.median(ms):.2f} ms, "
        f"p99 {p99:.2f} ms, max {ms[-1]:.2f} ms"
    )


def run_mgmt(cfg: MgmtConfig) -> int:
    """Runs both phases and prints the figures; 1 when the heartbeat
    connection was lost or skiffd did not start."""
    raise_nofile_limit()
    storm = StormConfig(clients=cfg.clients, duration_s=cfg.seconds + 1, procs=1)
    mgmt, http, service = free_port(), free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="skiff-mgmt-bench-"))
    with EchoServer.start(1) as echo, ClientPool(storm.procs) as pool:
        conf = tmp / "bench.conf"
        conf.write_text(_skiffd_config(cfg, mgmt, http, service, echo.port))
        log = (tmp / "skiffd.log").open("wb")
        router = subprocess.Popen(
            [sys.executable, "-m", "router", "-c", str(conf)]
            + (["--control-slice-us", str(cfg.control_slice_us)] if cfg.control_slice_us else []),
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            try:
                wait_listening([mgmt], router, STARTUP_S)
            except RuntimeError as e:
                print(f"skiffd did not start ({e}); see {tmp / 'skiffd.log'}", file=sys.stderr)
                return 1
            watcher = HeartbeatWatcher(mgmt, cfg.heartbeat)
            watcher.start()
            client = ManagementClient(f"amqp://127.0.0.1:{mgmt}", timeout=10)
            _queries(client, 0.5)  # warm-up
            waits0 = _app_waits(http)
            idle = _queries(client, cfg.seconds)
            waits1 = _app_waits(http)
            start_at = time.monotonic() + START_DELAY_S
            pool.submit(round_specs(storm, pool.size, ("127.0.0.1", service), 0, start_at))
            with ThreadPoolExecutor(1) as collector:
                # drained meanwhile, so the clients never wait on a full pipe
                parts = collector.submit(pool.collect, storm.duration_s + storm.timeout_s + 30)
                time.sleep(START_DELAY_S + RAMP_UP_S)
                waits2 = _app_waits(http)
                busy = _queries(client, cfg.seconds)
                waits3 = _app_waits(http)
                done = sum(p.ok for p in parts.result())
                failed = sum(p.failed for p in parts.result())
            time.sleep(cfg.heartbeat * 1.5)  # heartbeats alone, after the storm
            client.close()
            watcher.stop.set()
            watcher.join(5)
        finally:
            router.terminate()
            router.wait(30)
            log.close()
    print(
        f"mgmt bench: skiffd {cfg.workers} workers, {os.cpu_count()} CPUs, "
        f"{cfg.seconds:g} s per phase"
    )
    print(_summary("idle", idle))
    print(f"        waits between threads: {_wait_summary(waits0, waits1)}")
    print(_summary("storm", busy))
    print(f"        waits between threads: {_wait_summary(waits2, waits3)}")
    print(
        f" storm: {cfg.clients} concurrent clients, {done} connections relayed "
        f"({done / storm.duration_s:.0f}/s)" + (f", {failed} failed" if failed else "")
    )
    print(
        f"heartbeat connection ({cfg.heartbeat:g} s idle timeout): "
        f"lost {'YES: ' + watcher.lost if watcher.lost else 'no'}, "
        f"{watcher.empty_frames} empty frames, largest gap {watcher.max_gap() * 1000:.0f} ms"
    )
    return 1 if watcher.lost else 0
