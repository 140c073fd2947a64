"""A listening socket's event accepts within a time budget (native/src/
listener.c): a storm of TLS clients, each of whose accepts runs the server's
first handshake flight at once, must not hold the worker until the whole
burst is served while its other connections wait.

One worker; an established plain connection relayed to an echo server; then
a burst of TLS clients that connect and send their ClientHello without
waiting, and a byte on the established connection. The server key is RSA
3072 (a signature of ~2 ms per handshake), so the burst takes the worker
some 100 ms whichever way it is scheduled. The echo must come back while
some of the burst still has no server flight: with the old bound (32
accepts per event, the listener reported first in every round) every
client had its ServerHello before the established connection was read.
Then every client of the burst completes its handshake and echoes through
the engine: none was lost by leaving it in the accept queue."""

from __future__ import annotations

import datetime
import select
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from servers import ThreadedServer, echo, recv_exact, wait_for

from router.engine import Engine, EngineOptions, RouteTarget, TlsMaterial, tls_load

BURST = 48


def _rsa_material(directory: Path) -> TlsMaterial:
    """A self-signed RSA 3072 certificate for localhost: costly signatures."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "rsa.pem"
    key_path = directory / "rsa.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return TlsMaterial(str(cert_path), str(key_path), str(cert_path))


@pytest.fixture
def storm_engine(tmp_path: Path) -> Iterator[tuple[Engine, int, int]]:
    """One worker relaying address 0 to an echo server, with a TLS listener
    (RSA key) and a plain one: (engine, TLS port, plain port)."""
    loaded = tls_load(_rsa_material(tmp_path))
    assert loaded.ok and loaded.config is not None, loaded
    server = ThreadedServer(echo)
    eng = Engine(EngineOptions(worker_threads=1, connect_timeout_ms=20000))
    try:
        slot = eng.tls_slot()
        eng.tls_publish(slot, loaded.config)
        eng.publish_routes({0: [RouteTarget(eng.target(), "127.0.0.1", server.port)]})
        tls = eng.listen("127.0.0.1", 0, address_id=0, tls_slot=slot, backlog=1024)
        plain = eng.listen("127.0.0.1", 0, address_id=0)
        yield eng, tls.port, plain.port
    finally:
        eng.stop()
        server.close()


class _Client:
    """A TLS client over a raw socket through memory BIOs: its ClientHello
    is made before it connects, and it is sent at once on connecting."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        with pytest.raises(ssl.SSLWantReadError):
            self.tls.do_handshake()
        self.hello = self.outgoing.read()
        self.sock: socket.socket | None = None

    def connect(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(self.hello)

    def finish(self, timeout: float) -> None:
        """Completes the handshake (blocking, timeout seconds per read)."""
        assert self.sock is not None
        self.sock.settimeout(timeout)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                assert data, "the engine closed a client of the burst"
                self.incoming.write(data)
        self._flush()

    def echo(self, payload: bytes) -> bytes:
        assert self.sock is not None
        self.tls.write(payload)
        self._flush()
        got = b""
        while len(got) < len(payload):
            try:
                got += self.tls.read(len(payload) - len(got))
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                assert data, "the engine closed a client of the burst"
                self.incoming.write(data)
        return got

    def _flush(self) -> None:
        assert self.sock is not None
        if out := self.outgoing.read():
            self.sock.sendall(out)


def _answered(clients: list[_Client]) -> int:
    """How many clients have bytes from the server waiting (their ServerHello)."""
    socks = [c.sock for c in clients if c.sock is not None]
    readable, _, _ = select.select(socks, [], [], 0)
    return len(readable)


def test_established_connection_is_served_during_a_tls_accept_storm(
    storm_engine: tuple[Engine, int, int],
) -> None:
    eng, tls_port, plain_port = storm_engine
    before = eng.counters()
    established = socket.create_connection(("127.0.0.1", plain_port))
    established.settimeout(30)
    established.sendall(b"a")
    assert recv_exact(established, 1) == b"a"  # relayed both ways already

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    clients = [_Client(ctx) for _ in range(BURST)]
    for c in clients:
        c.connect(tls_port)
    established.sendall(b"b")
    assert recv_exact(established, 1) == b"b"
    answered = _answered(clients)
    assert answered < BURST, (
        "the established connection waited until every client of the burst had its "
        "server flight: the accept loop held the worker for the whole storm"
    )

    # nothing lost: every client of the burst is accepted, shakes hands and
    # is relayed
    for i, c in enumerate(clients):
        c.finish(timeout=30)
        assert c.echo(b"ping %d" % i) == b"ping %d" % i
    after = eng.counters()
    assert after["tls_handshakes"] - before["tls_handshakes"] == BURST
    # the budget is what stopped the loop, and it is counted
    assert after["accept_deferred"] > before["accept_deferred"]
    assert after["tls_failures"] == before["tls_failures"]
    for c in clients:
        assert c.sock is not None
        c.sock.close()
    established.close()
    wait_for(lambda: eng.counters()["conns_live"] == 0, what="all flows closed")
