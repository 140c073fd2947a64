"""router.node.Node: the one place that builds a router."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop
from servers import ThreadedServer

from router.config import parse_config_text
from router.configs import RouterConfig
from router.engine import Engine, EngineOptions
from router.node import Node, router_config
from router.registry import ApplyError


def _conf(echo_port: int, extra: str = "") -> str:
    return f"""
router {{
    id: node-test
    workerThreads: 2
    dropTcpConnections: false
}}
tcpListener {{
    name: l
    host: 127.0.0.1
    port: 0
    address: svc
}}
tcpConnector {{
    name: c
    host: 127.0.0.1
    port: {echo_port}
    address: svc
}}
{extra}
"""


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_file_applied_to_a_node_relays_and_close_stops_accepting(
    echo_server: ThreadedServer,
) -> None:
    config = parse_config_text(_conf(echo_server.port), "node.conf")

    async def main() -> None:
        node = Node(router_config(config))
        node.start(asyncio.get_running_loop())
        try:
            result = node.apply(config.entities)
            assert {e.name for e in result.added} >= {"l", "c"}
            await node.settle()
            assert node.registry.router is not None
            assert node.registry.router.attributes["dropTcpConnections"] is False
            port = node.tcp.listener_port("l")
            assert port
            loop = asyncio.get_running_loop()
            held = await loop.run_in_executor(None, socket.create_connection, ("127.0.0.1", port))
            held.sendall(b"ping")
            assert await loop.run_in_executor(None, held.recv, 4) == b"ping"
            node.close()  # the workers let go of the socket asynchronously
            for _ in range(500):
                if await loop.run_in_executor(None, _refused, port):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the listener still accepts after close()")
            # open flows outlive close() and are what drain() waits for
            held.sendall(b"pong")
            assert await loop.run_in_executor(None, held.recv, 4) == b"pong"
            held.close()
            assert await node.drain(10) == 0
        finally:
            node.stop()
            node.stop()  # idempotent

    uvloop.run(main())


def test_a_rejected_file_leaves_the_node_as_it_was(echo_server: ThreadedServer) -> None:
    good = parse_config_text(_conf(echo_server.port), "good.conf")
    # valid as a file, refused by the TCP adaptor while applying
    bad_listener = "tcpListener {\n name: x\n host: example.invalid\n port: 0\n address: svc\n}\n"
    bad = parse_config_text(_conf(echo_server.port, bad_listener), "bad.conf")

    async def main() -> None:
        node = Node(router_config(good))
        node.start(asyncio.get_running_loop())
        try:
            node.apply(good.entities)
            with pytest.raises(ApplyError, match=r"example\.invalid"):
                node.apply(bad.entities)
            assert node.registry.find("tcpListener", "x") is None
            assert node.tcp.listener_port("l")
        finally:
            node.stop()

    uvloop.run(main())


def test_a_node_on_a_shared_engine_leaves_it_running() -> None:
    engine = Engine(EngineOptions(worker_threads=1))

    async def main() -> None:
        engine.attach(asyncio.get_running_loop())
        node = Node(RouterConfig.from_attributes("router", {}), engine=engine)
        node.start(asyncio.get_running_loop())
        node.stop()
        listener = engine.listen("127.0.0.1", 0)  # still running: its owner stops it
        assert listener.port > 0
        listener.close()

    try:
        uvloop.run(main())
    finally:
        engine.stop()
