"""System tests: skiffd as a subprocess with a configuration file."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop
from daemon import (
    Skiffd,
    free_port,
    listening,
    skiffd_conf,
    tcp_connector,
    tcp_listener,
    wait_listening,
)
from servers import (
    ThreadedServer,
    echo,
    exchange,
    exchange_server,
    recv_all,
    recv_exact,
    refusing_port,
    seeded_bytes,
    tagged,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def http_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "index.html").write_text("hello through skiff\n")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(port)
    yield port
    proc.terminate()
    proc.wait()


def test_curl_through_tcp_listener(tmp_path: Path, http_server: int) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (make test installs it)")
    port = free_port()
    d = Skiffd(tmp_path, skiffd_conf(tcp_listener(port), tcp_connector(http_server)))
    try:
        out = subprocess.run(
            [curl, "-sS", "--max-time", "20", f"http://127.0.0.1:{port}/index.html"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout == "hello through skiff\n"
    finally:
        assert d.stop() == 0


def test_large_transfers_byte_exact(tmp_path: Path) -> None:
    srv = ThreadedServer(exchange_server)
    port = free_port()
    d = Skiffd(tmp_path, skiffd_conf(tcp_listener(port), tcp_connector(srv.port)))
    try:
        size = 100 << 20
        up = seeded_bytes(11, size)
        c = socket.create_connection(("127.0.0.1", port))
        digest, body = exchange(c, up, size, 12)
        c.close()
        assert digest == hashlib.sha256(up).digest(), "100 MB upload corrupted"
        assert len(body) == size and body == seeded_bytes(12, size), "100 MB download corrupted"
    finally:
        srv.close()
        assert d.stop() == 0


def test_three_connectors_share_300_clients(tmp_path: Path) -> None:
    servers = [ThreadedServer(tagged(t)) for t in (b"A", b"B", b"C")]
    port = free_port()
    # 300 at once: a backlog above the default 50, or the kernel drops SYNs and
    # the test measures TCP retransmission timers instead of Skiff
    conf = skiffd_conf(tcp_listener(port, backlog=1024), *(tcp_connector(s.port) for s in servers))
    d = Skiffd(tmp_path, conf)

    async def client() -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        tag = await r.readexactly(1)
        w.write(b"x")
        assert await r.readexactly(1) == b"x"
        w.close()
        return tag

    async def main() -> list[bytes]:
        # bounded: a lost flow fails the test instead of hanging the suite
        return await asyncio.wait_for(asyncio.gather(*(client() for _ in range(300))), timeout=60)

    try:
        tags = uvloop.run(main())
        counts = {t: tags.count(t) for t in (b"A", b"B", b"C")}
        assert sum(counts.values()) == 300
        assert all(n > 0 for n in counts.values()), counts
    finally:
        for s in servers:
            s.close()
        assert d.stop() == 0


def test_dead_connector_skipped_without_client_failure(tmp_path: Path) -> None:
    live = ThreadedServer(echo)
    dead_sock, dead_port = refusing_port()
    port = free_port()
    d = Skiffd(
        tmp_path,
        skiffd_conf(tcp_listener(port), tcp_connector(dead_port), tcp_connector(live.port)),
    )
    try:
        for i in range(30):
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(b"n%d" % i)
            c.shutdown(socket.SHUT_WR)
            assert recv_all(c) == b"n%d" % i
            c.close()
        assert "is unreachable: Connection refused" in d.stderr()
    finally:
        dead_sock.close()
        live.close()
        assert d.stop() == 0


def test_listener_follows_connectors_across_sighup(tmp_path: Path) -> None:
    srv = ThreadedServer(echo)
    port = free_port()
    with_connector = skiffd_conf(tcp_listener(port), tcp_connector(srv.port))
    without = skiffd_conf(tcp_listener(port))
    d = Skiffd(tmp_path, with_connector)
    try:
        wait_listening(port)
        kept = socket.create_connection(("127.0.0.1", port))
        kept.sendall(b"1")
        assert recv_exact(kept, 1) == b"1"
        d.rewrite(without)
        d.reload("configuration reloaded")
        wait_listening(port, up=False)
        d.rewrite(with_connector)
        d.reload("configuration reloaded")
        wait_listening(port, up=True)
        c = socket.create_connection(("127.0.0.1", port))
        c.sendall(b"2")
        assert recv_exact(c, 1) == b"2"
        c.close()
        kept.close()
    finally:
        srv.close()
        assert d.stop() == 0


def test_sighup_keeps_unrelated_connections(tmp_path: Path) -> None:
    a, b = ThreadedServer(echo), ThreadedServer(echo)
    pa, pb = free_port(), free_port()
    first = skiffd_conf(tcp_listener(pa, "a"), tcp_connector(a.port, "a"))
    second = first + tcp_listener(pb, "b") + tcp_connector(b.port, "b")
    d = Skiffd(tmp_path, first)
    try:
        kept = socket.create_connection(("127.0.0.1", pa))
        kept.sendall(b"k")
        assert recv_exact(kept, 1) == b"k"
        d.rewrite(second)
        d.reload("configuration reloaded: 2 added")
        kept.sendall(b"still")
        assert recv_exact(kept, 5) == b"still"
        c = socket.create_connection(("127.0.0.1", pb))
        c.sendall(b"b")
        assert recv_exact(c, 1) == b"b"
        c.close()
        kept.close()
    finally:
        a.close()
        b.close()
        assert d.stop() == 0


def test_sighup_with_broken_file_keeps_configuration(tmp_path: Path) -> None:
    srv = ThreadedServer(echo)
    port = free_port()
    good = skiffd_conf(tcp_listener(port), tcp_connector(srv.port))
    d = Skiffd(tmp_path, good)
    try:
        d.rewrite(good + "tcpConnector {\n    host: 127.0.0.1\n    prot: 1\n}\n")
        d.reload("configuration rejected")
        assert "attribute 'prot' is unknown (did you mean 'port'?)" in d.stderr()
        assert listening(port)
        c = socket.create_connection(("127.0.0.1", port))
        c.sendall(b"ok")
        assert recv_exact(c, 2) == b"ok"
        c.close()
    finally:
        srv.close()
        assert d.stop() == 0


def test_sigterm_drains_open_connections(tmp_path: Path) -> None:
    srv = ThreadedServer(echo)
    port = free_port()
    d = Skiffd(
        tmp_path,
        skiffd_conf(
            tcp_listener(port), tcp_connector(srv.port), extra_router="    drainGraceSeconds: 20\n"
        ),
    )
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"a")
    assert recv_exact(c, 1) == b"a"
    d.signal(signal.SIGTERM)
    wait_listening(port, up=False)  # stops accepting at once
    c.sendall(b"drain")  # the open connection still works
    assert recv_exact(c, 5) == b"drain"
    c.close()  # last connection gone: skiffd exits without waiting the grace
    assert d.stop(timeout=15) == 0
    srv.close()
    assert "stopped" in d.stderr()


def test_sigterm_closes_after_grace(tmp_path: Path) -> None:
    srv = ThreadedServer(echo)
    port = free_port()
    d = Skiffd(
        tmp_path,
        skiffd_conf(
            tcp_listener(port), tcp_connector(srv.port), extra_router="    drainGraceSeconds: 1\n"
        ),
    )
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"a")
    assert recv_exact(c, 1) == b"a"
    assert d.stop() == 0
    c.settimeout(10)
    try:
        assert c.recv(1) == b""
    except ConnectionResetError:
        pass
    c.close()
    srv.close()
    assert "closing 2 connections still open" in d.stderr()


CONFIG_ERRORS = [
    ("tcpListener {\n    port: 1\n}\n", "bad.conf:1: tcpListener attribute 'address'"),
    ("tcpListner {\n    port: 1\n}\n", "bad.conf:1: unknown entity type 'tcpListner'"),
    ("tcpListener {\n    prot: 1\n}\n", "bad.conf:2: tcpListener attribute 'prot' is unknown"),
    ("router {\n    workerThreads: many\n}\n", "bad.conf:2: router attribute 'workerThreads'"),
    ("router {\n    mode: mesh\n}\n", "bad.conf:2: router attribute 'mode'"),
    ("tcpListener {\n    port: 1\n    address: a\n", "bad.conf:1"),
    ("}\n", "bad.conf:1"),
    ("just some words\n", "bad.conf:1"),
]


@pytest.mark.parametrize(("text", "message"), CONFIG_ERRORS)
def test_configuration_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.conf"
    path.write_text(text)
    for args in (["--check", "-c", str(path)], ["-c", str(path)]):
        out = subprocess.run(
            [sys.executable, "-m", "router", *args], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 1, out
        assert message in out.stderr.replace(str(tmp_path) + "/", ""), out.stderr


def test_missing_file_and_port_in_use(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "router", "-c", str(tmp_path / "nope.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "nope.conf" in out.stderr
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    path = tmp_path / "busy.conf"
    path.write_text(skiffd_conf(tcp_listener(port), tcp_connector(9)))
    out = subprocess.run(
        [sys.executable, "-m", "router", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    busy.close()
    assert out.returncode == 1
    assert f"cannot bind 127.0.0.1:{port}: Address already in use" in out.stderr


def test_readme_examples_pass_check(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```conf\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no ```conf examples"
    for i, block in enumerate(blocks):
        path = tmp_path / f"example{i}.conf"
        path.write_text(block)
        out = subprocess.run(
            [sys.executable, "-m", "router", "--check", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, (block, out.stderr)


def test_default_configuration_starts_and_stops(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "router"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("skiffd ") and "built-in default configuration" in first
    proc.send_signal(signal.SIGINT)
    rest = proc.stdout.read()  # the banner's other lines, then EOF at exit
    assert proc.wait(timeout=30) == 0
    assert "tcpListener {" in rest  # tells the user how to add a service
    # where management and metrics listen (or why not: a router already running
    # on this machine holds 5672/9090, which must not stop this one)
    assert "AMQP management listener 'management'" in rest
    assert "metrics listener 'metrics'" in rest
    if "management' on 127.0.0.1:5672" in rest:
        assert "skiff-manage create --type tcpConnector" in rest


def test_version_and_json_config(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "router", "--version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith("skiffd ")
    path = tmp_path / "c.json"
    path.write_text(
        '[["router", {"id": "j", "workerThreads": 2}],'
        ' ["tcpListener", {"port": "9000", "address": "a"}]]'
    )
    out = subprocess.run(
        [sys.executable, "-m", "router", "--check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


def test_removed_connector_drops_its_flows(tmp_path: Path) -> None:
    """dropTcpConnections (default true): removing a tcpConnector closes the
    flows it serves; flows of other connectors stay."""
    a, b = ThreadedServer(echo), ThreadedServer(echo)
    pa, pb = free_port(), free_port()
    both = skiffd_conf(
        tcp_listener(pa, "a"),
        tcp_connector(a.port, "a"),
        tcp_listener(pb, "b"),
        tcp_connector(b.port, "b"),
    )
    only_b = skiffd_conf(tcp_listener(pa, "a"), tcp_listener(pb, "b"), tcp_connector(b.port, "b"))
    d = Skiffd(tmp_path, both)
    try:
        ca = socket.create_connection(("127.0.0.1", pa))
        cb = socket.create_connection(("127.0.0.1", pb))
        for c in (ca, cb):
            c.sendall(b"1")
            assert recv_exact(c, 1) == b"1"
        d.rewrite(only_b)
        d.reload("configuration reloaded")
        ca.settimeout(20)
        try:
            assert ca.recv(1) == b""  # closed by the router
        except ConnectionResetError:
            pass
        cb.sendall(b"2")
        assert recv_exact(cb, 1) == b"2"
        ca.close()
        cb.close()
    finally:
        a.close()
        b.close()
        assert d.stop() == 0
