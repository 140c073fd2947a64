"""End-to-end relay through the engine on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop
from servers import (
    ThreadedServer,
    exchange,
    exchange_server,
    recv_all,
    recv_exact,
    refusing_port,
    seeded_bytes,
    tagged,
    wait_for,
)

from router.engine import (
    Engine,
    EngineOptions,
    Event,
    EventType,
    Listener,
    RouteTarget,
    Target,
)


@pytest.fixture(params=["splice", "copy"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """Every relay test runs with splice(2) (the default) and with the copy path."""
    pipes = None if request.param == "splice" else 0
    eng = Engine(
        EngineOptions(
            worker_threads=2, connect_timeout_ms=2000, backoff_initial_ms=200, splice_pipes=pipes
        )
    )
    yield eng
    eng.stop()


def wait_event(engine: Engine, kind: EventType, ident: int | None = None) -> list[Event]:
    """Drains engine events until one of kind (and id) arrives; returns all seen."""
    seen: list[Event] = []

    def found() -> bool:
        seen.extend(engine.drain())
        return any(e.type == kind and (ident is None or e.id == ident) for e in seen)

    wait_for(found, what=f"event {kind.name}")
    return seen


def relay_to(
    engine: Engine, port: int, host: str = "127.0.0.1"
) -> tuple[int, tuple[Target, Listener]]:
    target = engine.target()
    engine.publish_routes({0: [RouteTarget(target, host, port)]})
    listener = engine.listen("127.0.0.1", 0, address_id=0)
    return listener.port, (target, listener)


async def _exchange_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readexactly(12)
    size, seed = struct.unpack("!QI", head)
    h = hashlib.sha256()
    while data := await reader.read(65536):
        h.update(data)
    writer.write(h.digest() + seeded_bytes(seed, size))
    await writer.drain()
    writer.close()


async def _client(port: int, seed: int) -> None:
    rnd = random.Random(seed)
    up = rnd.randbytes(rnd.randrange(0, 32768))
    down_size = rnd.randrange(0, 32768)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(struct.pack("!QI", down_size, seed) + up)
    await writer.drain()
    writer.write_eof()
    digest = await reader.readexactly(32)
    body = await reader.read(-1)
    writer.close()
    assert digest == hashlib.sha256(up).digest(), f"client {seed}: upload corrupted"
    assert body == seeded_bytes(seed, down_size), f"client {seed}: download corrupted"


def test_thousand_concurrent_flows_are_byte_exact(engine: Engine) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_exchange_server, "127.0.0.1", 0, backlog=2048)
        port = server.sockets[0].getsockname()[1]
        lport, _keep = relay_to(engine, port)
        results = await asyncio.gather(
            *(_client(lport, seed) for seed in range(1000)), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        server.close()
        assert not failures, f"{len(failures)} of 1000 flows failed, first: {failures[0]!r}"

    uvloop.run(main())
    wait_for(lambda: engine.counters()["conns_live"] == 0, what="all flows closed")
    assert engine.counters()["accepted"] == 1000


def test_large_transfer_both_directions(engine: Engine) -> None:
    srv = ThreadedServer(exchange_server)
    lport, _keep = relay_to(engine, srv.port)
    up = os.urandom(20 << 20)
    c = socket.create_connection(("127.0.0.1", lport))
    down_size = 20 << 20
    digest, body = exchange(c, up, down_size, 7)
    c.close()
    srv.close()
    assert digest == hashlib.sha256(up).digest()
    assert body == seeded_bytes(7, down_size)


def test_a_worker_with_only_bulk_flows_gives_them_long_turns(engine: Engine) -> None:
    """A worker that served nothing but splicing flows for 10 ms lets a
    bulk direction move up to 4 MiB per turn instead of 256 KiB (each turn
    ends a burst, and each burst wakes both peers): bulk_turns counts the
    turns that went past 256 KiB. The copy path never takes one. Bytes stay
    exact either way."""
    size = 96 << 20
    srv = ThreadedServer(exchange_server)
    lport, _keep = relay_to(engine, srv.port)
    before = engine.counters()["bulk_turns"]
    c = socket.create_connection(("127.0.0.1", lport))
    digest, body = exchange(c, b"", size, 11)
    c.close()
    srv.close()
    assert digest == hashlib.sha256(b"").digest()
    assert len(body) == size and body == seeded_bytes(11, size)
    turns = engine.counters()["bulk_turns"] - before
    if engine.options.splice_pipes == 0:
        assert turns == 0
    else:
        assert turns > 0, "a bulk flow alone on its worker never got a long turn"


@pytest.mark.parametrize("pipes", [None, 0], ids=["splice", "copy"])
def test_short_flows_are_served_between_bulk_turns(
    echo_server: ThreadedServer, pipes: int | None
) -> None:
    """On a worker busy with bulk flows, what arrives for short flows is served
    between two bulk turns (served_between), not after the whole round; the
    short echoes and the bulk bytes stay exact. With the copy path nothing is
    bulk, so nothing is served that way."""
    eng = Engine(EngineOptions(worker_threads=1, splice_pipes=pipes))
    srv = ThreadedServer(exchange_server)
    try:
        bulk_port, _keep = relay_to(eng, srv.port)
        eng.publish_routes(
            {
                0: [RouteTarget(eng.target(), "127.0.0.1", srv.port)],
                1: [RouteTarget(eng.target(), "127.0.0.1", echo_server.port)],
            }
        )
        echo_port = eng.listen("127.0.0.1", 0, address_id=1).port
        size = 128 << 20
        result: list[tuple[bytes, bytes]] = []
        c = socket.create_connection(("127.0.0.1", bulk_port))
        t = threading.Thread(target=lambda: result.append(exchange(c, b"", size, 5)))
        t.start()
        echoed = 0
        while t.is_alive() and echoed < 2000:
            with socket.create_connection(("127.0.0.1", echo_port)) as s:
                s.sendall(b"e" * 64)
                assert recv_exact(s, 64) == b"e" * 64
            echoed += 1
        t.join()
        c.close()
        digest, body = result[0]
        assert digest == hashlib.sha256(b"").digest()
        assert len(body) == size and body == seeded_bytes(5, size)
        served = eng.counters()["served_between"]
        if pipes == 0:
            assert served == 0
        else:
            assert echoed > 0 and served > 0, (echoed, served)
    finally:
        srv.close()
        eng.stop()


def test_half_close_client_first(engine: Engine, echo_server: ThreadedServer) -> None:
    """EOF from the client reaches the server; the server's reply still flows."""
    lport, _keep = relay_to(engine, echo_server.port)
    c = socket.create_connection(("127.0.0.1", lport))
    c.sendall(b"x" * 100000)
    c.shutdown(socket.SHUT_WR)
    assert recv_all(c) == b"x" * 100000  # echo server replies, then closes on our EOF
    c.close()


def test_half_close_server_first(engine: Engine) -> None:
    """The server closes its side first; the client can still send to it."""
    got: list[bytes] = []

    def handler(conn: socket.socket) -> None:
        conn.sendall(b"hello")
        conn.shutdown(socket.SHUT_WR)
        got.append(recv_all(conn))

    srv = ThreadedServer(handler)
    lport, _keep = relay_to(engine, srv.port)
    c = socket.create_connection(("127.0.0.1", lport))
    assert recv_all(c) == b"hello"  # EOF propagated to the client
    c.sendall(b"z" * 300000)  # the other direction keeps flowing
    c.shutdown(socket.SHUT_WR)
    c.close()
    wait_for(lambda: bool(got), what="server to read the client's data")
    srv.close()
    assert got[0] == b"z" * 300000


def test_slow_reader_bounded_memory_and_lossless(engine: Engine) -> None:
    size = 64 << 20
    srv = ThreadedServer(exchange_server)
    lport, _keep = relay_to(engine, srv.port)
    c = socket.create_connection(("127.0.0.1", lport))
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    c.sendall(struct.pack("!QI", size, 3))
    c.shutdown(socket.SHUT_WR)
    time.sleep(0.5)  # the client is not reading: the server fills every buffer
    ctr = engine.counters()
    # one buffer per direction at most, plus each worker's small free list
    assert ctr["buf_bytes_live"] <= (2 + 8 * engine.workers) * 65536, ctr
    assert ctr["pipes_in_use"] <= 2, ctr  # or one pipe per direction
    stats = engine.connections()
    assert len(stats) == 1 and stats[0].bytes_out < size  # backpressure holds it
    digest = recv_exact(c, 32)
    body = recv_all(c)
    c.close()
    srv.close()
    assert digest == hashlib.sha256(b"").digest()
    assert len(body) == size and body == seeded_bytes(3, size)


def test_an_idle_flow_holds_no_pipe_and_no_buffer(
    engine: Engine, echo_server: ThreadedServer
) -> None:
    """Pipes and buffers are held only while bytes wait (memory per idle flow)."""
    lport, _keep = relay_to(engine, echo_server.port)
    clients = [socket.create_connection(("127.0.0.1", lport)) for _ in range(20)]
    data = [os.urandom(300_000) for _ in clients]
    for c, d in zip(clients, data, strict=True):
        c.sendall(d)
    for c, d in zip(clients, data, strict=True):
        assert recv_exact(c, len(d)) == d
    wait_for(lambda: engine.counters()["pipes_in_use"] == 0, what="pipes back in the pool")
    ctr = engine.counters()
    assert len(engine.connections()) == 20
    # what is left is each worker's pool of empty pipes and spare buffers
    assert ctr["pipes_live"] <= 32 * engine.workers
    assert ctr["bufs_live"] <= 8 * engine.workers
    # a direction splices once it carried a buffer's worth (64 KiB)
    assert (ctr["pipes_live"] > 0) == (engine.options.splice_pipes != 0), ctr
    for c in clients:
        c.close()


def test_refused_target_is_skipped(engine: Engine, echo_server: ThreadedServer) -> None:
    dead_sock, dead_port = refusing_port()
    dead, live = engine.target(), engine.target()
    engine.publish_routes(
        {
            0: [
                RouteTarget(dead, "127.0.0.1", dead_port),
                RouteTarget(live, "127.0.0.1", echo_server.port),
            ]
        }
    )
    listener = engine.listen("127.0.0.1", 0)
    for i in range(20):
        c = socket.create_connection(("127.0.0.1", listener.port))
        c.sendall(b"ping%d" % i)
        c.shutdown(socket.SHUT_WR)
        assert recv_all(c) == b"ping%d" % i
        c.close()
    dead_sock.close()
    assert dead.stats().failed >= 1
    assert dead.down
    assert live.stats().opened == 20
    assert listener.stats().failed == 0
    wait_event(engine, EventType.TARGET_DOWN, dead.user_id)


def _blackhole(host: str) -> tuple[list[socket.socket], int]:
    """A listener whose accept queue is full: further SYNs are dropped, so a
    connect to it neither succeeds nor is refused."""
    s = socket.socket()
    s.bind((host, 0))
    s.listen(0)
    port = s.getsockname()[1]
    fillers = []
    for _ in range(4):
        f = socket.socket()
        f.setblocking(False)
        try:
            f.connect((host, port))
        except BlockingIOError:
            pass
        fillers.append(f)
    time.sleep(0.1)
    return [s, *fillers], port


def test_connect_timeout_retries_on_live_target(echo_server: ThreadedServer) -> None:
    eng = Engine(EngineOptions(worker_threads=2, connect_timeout_ms=300))
    try:
        socks, hole_port = _blackhole("127.0.0.2")
        slow, live = eng.target(), eng.target()
        eng.publish_routes(
            {
                0: [
                    RouteTarget(slow, "127.0.0.2", hole_port),
                    RouteTarget(live, "127.0.0.1", echo_server.port),
                ]
            }
        )
        listener = eng.listen("127.0.0.1", 0)
        for _ in range(4):
            c = socket.create_connection(("127.0.0.1", listener.port))
            c.settimeout(10)
            c.sendall(b"abc")
            c.shutdown(socket.SHUT_WR)
            assert recv_all(c) == b"abc"
            c.close()
        assert slow.stats().failed >= 1
        assert live.stats().opened == 4
        for s in socks:
            s.close()
    finally:
        eng.stop()


def test_all_targets_dead_closes_client(engine: Engine) -> None:
    s1, p1 = refusing_port()
    s2, p2 = refusing_port()
    t1, t2 = engine.target(), engine.target()
    engine.publish_routes({0: [RouteTarget(t1, "127.0.0.1", p1), RouteTarget(t2, "127.0.0.1", p2)]})
    listener = engine.listen("127.0.0.1", 0)
    c = socket.create_connection(("127.0.0.1", listener.port))
    c.settimeout(10)
    try:
        assert c.recv(10) == b""
    except ConnectionResetError:
        pass  # a reset is an equally prompt answer
    c.close()
    assert listener.stats().failed == 1
    assert engine.counters()["flows_failed"] == 1
    s1.close()
    s2.close()


def test_no_route_closes_client(engine: Engine) -> None:
    listener = engine.listen("127.0.0.1", 0, address_id=5)
    c = socket.create_connection(("127.0.0.1", listener.port))
    c.settimeout(10)
    assert c.recv(10) == b""
    c.close()
    wait_for(lambda: listener.stats().failed == 1, what="failure counted")


def test_route_swap_keeps_open_flows(engine: Engine) -> None:
    a = ThreadedServer(tagged(b"A"))
    b = ThreadedServer(tagged(b"B"))
    ta, tb = engine.target(), engine.target()
    engine.publish_routes({0: [RouteTarget(ta, "127.0.0.1", a.port)]})
    listener = engine.listen("127.0.0.1", 0)
    old = [socket.create_connection(("127.0.0.1", listener.port)) for _ in range(5)]
    for c in old:
        assert recv_exact(c, 1) == b"A"
    v = engine.publish_routes({0: [RouteTarget(tb, "127.0.0.1", b.port)]})
    assert v == 2
    new = [socket.create_connection(("127.0.0.1", listener.port)) for _ in range(5)]
    for c in new:
        assert recv_exact(c, 1) == b"B"
    for c in old:  # the old flows still reach A, byte-exact
        c.sendall(b"still-A")
        assert recv_exact(c, 7) == b"still-A"
    for c in old + new:
        c.close()
    a.close()
    b.close()


def test_balancing_fewest_open_connections(engine: Engine) -> None:
    servers = [ThreadedServer(tagged(bytes([65 + i]))) for i in range(3)]
    targets = [engine.target() for _ in servers]
    engine.publish_routes(
        {0: [RouteTarget(t, "127.0.0.1", s.port) for t, s in zip(targets, servers, strict=True)]}
    )
    listener = engine.listen("127.0.0.1", 0)
    conns = [socket.create_connection(("127.0.0.1", listener.port)) for _ in range(30)]
    tags = [recv_exact(c, 1) for c in conns]
    # held open at once, so fewest-open spreads them evenly; two workers
    # choosing at the same instant may both see the same counts, so one
    # target can be one ahead and another one behind
    counts = sorted(tags.count(t) for t in (b"A", b"B", b"C"))
    assert sum(counts) == 30 and counts[2] - counts[0] <= 2, counts
    for c in conns:
        c.close()
    for s in servers:
        s.close()


def test_stop_with_open_flows_frees_everything(echo_server: ThreadedServer) -> None:
    eng = Engine(EngineOptions(worker_threads=2))
    lport, _keep = relay_to(eng, echo_server.port)
    conns = [socket.create_connection(("127.0.0.1", lport)) for _ in range(50)]
    for c in conns:
        c.sendall(b"q" * 1000)
    for c in conns:
        assert recv_exact(c, 1000) == b"q" * 1000
    wait_for(lambda: eng.counters()["conns_live"] == 100, what="100 connections")
    eng.stop()
    assert eng.final_counters["conns_live"] == 0
    assert eng.final_counters["bufs_live"] == 0
    assert eng.final_counters["buf_bytes_live"] == 0
    for c in conns:
        c.settimeout(10)
        try:
            assert c.recv(10) == b""
        except ConnectionResetError:
            pass
        c.close()


def test_listener_close_while_flows_in_flight(engine: Engine, echo_server: ThreadedServer) -> None:
    lport, (_, listener) = relay_to(engine, echo_server.port)
    conns = [socket.create_connection(("127.0.0.1", lport)) for _ in range(10)]
    for c in conns:
        c.sendall(b"m")
        assert recv_exact(c, 1) == b"m"
    listener.close(drop_flows=False)
    wait_event(engine, EventType.LISTENER_CLOSED, listener.user_id)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", lport), timeout=5)
    for c in conns:  # flows survive a close without drop
        c.sendall(b"n")
        assert recv_exact(c, 1) == b"n"
    for c in conns:
        c.close()


def test_listener_close_with_drop_closes_flows(engine: Engine, echo_server: ThreadedServer) -> None:
    lport, (_, listener) = relay_to(engine, echo_server.port)
    conns = [socket.create_connection(("127.0.0.1", lport)) for _ in range(10)]
    for c in conns:
        c.sendall(b"m")
        assert recv_exact(c, 1) == b"m"
    listener.close(drop_flows=True)
    for c in conns:
        c.settimeout(10)
        assert c.recv(10) == b""
        c.close()
    wait_for(lambda: engine.counters()["conns_live"] == 0, what="flows dropped")


def test_close_target_flows(engine: Engine, echo_server: ThreadedServer) -> None:
    lport, (target, _) = relay_to(engine, echo_server.port)
    conns = [socket.create_connection(("127.0.0.1", lport)) for _ in range(6)]
    for c in conns:
        c.sendall(b"m")
        assert recv_exact(c, 1) == b"m"
    req = engine.close_target_flows(target)
    for c in conns:
        c.settimeout(10)
        assert c.recv(10) == b""
        c.close()
    wait_event(engine, EventType.CLOSE_DONE, req)


def test_max_connections_limit(engine: Engine, echo_server: ThreadedServer) -> None:
    target = engine.target()
    engine.publish_routes({0: [RouteTarget(target, "127.0.0.1", echo_server.port)]})
    listener = engine.listen("127.0.0.1", 0, max_connections=2)
    held = [socket.create_connection(("127.0.0.1", listener.port)) for _ in range(2)]
    for c in held:
        c.sendall(b"x")
        assert recv_exact(c, 1) == b"x"
    extra = socket.create_connection(("127.0.0.1", listener.port))
    extra.settimeout(10)
    try:
        assert extra.recv(1) == b""
    except ConnectionResetError:
        pass
    extra.close()
    assert engine.counters()["limit_rejected"] == 1
    for c in held:
        c.close()


def test_connection_listing(engine: Engine, echo_server: ThreadedServer) -> None:
    lport, (target, listener) = relay_to(engine, echo_server.port)
    c = socket.create_connection(("127.0.0.1", lport))
    c.sendall(b"12345")
    assert recv_exact(c, 5) == b"12345"
    # the worker counts a send after it returned: the echo may arrive first
    wait_for(
        lambda: [(r.bytes_in, r.bytes_out) for r in engine.connections()] == [(5, 5)],
        what="the flow's bytes counted",
    )
    rows = engine.connections()
    assert len(rows) == 1
    row = rows[0]
    assert row.peer == f"127.0.0.1:{c.getsockname()[1]}"
    assert row.target == f"127.0.0.1:{echo_server.port}"
    assert row.listener_id == listener.user_id
    assert row.target_id == target.user_id
    assert (row.bytes_in, row.bytes_out) == (5, 5)
    assert row.tls_version == 0
    c.close()


def test_reset_on_one_side_resets_the_other(engine: Engine) -> None:
    got_reset: list[bool] = []

    def handler(conn: socket.socket) -> None:
        conn.sendall(b"ready")
        try:
            while conn.recv(65536):
                pass
            got_reset.append(False)  # a clean EOF: the reset was not propagated
        except ConnectionResetError:
            got_reset.append(True)

    srv = ThreadedServer(handler)
    lport, _keep = relay_to(engine, srv.port)
    c = socket.create_connection(("127.0.0.1", lport))
    assert recv_exact(c, 5) == b"ready"
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # RST
    wait_for(lambda: bool(got_reset), what="the server side to end")
    srv.close()
    assert got_reset == [True]


def test_out_of_descriptors_pauses_accepting(tmp_path: Path, echo_server: ThreadedServer) -> None:
    """With the descriptor limit reached, accept() fails with EMFILE: the
    engine pauses that listener with back-off (counted, reported) instead of
    spinning, and accepts again once descriptors are free. The engine runs in
    a child process with a low limit; clients and echo server stay here."""
    script = tmp_path / "emfile.py"
    script.write_text(
        textwrap.dedent(
            """
            import resource, sys, time
            from router.engine import Engine, EngineOptions, EventType, RouteTarget
            resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
            eng = Engine(EngineOptions(worker_threads=1))
            t = eng.target()
            eng.publish_routes({0: [RouteTarget(t, "127.0.0.1", int(sys.argv[1]))]})
            lst = eng.listen("127.0.0.1", 0)
            print(lst.port, flush=True)
            deadline = time.monotonic() + 60
            while not any(e.type == EventType.ACCEPT_PAUSED for e in eng.drain()):
                assert time.monotonic() < deadline, "never paused"
                time.sleep(0.01)
            print("PAUSED", eng.counters()["accept_paused"], flush=True)
            sys.stdin.readline()  # the clients are gone
            print("STOP", eng.counters()["accept_paused"], flush=True)
            sys.stdin.readline()
            eng.stop()
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), str(echo_server.port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        port = int(proc.stdout.readline())
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        paused = proc.stdout.readline()
        assert paused.startswith("PAUSED "), paused
        for c in held:
            c.close()
        # descriptors are free again once the workers have closed the pairs
        # (asynchronously): the listener resumes after its back-off. A client
        # that arrives before every descriptor is back is reset (out of
        # descriptors for its outbound connect), so a few are allowed to try;
        # the reset shows as ECONNRESET, or EPIPE when it beat the send, or
        # an end of stream when it beat the receive
        for attempt in range(50):
            c = socket.create_connection(("127.0.0.1", port), timeout=20)
            try:
                c.sendall(b"back")
                assert recv_exact(c, 4) == b"back"
                break
            except ConnectionError:
                assert attempt < 49, "the listener never served a client again"
                time.sleep(0.1)
            finally:
                c.close()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().startswith("STOP ")
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
