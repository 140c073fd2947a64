"""Connections delivered to the control plane (management protocols)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from servers import publish_tls, recv_exact, wait_for

from router.engine import Engine, Event, EventType


def wait_events(engine: Engine, seen: list[Event], kind: EventType) -> Event:
    def found() -> bool:
        seen.extend(engine.drain())
        return any(e.type == kind for e in seen)

    wait_for(found, what=kind.name)
    return next(e for e in seen if e.type == kind)


def test_app_read_write_close(engine: Engine) -> None:
    listener = engine.listen("127.0.0.1", 0, app=True)
    c = socket.create_connection(("127.0.0.1", listener.port))
    seen: list[Event] = []
    opened = wait_events(engine, seen, EventType.APP_OPEN)
    assert opened.a == listener.user_id
    cid = opened.id
    c.sendall(b"hello")
    wait_events(engine, seen, EventType.APP_READABLE)
    got = bytearray()
    wait_for(lambda: bool(got.extend(engine.app_read(cid) or b"")) or bytes(got) == b"hello")
    engine.app_write(cid, b"world")
    assert recv_exact(c, 5) == b"world"
    conns = engine.connections()
    assert [r.app for r in conns] == [True]
    engine.app_close(cid)
    c.settimeout(10)
    assert c.recv(10) == b""
    wait_events(engine, seen, EventType.APP_CLOSED)
    c.close()


def test_app_eof_and_credit(engine: Engine) -> None:
    listener = engine.listen("127.0.0.1", 0, app=True)
    c = socket.create_connection(("127.0.0.1", listener.port))
    seen: list[Event] = []
    cid = wait_events(engine, seen, EventType.APP_OPEN).id
    payload = bytes(range(256)) * 4096  # 1 MiB: far more than one credit
    c.sendall(payload[: 1 << 19])
    time.sleep(0.2)
    # the engine stopped reading at the credit: no more than 64 KiB is buffered
    first = engine.app_read(cid, 1 << 20)
    assert first is not None and 0 < len(first) <= 65536
    got = bytearray(first)
    c.sendall(payload[1 << 19 :])
    c.shutdown(socket.SHUT_WR)
    while True:
        chunk = engine.app_read(cid, 1 << 16)
        if chunk is None:
            break
        if not chunk:
            time.sleep(0.002)
        got += chunk
    assert bytes(got) == payload
    engine.app_close(cid)
    c.close()


def test_keepalive_frames_sent_by_engine(engine: Engine) -> None:
    listener = engine.listen("127.0.0.1", 0, app=True)
    c = socket.create_connection(("127.0.0.1", listener.port))
    seen: list[Event] = []
    cid = wait_events(engine, seen, EventType.APP_OPEN).id
    frame = b"\x00\x00\x00\x08\x02\x00\x00\x00"  # an empty AMQP frame
    engine.app_set_keepalive(cid, frame, 0.05)
    c.settimeout(10)
    got = recv_exact(c, len(frame) * 4)
    assert got == frame * 4  # nothing but whole frames, with no Python involved
    engine.app_write(cid, b"DATA")
    data = recv_exact(c, 4)
    while data.startswith(frame):
        data = data[len(frame) :] + recv_exact(c, len(frame))
    assert data == b"DATA"
    engine.app_set_keepalive(cid, b"", 0)
    engine.app_close(cid)
    c.close()


def test_app_unknown_id(engine: Engine) -> None:
    import pytest

    from router.engine import EngineError

    with pytest.raises(EngineError):
        engine.app_write(12345, b"x")
    with pytest.raises(EngineError):
        engine.app_read(12345)


def test_app_connections_over_optional_tls(engine: Engine, tmp_path: Path) -> None:
    import ssl

    from bench.pki import CertAuthority, write

    ca = CertAuthority()
    server, client = ca.issue("mgmt"), ca.issue("operator", dns=(), ips=())
    for name, data in {
        "ca.pem": ca.pem,
        "s.pem": server.cert_pem,
        "s.key": server.key_pem,
        "c.pem": client.cert_pem,
        "c.key": client.key_pem,
    }.items():
        write(tmp_path / name, data)
    slot = publish_tls(engine, tmp_path, "s")
    listener = engine.listen(
        "127.0.0.1", 0, app=True, tls_slot=slot, tls_optional=True, authenticate_peer=True
    )
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    ctx.load_cert_chain(str(tmp_path / "c.pem"), str(tmp_path / "c.key"))

    for use_tls in (True, False):
        raw = socket.create_connection(("127.0.0.1", listener.port))
        conn = ctx.wrap_socket(raw, server_hostname="localhost") if use_tls else raw
        # optional TLS is decided on the client's first byte: AMQP clients speak first
        conn.sendall(b"AMQP")
        seen: list[Event] = []
        cid = wait_events(engine, seen, EventType.APP_OPEN).id
        info = engine.conn_info(cid)
        assert info is not None
        if use_tls:
            assert info.tls_protocol == "TLSv1.3" and info.tls_cipher
            assert info.tls_version == 1 and info.peer_subject == "/CN=operator"
        else:
            assert info.tls_protocol == "" and info.tls_version == 0
        assert _read_exactly(engine, cid, 4) == b"AMQP"
        engine.app_write(cid, b"reply")
        assert recv_exact(conn, 5) == b"reply"
        engine.app_close(cid)
        conn.close()
        wait_events(engine, seen, EventType.APP_CLOSED)


def _read_exactly(engine: Engine, cid: int, n: int) -> bytes:
    got = bytearray()
    wait_for(lambda: bool(got.extend(engine.app_read(cid) or b"")) or len(got) >= n)
    return bytes(got)


# ------------------------------------------------------------ outbound (app_connect)


def _event(engine: Engine, seen: list[Event], kind: EventType, cid: int, **match: int) -> Event:
    """The first event of kind for cid (and the given fields) drained so far."""

    def pick() -> Event | None:
        for e in seen:
            if e.type == kind and e.id == cid and all(getattr(e, k) == v for k, v in match.items()):
                return e
        return None

    def found() -> bool:
        seen.extend(engine.drain())
        return pick() is not None

    wait_for(found, what=f"{kind.name} of {cid}")
    ev = pick()
    assert ev is not None
    return ev


def _accepted(engine: Engine, seen: list[Event], listener_uid: int) -> int:
    def pick() -> int | None:
        for e in seen:
            if e.type == EventType.APP_OPEN and e.b == 0 and e.a == listener_uid:
                return e.id
        return None

    wait_for(lambda: bool(seen.extend(engine.drain())) or pick() is not None, what="accept")
    cid = pick()
    assert cid is not None
    return cid


def test_app_connect_plain(engine: Engine) -> None:
    listener = engine.listen("127.0.0.1", 0, app=True)
    seen: list[Event] = []
    cid = engine.app_connect("127.0.0.1", listener.port, user_id=4242)
    engine.app_write(cid, b"AMQP")  # queued until the connection is open
    opened = _event(engine, seen, EventType.APP_OPEN, cid)
    assert (opened.a, opened.b) == (4242, 1)
    peer = _accepted(engine, seen, listener.user_id)
    assert _read_exactly(engine, peer, 4) == b"AMQP"
    engine.app_write(peer, b"open")
    assert _read_exactly(engine, cid, 4) == b"open"
    info = engine.conn_info(cid)
    assert info is not None
    assert info.app and info.outbound and info.listener_id == 0
    assert info.peer == f"127.0.0.1:{listener.port}"
    accepted = engine.conn_info(peer)
    assert accepted is not None and not accepted.outbound
    counters = engine.counters()
    assert counters["app_live"] == 2 and counters["app_outbound_live"] == 1
    frame = b"\x00\x00\x00\x08\x02\x00\x00\x00"
    engine.app_set_keepalive(cid, frame, 0.05)
    assert _read_exactly(engine, peer, 16)[:16] == frame * 2  # heartbeats from the engine
    engine.app_close(cid)
    assert _event(engine, seen, EventType.APP_CLOSED, cid).a == 0
    engine.app_close(peer)
    _event(engine, seen, EventType.APP_CLOSED, peer)
    wait_for(lambda: engine.counters()["app_live"] == 0, what="app connections gone")


def test_app_connect_refused_and_errors(engine: Engine) -> None:
    import errno

    import pytest
    from servers import refusing_port

    from router.engine import EngineError

    sock, port = refusing_port()
    seen: list[Event] = []
    try:
        cid = engine.app_connect("127.0.0.1", port, user_id=1)
        closed = _event(engine, seen, EventType.APP_CLOSED, cid)
    finally:
        sock.close()
    assert closed.a == errno.ECONNREFUSED
    assert Engine.app_close_reason(closed.a) == "Connection refused"
    assert not [e for e in seen if e.type == EventType.APP_OPEN]
    assert engine.counters()["app_connects_failed"] == 1
    with pytest.raises(EngineError, match="not a numeric"):
        engine.app_connect("localhost", 5672, user_id=1)
    with pytest.raises(EngineError, match="port"):
        engine.app_connect("127.0.0.1", 0, user_id=1)
    with pytest.raises(EngineError, match="no TLS material"):
        engine.app_connect("127.0.0.1", 5672, user_id=1, tls_slot=engine.tls_slot())


def test_app_connect_mutual_tls(engine: Engine, tmp_path: Path) -> None:
    from bench.pki import CertAuthority, write

    ca = CertAuthority()
    files = {"ca.pem": ca.pem}
    for name in ("router-a", "router-b"):
        issued = ca.issue(name)
        files[f"{name}.pem"], files[f"{name}.key"] = issued.cert_pem, issued.key_pem
    for name, data in files.items():
        write(tmp_path / name, data)
    slots = {name: publish_tls(engine, tmp_path, name) for name in ("router-a", "router-b")}
    listener = engine.listen(
        "127.0.0.1", 0, app=True, tls_slot=slots["router-b"], authenticate_peer=True
    )
    seen: list[Event] = []
    cid = engine.app_connect(
        "127.0.0.1",
        listener.port,
        user_id=7,
        host="localhost",
        tls_slot=slots["router-a"],
        verify_host=True,
    )
    assert _event(engine, seen, EventType.APP_OPEN, cid).b == 1
    peer = _accepted(engine, seen, listener.user_id)
    engine.app_write(cid, b"AMQP\x03\x01\x00\x00")
    assert _read_exactly(engine, peer, 8) == b"AMQP\x03\x01\x00\x00"
    engine.app_write(peer, b"AMQP\x00\x01\x00\x00")
    assert _read_exactly(engine, cid, 8) == b"AMQP\x00\x01\x00\x00"
    out, inc = engine.conn_info(cid), engine.conn_info(peer)
    assert out is not None and inc is not None
    assert out.outbound and out.tls_protocol.startswith("TLS") and out.tls_version == 1
    assert out.peer_subject == "/CN=router-b"
    assert inc.peer_subject == "/CN=router-a"  # the dialler's certificate
    engine.app_close(cid)
    engine.app_close(peer)
    _event(engine, seen, EventType.APP_CLOSED, cid)

    # the name does not match the certificate: closed, never opened
    bad = engine.app_connect(
        "127.0.0.1",
        listener.port,
        user_id=8,
        host="wrong.example",
        tls_slot=slots["router-a"],
        verify_host=True,
    )
    closed = _event(engine, seen, EventType.APP_CLOSED, bad)
    assert closed.a < 0
    assert "hostname mismatch" in Engine.app_close_reason(closed.a)
    assert not [e for e in seen if e.type == EventType.APP_OPEN and e.id == bad]


def test_app_wait_histograms_count_each_direction(engine: Engine) -> None:
    """Input waits are counted when app_read takes bytes, output waits when
    the worker takes what app_write queued; both start empty."""
    assert engine.app_input_wait().count == 0
    assert engine.app_output_wait().count == 0
    listener = engine.listen("127.0.0.1", 0, app=True)
    c = socket.create_connection(("127.0.0.1", listener.port))
    seen: list[Event] = []
    cid = wait_events(engine, seen, EventType.APP_OPEN).id
    for i in range(3):
        c.sendall(b"ping")
        got = bytearray()

        def whole(got: bytearray = got) -> bool:
            got.extend(engine.app_read(cid) or b"")
            return bytes(got) == b"ping"

        wait_for(whole)
        engine.app_write(cid, b"pong%d" % i)
        assert recv_exact(c, 5) == b"pong%d" % i
    waited = engine.app_input_wait()
    assert waited.count == 3  # one per read that took bytes; empty reads do not count
    assert waited.max_ns > 0 and waited.sum_ns >= waited.max_ns
    assert waited.cumulative[-1] == 3
    wait_for(lambda: engine.app_output_wait().count == 3, what="three output waits")
    assert engine.app_read(cid) == b""  # nothing buffered: not a pick-up
    assert engine.app_input_wait().count == 3
    engine.app_close(cid)
    c.close()
