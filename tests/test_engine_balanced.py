"""Target choice across the network (tcpListener ``distribution``): closest
(the lowest cost first, then the fewest open flows) against balanced (the
fewest open flows plus the path cost, Skupper's balanced treatment). Two
Engines in one process: R1 has a local target and a route to R2's target
at cost 1."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from servers import ThreadedServer, recv_exact, tagged

from router.engine import Engine, EngineOptions, RemoteRoute, RouteTarget

SVC = 0
NAMES = {SVC: "svc"}
HELD = 8


@pytest.fixture
def two() -> Iterator[tuple[Engine, Engine, ThreadedServer, ThreadedServer]]:
    local_srv, remote_srv = ThreadedServer(tagged(b"L")), ThreadedServer(tagged(b"R"))
    r1 = Engine(EngineOptions(worker_threads=1, connect_timeout_ms=2000))
    r2 = Engine(EngineOptions(worker_threads=1, connect_timeout_ms=2000))
    r1.set_router_id("R1")
    r2.set_router_id("R2")
    data2 = r2.listen("127.0.0.1", 0, app=True, data_ok=True)
    r2.publish_routes({SVC: [RouteTarget(r2.target(), "127.0.0.1", remote_srv.port)]}, names=NAMES)
    p12 = r1.peer("R2", "127.0.0.1", data2.port)
    r1.publish_routes(
        {SVC: [RouteTarget(r1.target(), "127.0.0.1", local_srv.port), RemoteRoute("R2", 1, p12)]},
        names=NAMES,
    )
    yield r1, r2, local_srv, remote_srv
    r1.stop()
    r2.stop()
    local_srv.close()
    remote_srv.close()


def _hold(port: int) -> tuple[list[socket.socket], list[bytes]]:
    """HELD flows opened one after the other and kept open: where each went."""
    socks, tags = [], []
    for _ in range(HELD):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(s)
        tags.append(recv_exact(s, 1))
    return socks, tags


def test_closest_keeps_every_flow_on_the_local_target(two: tuple) -> None:  # type: ignore[type-arg]
    r1, _, _, _ = two
    listener = r1.listen("127.0.0.1", 0, address_id=SVC)
    socks, tags = _hold(listener.port)
    try:
        assert tags == [b"L"] * HELD  # cost 0 beats cost 1 whatever the load
    finally:
        for s in socks:
            s.close()


def test_balanced_spreads_by_open_flows_plus_cost(two: tuple) -> None:  # type: ignore[type-arg]
    r1, _, _, _ = two
    listener = r1.listen("127.0.0.1", 0, address_id=SVC, balanced=True)
    socks, tags = _hold(listener.port)
    try:
        # local scores its open flows, remote its open flows + 1: the first
        # flow stays local, then they alternate once the local one leads by 1
        assert tags[0] == b"L"
        assert tags.count(b"R") in (HELD // 2 - 1, HELD // 2), tags
        for s in socks:  # every flow still relays
            s.sendall(b"x")
            assert recv_exact(s, 1) == b"x"
    finally:
        for s in socks:
            s.close()
