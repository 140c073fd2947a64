"""Loopback servers and clients for engine and daemon tests (threads, blocking
sockets: simple to reason about, and independent of the code under test)."""

from __future__ import annotations

import contextlib
import hashlib
import random
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

# the tests' one polling wait lives with the network harness
from bench.netharness import wait_for as wait_for
from bench.pki import CertAuthority, write
from router.engine import Engine, EngineOptions, RouteTarget, TlsMaterial, tls_load

Handler = Callable[[socket.socket], None]


class ThreadedServer:
    """Accepts on 127.0.0.x:0 and runs handler(conn) on a thread per connection."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(1024)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.accepted = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass  # the peer went away; the test decides whether that matters
        finally:
            conn.close()

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # never connected: nothing to shut down
        self.sock.close()


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def tagged(tag: bytes) -> Handler:
    """Sends tag first, then echoes: tells a test which server it reached."""

    def handler(conn: socket.socket) -> None:
        conn.sendall(tag)
        echo(conn)

    return handler


def exchange_server(conn: socket.socket) -> None:
    """Reads a 12-byte header (response size, seed), then the client's upload
    until EOF; replies with the sha256 of the upload and `size` seeded bytes."""
    head = recv_exact(conn, 12)
    size, seed = struct.unpack("!QI", head)
    h = hashlib.sha256()
    while data := conn.recv(65536):
        h.update(data)
    conn.sendall(h.digest())
    conn.sendall(seeded_bytes(seed, size))
    conn.shutdown(socket.SHUT_WR)


def exchange(conn: socket.socket, up: bytes, down_size: int, seed: int) -> tuple[bytes, bytes]:
    """Client side of exchange_server: uploads `up` (from a thread, so both
    directions flow at once) and returns (server's digest of it, download)."""

    def writer() -> None:
        conn.sendall(struct.pack("!QI", down_size, seed) + up)
        conn.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=writer)
    t.start()
    digest = recv_exact(conn, 32)
    body = recv_all(conn)
    t.join()
    return digest, body


def seeded_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = conn.recv(n - len(buf))
        if not data:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


def recv_all(conn: socket.socket) -> bytes:
    buf = bytearray()
    while data := conn.recv(65536):
        buf += data
    return bytes(buf)


def refusing_port(host: str = "127.0.0.1") -> tuple[socket.socket, int]:
    """A port that is bound but never listens: connects to it are refused."""
    s = socket.socket()
    s.bind((host, 0))
    return s, s.getsockname()[1]


def publish_tls(eng: Engine, directory: Path, name: str) -> int:
    """Loads directory's name.pem, name.key and ca.pem into a new TLS slot
    of eng; returns the slot."""
    cert, key, ca = (directory / f for f in (f"{name}.pem", f"{name}.key", "ca.pem"))
    loaded = tls_load(TlsMaterial(str(cert), str(key), str(ca)))
    assert loaded.ok and loaded.config is not None, loaded
    slot = eng.tls_slot()
    eng.tls_publish(slot, loaded.config)
    return slot


@contextlib.contextmanager
def tls_echo_engine(
    tmp_path: Path, workers: int = 1, connect_timeout_ms: int | None = None
) -> Iterator[tuple[Engine, int, Path]]:
    """An engine relaying address 0 to an echo server, with a TLS slot that
    holds a fresh CA's "localhost" certificate: (engine, slot, CA file).
    The caller opens the listener it needs on address 0."""
    ca = CertAuthority()
    issued = ca.issue("localhost")
    write(tmp_path / "ca.pem", ca.pem)
    write(tmp_path / "srv.pem", issued.cert_pem)
    write(tmp_path / "srv.key", issued.key_pem)
    server = ThreadedServer(echo)
    eng = Engine(EngineOptions(worker_threads=workers, connect_timeout_ms=connect_timeout_ms))
    try:
        slot = publish_tls(eng, tmp_path, "srv")
        eng.publish_routes({0: [RouteTarget(eng.target(), "127.0.0.1", server.port)]})
        yield eng, slot, tmp_path / "ca.pem"
    finally:
        eng.stop()
        server.close()
