"""TLS against real peers: curl and openssl s_client through a TLS
tcpListener of skiffd, and a TLS tcpConnector to openssl s_server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Skiffd, free_port, skiffd_conf, wait_listening
from servers import ThreadedServer

from bench.pki import CertAuthority, write

OPENSSL = shutil.which("openssl")
CURL = shutil.which("curl")
needs_openssl = pytest.mark.skipif(
    OPENSSL is None, reason="openssl is not installed (make test installs it)"
)
needs_curl = pytest.mark.skipif(
    CURL is None, reason="curl is not installed (make test installs it)"
)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    ca = CertAuthority()
    write(tmp_path / "ca.pem", ca.pem)
    server = ca.issue("skiff-server", dns=("localhost",), ips=("127.0.0.1",))
    write(tmp_path / "server.pem", server.cert_pem)
    write(tmp_path / "server.key", server.key_pem)
    client = ca.issue("curl-client", dns=(), ips=())
    write(tmp_path / "client.pem", client.cert_pem)
    write(tmp_path / "client.key", client.key_pem)
    backend = ca.issue("backend", dns=("localhost",), ips=("127.0.0.1",))
    write(tmp_path / "backend.pem", backend.cert_pem)
    write(tmp_path / "backend.key", backend.key_pem)
    return tmp_path


def profile(name: str, d: Path, with_cert: bool = True) -> str:
    lines = [f"sslProfile {{\n    name: {name}\n    caCertFile: {d}/ca.pem\n"]
    if with_cert:
        lines.append(f"    certFile: {d}/server.pem\n    privateKeyFile: {d}/server.key\n")
    return "".join(lines) + "}\n"


@pytest.fixture
def http_backend(tmp_path: Path) -> Iterator[int]:
    (tmp_path / "hello.txt").write_text("hello over tls\n")
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


@needs_curl
def test_curl_with_client_certificate(pki: Path, http_backend: int) -> None:
    port = free_port()
    conf = skiffd_conf(
        profile("tls", pki),
        f"tcpListener {{\n    host: 127.0.0.1\n    port: {port}\n    address: web\n"
        "    sslProfile: tls\n    authenticatePeer: true\n}\n",
        f"tcpConnector {{\n    host: 127.0.0.1\n    port: {http_backend}\n    address: web\n}}\n",
    )
    d = Skiffd(pki, conf)
    try:
        assert CURL is not None
        url = f"https://localhost:{port}/hello.txt"
        ok = subprocess.run(
            [
                CURL,
                "-sS",
                "--max-time",
                "20",
                "--cacert",
                f"{pki}/ca.pem",
                "--cert",
                f"{pki}/client.pem",
                "--key",
                f"{pki}/client.key",
                url,
            ],
            capture_output=True,
            text=True,
        )
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout == "hello over tls\n"
        refused = subprocess.run(
            [CURL, "-sS", "--max-time", "20", "--cacert", f"{pki}/ca.pem", url],
            capture_output=True,
            text=True,
        )
        assert refused.returncode != 0  # no client certificate: handshake refused
    finally:
        assert d.stop() == 0


@needs_openssl
def test_openssl_s_client(pki: Path) -> None:
    def one_line(conn: socket.socket) -> None:
        line = b""
        while not line.endswith(b"\n"):
            data = conn.recv(100)
            if not data:
                break
            line += data
        conn.sendall(line)  # then close: s_client sees close_notify and exits

    backend = ThreadedServer(one_line)
    port = free_port()
    conf = skiffd_conf(
        profile("tls", pki),
        f"tcpListener {{\n    host: 127.0.0.1\n    port: {port}\n    address: e\n"
        "    sslProfile: tls\n}\n",
        f"tcpConnector {{\n    host: 127.0.0.1\n    port: {backend.port}\n    address: e\n}}\n",
    )
    d = Skiffd(pki, conf)
    try:
        assert OPENSSL is not None
        for proto in ("-tls1_2", "-tls1_3"):
            out = subprocess.run(
                [
                    OPENSSL,
                    "s_client",
                    "-connect",
                    f"127.0.0.1:{port}",
                    proto,
                    "-CAfile",
                    f"{pki}/ca.pem",
                    "-verify_return_error",
                    "-servername",
                    "localhost",
                    "-ign_eof",
                ],
                input="echo me\n",
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.returncode == 0, out.stderr
            assert "Verify return code: 0 (ok)" in out.stdout
            assert "subject=CN = skiff-server" in out.stdout
            assert "echo me" in out.stdout  # received back through the relay
    finally:
        backend.close()
        assert d.stop() == 0


@needs_openssl
def test_tls_connector_to_openssl_s_server(pki: Path) -> None:
    assert OPENSSL is not None
    sport = free_port()
    server = subprocess.Popen(
        [
            OPENSSL,
            "s_server",
            "-accept",
            f"127.0.0.1:{sport}",
            "-cert",
            f"{pki}/backend.pem",
            "-key",
            f"{pki}/backend.key",
            "-rev",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_port(sport)
        port = free_port()
        conf = skiffd_conf(
            profile("trust", pki, with_cert=False),
            f"tcpListener {{\n    host: 127.0.0.1\n    port: {port}\n    address: r\n}}\n",
            f"tcpConnector {{\n    host: localhost\n    port: {sport}\n    address: r\n"
            "    sslProfile: trust\n}\n",
        )
        d = Skiffd(pki, conf)
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=20)
            c.sendall(b"skiff\n")
            # s_server -rev answers with the line reversed
            got = b""
            while b"ffiks" not in got:
                data = c.recv(1024)
                assert data, f"closed early: {got!r}"
                got += data
            c.close()
        finally:
            assert d.stop() == 0
    finally:
        server.kill()
        server.wait()


@needs_openssl
def test_unexpected_eof_is_counted_and_other_direction_kept(pki: Path) -> None:
    """A TLS client that closes TCP without close_notify: counted, and bytes
    still flowing the other way are not dropped."""
    import ssl

    backend_got: list[bytes] = []

    def slow_reply(conn: socket.socket) -> None:
        data = conn.recv(100)
        time.sleep(0.2)
        conn.sendall(data.upper())
        rest = b""
        while more := conn.recv(100):
            rest += more
        backend_got.append(rest)

    backend = ThreadedServer(slow_reply)
    from tlsharness import Router, run

    async def body(r: Router) -> None:
        import asyncio

        r.profile(
            "tls",
            caCertFile=f"{pki}/ca.pem",
            certFile=f"{pki}/server.pem",
            privateKeyFile=f"{pki}/server.key",
        )
        r.relay("svc", backend.port, profile="tls")
        await r.settle()
        ctx = ssl.create_default_context(cafile=f"{pki}/ca.pem")

        def client() -> bytes:
            raw = socket.create_connection(("127.0.0.1", r.port("svc")), timeout=20)
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(b"abc")
            # TCP FIN through a duplicate descriptor: no close_notify is sent
            dup = socket.socket(fileno=os.dup(s.fileno()))
            dup.shutdown(socket.SHUT_WR)
            dup.close()
            got = s.recv(3)
            s.close()
            return got

        assert await asyncio.to_thread(client) == b"ABC"
        await asyncio.sleep(0.1)
        assert r.engine.counters()["tls_unexpected_eof"] == 1

    run(body)
    backend.close()


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} never listened")
