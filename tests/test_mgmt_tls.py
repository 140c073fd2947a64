"""Management over TLS against a running skiffd: listeners with an
sslProfile (required and optional TLS, client certificates), SASL EXTERNAL
and PLAIN over TLS with skiff-manage and skiff-stat, connection rows,
listeners waiting for their profile, /metrics and /readyz, and rotation by
management UPDATE of an sslProfile."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import Skiffd, free_port, skiffd_conf
from prometheus_client.parser import text_string_to_metric_families
from proton import ConnectionException, SSLDomain
from servers import wait_for

from bench.pki import CertAuthority, Issued, write
from router.management.sasl import hash_password
from router.tools.client import ManagementClient


def tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"router.tools.{name}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def listener(name: str, port: int, **attrs: object) -> str:
    body = "".join(f"    {k}: {v}\n" for k, v in attrs.items())
    return f"listener {{\n    name: {name}\n    host: 127.0.0.1\n    port: {port}\n{body}}}\n"


def ssl_profile(name: str, **attrs: object) -> str:
    body = "".join(f"    {k}: {v}\n" for k, v in attrs.items())
    return f"sslProfile {{\n    name: {name}\n{body}}}\n"


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ca = CertAuthority()
        self.ca_file = write(tmp / "ca.pem", self.ca.pem)
        self.server = self.ca.issue("skiff-server")
        self.cert = write(tmp / "server.pem", self.server.cert_pem)
        self.key = write(tmp / "server.key", self.server.key_pem)
        self.operator = self._client("operator")
        self.reader = self._client("reader")
        self.users = tmp / "users"
        self.users.write_text(
            f"ops:write:{hash_password('s3cret-ops', n=1024)}\n/CN=operator:write:external\n"
        )
        self.pwfile = write(tmp / "pw", b"s3cret-ops\n")
        self.late_dir = tmp / "late"
        self.late_dir.mkdir()
        self.ports = {
            n: free_port()
            for n in ("anon", "ext", "plain", "optional", "rot", "late", "metrics", "https")
        }
        p = self.ports
        tls_files = {"certFile": self.cert, "privateKeyFile": self.key, "caCertFile": self.ca_file}
        conf = skiffd_conf(
            ssl_profile("mgmt", **tls_files),
            ssl_profile("rot", **tls_files),
            ssl_profile(
                "late",
                certFile=self.late_dir / "server.pem",
                privateKeyFile=self.late_dir / "server.key",
                checkIntervalSeconds=1,
            ),
            listener("anon", p["anon"], allowAnonymousWrites="yes"),
            listener(
                "ext", p["ext"], sslProfile="mgmt", requireSsl="yes", authenticatePeer="yes",
                saslMechanisms="EXTERNAL PLAIN", usersFile=self.users,
            ),
            listener(
                "plain", p["plain"], sslProfile="mgmt", requireSsl="yes",
                saslMechanisms="ANONYMOUS PLAIN", usersFile=self.users,
            ),
            listener("optional", p["optional"], sslProfile="mgmt"),
            listener("rot", p["rot"], sslProfile="rot", requireSsl="yes"),
            listener("late", p["late"], sslProfile="late"),
            listener("metrics", p["metrics"], http="yes"),
            listener("https", p["https"], http="yes", sslProfile="mgmt", requireSsl="yes"),
        )  # fmt: skip
        self.d = Skiffd(tmp, conf)

    def _client(self, cn: str) -> tuple[Path, Path]:
        issued = self.ca.issue(cn)
        return (
            write(self.tmp / f"{cn}.pem", issued.cert_pem),
            write(self.tmp / f"{cn}.key", issued.key_pem),
        )

    def tls_args(self, who: tuple[Path, Path] | None = None) -> list[str]:
        args = ["--ssl-trustfile", str(self.ca_file)]
        if who is not None:
            args += ["--ssl-certificate", str(who[0]), "--ssl-key", str(who[1])]
        return args

    def bus(self, name: str) -> list[str]:
        return ["-b", f"localhost:{self.ports[name]}"]

    def anon(self, *args: str) -> subprocess.CompletedProcess[str]:
        return tool("manage", *self.bus("anon"), *args)

    def read(self, etype: str, name: str) -> dict[str, Any]:
        out = self.anon("read", "--type", etype, "--name", name)
        assert out.returncode == 0, out.stderr
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def http(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.ports['metrics']}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("mgmt-tls"))
    yield e
    assert e.d.stop() == 0


def server_fingerprint(env: Env, port: int, who: tuple[Path, Path] | None = None) -> str:
    """SHA-256 of the certificate the router presents on a port."""
    ctx = ssl.create_default_context(cafile=str(env.ca_file))
    if who is not None:
        ctx.load_cert_chain(str(who[0]), str(who[1]))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            der = s.getpeercert(binary_form=True)
            assert der is not None
            return hashlib.sha256(der).hexdigest()


def fingerprint(issued: Issued) -> str:
    return issued.fingerprint


def my_rows(env: Env, bus: str, extra: list[str]) -> list[dict[str, Any]]:
    out = tool("manage", *env.bus(bus), *extra, "query", "--type", "connection")
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return [r for r in rows if r["listener"] == bus]


def test_skiff_manage_over_tls_with_client_certificate_and_external(env: Env) -> None:
    extra = env.tls_args(env.operator)
    rows = my_rows(env, "ext", extra)
    assert len(rows) == 1, rows  # the tool's own connection
    row = rows[0]
    assert row["isEncrypted"] is True and row["sslProto"] == "TLSv1.3" and row["sslCipher"]
    assert row["sasl"] == "EXTERNAL" and row["user"] == "/CN=operator"
    assert row["isAuthenticated"] is True and row["tlsOrdinal"] == 0
    # the users file grants /CN=operator write access
    out = tool(
        "manage", *env.bus("ext"), *extra, "create", "--type", "tcpConnector",
        "--name", "ext-c", "host=127.0.0.1", "port=9", "address=ext-svc",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    out = tool("manage", *env.bus("ext"), *extra, "delete", "--type", "tcpConnector",
               "--name", "ext-c")  # fmt: skip
    assert out.returncode == 0, out.stderr
    # explicit mechanism and peer name verification against 'localhost'
    out = tool(
        "manage", "-b", f"localhost:{env.ports['ext']}", *extra, "--sasl-mechanisms",
        "EXTERNAL", "get-mgmt-nodes",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_skiff_stat_over_tls_with_client_certificate(env: Env) -> None:
    extra = env.tls_args(env.operator)
    out = tool("stat", *env.bus("ext"), *extra, "-c", "--csv")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("id,host,container,role,dir,security")
    assert any(",yes,yes,/CN=operator,EXTERNAL," in line for line in lines[1:]), out.stdout
    out = tool("stat", *env.bus("ext"), *extra, "--tls")
    assert out.returncode == 0, out.stderr
    assert "TLS Profiles" in out.stdout
    text = out.stdout
    for name in ("mgmt", "rot", "late"):
        assert f"\n{name} " in text, text
    out = tool("stat", *env.bus("ext"), *extra, "--tls", "--csv")
    rows = [line.split(",") for line in out.stdout.splitlines()]
    heads = rows[0]
    by_name = {r[0]: dict(zip(heads, r, strict=False)) for r in rows[1:]}
    mgmt = by_name["mgmt"]
    assert int(mgmt["version"]) >= 1 and mgmt["ordinal"] == "0"
    assert mgmt["fingerprint"] and mgmt["not after"] and mgmt["expires in"].startswith("2")
    assert mgmt["subject"] == "CN=skiff-server" and mgmt["last error"] == ""


def test_skiff_manage_and_stat_over_tls_with_sasl_plain(env: Env) -> None:
    extra = [
        *env.tls_args(), "--sasl-mechanisms", "PLAIN", "--sasl-username", "ops",
        "--sasl-password-file", str(env.pwfile),
    ]  # fmt: skip
    rows = my_rows(env, "plain", extra)
    assert len(rows) == 1, rows
    assert rows[0]["isEncrypted"] is True and rows[0]["sasl"] == "PLAIN"
    assert rows[0]["user"] == "ops"
    out = tool(
        "manage", *env.bus("plain"), *extra, "create", "--type", "tcpConnector",
        "--name", "plain-c", "host=127.0.0.1", "port=9", "address=plain-svc",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert tool("manage", *env.bus("plain"), *extra, "delete", "--type", "tcpConnector",
                "--name", "plain-c").returncode == 0  # fmt: skip
    out = tool("stat", *env.bus("plain"), *extra, "-g")
    assert out.returncode == 0, out.stderr
    assert "Router Statistics" in out.stdout


def test_external_subject_not_in_users_file_reads_only(env: Env) -> None:
    extra = env.tls_args(env.reader)
    rows = my_rows(env, "ext", extra)
    assert rows[0]["user"] == "/CN=reader" and rows[0]["sasl"] == "EXTERNAL"
    out = tool(
        "manage", *env.bus("ext"), *extra, "create", "--type", "tcpConnector",
        "--name", "nope", "host=127.0.0.1", "port=9", "address=x",
    )  # fmt: skip
    assert out.returncode == 1 and "403" in out.stderr, out.stderr


def test_external_is_not_offered_without_a_client_certificate(env: Env) -> None:
    # 'plain' does not ask for certificates: EXTERNAL is never offered there
    out = tool("manage", *env.bus("plain"), *env.tls_args(env.operator),
               "--sasl-mechanisms", "EXTERNAL", "get-types")  # fmt: skip
    assert out.returncode == 1, out.stdout


def test_plaintext_client_on_require_ssl_listener_is_refused(env: Env) -> None:
    before = env.read("routerMetrics", "routerMetrics")
    failures = _metric(env, "skiff_engine_tls_failures_total")
    out = tool("manage", *env.bus("ext"), "-t", "5", "get-types")
    assert out.returncode == 1
    assert "cannot connect" in out.stderr, out.stderr
    # on the wire: the engine's TLS handshake fails on the AMQP header and the
    # socket is closed without a byte of AMQP
    with socket.create_connection(("127.0.0.1", env.ports["ext"]), timeout=10) as s:
        s.sendall(b"AMQP\x03\x01\x00\x00")
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
        except ConnectionResetError:
            pass
        assert not got.startswith(b"AMQP"), got
    wait_for(lambda: _metric(env, "skiff_engine_tls_failures_total") >= failures + 2)
    assert env.read("routerMetrics", "routerMetrics")["amqpConnections"] <= (
        before["amqpConnections"] + 1
    )


def test_tls_client_without_certificate_on_authenticate_peer_listener_is_refused(
    env: Env,
) -> None:
    out = tool("manage", *env.bus("ext"), *env.tls_args(), "get-types")
    assert out.returncode == 1, out.stdout


def test_optional_tls_serves_plain_and_tls_clients_on_one_port(env: Env) -> None:
    plain = my_rows(env, "optional", [])
    assert plain[0]["isEncrypted"] is False and plain[0]["sslProto"] is None
    assert plain[0]["tlsOrdinal"] is None
    secure = my_rows(env, "optional", env.tls_args())
    assert secure[0]["isEncrypted"] is True and secure[0]["sslProto"] == "TLSv1.3"


def test_listener_waits_for_its_profile_then_opens(env: Env) -> None:
    late = env.read("listener", "late")
    assert late["operStatus"] == "down"
    assert "sslProfile 'late' has not loaded" in late["lastError"], late
    code, text = env.http("/readyz")
    assert code == 503 and "listener 'late' is down: sslProfile 'late' has not loaded" in text
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", env.ports["late"]), timeout=5).close()
    # the material appears: inotify (or the 1 s check) loads it, the listener opens
    issued = env.ca.issue("late-server")
    write(env.late_dir / "server.key", issued.key_pem)
    write(env.late_dir / "server.pem", issued.cert_pem)
    wait_for(lambda: env.read("listener", "late")["operStatus"] == "up", timeout=30)
    assert env.read("listener", "late")["lastError"] is None
    assert server_fingerprint(env, env.ports["late"]) == fingerprint(issued)
    code, text = env.http("/readyz")
    assert "late" not in text, text


def _metric(env: Env, name: str, **labels: str) -> float:
    code, text = env.http("/metrics")
    assert code == 200
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {name} {labels}")


def test_metrics_tls(env: Env) -> None:
    server_fingerprint(env, env.ports["optional"])
    assert _metric(env, "skiff_engine_tls_handshakes_total") >= 1
    # the handshake above (TLS 1.3) left OpenSSL for the engine's record layer
    assert _metric(env, "skiff_engine_tls_detached_total") >= 1
    for name in ("skiff_engine_tls_failures_total", "skiff_engine_tls_unexpected_eof_total",
                 "skiff_engine_tls_closed_old_total"):  # fmt: skip
        assert _metric(env, name) >= 0
    assert _metric(env, "skiff_tls_profile_version", profile="mgmt") >= 1
    assert _metric(env, "skiff_tls_reloads_total", profile="mgmt") >= 1
    assert _metric(env, "skiff_tls_reload_failures_total", profile="mgmt") == 0
    assert _metric(env, "skiff_tls_profile_error", profile="mgmt") == 0
    expiry = _metric(env, "skiff_tls_certificate_expiry_seconds", profile="mgmt")
    assert 0 < expiry <= 30 * 86400  # issued for 30 days
    assert _metric(
        env, "skiff_tls_certificate_not_after_timestamp_seconds", profile="mgmt"
    ) == pytest.approx(env.server.cert.not_valid_after_utc.timestamp(), abs=1)


def test_update_rotates_and_oldest_valid_ordinal_closes_older(env: Env) -> None:
    port = env.ports["rot"]
    assert server_fingerprint(env, port) == fingerprint(env.server)
    # an open management connection on the old material (ordinal 0)
    old = ManagementClient(
        f"amqps://127.0.0.1:{port}",
        timeout=10,
        ssl_domain=_domain(env),
    )
    try:
        old.node("GET-MGMT-NODES")
        # a new certificate in a new file, by management UPDATE
        rotated = env.ca.issue("skiff-rotated")
        cert2 = write(env.tmp / "rotated.pem", rotated.cert_pem)
        key2 = write(env.tmp / "rotated.key", rotated.key_pem)
        version = env.read("sslProfile", "rot")["version"]
        out = env.anon(
            "update", "--type", "sslProfile", "--name", "rot",
            f"certFile={cert2}", f"privateKeyFile={key2}", "ordinal=1",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        wait_for(lambda: env.read("sslProfile", "rot")["version"] > version, timeout=30)
        assert server_fingerprint(env, port) == fingerprint(rotated)
        rows = my_rows(env, "rot", env.tls_args())
        assert rows and {r["tlsOrdinal"] for r in rows} == {0, 1}, rows
        old.node("GET-MGMT-NODES")  # still served: connections keep their version

        closed_before = _metric(env, "skiff_engine_tls_closed_old_total")
        out = env.anon("update", "--type", "sslProfile", "--name", "rot",
                       "oldestValidOrdinal=1")  # fmt: skip
        assert out.returncode == 0, out.stderr
        wait_for(lambda: _metric(env, "skiff_engine_tls_closed_old_total") > closed_before)
        with pytest.raises(ConnectionException):
            old.node("GET-MGMT-NODES")
        rows = my_rows(env, "rot", env.tls_args())
        assert [r["tlsOrdinal"] for r in rows] == [1], rows
    finally:
        try:
            old.close()
        except ConnectionException:
            pass  # the router closed it on purpose


def _domain(env: Env) -> SSLDomain:
    d = SSLDomain(SSLDomain.MODE_CLIENT)
    d.set_trusted_ca_db(str(env.ca_file))
    d.set_peer_authentication(SSLDomain.VERIFY_PEER, str(env.ca_file))
    return d


def test_http_listener_with_ssl_profile_serves_https(env: Env) -> None:
    ctx = ssl.create_default_context(cafile=str(env.ca_file))
    url = f"https://localhost:{env.ports['https']}/metrics"
    with urllib.request.urlopen(url, timeout=10, context=ctx) as r:
        assert r.status == 200
        assert "skiff_tls_profile_version" in r.read().decode()
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{env.ports['https']}/metrics", timeout=10)
