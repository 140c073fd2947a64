"""TLS: new certificate and key material never waits for a CA bundle (issue
13). The bundle is made slow to load by making it a FIFO that the test
writes only later: the loader's read blocks until then, as a parse of
thousands of CAs at SCHED_IDLE would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from servers import ThreadedServer, echo
from tlsharness import Router, fetch, run, wait_until

import router.tls as tls_module
from bench.pki import CertAuthority, ca_bundle, client_context, write
from router.engine import TlsMaterial, TlsNewer, tls_ca_cache_stats, tls_load, tls_load_store


@pytest.fixture
def pki(tmp_path: Path) -> tuple[CertAuthority, Path]:
    ca = CertAuthority()
    write(tmp_path / "ca.pem", ca.pem)
    return ca, tmp_path


def files(d: Path) -> dict[str, object]:
    return {
        "certFile": str(d / "cert.pem"),
        "privateKeyFile": str(d / "key.pem"),
        "caCertFile": str(d / "ca.pem"),
    }


def _release_fifo(path: Path, data: bytes) -> None:
    """Unblocks a loader still waiting on the FIFO (test teardown)."""
    with contextlib.suppress(OSError):
        if stat.S_ISFIFO(os.stat(path).st_mode):
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            with contextlib.suppress(OSError):
                os.write(fd, data)
            os.close(fd)


def _feed_fifo_then_replace(path: Path, data: bytes) -> None:
    """Writes the bundle to the blocked reader, then puts a regular file with
    the same bytes in the FIFO's place (a later load must not block)."""
    with open(path, "wb") as f:  # blocks until the loader opens it
        f.write(data)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_store_load_api(pki: tuple[CertAuthority, Path]) -> None:
    ca, d = pki
    a = ca.issue("a")
    write(d / "cert.pem", a.cert_pem)
    write(d / "key.pem", a.key_pem)
    full = tls_load(TlsMaterial(str(d / "cert.pem"), str(d / "key.pem"), str(d / "ca.pem")))
    assert full.ok and len(full.ca_fingerprint) == 64
    st = tls_load_store(str(d / "ca.pem"))
    assert st.ok and st.store is not None and st.certs == 1
    assert st.fingerprint == full.ca_fingerprint == st.store.fingerprint
    assert tls_load_store(str(d / "ca.pem"), unchanged_if=st.fingerprint).unchanged
    # with the store, the CA file is not read: same fingerprint as a full load
    with_store = tls_load(
        TlsMaterial(str(d / "cert.pem"), str(d / "key.pem"), str(d / "missing.pem")),
        store=st.store,
    )
    assert with_store.ok and with_store.fingerprint == full.fingerprint
    assert with_store.ca_fingerprint == st.fingerprint
    bad = tls_load_store(str(d / "key.pem"))
    assert not bad.ok and "no PEM certificate found" in bad.error


def test_rotation_published_while_bundle_load_blocked(pki: tuple[CertAuthority, Path]) -> None:
    """A cert/key rotation is published with the last good store while the
    changed bundle's load is blocked; when the bundle arrives, a config with
    the new store (and the current certificate) is published: a client whose
    certificate only the new bundle trusts gets in."""
    ca, d = pki
    a, b = ca.issue("a"), ca.issue("b")
    other = CertAuthority("Other CA")
    client = other.issue("client", dns=(), ips=())
    write(d / "client.pem", client.cert_pem)
    write(d / "client.key", client.key_pem)
    write(d / "cert.pem", a.cert_pem)
    write(d / "key.pem", a.key_pem)
    new_bundle = ca.pem + other.pem
    srv = ThreadedServer(echo)
    with_cert = client_context(d / "ca.pem", d / "client.pem", d / "client.key")

    async def body(r: Router) -> None:
        r.profile("p", **files(d))
        r.relay("svc", srv.port, profile="p", authenticate_peer=True)
        await r.settle()
        port = r.port("svc")
        entity = r.registry.get("sslProfile", "p")
        st = r.tls.profiles()["p"]
        first_ca = r.tls.status(entity)["caFingerprint"]
        assert r.status("p")["version"] == 1 and first_ca

        # the bundle becomes a FIFO nobody writes yet: its load blocks
        (d / "ca.pem").unlink()
        os.mkfifo(d / "ca.pem")
        r.tls.reload("p")
        await wait_until(lambda: st.ca_loading, what="the bundle load to start")
        # rotation: published with the last good store, bundle still blocked
        write(d / "key.pem", b.key_pem)
        write(d / "cert.pem", b.cert_pem)
        r.tls.reload("p")
        await wait_until(lambda: r.status("p")["certSubject"] == "CN=b", what="cert b published")
        assert st.ca_loading, "the rotation waited for the bundle"
        assert r.tls.status(entity)["caFingerprint"] == first_ca
        assert r.tls.status(entity)["caLoading"] is True
        # the client certificate from the other CA is not trusted yet
        with pytest.raises((ssl.SSLError, OSError)):
            await asyncio.to_thread(fetch, port, with_cert)
        version = r.status("p")["version"]

        # the bundle arrives: the new store goes out with certificate b
        await asyncio.to_thread(_feed_fifo_then_replace, d / "ca.pem", new_bundle)
        await wait_until(
            lambda: r.tls.status(entity)["caFingerprint"] not in (None, first_ca),
            what="the new store published",
        )
        await r.settle()
        s = r.status("p")
        assert s["certSubject"] == "CN=b" and s["lastError"] is None
        assert int(str(s["version"])) > int(str(version))
        expect = tls_load_store(str(d / "ca.pem")).fingerprint
        assert r.tls.status(entity)["caFingerprint"] == expect
        assert r.tls.status(entity)["caLoading"] is False
        got = await asyncio.to_thread(fetch, port, with_cert)
        assert got[0] == b.fingerprint

    try:
        run(body)
    finally:
        _release_fifo(d / "ca.pem", new_bundle)
        srv.close()


def test_bad_bundle_keeps_last_store_and_rotations_go_on(
    pki: tuple[CertAuthority, Path],
) -> None:
    ca, d = pki
    a, b = ca.issue("a"), ca.issue("b")
    write(d / "cert.pem", a.cert_pem)
    write(d / "key.pem", a.key_pem)
    srv = ThreadedServer(echo)

    async def body(r: Router) -> None:
        r.profile("p", **files(d))
        r.relay("svc", srv.port, profile="p")
        await r.settle()
        entity = r.registry.get("sslProfile", "p")
        first_ca = r.tls.status(entity)["caFingerprint"]
        good_ca = (d / "ca.pem").read_bytes()
        write(d / "ca.pem", b"not a bundle\n")
        r.tls.reload("p")
        await r.settle()
        assert "caCertFile" in str(r.status("p")["lastError"])
        assert r.status("p")["version"] == 1
        write(d / "key.pem", b.key_pem)
        write(d / "cert.pem", b.cert_pem)
        r.tls.reload("p")
        await r.settle()
        s = r.status("p")
        assert s["certSubject"] == "CN=b" and s["version"] == 2
        assert r.tls.status(entity)["caFingerprint"] == first_ca  # the last good store
        assert "caCertFile" in str(s["lastError"])  # the bundle is still bad
        got = await asyncio.to_thread(fetch, r.port("svc"), client_context(d / "ca.pem.good"))
        assert got[0] == b.fingerprint
        write(d / "ca.pem", good_ca)
        r.tls.reload("p")
        await r.settle()
        assert r.status("p")["lastError"] is None
        assert r.status("p")["version"] == 2  # same bytes: the same store, nothing new

    write(d / "ca.pem.good", (d / "ca.pem").read_bytes())
    try:
        run(body)
    finally:
        srv.close()


def test_first_load_waits_for_the_store(pki: tuple[CertAuthority, Path]) -> None:
    """Nothing goes out before the profile's first trust store is loaded."""
    ca, d = pki
    a = ca.issue("a")
    write(d / "cert.pem", a.cert_pem)
    write(d / "key.pem", a.key_pem)
    bundle = (d / "ca.pem").read_bytes()
    (d / "ca.pem").unlink()
    os.mkfifo(d / "ca.pem")
    srv = ThreadedServer(echo)

    async def body(r: Router) -> None:
        r.profile("p", **files(d))
        r.relay("svc", srv.port, profile="p")
        st = r.tls.profiles()["p"]
        await wait_until(lambda: st.ca_loading, what="the bundle load to start")
        await asyncio.sleep(0.2)
        assert r.status("p")["version"] == 0 and not st.loading
        await asyncio.to_thread(_feed_fifo_then_replace, d / "ca.pem", bundle)
        await r.settle()
        assert r.status("p")["version"] == 1
        got = await asyncio.to_thread(fetch, r.port("svc"), client_context(d / "ca.pem"))
        assert got[0] == a.fingerprint

    try:
        run(body)
    finally:
        _release_fifo(d / "ca.pem", bundle)
        srv.close()


def test_the_trust_store_in_force_is_shown_by_read(tmp_path: Path) -> None:
    ca = CertAuthority()
    issued = ca.issue("shown")
    write(tmp_path / "cert.pem", issued.cert_pem)
    write(tmp_path / "key.pem", issued.key_pem)
    write(tmp_path / "ca.pem", ca.pem)

    async def body(r: Router) -> None:
        r.profile(
            "p",
            certFile=str(tmp_path / "cert.pem"),
            privateKeyFile=str(tmp_path / "key.pem"),
            caCertFile=str(tmp_path / "ca.pem"),
        )
        await r.settle()
        status = r.status("p")
        first = str(status["caFingerprint"])
        assert len(first) == 64 and int(first, 16) >= 0
        assert status["caLoading"] is False
        write(tmp_path / "ca.pem", ca.pem + CertAuthority().pem)  # a second CA
        r.tls.reload("p", force=True)
        await wait_until(
            lambda: r.status("p")["caFingerprint"] not in (first, None)
            and r.status("p")["caLoading"] is False,
            what="the new bundle in force",
        )

    run(body)


def test_rewrite_parses_only_the_changed_certificate(tmp_path: Path) -> None:
    """The engine keeps each certificate a live store uses: loading the same
    bundle again parses nothing, a rewrite with one new CA parses that one."""
    cas = ca_bundle(50, tag="cache")
    extra = ca_bundle(1, tag="cache-extra")[0]
    path = tmp_path / "bundle.pem"
    write(path, b"".join(cas))
    first = tls_load_store(str(path))
    assert first.ok and first.certs == 50 and first.parsed == 50
    again = tls_load_store(str(path))
    assert again.ok and again.parsed == 0 and again.fingerprint == first.fingerprint
    write(path, b"".join(cas[:25]) + extra + b"".join(cas[26:]))
    changed = tls_load_store(str(path))
    assert changed.ok and changed.certs == 50 and changed.parsed == 1
    assert changed.fingerprint != first.fingerprint
    assert tls_ca_cache_stats().entries >= 51
    for r in (first, again, changed):
        assert r.store is not None
        r.store.free()
    # nothing holds them now: a load parses them again
    write(path, b"".join(cas))
    cold = tls_load_store(str(path))
    assert cold.ok and cold.parsed == 50
    assert cold.store is not None
    cold.store.free()


def test_malformed_certificate_named_by_position_and_line(tmp_path: Path) -> None:
    cas = ca_bundle(2, tag="malformed")
    bad = b"-----BEGIN CERTIFICATE-----\nMIIB%%%%\n-----END CERTIFICATE-----\n"
    path = tmp_path / "bundle.pem"
    write(path, cas[0] + cas[1] + bad)
    line = (cas[0] + cas[1]).count(b"\n") + 1
    r = tls_load_store(str(path))
    assert not r.ok and r.store is None
    assert f"caCertFile {path}: certificate 3 (line {line}): bad base64" in r.error


class _Gate:
    """Wraps the bundle loader: once armed, the next load waits for open
    before it reads anything (a parse that is slow to start)."""

    def __init__(self, real: Callable[..., object]) -> None:
        self.real = real
        self.armed = False
        self.open = threading.Event()
        self.newers: list[TlsNewer | None] = []

    def __call__(
        self, material: TlsMaterial, unchanged_if: str | None, newer: TlsNewer | None, *rest: object
    ) -> object:
        if self.armed:
            self.armed = False
            self.newers.append(newer)
            self.open.wait(30)
        return self.real(material, unchanged_if, newer, *rest)


def _distinct(values: list[str | None]) -> list[str | None]:
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def test_trigger_during_bundle_load_raises_it_and_the_newest_wins(
    pki: tuple[CertAuthority, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trigger while the profile's bundle load runs raises that load's
    TlsNewer; the bundle in force at the end is the newest, and stores go
    out in the order of their writes (a bundle replaced before its load read
    it is never published)."""
    ca, d = pki
    a = ca.issue("a")
    write(d / "cert.pem", a.cert_pem)
    write(d / "key.pem", a.key_pem)
    gate = _Gate(tls_module._load_store_blocking)
    monkeypatch.setattr(tls_module, "_load_store_blocking", gate)

    async def body(r: Router) -> None:
        r.profile("p", **files(d))
        st = r.tls.profiles()["p"]
        published: list[str | None] = []
        r.tls.on_published(lambda name: published.append(st.ca_in_force))
        await r.settle()
        x = st.ca_in_force
        assert x is not None
        gate.armed = True
        write(d / "ca.pem", ca.pem + CertAuthority("Y CA").pem)
        r.tls.reload("p")
        await wait_until(lambda: bool(gate.newers), what="the bundle load to start")
        assert st.ca_loading
        write(d / "ca.pem", ca.pem + CertAuthority("Z CA").pem)
        r.tls.reload("p")
        newer = gate.newers[0]
        assert newer is not None and newer.raised >= 1 and st.ca_dirty
        gate.open.set()
        await r.settle()
        z = tls_load_store(str(d / "ca.pem")).fingerprint
        assert st.ca_in_force == z and st.ca_newer is None
        assert _distinct(published) == [x, z]

    try:
        run(body)
    finally:
        gate.open.set()


def test_newer_bundle_not_overtaken_by_a_running_parse(pki: tuple[CertAuthority, Path]) -> None:
    """A large bundle's parse is running when a smaller one is written: the
    newer bundle ends in force, nothing older is published after it, and when
    the running load took the newer bytes over (restarts) the large bundle
    is never published at all."""
    ca, d = pki
    a = ca.issue("a")
    write(d / "cert.pem", a.cert_pem)
    write(d / "key.pem", a.key_pem)
    big = ca.pem + b"".join(ca_bundle(1500, tag="overtaken"))

    async def body(r: Router) -> None:
        r.profile("p", **files(d))
        st = r.tls.profiles()["p"]
        published: list[str | None] = []
        r.tls.on_published(lambda name: published.append(st.ca_in_force))
        await r.settle()
        x = st.ca_in_force
        parsed = tls_ca_cache_stats().parsed
        write(d / "ca.pem", big)
        r.tls.reload("p")
        await wait_until(
            lambda: tls_ca_cache_stats().parsed > parsed or not st.busy,
            what="the large bundle's parse to start",
        )
        write(d / "ca.pem", ca.pem + CertAuthority("Newer CA").pem)
        r.tls.reload("p")
        await r.settle()
        newest = tls_load_store(str(d / "ca.pem")).fingerprint
        seen = _distinct(published)
        assert seen[0] == x and seen[-1] == newest and seen.count(newest) == 1
        assert len(seen) <= 3  # x, perhaps the large bundle, the newest
        if st.ca_restarts:
            assert seen == [x, newest]
        # no certificate of the large bundle was parsed twice
        assert tls_ca_cache_stats().parsed - parsed <= 1500 + 2

    run(body)
