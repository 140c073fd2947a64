"""Limits of the app listeners (issue 14, finding 4): HTTP request and AMQP
handshake time-outs, a connection cap per listener and a share of the
descriptor limit for all of them, so that idle management or metrics
clients can never starve the relay or each other."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from daemon import free_port, skiffd_conf, tcp_connector, tcp_listener
from prometheus_client.parser import text_string_to_metric_families
from proton.utils import BlockingConnection
from servers import ThreadedServer, echo, recv_exact, wait_for

import adaptors.app_listener as app_listener
from adaptors.app_listener import AppListenerAdaptor
from router.engine import Engine, EngineOptions
from router.management import limits, sasl
from router.management.agent import Agent
from router.management.service import Management
from router.registry import Registry

WAIT_S = 20.0  # bound of every wait: a failure is an error, never a hang


class InProcess:
    """An engine, the listener adaptor and management on the running loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = Engine(EngineOptions(worker_threads=1))
        self.registry = Registry()
        self.agent = Agent(self.registry)
        self.adaptor = AppListenerAdaptor(self.engine, self.registry, loop, self.agent)
        self.management = Management(self.engine, self.registry, loop, self.agent, self.adaptor)
        self.adaptor.serve_pages(self.management.pages())
        self.engine.attach(loop)

    def listener(self, name: str, **attrs: Any) -> int:
        self.registry.create(
            "listener",
            {"name": name, "host": "127.0.0.1", "port": 0, **attrs},
            check_operation=False,
        )
        port, err = self.adaptor.bound(name)
        assert port, err
        return port

    def close(self) -> None:
        self.adaptor.close()
        self.management.close()
        self.engine.stop()


def run(body: Callable[[InProcess], Awaitable[None]]) -> None:
    async def main() -> None:
        node = InProcess(asyncio.get_running_loop())
        try:
            await body(node)
        finally:
            node.close()

    uvloop.run(main())


def read_until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    s.settimeout(WAIT_S)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    finally:
        s.close()
    return data


def http_get(port: int, path: str) -> bytes:
    """The whole answer; b"" when the router refused (reset) the connection."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    except ConnectionResetError:
        return b""
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    except (BrokenPipeError, ConnectionResetError):
        s.close()
        return b""
    return read_until_closed(s)


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


@pytest.fixture
def fast_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_listener, "HOUSEKEEPING_S", 0.1)


def test_http_client_without_a_complete_request_gets_408(fast_limits: None) -> None:
    async def body(node: InProcess) -> None:
        port = node.listener("h", http=True, requestTimeoutSeconds=1)
        silent = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        partial = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        partial.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line
        got = await asyncio.gather(
            asyncio.to_thread(read_until_closed, silent),
            asyncio.to_thread(read_until_closed, partial),
        )
        for reply in got:
            assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), reply
            assert b"no complete request head within 1 s" in reply
        # a client that asks in time is answered, and the time-outs are counted
        page = await asyncio.to_thread(http_get, port, "/metrics")
        assert page.startswith(b"HTTP/1.1 200 OK\r\n"), page[:100]
        text = page.split(b"\r\n\r\n", 1)[1].decode()
        timeouts = samples(text, "skiff_listener_timeouts_total")
        assert timeouts[(("listener", "h"), ("phase", "http_request"))] == 2

    run(body)


def test_amqp_handshake_time_out_closes_stalled_clients(fast_limits: None) -> None:
    """Silent, SASL-stalled and trickling clients are closed even with the
    idle timeout off (idleTimeoutSeconds: 0) or fed a byte at a time; a
    real client opened in time is served."""

    def trickle(port: int) -> bytes:
        s = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        s.sendall(sasl.SASL_HEADER)
        # a SASL frame that claims 60000 bytes, sent one byte per 50 ms
        frame = (60000).to_bytes(4, "big") + b"\x02\x01\x00\x00" + b"\x00" * 59992
        deadline = time.monotonic() + WAIT_S
        try:
            for b in frame:
                s.sendall(bytes([b]))
                time.sleep(0.05)
                assert time.monotonic() < deadline, "never closed"
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_until_closed(s)

    async def body(node: InProcess) -> None:
        port = node.listener("m", idleTimeoutSeconds=0, initialHandshakeTimeoutSeconds=1)
        silent = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        in_sasl = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        in_sasl.sendall(sasl.SASL_HEADER)
        results = await asyncio.gather(
            asyncio.to_thread(read_until_closed, silent),
            asyncio.to_thread(read_until_closed, in_sasl),
            asyncio.to_thread(trickle, port),
        )
        assert results[0] == b""
        assert results[1].startswith(sasl.SASL_HEADER)  # then the mechanisms; then closed

        def client() -> str:
            conn = BlockingConnection(f"amqp://127.0.0.1:{port}", timeout=WAIT_S)
            try:
                return str(conn.conn.remote_container)
            finally:
                conn.close()

        assert await asyncio.to_thread(client) == "skiff"
        assert node.adaptor.limits.timeouts[("m", limits.TIMEOUT_AMQP)] == 3

    run(body)


async def until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_budget_refuses_connections_beyond_the_fd_share(
    fast_limits: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All app listeners together hold at most their budget: the next client
    is refused at open (reset), counted and logged; once one closes, a new
    client is served again."""

    async def body(node: InProcess) -> None:
        node.adaptor.limits.budget = 3
        # the held ones stay; the caps are above the budget
        a = node.listener(
            "a", idleTimeoutSeconds=0, initialHandshakeTimeoutSeconds=60, maxConnections=10
        )
        b = node.listener("b", http=True, maxConnections=10)
        held = [socket.create_connection(("127.0.0.1", a), timeout=WAIT_S) for _ in range(3)]
        await until(lambda: len(node.adaptor.amqp_connections()) == 3, "three open")
        refused = await asyncio.to_thread(http_get, b, "/healthz")
        assert refused == b""
        assert node.adaptor.limits.refused[("b", limits.REFUSED_BUDGET)] == 1
        held.pop().close()
        await asyncio.sleep(0.2)
        reply = b""
        for _ in range(50):  # the close reaches the loop asynchronously
            reply = await asyncio.to_thread(http_get, b, "/healthz")
            if reply:
                break
            await asyncio.sleep(0.1)
        assert reply.startswith(b"HTTP/1.1 200 OK"), reply
        for s in held:
            s.close()

    run(body)


def test_listener_attributes_set_the_cap_and_the_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    """maxConnections and backlog reach the engine's listen(); 0 keeps the
    default cap; the cap of each listener is in /metrics; the engine refuses
    the client past a configured cap."""

    async def body(node: InProcess) -> None:
        calls: list[dict[str, Any]] = []
        listen = node.engine.listen

        def spy(*args: Any, **kwargs: Any) -> Any:
            calls.append(kwargs)
            return listen(*args, **kwargs)

        monkeypatch.setattr(node.engine, "listen", spy)
        small = node.listener(
            "small", maxConnections=2, backlog=7, initialHandshakeTimeoutSeconds=0
        )
        node.listener("plain", http=True)
        default_cap = limits.listener_cap(node.adaptor.limits.budget)
        assert [(c["max_connections"], c["backlog"]) for c in calls] == [
            (2, 7),
            (default_cap, 1024),
        ]
        held = [socket.create_connection(("127.0.0.1", small), timeout=WAIT_S) for _ in range(2)]
        await until(lambda: len(node.adaptor.amqp_connections()) == 2, "two open")
        # the third is accepted by the kernel and closed by the engine at once
        third = socket.create_connection(("127.0.0.1", small), timeout=WAIT_S)
        assert await asyncio.to_thread(read_until_closed, third) == b""
        await until(lambda: node.engine.counters()["limit_rejected"] >= 1, "a refusal")
        # initialHandshakeTimeoutSeconds: 0, as in Skupper: no time-out
        assert all(c.settings.handshake_timeout_s == 0 for c in node.adaptor.amqp_connections())
        text = node.adaptor.limits.render(["plain", "small"])
        caps = samples(text, "skiff_listener_connection_limit")
        assert caps == {(("listener", "plain"),): default_cap, (("listener", "small"),): 2}
        for s in held:
            s.close()

    run(body)


LOW_NOFILE = 160

CHILD = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_NOFILE, ({n}, {n}))
sys.argv = ["skiffd", "-c", sys.argv[1]]
runpy.run_module("router", run_name="__main__")
"""


@pytest.fixture
def low_fd_router(tmp_path: Path) -> Iterator[tuple[int, int, int]]:
    """skiffd with RLIMIT_NOFILE at 160: (relay port, metrics port, health port)."""
    srv = ThreadedServer(echo)
    relay, metrics, health = free_port(), free_port(), free_port()

    def http(name: str, port: int) -> str:
        return (
            f"listener {{\n    name: {name}\n    host: 127.0.0.1\n    port: {port}\n"
            "    http: true\n}\n"
        )

    conf = tmp_path / "skiffd.conf"
    conf.write_text(
        skiffd_conf(
            tcp_listener(relay),
            tcp_connector(srv.port),
            http("metrics", metrics),
            http("health", health),
        )
    )
    err = (tmp_path / "skiffd.err").open("wb")
    out = (tmp_path / "skiffd.out").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(n=LOW_NOFILE), str(conf)],
        stdout=out,
        stderr=err,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_for(
            lambda: (
                "Stop with Ctrl-C" in (tmp_path / "skiffd.out").read_text()
                or proc.poll() is not None
            ),
            timeout=30,
            what="skiffd to start",
        )
        assert proc.poll() is None, (tmp_path / "skiffd.err").read_text()
        yield relay, metrics, health
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()
        err.close()
        srv.close()
        log = (tmp_path / "skiffd.err").read_text()
        assert "Traceback" not in log, log


def test_idle_metrics_clients_never_starve_relay_or_health(
    low_fd_router: tuple[int, int, int],
) -> None:
    """With the fd limit at 160, 300 idle clients of the metrics port: the
    engine holds the listener's cap (20) and refuses the rest at accept;
    relayed clients and /healthz on the other port are served meanwhile."""
    relay, metrics, health = low_fd_router
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 600  # the test's own sockets
    held = []
    try:
        for _ in range(300):
            held.append(socket.create_connection(("127.0.0.1", metrics), timeout=WAIT_S))
        time.sleep(0.5)  # the engine works through the accept queue
        clients = [
            socket.create_connection(("127.0.0.1", relay), timeout=WAIT_S) for _ in range(10)
        ]
        for i, c in enumerate(clients):
            msg = f"relay {i} ".encode() * 100
            c.sendall(msg)
            assert recv_exact(c, len(msg)) == msg
        for c in clients:
            c.close()
        reply = http_get(health, "/healthz")
        assert reply.startswith(b"HTTP/1.1 200 OK"), reply
        page = http_get(health, "/metrics").split(b"\r\n\r\n", 1)[1].decode()
        assert samples(page, "skiff_app_connection_budget")[()] == LOW_NOFILE // 4
        cap = samples(page, "skiff_listener_connection_limit")
        assert cap[(("listener", "metrics"),)] == LOW_NOFILE // 8

        def refused_or_timed_out() -> float:
            # on a slow run the held clients' 10 s request time-out frees
            # slots, each letting one more client in instead of refusing it
            page = http_get(health, "/metrics").split(b"\r\n\r\n", 1)[1].decode()
            timeouts = samples(page, "skiff_listener_timeouts_total")
            return samples(page, "skiff_engine_limit_rejected_total")[()] + sum(
                v for k, v in timeouts.items() if ("listener", "metrics") in k
            )

        wait_for(
            lambda: refused_or_timed_out() >= 300 - LOW_NOFILE // 8,
            timeout=WAIT_S,
            what="the extra clients refused",
        )
    finally:
        for s in held:
            s.close()
