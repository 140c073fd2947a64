"""The echo server the storm talks to, in processes of its own.

Why separate processes: the engine lives in the bench's parent process, and
a Python echo server there would share the GIL (and the parent's core) with
the engine's control loop and skew both subjects. Each echo process runs a
uvloop asyncio server; several processes share one port with SO_REUSEPORT.

``corrupt=True`` flips one bit of the first byte of every connection's echo:
the bench must then count every connection as failed (a self-test).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import cast

from bench.host import raise_nofile_limit, read_process_cpu_s

ECHO_BACKLOG = 4096
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


class _EchoProtocol(asyncio.Protocol):
    """Echoes every byte; closes when the client half-closes."""

    __slots__ = ("_corrupt", "_first", "_transport")

    def __init__(self, corrupt: bool) -> None:
        self._corrupt = corrupt
        self._first = True
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        if self._corrupt and self._first and data:
            data = bytes([data[0] ^ 0x01]) + data[1:]
        self._first = False
        self._transport.write(data)

    def eof_received(self) -> bool:
        # returning False closes the transport once pending writes are out
        return False


def echo_addresses(count: int) -> list[str]:
    """127.0.0.1 then 127.0.1.1, 127.0.1.2…: extra listening addresses give a
    relay's outbound connections more 4-tuples (it cannot pick its source)."""
    return ["127.0.0.1"] + [f"127.0.1.{i}" for i in range(1, max(1, min(count, 254)))]


async def _serve(port: int, addrs: int, corrupt: bool, ctl: Connection) -> None:
    loop = asyncio.get_running_loop()
    servers: list[asyncio.AbstractServer] = []
    for host in echo_addresses(addrs):
        server = await loop.create_server(
            lambda: _EchoProtocol(corrupt),
            host,
            port,
            backlog=ECHO_BACKLOG,
            reuse_port=True,
        )
        servers.append(server)
        # every address shares the port the first one was given
        port = int(server.sockets[0].getsockname()[1])
    ctl.send(port)
    stop = loop.create_future()

    def on_ctl() -> None:
        # any message, or the parent's end closing, means stop
        if not stop.done():
            stop.set_result(None)

    loop.add_reader(ctl.fileno(), on_ctl)
    try:
        await stop
    finally:
        loop.remove_reader(ctl.fileno())
        for srv in servers:
            srv.close()
            await srv.wait_closed()


def echo_process_main(port: int, addrs: int, corrupt: bool, ctl: Connection) -> None:
    """Entry point of one echo process (spawned)."""
    import uvloop

    raise_nofile_limit()
    uvloop.run(_serve(port, addrs, corrupt, ctl))


@dataclass
class EchoServer:
    """A group of echo processes sharing one loopback port."""

    port: int
    addresses: list[str]
    processes: list[mp.process.BaseProcess]
    controls: list[Connection]

    @classmethod
    def start(cls, procs: int = 1, corrupt: bool = False, addrs: int = 1) -> EchoServer:
        """Starts procs echo processes on addrs addresses; the first picks the port."""
        ctx = mp.get_context("spawn")
        server = cls(0, echo_addresses(addrs), [], [])
        try:
            for _ in range(max(1, procs)):
                parent_end, child_end = ctx.Pipe()
                p = ctx.Process(
                    target=echo_process_main,
                    args=(server.port, addrs, corrupt, child_end),
                    name="skiff-bench-echo",
                    daemon=True,
                )
                p.start()
                child_end.close()
                server.processes.append(p)
                server.controls.append(parent_end)
                if not parent_end.poll(START_TIMEOUT_S):
                    raise RuntimeError("echo server did not report its port in time")
                server.port = int(parent_end.recv())
        except BaseException:
            server.stop()
            raise
        return server

    def cpu_s(self) -> float:
        """CPU seconds used so far by every echo process (0 where unknown)."""
        return sum(read_process_cpu_s(p.pid) for p in self.processes if p.pid is not None)

    def stop(self) -> None:
        """Asks every process to stop, then terminates stragglers."""
        for c in self.controls:
            try:
                c.send("stop")
            except (BrokenPipeError, OSError):
                pass  # that process is gone already
        for p in self.processes:
            p.join(STOP_TIMEOUT_S)
            if p.is_alive():
                p.terminate()
                p.join(STOP_TIMEOUT_S)
        for c in self.controls:
            c.close()
        self.processes.clear()
        self.controls.clear()

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
