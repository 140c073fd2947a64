"""Flows across routers in the engine: three Engines in one process (R1, R2,
R3), each with a data_ok listener, routes published by hand. A client of R1
is carried over data connections (FLOW, VERDICT, relay in C) to a target
behind R2 or R3."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import (
    ThreadedServer,
    echo,
    exchange,
    exchange_server,
    publish_tls,
    recv_exact,
    refusing_port,
    seeded_bytes,
    tagged,
    wait_for,
)

from router.engine import (
    Engine,
    EngineError,
    EngineOptions,
    Listener,
    Peer,
    RemoteRoute,
    RouteTarget,
    TlsMaterial,
    tls_load,
)

SVC = 0
NAMES = {SVC: "svc"}


@dataclass
class Net:
    routers: list[Engine]
    data: list[Listener]
    client: Listener


@pytest.fixture
def net() -> Iterator[Net]:
    routers = []
    data = []
    for i in range(3):
        eng = Engine(
            EngineOptions(
                worker_threads=2, connect_timeout_ms=2000, backoff_initial_ms=100,
                backoff_max_ms=200,
            )
        )
        eng.set_router_id(f"R{i + 1}")
        routers.append(eng)
        data.append(eng.listen("127.0.0.1", 0, app=True, data_ok=True))
    client = routers[0].listen("127.0.0.1", 0, address_id=SVC)
    yield Net(routers, data, client)
    for eng in routers:
        eng.stop()


def peer(net: Net, frm: int, to: int) -> Peer:
    return net.routers[frm].peer(f"R{to + 1}", "127.0.0.1", net.data[to].port)


def local(eng: Engine, server: ThreadedServer | int) -> RouteTarget:
    port = server if isinstance(server, int) else server.port
    return RouteTarget(eng.target(), "127.0.0.1", port)


def connect(listener: Listener) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", listener.port), timeout=10)
    return s


def three_flows(listener: Listener) -> None:
    """Three flows through listener (empty, 70 kB, 1 MiB up; a third of
    that down), each byte-exact both ways."""
    for size in (0, 70_000, 1 << 20):
        up = seeded_bytes(size, size)
        with connect(listener) as c:
            digest, down = exchange(c, up, size // 3 + 1, seed=3)
        assert digest == hashlib.sha256(up).digest()
        assert down == seeded_bytes(3, size // 3 + 1)


@pytest.mark.parametrize("size", [0, 1, 70_000, 3 << 20])
def test_two_hops_byte_exact(net: Net, size: int) -> None:
    server = ThreadedServer(exchange_server)
    try:
        r1, r2, _ = net.routers
        r2.publish_routes({SVC: [local(r2, server)]}, names=NAMES)
        p12 = peer(net, 0, 1)
        r1.publish_routes({SVC: [RemoteRoute("R2", 1, p12)]}, names=NAMES)
        up = seeded_bytes(size, size)
        with connect(net.client) as c:
            digest, down = exchange(c, up, size // 2 + 3, seed=7)
        assert digest == hashlib.sha256(up).digest()
        assert down == seeded_bytes(7, size // 2 + 3)
        assert r1.dataplane_counters().flows_originated == 1
        c2 = r2.dataplane_counters()
        assert c2.data_accepted == 1 and c2.flows_terminated == 1
        assert c2.verdicts_sent["ok"] == 1
        wait_for(lambda: p12.stats().active == 0, what="data connection closed")
        st = p12.stats()
        assert st.flows == 1 and st.failures == 0
        assert st.bytes_out >= size
    finally:
        server.close()


def test_three_hops(net: Net) -> None:
    server = ThreadedServer(echo)
    try:
        r1, r2, r3 = net.routers
        r3.publish_routes({SVC: [local(r3, server)]}, names=NAMES)
        r2.publish_routes({SVC: [RemoteRoute("R3", 1, peer(net, 1, 2))]}, names=NAMES)
        r1.publish_routes({SVC: [RemoteRoute("R3", 2, peer(net, 0, 1))]}, names=NAMES)
        with connect(net.client) as c:
            c.sendall(b"three hops")
            assert recv_exact(c, 10) == b"three hops"
            c.shutdown(socket.SHUT_WR)
            assert c.recv(1) == b""
        assert r2.dataplane_counters().flows_transited == 1
        assert r3.dataplane_counters().flows_terminated == 1
    finally:
        server.close()


def test_failed_remote_path_retried_elsewhere(net: Net) -> None:
    """R2's only target refuses (REFUSED), R3 has no route for the address
    (NO_ROUTE): R1 retries until the local target answers."""
    refused, port = refusing_port()
    server = ThreadedServer(tagged(b"L"))
    try:
        r1, r2, r3 = net.routers
        r2.publish_routes({SVC: [local(r2, port)]}, names=NAMES)
        r3.publish_routes({}, names=NAMES)
        p12 = peer(net, 0, 1)
        r1.publish_routes(
            {SVC: [RemoteRoute("R2", 1, p12), RemoteRoute("R3", 2, peer(net, 0, 2))]},
            names=NAMES,
        )
        with connect(net.client) as c:
            # no local target yet: both remote paths fail, the client is closed
            assert c.recv(1) == b""
        c1 = r1.dataplane_counters()
        assert p12.stats().destinations_down == 1  # backing off
        assert c1.verdicts_received["refused"] == 1
        assert c1.verdicts_received["no_route"] == 1
        assert r1.counters()["flows_failed"] == 1

        # a local target (cost 0) alongside: chosen first
        r1.publish_routes(
            {SVC: [local(r1, server), RemoteRoute("R2", 1, peer(net, 0, 1))]}, names=NAMES
        )
        with connect(net.client) as c:
            assert recv_exact(c, 1) == b"L"

        # R2 now answers through R3's target: the remote path works again
        r3.publish_routes({SVC: [local(r3, server)]}, names=NAMES)
        r2.publish_routes(
            {SVC: [local(r2, port), RemoteRoute("R3", 1, peer(net, 1, 2))]}, names=NAMES
        )
        r1.publish_routes({SVC: [RemoteRoute("R3", 1, peer(net, 0, 1))]}, names=NAMES)
        with connect(net.client) as c:
            assert recv_exact(c, 1) == b"L"
            c.sendall(b"x")
            assert recv_exact(c, 1) == b"x"
    finally:
        server.close()
        refused.close()


def test_bad_header_closes_only_that_connection(net: Net) -> None:
    server = ThreadedServer(echo)
    try:
        r2 = net.routers[1]
        r2.publish_routes({SVC: [local(r2, server)]}, names=NAMES)
        with socket.create_connection(("127.0.0.1", net.data[1].port), timeout=10) as bad:
            bad.sendall(b"SK\x01F\x00\x05")  # declared length below FLOW's minimum
            v = recv_exact(bad, 16)
            assert v[:4] == b"SK\x01V"
            assert v[6] == 4  # BAD_HEADER
            assert bad.recv(1) == b""
        c = r2.dataplane_counters()
        assert c.header_errors["bad_length"] == 1
        assert c.verdicts_sent["bad_header"] == 1
        # the listener still serves flows
        r1 = net.routers[0]
        r1.publish_routes({SVC: [RemoteRoute("R2", 1, peer(net, 0, 1))]}, names=NAMES)
        with connect(net.client) as cl:
            cl.sendall(b"still")
            assert recv_exact(cl, 5) == b"still"
    finally:
        server.close()


def test_api_refusals(net: Net) -> None:
    r1 = net.routers[0]
    with pytest.raises(EngineError):
        r1.set_router_id("")
    with pytest.raises(EngineError):
        r1.peer("R2", "not-an-ip", 1)
    p = peer(net, 0, 1)
    with pytest.raises(EngineError):
        r1.publish_routes({SVC: [RemoteRoute("", 1, p)]}, names=NAMES)
    with pytest.raises(EngineError):
        r1.publish_routes({}, names={0: "a", 1: "a"})
    p.release()
    p.release()
    with pytest.raises(EngineError):
        p.stats()
    # the old signature still works: local targets only, no names
    assert r1.publish_routes({SVC: []}) > 0


def test_mutual_tls_data_connections(net: Net, tmp_path: Path) -> None:
    """R1 dials R2's TLS data listener (client certificate required) with
    the link's sslProfile: byte-exact over TLS, pinned per connection."""
    from bench.pki import CertAuthority, write

    ca = CertAuthority()
    files = {"ca.pem": ca.pem}
    for name in ("r1", "r2"):
        issued = ca.issue(name)
        files[f"{name}.pem"], files[f"{name}.key"] = issued.cert_pem, issued.key_pem
    for name, data in files.items():
        write(tmp_path / name, data)
    r1, r2, _ = net.routers
    slots = {name: publish_tls(eng, tmp_path, name) for name, eng in (("r1", r1), ("r2", r2))}
    tls_data = r2.listen(
        "127.0.0.1", 0, app=True, data_ok=True, tls_slot=slots["r2"], authenticate_peer=True
    )
    server = ThreadedServer(exchange_server)
    try:
        r2.publish_routes({SVC: [local(r2, server)]}, names=NAMES)
        p = r1.peer("R2", "127.0.0.1", tls_data.port, host="127.0.0.1", tls_slot=slots["r1"])
        r1.publish_routes({SVC: [RemoteRoute("R2", 1, p)]}, names=NAMES)
        before = r2.counters()["tls_handshakes"]
        up = seeded_bytes(3, 1 << 20)
        with connect(net.client) as c:
            digest, down = exchange(c, up, 200_000, seed=9)
        assert digest == hashlib.sha256(up).digest()
        assert down == seeded_bytes(9, 200_000)
        assert r2.counters()["tls_handshakes"] == before + 1
        # R2 accepted it: it left OpenSSL after the handshake (tls_rl.c)
        assert r2.counters()["tls_detached"] == 1
        assert p.stats().flows == 1
    finally:
        server.close()


def test_warm_pool_claimed(net: Net) -> None:
    """A peer with a pool: the first flow on a worker dials and fills the
    pool, later flows on that worker claim warm connections."""
    server = ThreadedServer(echo)
    solo = Engine(EngineOptions(worker_threads=1))
    try:
        solo.set_router_id("RS")
        client = solo.listen("127.0.0.1", 0, address_id=SVC)
        r2 = net.routers[1]
        r2.publish_routes({SVC: [local(r2, server)]}, names=NAMES)
        p = solo.peer("R2", "127.0.0.1", net.data[1].port, pool_size=2, pool_idle_ms=60_000)
        solo.publish_routes({SVC: [RemoteRoute("R2", 1, p)]}, names=NAMES)
        for i in range(4):
            with connect(client) as c:
                c.sendall(b"warm%d" % i)
                assert recv_exact(c, 5) == b"warm%d" % i
            wait_for(lambda: p.stats().pool_idle == 2, what="pool refilled")
        st = p.stats()
        assert (st.pool_misses, st.pool_hits) == (1, 3)
    finally:
        solo.stop()
        server.close()


def test_tls_pool_rotation_closes_idle_connections_of_the_old_version(
    net: Net, tmp_path: Path
) -> None:
    """The link's profile publishes a new version: warm pooled connections
    made with the old one are closed unclaimed and replaced; a flow already
    running on an old connection keeps it (its bytes still flow)."""
    from bench.pki import CertAuthority, write

    ca = CertAuthority()
    write(tmp_path / "ca.pem", ca.pem)

    def material(name: str, tag: str) -> TlsMaterial:
        issued = ca.issue(name)
        write(tmp_path / f"{name}{tag}.pem", issued.cert_pem)
        write(tmp_path / f"{name}{tag}.key", issued.key_pem)
        return TlsMaterial(
            str(tmp_path / f"{name}{tag}.pem"),
            str(tmp_path / f"{name}{tag}.key"),
            str(tmp_path / "ca.pem"),
        )

    solo = Engine(EngineOptions(worker_threads=1))
    server = ThreadedServer(echo)
    try:
        solo.set_router_id("RS")
        r2 = net.routers[1]
        slot2 = r2.tls_slot()
        loaded = tls_load(material("r2", "a"))
        assert loaded.config is not None
        r2.tls_publish(slot2, loaded.config)
        data = r2.listen("127.0.0.1", 0, app=True, data_ok=True, tls_slot=slot2,
                         authenticate_peer=True)  # fmt: skip
        r2.publish_routes({SVC: [local(r2, server)]}, names=NAMES)
        slot1 = solo.tls_slot()
        first = tls_load(material("rs", "a"))
        assert first.config is not None
        solo.tls_publish(slot1, first.config)
        client = solo.listen("127.0.0.1", 0, address_id=SVC)
        p = solo.peer("R2", "127.0.0.1", data.port, host="127.0.0.1", tls_slot=slot1,
                      pool_size=2, pool_idle_ms=60_000)  # fmt: skip
        solo.publish_routes({SVC: [RemoteRoute("R2", 1, p)]}, names=NAMES)
        running = connect(client)
        running.sendall(b"old1")
        assert recv_exact(running, 4) == b"old1"
        wait_for(lambda: p.stats().pool_idle == 2, what="pool filled with version 1")
        second = tls_load(material("rs", "b"))
        assert second.config is not None
        solo.tls_publish(slot1, second.config)  # the link's profile rotates
        with connect(client) as c:
            c.sendall(b"new1")
            assert recv_exact(c, 4) == b"new1"
        st = p.stats()
        assert st.pool_stale == 2  # both idle old-version connections closed unclaimed
        running.sendall(b"old2")  # the flow that started on version 1 keeps it
        assert recv_exact(running, 4) == b"old2"
        running.close()
    finally:
        solo.stop()
        server.close()


# ------------------------------------------------------------ INBOUND direction


def test_reverse_peer_flows_to_a_router_that_only_dials_out(net: Net) -> None:
    """D (no data_ok listener at all) dials A and keeps idle INBOUND
    connections there; A's flows to D claim them (FLOW REVERSE)."""
    server = ThreadedServer(exchange_server)
    d = Engine(EngineOptions(worker_threads=1, connect_timeout_ms=2000))
    try:
        d.set_router_id("D")
        a = net.routers[0]
        d.publish_routes({SVC: [local(d, server)]}, names=NAMES)
        a.set_router_id("A")
        rp = a.reverse_peer("D", instance=7)
        pd = d.peer("A", "127.0.0.1", net.data[0].port, instance=7, inbound_pool_size=2)
        wait_for(lambda: rp.stats().pool_idle == 2, what="INBOUND connections at A")
        assert pd.stats().inbound_idle == 2
        assert pd.stats().pool_target == 2
        a.publish_routes({SVC: [RemoteRoute("D", 1, rp)]}, names=NAMES)
        three_flows(net.client)
        assert a.dataplane_counters().flows_originated == 3
        dc = d.dataplane_counters()
        assert dc.flows_terminated == 3 and dc.data_accepted == 0
        wait_for(lambda: rp.stats().pool_idle == 2, what="refilled after the claims")
        st, dt = rp.stats(), pd.stats()
        assert st.flows == 3 and st.inbound_accepted >= 5
        assert dt.inbound_claims == 3 and dt.inbound_failures == 0
        assert a.counters()["pool_idle_in"] == 2
    finally:
        d.stop()
        server.close()


def test_reverse_peer_over_tls(net: Net, tmp_path: Path) -> None:
    """D dials A's TLS data listener and keeps idle INBOUND connections
    there: A accepted them, so they left OpenSSL after the handshake
    (tls_rl.c) and sit idle in A's pool on the engine's record layer; A's
    flows claim them, byte-exact, and the refills detach too."""
    from bench.pki import CertAuthority, write

    ca = CertAuthority()
    write(tmp_path / "ca.pem", ca.pem)
    server = ThreadedServer(exchange_server)
    d = Engine(EngineOptions(worker_threads=1, connect_timeout_ms=2000))
    try:
        a = net.routers[0]
        a.set_router_id("A")
        d.set_router_id("D")
        slots = {}
        for name, eng in (("a", a), ("d", d)):
            issued = ca.issue(name)
            write(tmp_path / f"{name}.pem", issued.cert_pem)
            write(tmp_path / f"{name}.key", issued.key_pem)
            slots[name] = publish_tls(eng, tmp_path, name)
        tls_data = a.listen(
            "127.0.0.1", 0, app=True, data_ok=True, tls_slot=slots["a"], authenticate_peer=True
        )
        d.publish_routes({SVC: [local(d, server)]}, names=NAMES)
        rp = a.reverse_peer("D", instance=7)
        pd = d.peer("A", "127.0.0.1", tls_data.port, host="127.0.0.1", tls_slot=slots["d"],
                    instance=7, inbound_pool_size=2)  # fmt: skip
        wait_for(lambda: rp.stats().pool_idle == 2, what="INBOUND connections at A")
        assert a.counters()["tls_detached"] >= 2
        a.publish_routes({SVC: [RemoteRoute("D", 1, rp)]}, names=NAMES)
        three_flows(net.client)
        # at least the configured size: claims that empty the pool while a
        # refill is on its way grow its target (demand sizing, dataconn.c)
        wait_for(lambda: rp.stats().pool_idle >= 2, what="refilled after the claims")
        assert rp.stats().flows == 3

        def all_detached() -> bool:
            k = a.counters()  # a refill's handshake may be ending right now
            return bool(k["tls_detached"] == k["tls_handshakes"] >= 5)

        wait_for(all_detached, what="every accepted TLS data connection detached")
        assert d.counters()["tls_detached"] == 0  # the dialling side keeps OpenSSL
        assert pd.stats().inbound_claims == 3
    finally:
        d.stop()
        server.close()


def test_reverse_peer_refusals_and_exhaustion(net: Net) -> None:
    """An INBOUND HELLO from a router with no reverse peer is refused and
    counted; a reverse peer with no connection makes its flows wait, then
    fail like OVERLOADED (counted) and the client closes when nothing else
    is left."""
    a = net.routers[0]
    a.set_router_id("A")
    d = Engine(EngineOptions(worker_threads=1, connect_timeout_ms=2000))
    try:
        d.set_router_id("D")
        pd = d.peer("A", "127.0.0.1", net.data[0].port, inbound_pool_size=1)
        wait_for(lambda: a.dataplane_counters().hello_unknown >= 1, what="unknown HELLO")
        assert pd.stats().inbound_idle == 0
        assert pd.stats().inbound_failures >= 1
        rz = a.reverse_peer("RZ", pool_wait_ms=200)
        a.publish_routes({SVC: [RemoteRoute("RZ", 1, rz)]}, names=NAMES)
        with connect(net.client) as c:
            assert c.recv(1) == b""
        st = rz.stats()
        assert (st.pool_waits, st.pool_exhausted) == (1, 1)
        assert st.destinations_down == 1
        rz.release()
        pd.release()
    finally:
        d.stop()


def test_reverse_peer_api_errors(net: Net) -> None:
    a = net.routers[0]
    with pytest.raises(EngineError, match="inbound_cap"):
        a.reverse_peer("X", inbound_cap=-1)
    with pytest.raises(EngineError, match="pool_size"):
        Peer(a, "X", "", 0, reverse=True, pool_size=1)
