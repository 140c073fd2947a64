"""Connections delivered to the control plane (management protocols)."""

from __future__ import annotations

import socket
import time

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
