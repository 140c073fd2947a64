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
from servers import recv_exact, tls_echo_engine

from router.engine import Engine, EngineError


@pytest.fixture()
def engine_and_slot(tmp_path: Path) -> Iterator[tuple[Engine, int, Path]]:
    with tls_echo_engine(tmp_path) as found:
        yield found


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
