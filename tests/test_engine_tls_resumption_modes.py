"""tcpListener ``tlsResumption``: how TLS clients of a listener may resume.

Real Python ``ssl`` clients connect twice through the engine's TLS listener
to an echo server, the second time offering the session of the first:
``tickets`` (a stateless ticket) and ``cache`` (a ticket naming a session in
the profile's server cache) resume; ``off`` sends no ticket, so there is
nothing to resume and both connections make a full handshake."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import ThreadedServer, echo, recv_exact

from bench.pki import CertAuthority, write
from router.engine import Engine, EngineError, EngineOptions, RouteTarget, TlsMaterial, tls_load


@pytest.fixture()
def engine_and_slot(tmp_path: Path) -> Iterator[tuple[Engine, int, Path]]:
    ca = CertAuthority()
    issued = ca.issue("server")
    write(tmp_path / "ca.pem", ca.pem)
    write(tmp_path / "server.pem", issued.cert_pem)
    write(tmp_path / "server.key", issued.key_pem)
    loaded = tls_load(
        TlsMaterial(str(tmp_path / "server.pem"), str(tmp_path / "server.key"), None)
    )
    assert loaded.ok and loaded.config is not None, loaded
    server = ThreadedServer(echo)
    eng = Engine(EngineOptions(worker_threads=1))
    try:
        target = eng.target()
        eng.publish_routes({0: [RouteTarget(target, "127.0.0.1", server.port)]})
        slot = eng.tls_slot()
        eng.tls_publish(slot, loaded.config)
        yield eng, slot, tmp_path / "ca.pem"
    finally:
        eng.stop()
        server.close()


def _exchange(
    ctx: ssl.SSLContext, port: int, session: ssl.SSLSession | None
) -> tuple[ssl.SSLSession | None, bool]:
    """One connection: echo 5 bytes (the ticket, if any, arrives meanwhile);
    the session it ends with and whether it resumed the one offered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as c:
            c.sendall(b"hello")
            assert recv_exact(c, 5) == b"hello"
            return c.session, c.session_reused


@pytest.mark.parametrize(
    ("mode", "resumes"), [("tickets", True), ("cache", True), ("off", False)]
)
def test_listener_resumption_mode(
    engine_and_slot: tuple[Engine, int, Path], mode: str, resumes: bool
) -> None:
    eng, slot, ca = engine_and_slot
    listener = eng.listen("127.0.0.1", 0, tls_slot=slot, tls_resumption=mode)
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    first, reused = _exchange(ctx, listener.port, None)
    assert not reused
    assert first is not None
    assert first.has_ticket is resumes
    if mode == "cache":
        # a ticket naming a session of the profile's server cache, which
        # keeps sessions 300 s; a stateless ticket carries OpenSSL's 7200 s
        assert first.ticket_lifetime_hint == 300
    elif mode == "tickets":
        assert first.ticket_lifetime_hint == 7200
    before = eng.counters()
    _second, reused = _exchange(ctx, listener.port, first)
    after = eng.counters()
    assert reused is resumes
    assert after["tls_resumed"] - before["tls_resumed"] == (1 if resumes else 0)
    assert after["tls_handshakes"] - before["tls_handshakes"] == 1


def test_unknown_resumption_mode_is_refused(engine_and_slot: tuple[Engine, int, Path]) -> None:
    eng, slot, _ca = engine_and_slot
    with pytest.raises(EngineError, match="tls_resumption 'sometimes': one of tickets, cache, off"):
        eng.listen("127.0.0.1", 0, tls_slot=slot, tls_resumption="sometimes")
