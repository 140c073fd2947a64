"""Connections delivered to the control plane (management protocols)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from servers import recv_exact, wait_for

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
    from router.engine import TlsMaterial, tls_load

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
    loaded = tls_load(
        TlsMaterial(str(tmp_path / "s.pem"), str(tmp_path / "s.key"), str(tmp_path / "ca.pem"))
    )
    assert loaded.ok and loaded.config is not None
    slot = engine.tls_slot()
    engine.tls_publish(slot, loaded.config)
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
