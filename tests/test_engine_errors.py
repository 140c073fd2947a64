"""Bad input to the engine gets clear errors, never a crash."""

from __future__ import annotations

import re
import socket

import pytest

from router.engine import Engine, EngineError, RouteTarget


def test_listen_on_bad_address(engine: Engine) -> None:
    with pytest.raises(EngineError, match="'not-an-ip' is not a numeric"):
        engine.listen("not-an-ip", 0)


def test_listen_port_out_of_range(engine: Engine) -> None:
    with pytest.raises(EngineError, match="port 70000 out of range"):
        engine.listen("127.0.0.1", 70000)


def test_listen_port_in_use(engine: Engine) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    with pytest.raises(EngineError, match=f"cannot bind 127.0.0.1:{port}: Address already in use"):
        engine.listen("127.0.0.1", port)
    s.close()


def test_listen_refuses_a_port_another_reuseport_socket_listens_on(engine: Engine) -> None:
    """The engine's sockets set SO_REUSEPORT; another process of the same user
    listening with it would be joined silently and get half the clients."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        for host, shown in (("127.0.0.1", "127.0.0.1"), ("", "*")):
            with pytest.raises(
                EngineError,
                match=f"port {port} on {re.escape(shown)} is already in use by another socket "
                "or process",
            ):
                engine.listen(host, port)
    finally:
        s.close()
    # once the other socket is gone the port is the router's
    listener = engine.listen("127.0.0.1", port)
    assert listener.port == port


def test_a_closed_listener_frees_its_port_at_once(engine: Engine) -> None:
    listener = engine.listen("127.0.0.1", 0)
    port = listener.port
    for _ in range(5):
        listener.close()
        listener = engine.listen("127.0.0.1", port)
    assert listener.port == port


def test_listen_ipv6_and_any(engine: Engine) -> None:
    six = engine.listen("::1", 0)
    anyaddr = engine.listen("", 0)
    assert six.port > 0 and anyaddr.port > 0
    c = socket.create_connection(("::1", six.port))
    c.close()


def test_bad_route_entries(engine: Engine) -> None:
    t = engine.target()
    with pytest.raises(EngineError, match="not a numeric"):
        engine.publish_routes({0: [RouteTarget(t, "example.com", 80)]})
    with pytest.raises(EngineError, match="port 0 out of range"):
        engine.publish_routes({0: [RouteTarget(t, "127.0.0.1", 0)]})
    assert engine.counters()["routes_version"] == 0  # nothing half-published


def test_a_refused_route_entry_can_be_left_out_while_the_others_publish(engine: Engine) -> None:
    bad, good = engine.target(), engine.target()
    refused: list[str] = []
    version = engine.publish_routes(
        {0: [RouteTarget(bad, "127.0.0.1", 0), RouteTarget(good, "127.0.0.1", 80)]},
        lambda rt, reason: refused.append(f"{rt.target.user_id}: {reason}"),
    )
    assert version == engine.counters()["routes_version"] == 1
    assert refused == [f"{bad.user_id}: route to 127.0.0.1:0: port 0 out of range 1-65535"]


def test_a_raising_event_handler_costs_no_other_handler_or_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One handler's bug is logged and counted; the rest of the batch and
    the other handlers still get every event (issue 14, finding 5)."""
    import asyncio

    import uvloop

    from router.engine import EngineOptions, EventType

    eng = Engine(EngineOptions(worker_threads=1))
    seen: list[int] = []

    def broken(ev: object) -> None:
        raise OverflowError("a handler bug")

    async def main() -> None:
        eng.attach(asyncio.get_running_loop())
        eng.on_event(broken)
        eng.on_event(lambda ev: seen.append(ev.id) if ev.type == EventType.TIMER else None)
        for _ in range(300):  # more than one drain batch
            eng.timer_start(0.0)
        for _ in range(500):
            if len(seen) >= 300:
                break
            await asyncio.sleep(0.01)

    try:
        uvloop.run(main())
    finally:
        eng.stop()
    assert len(seen) == 300
    assert eng.handler_errors >= 300
    assert "handler failed" in caplog.text and "OverflowError: a handler bug" in caplog.text
