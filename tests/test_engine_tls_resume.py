"""TLS session resumption on data connections: the second and later data
connections to a TLS peer resume the session the last one was given, so a
flow (or a pool refill) costs no certificate signature or chain check; a
rotated profile on either side falls back to one full handshake."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import ThreadedServer, echo, recv_exact

from bench.pki import CertAuthority, write
from router.engine import (
    Engine,
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
class Pair:
    r1: Engine
    r2: Engine
    client: Listener
    peer: Peer
    slots: dict[str, int]
    ca: CertAuthority
    tmp: Path

    def rotate(self, name: str, tag: str) -> None:
        eng = self.r1 if name == "r1" else self.r2
        eng.tls_publish(self.slots[name], _material(self.ca, self.tmp, name, tag))

    def flow(self, payload: bytes) -> None:
        import socket

        with socket.create_connection(("127.0.0.1", self.client.port), timeout=10) as c:
            c.sendall(payload)
            assert recv_exact(c, len(payload)) == payload

    def resumed(self) -> tuple[int, int]:
        return self.r1.counters()["tls_resumed"], self.r2.counters()["tls_resumed"]

    def handshakes(self) -> tuple[int, int]:
        return self.r1.counters()["tls_handshakes"], self.r2.counters()["tls_handshakes"]


def _material(ca: CertAuthority, tmp: Path, name: str, tag: str) -> object:
    issued = ca.issue(name)
    write(tmp / f"{name}{tag}.pem", issued.cert_pem)
    write(tmp / f"{name}{tag}.key", issued.key_pem)
    loaded = tls_load(
        TlsMaterial(
            str(tmp / f"{name}{tag}.pem"), str(tmp / f"{name}{tag}.key"), str(tmp / "ca.pem")
        )
    )
    assert loaded.ok and loaded.config is not None, loaded
    return loaded.config


def _pair(tmp: Path, pool_size: int) -> Iterator[Pair]:
    ca = CertAuthority()
    write(tmp / "ca.pem", ca.pem)
    server = ThreadedServer(echo)
    r1 = Engine(EngineOptions(worker_threads=1, connect_timeout_ms=2000))
    r2 = Engine(EngineOptions(worker_threads=1, connect_timeout_ms=2000))
    try:
        r1.set_router_id("R1")
        r2.set_router_id("R2")
        slots = {"r1": r1.tls_slot(), "r2": r2.tls_slot()}
        r1.tls_publish(slots["r1"], _material(ca, tmp, "r1", "a"))  # type: ignore[arg-type]
        r2.tls_publish(slots["r2"], _material(ca, tmp, "r2", "a"))  # type: ignore[arg-type]
        data = r2.listen("127.0.0.1", 0, app=True, data_ok=True, tls_slot=slots["r2"],
                         authenticate_peer=True)  # fmt: skip
        r2.publish_routes({SVC: [RouteTarget(r2.target(), "127.0.0.1", server.port)]},
                          names=NAMES)  # fmt: skip
        peer = r1.peer("R2", "127.0.0.1", data.port, host="127.0.0.1", tls_slot=slots["r1"],
                       pool_size=pool_size, pool_idle_ms=60_000)  # fmt: skip
        r1.publish_routes({SVC: [RemoteRoute("R2", 1, peer)]}, names=NAMES)
        client = r1.listen("127.0.0.1", 0, address_id=SVC)
        yield Pair(r1, r2, client, peer, slots, ca, tmp)
    finally:
        r1.stop()
        r2.stop()
        server.close()


@pytest.fixture
def per_flow(tmp_path: Path) -> Iterator[Pair]:
    yield from _pair(tmp_path, pool_size=0)


@pytest.fixture
def pooled(tmp_path: Path) -> Iterator[Pair]:
    yield from _pair(tmp_path, pool_size=1)


def test_later_data_connections_resume_the_session(per_flow: Pair) -> None:
    p = per_flow
    p.flow(b"first")  # a full handshake: the server's ticket reaches R1
    assert p.resumed() == (0, 0)
    for i in range(3):
        p.flow(b"again%d" % i)
    assert p.resumed() == (3, 3)  # both ends saw each resumption
    assert p.handshakes() == (4, 4)
    # R2's accepted data connections left OpenSSL after each handshake
    # (tls_rl.c), and their stateful tickets still resumed; R1's dialled
    # ones keep OpenSSL (they take the tickets)
    assert p.r2.counters()["tls_detached"] == 4
    assert p.r1.counters()["tls_detached"] == 0


def test_a_rotation_on_either_side_costs_one_full_handshake(per_flow: Pair) -> None:
    p = per_flow
    p.flow(b"one")
    p.flow(b"two")
    assert p.resumed() == (1, 1)
    p.rotate("r1", "b")  # R1's session belongs to its old config: not offered
    p.flow(b"three")
    assert p.resumed() == (1, 1)
    p.flow(b"four")
    assert p.resumed() == (2, 2)
    p.rotate("r2", "b")  # R2's new config cannot read the old ticket: full handshake
    p.flow(b"five")
    assert p.resumed() == (2, 2)
    p.flow(b"six")
    assert p.resumed() == (3, 3)


def test_pool_refills_resume(pooled: Pair) -> None:
    from servers import wait_for

    p = pooled
    for i in range(4):
        p.flow(b"flow%d" % i)
        wait_for(lambda: p.peer.stats().pool_idle >= 1, what="pool refilled")
    # the first flow dialled (a miss) and started filling the pool at once:
    # those one or two handshakes were full, made before any ticket came
    # back; every refill after them resumed
    r1_resumed, _ = p.resumed()
    r1_handshakes, _ = p.handshakes()
    assert r1_handshakes >= 5 and r1_handshakes - 2 <= r1_resumed <= r1_handshakes - 1
