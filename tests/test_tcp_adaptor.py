"""TcpAdaptor on its own: tcpListener/tcpConnector entities become engine
listeners, targets and route tables (the Skupper meaning: a listener is up
only while a connector serves its address)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest
import uvloop
from servers import ThreadedServer, echo, refusing_port
from tlsharness import wait_until

from adaptors.tcp import TcpAdaptor
from router.configs import RouterConfig
from router.engine import Engine, EngineOptions
from router.node import Node
from router.registry import InvalidRequest, ObserverFailed, Registry


def _run(body: Callable[[Node], Awaitable[None]], **router: object) -> None:
    async def main() -> None:
        node = Node(RouterConfig.from_attributes("router", {"workerThreads": 2, **router}))
        node.start(asyncio.get_running_loop())
        try:
            await body(node)
        finally:
            node.stop()

    uvloop.run(main())


def _roundtrip(port: int, payload: bytes = b"hello") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while data := s.recv(65536):
            got += data
        return got


def _listener(node: Node, name: str = "l", address: str = "svc", **extra: object) -> None:
    attrs = {"name": name, "host": "127.0.0.1", "port": 0, "address": address, **extra}
    node.registry.create("tcpListener", attrs)


def _connector(
    node: Node, port: int, name: str = "c", address: str = "svc", **extra: object
) -> None:
    attrs = {"name": name, "host": "127.0.0.1", "port": port, "address": address, **extra}
    node.registry.create("tcpConnector", attrs)


def test_listener_is_up_only_while_a_connector_serves_its_address(
    echo_server: ThreadedServer,
) -> None:
    async def body(node: Node) -> None:
        _listener(node)
        assert node.tcp.listener_port("l") is None
        assert node.registry.read("tcpListener", "l")["operStatus"] == "down"
        _connector(node, echo_server.port)
        await node.settle()
        port = node.tcp.listener_port("l")
        assert port
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, _roundtrip, port) == b"hello"
        status = node.registry.read("tcpListener", "l")
        assert status["operStatus"] == "up"
        await wait_until(
            lambda: node.registry.read("tcpListener", "l")["connectionsClosed"] == 1,
            what="the flow's close to be counted",
        )
        node.registry.delete("tcpConnector", "c")
        assert node.tcp.listener_port("l") is None
        # the counters of the closed socket are kept
        assert node.registry.read("tcpListener", "l")["connectionsOpened"] == 1
        assert node.registry.read("tcpListener", "l")["bytesIn"] == 5

    _run(body)


def test_a_connector_of_another_address_does_not_open_the_listener(
    echo_server: ThreadedServer,
) -> None:
    async def body(node: Node) -> None:
        _listener(node, address="a")
        _connector(node, echo_server.port, address="b")
        await node.settle()
        assert node.tcp.listener_port("l") is None

    _run(body)


def test_localhost_listens_on_loopback_and_names_are_refused(echo_server: ThreadedServer) -> None:
    async def body(node: Node) -> None:
        _connector(node, echo_server.port)
        _listener(node, name="local", host="localhost")
        assert node.tcp.listener_port("local")
        with pytest.raises(
            ObserverFailed, match=r"'bad' host 'example\.invalid' must be a numeric address"
        ):
            _listener(node, name="bad", host="example.invalid")
        assert node.registry.find("tcpListener", "bad") is None

    _run(body)


def test_tls_is_refused_without_a_tls_manager() -> None:
    async def body() -> None:
        eng = Engine(EngineOptions(worker_threads=1))
        try:
            eng.attach(asyncio.get_running_loop())
            registry = Registry()
            tcp = TcpAdaptor(eng, registry, asyncio.get_running_loop(), tls=None)
            registry.create("sslProfile", {"name": "p"})
            with pytest.raises(ObserverFailed, match="TLS is not enabled"):
                registry.create(
                    "tcpConnector",
                    {
                        "name": "c",
                        "host": "127.0.0.1",
                        "port": 1,
                        "address": "a",
                        "sslProfile": "p",
                    },
                )
            assert registry.find("tcpConnector", "c") is None
            tcp.close()
        finally:
            eng.stop()

    uvloop.run(body())


def test_unreachable_connector_reports_down_and_another_serves(
    echo_server: ThreadedServer,
) -> None:
    refusing, dead_port = refusing_port()

    async def body(node: Node) -> None:
        _connector(node, dead_port, name="dead")
        _connector(node, echo_server.port, name="live")
        _listener(node)
        await node.settle()
        port = node.tcp.listener_port("l")
        assert port
        loop = asyncio.get_running_loop()
        for _ in range(4):  # round-robin reaches the dead one; the engine retries the other
            assert await loop.run_in_executor(None, _roundtrip, port) == b"hello"
        await wait_until(
            lambda: node.registry.read("tcpConnector", "dead")["operStatus"] == "down",
            what="the dead connector to be reported down",
        )
        assert node.registry.read("tcpConnector", "live")["operStatus"] == "up"

    try:
        _run(body)
    finally:
        refusing.close()


@pytest.mark.parametrize("drop", [True, False])
def test_deleting_a_connector_drops_its_flows_unless_told_not_to(drop: bool) -> None:
    server = ThreadedServer(echo)

    async def body(node: Node) -> None:
        _connector(node, server.port)
        _listener(node)
        await node.settle()
        port = node.tcp.listener_port("l")
        assert port
        loop = asyncio.get_running_loop()
        held = await loop.run_in_executor(None, socket.create_connection, ("127.0.0.1", port), 10)
        try:
            held.sendall(b"x")
            assert await loop.run_in_executor(None, held.recv, 1) == b"x"
            node.registry.delete("tcpConnector", "c")
            held.settimeout(10)
            if drop:
                closed = await loop.run_in_executor(None, held.recv, 1)
                assert closed == b""
            else:
                held.sendall(b"y")
                assert await loop.run_in_executor(None, held.recv, 1) == b"y"
        finally:
            held.close()

    try:
        _run(body, dropTcpConnections=drop)
    finally:
        server.close()


def test_a_connector_port_that_cannot_be_used_is_refused_and_routing_goes_on(
    echo_server: ThreadedServer,
) -> None:
    async def body(node: Node) -> None:
        with pytest.raises(InvalidRequest, match="attribute 'port'") as info:
            _connector(node, 0, name="zero")
        assert info.value.status == 400
        assert node.registry.find("tcpConnector", "zero") is None
        # the router is not poisoned: later changes and re-resolves still publish
        _connector(node, echo_server.port)
        _listener(node)
        await node.settle()
        port = node.tcp.listener_port("l")
        assert port
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, _roundtrip, port) == b"hello"
        node.registry.delete("tcpConnector", "c")
        assert node.tcp.listener_port("l") is None

    _run(body)
