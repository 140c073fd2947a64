"""In-process routers (``router.node.Node``) on a uvloop loop for TLS tests,
plus blocking TLS clients run in threads."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

import uvloop

from router.configs import RouterConfig
from router.node import Node

T = TypeVar("T")


class Router:
    """A Node with the shortcuts TLS tests use."""

    def __init__(self, loop: asyncio.AbstractEventLoop, workers: int = 2) -> None:
        self.loop = loop
        self.node = Node(RouterConfig.from_attributes("router", {"workerThreads": workers}))
        self.node.start(loop)
        self.engine = self.node.engine
        self.registry = self.node.registry
        self.tls = self.node.tls
        self.tcp = self.node.tcp

    def profile(self, name: str, **attrs: object) -> None:
        self.registry.create("sslProfile", {"name": name, **attrs}, check_operation=False)

    def update_profile(self, name: str, **attrs: object) -> None:
        self.registry.update("sslProfile", name, attrs)

    def status(self, name: str) -> dict[str, object]:
        return self.registry.read("sslProfile", name)

    def relay(
        self,
        name: str,
        target_port: int,
        profile: str | None = None,
        authenticate_peer: bool = False,
        connector_profile: str | None = None,
        connector_host: str = "127.0.0.1",
        verify_hostname: bool = True,
    ) -> None:
        lattrs: dict[str, object] = {
            "name": name,
            "host": "127.0.0.1",
            "port": 0,
            "address": name,
            "authenticatePeer": authenticate_peer,
        }
        if profile:
            lattrs["sslProfile"] = profile
        cattrs: dict[str, object] = {
            "name": name + "-c",
            "host": connector_host,
            "port": target_port,
            "address": name,
            "verifyHostname": verify_hostname,
        }
        if connector_profile:
            cattrs["sslProfile"] = connector_profile
        self.registry.create("tcpConnector", cattrs, check_operation=False)
        self.registry.create("tcpListener", lattrs, check_operation=False)

    def port(self, listener: str) -> int:
        port = self.tcp.listener_port(listener)
        assert port, f"tcpListener {listener} is not listening: {self.tcp.listener_error(listener)}"
        return port

    async def settle(self) -> None:
        await self.node.settle()

    def close(self) -> None:
        self.node.stop()


def run(body: Callable[[Router], Awaitable[T]], workers: int = 2) -> T:
    async def main() -> T:
        r = Router(asyncio.get_running_loop(), workers)
        try:
            return await body(r)
        finally:
            r.close()

    return uvloop.run(main())


def fetch(port: int, ctx: ssl.SSLContext, payload: bytes = b"ping") -> tuple[str, bytes]:
    """One TLS connection through the router to an echo server: returns the
    server certificate's SHA-256 and the echoed payload."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            der = s.getpeercert(binary_form=True)
            assert der is not None
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                data = s.recv(65536)
                if not data:
                    break
                got += data
            return hashlib.sha256(der).hexdigest(), got


async def wait_until(cond: Callable[[], bool], timeout: float = 10, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
