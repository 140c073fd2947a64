"""Certificates outside their validity dates are refused like broken ones:
the last good material stays and the profile says why (issue 14, finding 8)."""

from __future__ import annotations

from pathlib import Path

from servers import ThreadedServer
from tlsharness import Router, fetch, run

from bench.pki import CertAuthority, Issued, client_context, write


def _install(d: Path, issued: Issued) -> None:
    write(d / "cert.pem", issued.cert_pem)
    write(d / "key.pem", issued.key_pem)


def _files(d: Path) -> dict[str, object]:
    return {"certFile": str(d / "cert.pem"), "privateKeyFile": str(d / "key.pem")}


def test_an_expired_rotation_is_refused_and_the_last_good_stays(
    tmp_path: Path, echo_server: ThreadedServer
) -> None:
    ca = CertAuthority()
    write(tmp_path / "ca.pem", ca.pem)
    good = ca.issue("good")
    _install(tmp_path, good)

    async def body(r: Router) -> None:
        r.profile("p", **_files(tmp_path), checkIntervalSeconds=0)
        r.relay("svc", echo_server.port, profile="p")
        await r.settle()
        assert r.status("p")["version"] == 1
        _install(tmp_path, ca.issue("stale", days=-2))
        r.update_profile("p", ordinal=1)  # forces a load of the files as they are
        await r.settle()
        status = r.status("p")
        assert status["version"] == 1
        # the file watch may load the new files once more: each is refused
        assert status["datesRefused"] >= 1
        assert status["reloadFailures"] >= status["datesRefused"]  # a half-written pair too
        assert "has expired" in str(status["lastError"])
        ctx = client_context(tmp_path / "ca.pem")
        seen, echoed = await r.loop.run_in_executor(None, fetch, r.port("svc"), ctx)
        assert (seen, echoed) == (good.fingerprint, b"ping")

    run(body)


def test_an_expired_first_load_keeps_the_listener_down(
    tmp_path: Path, echo_server: ThreadedServer
) -> None:
    ca = CertAuthority()
    _install(tmp_path, ca.issue("stale", days=-2))

    async def body(r: Router) -> None:
        r.profile("p", **_files(tmp_path), checkIntervalSeconds=0)
        r.relay("svc", echo_server.port, profile="p")
        await r.settle()
        assert r.status("p")["version"] == 0
        assert r.tcp.listener_port("svc") is None
        assert "has expired" in str(r.status("p")["lastError"])

    run(body)


def test_invalid_dates_can_be_allowed_for_testing(
    tmp_path: Path, echo_server: ThreadedServer
) -> None:
    ca = CertAuthority()
    _install(tmp_path, ca.issue("stale", days=-2))

    async def body(r: Router) -> None:
        r.profile(
            "p", **_files(tmp_path), checkIntervalSeconds=0, allowInvalidCertificateDates=True
        )
        await r.settle()
        status = r.status("p")
        assert status["version"] == 1 and status["datesRefused"] == 0

    run(body)
