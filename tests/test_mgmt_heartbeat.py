"""A management connection with a 2-second idle timeout stays up through a
2,000-connection storm: the engine, not the Python loop, sends heartbeats.

The client is proton's engine layer on a socket this test drives itself, so
every byte the router sends is seen with its arrival time: heartbeat frames
are counted and the gaps between arrivals reported.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import uvloop
from daemon import Skiffd, free_port, skiffd_conf, tcp_connector, tcp_listener

from bench.mgmt import HeartbeatWatcher


async def storm(port: int, clients: int, concurrency: int) -> int:
    sem = asyncio.Semaphore(concurrency)
    done = 0

    async def one() -> None:
        nonlocal done
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"x")
            assert await r.readexactly(1) == b"x"
            w.close()
            await w.wait_closed()
            done += 1

    await asyncio.gather(*(one() for _ in range(clients)))
    return done


def test_heartbeat_connection_survives_connection_storm(tmp_path: Path) -> None:
    async def main() -> tuple[int, float]:
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(65536):
                w.write(data)
            w.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=1024)
        echo_port = server.sockets[0].getsockname()[1]
        tcp_port, mgmt = free_port(), free_port()
        conf = skiffd_conf(
            tcp_listener(tcp_port, "storm", backlog=1024),
            tcp_connector(echo_port, "storm"),
            f"listener {{\n    host: 127.0.0.1\n    port: {mgmt}\n}}\n",
        )
        d = Skiffd(tmp_path, conf)
        client = HeartbeatWatcher(mgmt, idle_timeout=2.0)
        client.start()
        try:
            started = time.monotonic()
            done = await storm(tcp_port, 2000, 200)
            # then an idle stretch longer than the timeout, to see heartbeats alone
            await asyncio.sleep(2.5)
            elapsed = time.monotonic() - started
        finally:
            client.stop.set()
            client.join(10)
            server.close()
            assert d.stop() == 0
        print(
            f"storm of {done} clients in {elapsed:.1f} s: {client.empty_frames} heartbeat "
            f"frames, largest gap between arrivals {client.max_gap() * 1000:.0f} ms"
        )
        assert client.lost is None, client.lost
        assert client.frames >= 1  # the router's open frame
        assert client.empty_frames >= 1  # heartbeats came from the router
        return done, elapsed

    done, _ = uvloop.run(main())
    assert done == 2000
