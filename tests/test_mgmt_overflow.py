"""Dropped engine events (a full ring) do not strand management connections:
the adaptor resynchronises from the engine's own connection list."""

from __future__ import annotations

import asyncio
import socket

import uvloop

from adaptors.app_listener import AppListenerAdaptor
from router.engine import Engine, EngineOptions
from router.management.agent import Agent
from router.management.service import Management
from router.registry import Registry


def test_ring_overflow_resync_serves_every_connection() -> None:
    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        # 16 events per worker ring: 60 clients at once overflow it
        engine = Engine(EngineOptions(worker_threads=1, event_ring_size=16))
        registry = Registry()
        agent = Agent(registry)
        adaptor = AppListenerAdaptor(engine, registry, loop, agent)
        management = Management(engine, registry, loop, agent, adaptor)
        adaptor.serve_pages(management.pages())
        try:
            registry.create(
                "listener",
                {"name": "h", "host": "127.0.0.1", "port": 0, "http": True},
                check_operation=False,
            )
            port, err = adaptor.bound("h")
            assert port, err
            # clients connect and send while the loop is not draining events
            socks = []
            for _ in range(60):
                s = socket.create_connection(("127.0.0.1", port), timeout=20)
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                socks.append(s)
            await asyncio.sleep(0.3)
            engine.attach(loop)

            def read_all(s: socket.socket) -> bytes:
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                s.close()
                return data

            replies = await asyncio.gather(*(asyncio.to_thread(read_all, s) for s in socks))
            assert engine.counters()["events_dropped"] > 0  # the ring did overflow
            return list(replies)
        finally:
            adaptor.close()
            management.close()
            engine.stop()

    replies = uvloop.run(main())
    assert len(replies) == 60
    assert all(r.startswith(b"HTTP/1.1 ") for r in replies), replies[:2]
