"""Management latency under load: ``python -m router.tools.mgmt_bench``.

Starts skiffd (a subprocess) with a management listener and a TCP service,
then measures QUERY round trips back to back over one AMQP connection,
first idle, then during a storm of short TCP connections made by 500
concurrent clients. A second AMQP connection with a 2-second idle timeout
is held open throughout without sending anything but its own heartbeats;
the bench reports whether the router ever let it time out and the largest
gap between frames the router sent on it.

The echo service and the storm clients run in their own processes, so
that the measuring process only measures.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
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
from pathlib import Path
from typing import Any

from proton import Connection, Endpoint, Transport

from router.tools.client import ManagementClient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _echo_server(port: int) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
        except ConnectionError:
            pass  # clients reset; not the service's business
        w.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    _run(main())


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _storm(port: int, clients: int, seconds: float, result: Any) -> None:
    async def main() -> int:
        end = time.monotonic() + seconds
        done = 0

        async def client() -> None:
            nonlocal done
            while time.monotonic() < end:
                try:
                    r, w = await asyncio.open_connection("127.0.0.1", port)
                    w.write(b"x")
                    await r.readexactly(1)
                    w.close()
                    await w.wait_closed()
                    done += 1
                except (ConnectionError, asyncio.IncompleteReadError, OSError):
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(client() for _ in range(clients)))
        return done

    result.value = _run(main())


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m router.tools.mgmt_bench", description=__doc__)
    p.add_argument("--seconds", type=float, default=5.0, help="length of each phase (5)")
    p.add_argument("--clients", type=int, default=500, help="concurrent storm clients (500)")
    p.add_argument("--workers", type=int, default=2, help="router workerThreads (2)")
    p.add_argument("--heartbeat", type=float, default=2.0, help="idle timeout of the watcher (2)")
    args = p.parse_args(argv)

    mgmt, service, echo_port = _free_port(), _free_port(), _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="skiff-mgmt-bench-"))
    conf = tmp / "bench.conf"
    conf.write_text(
        f"router {{\n    id: bench\n    workerThreads: {args.workers}\n}}\n"
        f"listener {{\n    host: 127.0.0.1\n    port: {mgmt}\n}}\n"
        f"tcpListener {{\n    host: 127.0.0.1\n    port: {service}\n    address: echo\n"
        "    backlog: 4096\n}\n"
        f"tcpConnector {{\n    host: 127.0.0.1\n    port: {echo_port}\n    address: echo\n}}\n"
        "log {\n    module: DEFAULT\n    enable: warning+\n}\n"
    )
    ctx = multiprocessing.get_context("spawn")
    echo = ctx.Process(target=_echo_server, args=(echo_port,), daemon=True)
    echo.start()
    log = (tmp / "skiffd.log").open("wb")
    router = subprocess.Popen(
        [sys.executable, "-m", "router", "-c", str(conf)],
        stdout=log,
        stderr=log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", mgmt), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or router.poll() is not None:
                    print(f"skiffd did not start; see {tmp / 'skiffd.log'}", file=sys.stderr)
                    return 1
                time.sleep(0.1)
        watcher = HeartbeatWatcher(mgmt, args.heartbeat)
        watcher.start()
        client = ManagementClient(f"amqp://127.0.0.1:{mgmt}", timeout=10)
        _queries(client, 0.5)  # warm-up
        idle = _queries(client, args.seconds)
        done = ctx.Value("q", 0)
        storm = ctx.Process(target=_storm, args=(service, args.clients, args.seconds + 1, done))
        storm.start()
        time.sleep(0.5)  # let the storm reach full speed
        busy = _queries(client, args.seconds)
        storm.join(args.seconds + 30)
        time.sleep(args.heartbeat * 1.5)  # heartbeats alone, after the storm
        client.close()
        watcher.stop.set()
        watcher.join(5)
        print(
            f"mgmt bench: skiffd {args.workers} workers, {os.cpu_count()} CPUs, "
            f"{args.seconds:g} s per phase"
        )
        print(_summary("idle", idle))
        print(_summary("storm", busy))
        print(
            f" storm: {args.clients} concurrent clients, {done.value} connections relayed "
            f"({done.value / (args.seconds + 1):.0f}/s)"
        )
        print(
            f"heartbeat connection ({args.heartbeat:g} s idle timeout): "
            f"lost {'YES: ' + watcher.lost if watcher.lost else 'no'}, "
            f"{watcher.empty_frames} empty frames, largest gap {watcher.max_gap() * 1000:.0f} ms"
        )
        return 1 if watcher.lost else 0
    finally:
        router.terminate()
        router.wait(30)
        echo.terminate()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
