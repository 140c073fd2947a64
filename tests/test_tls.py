"""TLS: loading, publication, rotation and termination, in process."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from servers import ThreadedServer, echo
from tlsharness import Router, fetch, run, wait_until

from bench.pki import CertAuthority, Issued, client_context, write
from router.engine import PRIO_HIGH, EventType, TlsMaterial, tls_load


def fp(issued: Issued) -> str:
    return issued.fingerprint


@pytest.fixture
def pki(tmp_path: Path) -> tuple[CertAuthority, Path]:
    ca = CertAuthority()
    write(tmp_path / "ca.pem", ca.pem)
    return ca, tmp_path


def install(d: Path, issued: Issued, cert: str = "cert.pem", key: str = "key.pem") -> None:
    write(d / cert, issued.cert_pem)
    write(d / key, issued.key_pem)


def files(d: Path) -> dict[str, object]:
    return {
        "certFile": str(d / "cert.pem"),
        "privateKeyFile": str(d / "key.pem"),
        "caCertFile": str(d / "ca.pem"),
    }


# ------------------------------------------------------------ native loader


def test_loader_checks_consistency(pki: tuple[CertAuthority, Path]) -> None:
    ca, d = pki
    a, b = ca.issue("a"), ca.issue("b")
    install(d, a)
    ok = tls_load(TlsMaterial(str(d / "cert.pem"), str(d / "key.pem"), str(d / "ca.pem")))
    assert ok.ok and ok.reads == 2 and len(ok.fingerprint) == 64
    assert ok.leaf_der and hashlib.sha256(ok.leaf_der).hexdigest() == a.fingerprint
    write(d / "key.pem", b.key_pem)
    bad = tls_load(TlsMaterial(str(d / "cert.pem"), str(d / "key.pem"), str(d / "ca.pem")))
    assert not bad.ok and f"privateKeyFile {d}/key.pem does not match certFile" in bad.error
    write(d / "cert.pem", b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    bad = tls_load(TlsMaterial(str(d / "cert.pem"), str(d / "key.pem"), None))
    assert not bad.ok and f"certFile {d}/cert.pem" in bad.error
    missing = tls_load(TlsMaterial(str(d / "nope.pem"), str(d / "key.pem"), None))
    assert "certFile" in missing.error and "No such file" in missing.error


def test_loader_unchanged_and_ca_reuse(pki: tuple[CertAuthority, Path]) -> None:
    ca, d = pki
    install(d, ca.issue("a"))
    m = TlsMaterial(str(d / "cert.pem"), str(d / "key.pem"), str(d / "ca.pem"))
    first = tls_load(m)
    same = tls_load(m, unchanged_if=first.fingerprint)
    assert same.unchanged and same.config is None
    install(d, ca.issue("b"))
    second = tls_load(m, previous=first.config, unchanged_if=first.fingerprint)
    assert second.ok and second.ca_reused and second.fingerprint != first.fingerprint


def test_loader_passwords_and_warnings(pki: tuple[CertAuthority, Path]) -> None:
    ca, d = pki
    install(d, ca.issue("p", password=b"s3cret"))
    m = TlsMaterial(str(d / "cert.pem"), str(d / "key.pem"), str(d / "ca.pem"), "s3cret")
    assert tls_load(m).ok
    wrong = tls_load(TlsMaterial(str(d / "cert.pem"), str(d / "key.pem"), None, "nope"))
    assert "cannot decrypt the key: wrong password" in wrong.error
    none = tls_load(TlsMaterial(str(d / "cert.pem"), str(d / "key.pem"), None))
    assert "no password given" in none.error
    other = CertAuthority("Other CA")
    install(d, other.issue("stranger", days=-2))
    warn = tls_load(TlsMaterial(str(d / "cert.pem"), str(d / "key.pem"), str(d / "ca.pem")))
    assert warn.ok and warn.expired and warn.untrusted  # published, with warnings
    assert "expired" in warn.warnings and "does not chain" in warn.warnings


# ------------------------------------------------------------ manager + relay


def test_listener_serves_tls_and_pins_version(pki: tuple[CertAuthority, Path]) -> None:
    ca, d = pki
    a, b = ca.issue("a"), ca.issue("b")
    install(d, a)
    srv = ThreadedServer(echo)
    ctx = client_context(d / "ca.pem")

    async def body(r: Router) -> None:
        r.profile("p", **files(d))
        r.relay("svc", srv.port, profile="p")
        await r.settle()
        port = r.port("svc")
        got = await asyncio.to_thread(fetch, port, ctx, b"x" * 100000)
        assert got == (fp(a), b"x" * 100000)
        st = r.status("p")
        assert st["version"] == 1 and st["reloads"] == 1 and st["lastError"] is None
        assert st["certSubject"] == "CN=a" and str(st["certNotAfter"]).startswith("20")
        # an open connection keeps version 1 across a rotation
        raw = await asyncio.to_thread(_open_tls, port, ctx)
        install(d, b)
        r.update_profile("p", ordinal=1)
        await r.settle()
        assert r.status("p")["version"] == 2
        assert (await asyncio.to_thread(fetch, port, ctx))[0] == fp(b)
        await wait_until(lambda: len(r.engine.connections()) == 1, what="fetch closed")
        assert [c.tls_version for c in r.engine.connections()] == [1]
        raw.sendall(b"old")
        assert raw.recv(3) == b"old"
        raw.close()

    run(body)
    srv.close()


def _open_tls(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    s.sendall(b"hi")
    assert s.recv(2) == b"hi"
    return s


def test_file_rewrites_are_picked_up_without_management(pki: tuple[CertAuthority, Path]) -> None:
    """One file at a time, same size with the old mtime, and invalid PEM."""
    ca, d = pki
    a = ca.issue("a")
    install(d, a)
    srv = ThreadedServer(echo)
    ctx = client_context(d / "ca.pem")

    async def body(r: Router) -> None:
        r.profile("p", **files(d))
        r.relay("svc", srv.port, profile="p")
        await r.settle()
        port = r.port("svc")
        # certificate first, key a moment later: the mismatched pair in between
        # must never be published, and no handshake may fail meanwhile
        b = ca.issue("b")
        stop = threading.Event()
        failures: list[BaseException] = []
        seen: set[str] = set()

        def hammer() -> None:
            while not stop.is_set():
                try:
                    seen.add(fetch(port, ctx)[0])
                except (OSError, ssl.SSLError) as e:
                    failures.append(e)

        t = threading.Thread(target=hammer)
        t.start()
        write(d / "cert.pem", b.cert_pem)
        await asyncio.sleep(0.3)
        assert r.status("p")["version"] == 1  # mismatched set not published
        assert "does not match" in str(r.status("p")["lastError"])
        write(d / "key.pem", b.key_pem)
        await wait_until(lambda: r.status("p")["version"] == 2, what="rotation to b")
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.to_thread(t.join)
        assert not failures, failures[:3]
        assert seen <= {fp(a), fp(b)} and fp(b) in seen
        assert r.status("p")["lastError"] is None

        # same sizes, modification time put back: content hash still sees it
        old_stat = os.stat(d / "cert.pem")
        for _ in range(200):
            c = ca.issue("b")
            if len(c.cert_pem) == len(b.cert_pem) and len(c.key_pem) == len(b.key_pem):
                break
        else:
            pytest.fail("could not make a same-size certificate")
        install(d, c)
        os.utime(d / "cert.pem", ns=(old_stat.st_atime_ns, old_stat.st_mtime_ns))
        os.utime(d / "key.pem", ns=(old_stat.st_atime_ns, old_stat.st_mtime_ns))
        await wait_until(lambda: r.status("p")["version"] == 3, what="same-size rewrite")
        assert (await asyncio.to_thread(fetch, port, ctx))[0] == fp(c)

        # invalid PEM: last good version stays, the error names the file
        write(d / "cert.pem", b"not a certificate\n")
        await wait_until(
            lambda: r.status("p")["reloadFailures"] != 1 and r.status("p")["lastError"] is not None,
            what="failure",
        )
        assert f"certFile {d}/cert.pem" in str(r.status("p")["lastError"])
        assert (await asyncio.to_thread(fetch, port, ctx))[0] == fp(c)
        # deleted file
        os.unlink(d / "cert.pem")
        await wait_until(lambda: "No such file" in str(r.status("p")["lastError"]), what="ENOENT")
        assert (await asyncio.to_thread(fetch, port, ctx))[0] == fp(c)
        assert r.status("p")["version"] == 3

    run(body)
    srv.close()


def test_kubernetes_data_symlink_swap(pki: tuple[CertAuthority, Path]) -> None:
    ca, d = pki
    a, b = ca.issue("a"), ca.issue("b")
    secret = d / "secret"
    secret.mkdir()
    (secret / "..2026_a").mkdir()
    install(secret / "..2026_a", a, "tls.crt", "tls.key")
    os.symlink("..2026_a", secret / "..data")
    os.symlink("..data/tls.crt", secret / "tls.crt")
    os.symlink("..data/tls.key", secret / "tls.key")
    srv = ThreadedServer(echo)
    ctx = client_context(d / "ca.pem")

    async def body(r: Router) -> None:
        r.profile(
            "p",
            certFile=str(secret / "tls.crt"),
            privateKeyFile=str(secret / "tls.key"),
            caCertFile=str(d / "ca.pem"),
        )
        r.relay("svc", srv.port, profile="p")
        await r.settle()
        port = r.port("svc")
        assert (await asyncio.to_thread(fetch, port, ctx))[0] == fp(a)
        (secret / "..2026_b").mkdir()
        install(secret / "..2026_b", b, "tls.crt", "tls.key")
        os.symlink("..2026_b", secret / "..data_tmp")
        os.rename(secret / "..data_tmp", secret / "..data")  # the atomic swap
        await wait_until(lambda: r.status("p")["version"] == 2, what="..data swap")
        assert (await asyncio.to_thread(fetch, port, ctx))[0] == fp(b)

    run(body)
    srv.close()


def test_password_sources(pki: tuple[CertAuthority, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    ca, d = pki
    install(d, ca.issue("p", password=b"pw-1"))
    (d / "pw").write_text("pw-1\n")
    monkeypatch.setenv("SKIFF_TEST_PW", "pw-1")

    async def body(r: Router) -> None:
        for i, spec in enumerate(["env:SKIFF_TEST_PW", f"file:{d}/pw", "pass:pw-1", "pw-1"]):
            r.profile(f"p{i}", password=spec, **files(d))
        r.profile("bad", password="env:SKIFF_NOT_SET", **files(d))
        r.profile("wrong", password="literal:nope", **files(d))
        await r.settle()
        for i in range(4):
            assert r.status(f"p{i}")["version"] == 1, r.status(f"p{i}")
        assert "SKIFF_NOT_SET is not set" in str(r.status("bad")["lastError"])
        assert "wrong password" in str(r.status("wrong")["lastError"])
        # the password never shows in status
        assert all("password" not in k for k in r.status("p0"))

    run(body)


def test_listener_stays_down_until_profile_loads(pki: tuple[CertAuthority, Path]) -> None:
    ca, d = pki
    srv = ThreadedServer(echo)

    async def body(r: Router) -> None:
        r.profile("p", **files(d))  # cert and key do not exist yet
        r.relay("svc", srv.port, profile="p")
        await r.settle()
        st = r.registry.read("tcpListener", "svc")
        assert st["operStatus"] == "down"
        assert r.tcp.listener_port("svc") is None
        assert "has not loaded" in str(r.tcp.listener_error("svc"))
        install(d, ca.issue("late"))
        r.update_profile("p", ordinal=1)
        await r.settle()
        assert r.registry.read("tcpListener", "svc")["operStatus"] == "up"
        assert (await asyncio.to_thread(fetch, r.port("svc"), client_context(d / "ca.pem")))[1]

    run(body)
    srv.close()


def test_oldest_valid_ordinal_closes_only_old_connections(pki: tuple[CertAuthority, Path]) -> None:
    ca, d = pki
    install(d, ca.issue("a"))
    srv = ThreadedServer(echo)
    ctx = client_context(d / "ca.pem")

    async def body(r: Router) -> None:
        r.profile("p", **files(d))
        r.relay("svc", srv.port, profile="p")
        await r.settle()
        port = r.port("svc")
        old = await asyncio.to_thread(_open_tls, port, ctx)
        install(d, ca.issue("b"))
        r.update_profile("p", ordinal=1)
        await r.settle()
        new = await asyncio.to_thread(_open_tls, port, ctx)
        ordinals = sorted(c.tls_ordinal for c in r.engine.connections())
        assert ordinals == [0, 1]
        r.update_profile("p", oldestValidOrdinal=1)
        await wait_until(lambda: len(r.engine.connections()) == 1, what="old flow closed")
        assert r.engine.connections()[0].tls_ordinal == 1
        new.sendall(b"ok")
        assert new.recv(2) == b"ok"
        old.settimeout(10)
        with pytest.raises((ssl.SSLError, OSError)):
            old.sendall(b"x")
            if not old.recv(1):
                raise ConnectionResetError("closed")
        new.close()
        old.close()
        assert r.engine.counters()["tls_closed_old"] == 1

    run(body)
    srv.close()


def test_authenticate_peer(pki: tuple[CertAuthority, Path]) -> None:
    ca, d = pki
    install(d, ca.issue("server"))
    client = ca.issue("client-1")
    write(d / "client.pem", client.cert_pem)
    write(d / "client.key", client.key_pem)
    srv = ThreadedServer(echo)

    async def body(r: Router) -> None:
        r.profile("p", **files(d))
        r.relay("svc", srv.port, profile="p", authenticate_peer=True)
        await r.settle()
        port = r.port("svc")
        with_cert = client_context(d / "ca.pem", d / "client.pem", d / "client.key")
        raw = await asyncio.to_thread(_open_tls, port, with_cert)
        subjects = [c.peer_subject for c in r.engine.connections()]
        assert subjects == ["/CN=client-1"]
        raw.close()
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.to_thread(fetch, port, client_context(d / "ca.pem"))

    run(body)
    srv.close()


def tls_backend(d: Path, issued: Issued) -> tuple[ThreadedServer, ssl.SSLContext]:
    """A TLS echo server presenting issued (for connector tests)."""
    write(d / "backend.pem", issued.cert_pem)
    write(d / "backend.key", issued.key_pem)
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(str(d / "backend.pem"), str(d / "backend.key"))

    def tls_echo(conn: socket.socket) -> None:
        with sctx.wrap_socket(conn, server_side=True) as t:
            while data := t.recv(65536):
                t.sendall(data)

    return ThreadedServer(tls_echo), sctx


def test_tls_connector_originates_and_verifies(pki: tuple[CertAuthority, Path]) -> None:
    """Plain client -> router -> TLS to a TLS echo server (verified by name)."""
    ca, d = pki
    server = ca.issue("backend", dns=("backend.test", "localhost"), ips=("127.0.0.1",))
    backend, sctx = tls_backend(d, server)
    seen_sni: list[str | None] = []
    sctx.sni_callback = lambda sock, name, c: seen_sni.append(name)  # type: ignore[assignment,misc,return-value]

    async def body(r: Router) -> None:
        r.profile("trust", caCertFile=str(d / "ca.pem"))
        r.relay("good", backend.port, connector_profile="trust", connector_host="localhost")
        r.relay("ip", backend.port, connector_profile="trust", connector_host="127.0.0.1")
        await r.settle()
        await r.tcp.settle()
        r.tcp.publish()
        for name in ("good", "ip"):
            c = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", r.port(name)), 20)
            await asyncio.to_thread(c.sendall, b"through tls")
            assert await asyncio.to_thread(c.recv, 100) == b"through tls"
            c.close()
        assert "localhost" in seen_sni  # SNI for DNS names
        assert r.engine.counters()["tls_handshakes"] >= 2

    run(body)
    backend.close()


def test_tls_connector_rejects_wrong_name(pki: tuple[CertAuthority, Path]) -> None:
    ca, d = pki
    backend, _ = tls_backend(d, ca.issue("backend", dns=("other.test",), ips=()))

    async def body(r: Router) -> None:
        r.profile("trust", caCertFile=str(d / "ca.pem"))
        r.relay("svc", backend.port, connector_profile="trust", connector_host="127.0.0.1")
        await r.settle()
        c = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", r.port("svc")), 20)
        c.settimeout(20)
        try:
            assert await asyncio.to_thread(c.recv, 10) == b""  # no target verified
        except ConnectionResetError:
            pass
        c.close()
        assert r.engine.counters()["tls_failures"] >= 1

    run(body)
    backend.close()


def test_fifo_load_never_blocks_workers_or_loop(pki: tuple[CertAuthority, Path]) -> None:
    """The certificate file is a FIFO: the loader's read blocks until the test
    writes it. Meanwhile relayed traffic, engine timers and registry reads go
    on; then the write completes the load."""
    ca, d = pki
    a = ca.issue("fifo")
    os.mkfifo(d / "cert.pem")
    write(d / "key.pem", a.key_pem)
    srv = ThreadedServer(echo)

    async def body(r: Router) -> None:
        r.relay("plain", srv.port)
        r.profile("p", **files(d))
        r.relay("svc", srv.port, profile="p")
        await asyncio.sleep(0.1)
        assert r.tls.profiles()["p"].loading  # the loader sits in read()
        fired = []
        r.engine.on_event(lambda ev: fired.append(ev) if ev.type == EventType.TIMER else None)
        timer = r.engine.timer_start(0.01, 0.01, PRIO_HIGH)
        for i in range(20):  # plain relay keeps working
            c = await asyncio.to_thread(
                socket.create_connection, ("127.0.0.1", r.port("plain")), 20
            )
            await asyncio.to_thread(c.sendall, b"%d" % i)
            assert await asyncio.to_thread(c.recv, 10) == b"%d" % i
            c.close()
        assert r.registry.read("sslProfile", "p")["version"] == 0  # loop answers
        await wait_until(lambda: len(fired) >= 10, what="timers during the blocked load")
        assert r.tls.profiles()["p"].loading
        t0 = time.monotonic()
        await asyncio.to_thread((d / "cert.pem").write_bytes, a.cert_pem)
        await r.settle()
        assert r.status("p")["version"] == 1, r.status("p")
        r.engine.timer_cancel(timer)
        got = await asyncio.to_thread(fetch, r.port("svc"), client_context(d / "ca.pem"))
        assert got[0] == fp(a)
        assert time.monotonic() - t0 >= 0  # (the load finished after the write)

    run(body)
    srv.close()


def test_storm_during_rotation_every_100ms(pki: tuple[CertAuthority, Path]) -> None:
    """200 concurrent short TLS connections while the certificate is rewritten
    every 100 ms: no failed handshake; after the last rotation settles, new
    connections present the new certificate."""
    ca, d = pki
    certs = [ca.issue(f"r{i}") for i in range(12)]
    install(d, certs[0])
    srv = ThreadedServer(echo)
    ctx = client_context(d / "ca.pem")

    async def body(r: Router) -> None:
        r.profile("p", **files(d))
        r.relay("svc", srv.port, profile="p")
        await r.settle()
        port = r.port("svc")
        stop = asyncio.Event()
        failures: list[BaseException] = []
        done = 0

        async def client() -> None:
            nonlocal done
            while not stop.is_set():
                try:
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
                    )
                    writer.write(b"hello")
                    assert await reader.readexactly(5) == b"hello"
                    writer.close()
                    done += 1
                except (OSError, ssl.SSLError, asyncio.IncompleteReadError, AssertionError) as e:
                    failures.append(e)

        tasks = [asyncio.create_task(client()) for _ in range(200)]
        for c in certs[1:]:
            await asyncio.sleep(0.1)
            # key first then cert: a mismatched pair exists for a moment
            write(d / "key.pem", c.key_pem)
            write(d / "cert.pem", c.cert_pem)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*tasks)
        assert not failures, f"{len(failures)} failures, first: {failures[0]!r}"
        assert done > 200
        await wait_until(
            lambda: r.status("p")["certSubject"] == "CN=r11", what="last rotation settled"
        )
        got = await asyncio.to_thread(fetch, port, ctx)
        assert got[0] == fp(certs[-1])
        assert r.engine.counters()["tls_failures"] == 0

    run(body)
    srv.close()


def test_intermediates_in_cert_file_are_served(tmp_path: Path) -> None:
    root = CertAuthority("Root CA")
    inter = CertAuthority("Intermediate CA", parent=root)
    leaf = inter.issue("leaf")
    write(tmp_path / "root.pem", root.pem)
    write(tmp_path / "cert.pem", leaf.cert_pem + inter.pem)  # leaf, then its issuer
    write(tmp_path / "key.pem", leaf.key_pem)
    srv = ThreadedServer(echo)

    async def body(r: Router) -> None:
        r.profile(
            "p", certFile=str(tmp_path / "cert.pem"), privateKeyFile=str(tmp_path / "key.pem")
        )
        r.relay("svc", srv.port, profile="p")
        await r.settle()
        # the client trusts only the root: the handshake needs the intermediate
        got = await asyncio.to_thread(fetch, r.port("svc"), client_context(tmp_path / "root.pem"))
        assert got == (fp(leaf), b"ping")

    run(body)
    srv.close()
