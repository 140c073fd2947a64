"""AMQP management against a running skiffd: every operation, QUERY paging,
CREATE/DELETE taking effect, bad requests, authorisation, SASL, HTTP pages."""

# ruff: noqa: E501  (the table of bad requests reads best one request per line)

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import proton
import pytest
from daemon import Skiffd, free_port, listening, skiffd_conf, wait_listening
from prometheus_client.parser import text_string_to_metric_families
from proton import Message
from proton.utils import BlockingConnection, SyncRequestResponse
from servers import ThreadedServer, echo, recv_exact, wait_for

from router.management.sasl import hash_password

T = "io.skupper.router."
NODE = {"type": "org.amqp.management", "name": "self"}
ADMIN_PW = "admin-secret-pw"
VIEWER_PW = "viewer-secret-pw"


class Client:
    def __init__(self, port: int, **kwargs: Any) -> None:
        kwargs.setdefault("sasl_enabled", True)
        kwargs.setdefault("allow_insecure_mechs", True)
        self.conn = BlockingConnection(f"amqp://127.0.0.1:{port}", timeout=10, **kwargs)
        self.rr = SyncRequestResponse(self.conn, "$management")

    def call(self, props: dict[str, Any], body: Any = None) -> tuple[int, str, Any]:
        reply = self.rr.call(Message(properties=props, body=body))
        p = reply.properties
        return int(p["statusCode"]), str(p["statusDescription"]), reply.body

    def ok(self, props: dict[str, Any], body: Any = None) -> Any:
        status, desc, out = self.call(props, body)
        assert 200 <= status < 300, desc
        return out

    def close(self) -> None:
        self.conn.close()


class Router:
    def __init__(self, tmp: Path) -> None:
        self.users = tmp / "users"
        self.users.write_text(
            "# test users\n"
            f"admin:write:{hash_password(ADMIN_PW, n=1024)}\n"
            f"viewer:read:{hash_password(VIEWER_PW, n=1024)}\n"
        )
        self.anon, self.ro, self.secure, self.http = (free_port() for _ in range(4))
        # a port held busy: the file's listener on it must stay down, not stop the router
        self.blocker = socket.socket()
        self.blocker.bind(("127.0.0.1", 0))
        self.blocker.listen(1)
        self.blocked = self.blocker.getsockname()[1]
        conf = skiffd_conf(
            self._listener("anon", self.anon, "    allowAnonymousWrites: true\n"),
            # loopback listeners allow anonymous writes unless told otherwise
            self._listener("ro", self.ro, "    allowAnonymousWrites: false\n"),
            self._listener(
                "secure",
                self.secure,
                f"    authenticatePeer: true\n    saslMechanisms: PLAIN\n"
                f"    usersFile: {self.users}\n",
            ),
            self._listener("metrics", self.http, "    http: true\n"),
            self._listener("blocked", self.blocked, ""),
        )
        self.d = Skiffd(tmp, conf)

    @staticmethod
    def _listener(name: str, port: int, extra: str) -> str:
        return f"listener {{\n    name: {name}\n    host: 127.0.0.1\n    port: {port}\n{extra}}}\n"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=10) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode()


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    r = Router(tmp_path_factory.mktemp("mgmt"))
    yield r
    r.blocker.close()
    assert r.d.stop() == 0


@pytest.fixture
def admin(router: Router) -> Iterator[Client]:
    c = Client(router.anon)
    yield c
    c.close()


def test_proton_has_ssl() -> None:
    assert proton.SSL.present()


def test_node_operations(admin: Client) -> None:
    types = admin.ok({**NODE, "operation": "GET-TYPES"})
    for short in ("router", "listener", "tcpListener", "tcpConnector", "log", "sslProfile",
                  "connection", "tcpConnection", "routerMetrics", "network"):  # fmt: skip
        assert T + short in types
    attrs = admin.ok({**NODE, "operation": "GET-ATTRIBUTES", "entityType": T + "tcpListener"})
    assert list(attrs) == [T + "tcpListener"]
    assert {"host", "port", "address"} <= set(attrs[T + "tcpListener"])
    ops = admin.ok({**NODE, "operation": "GET-OPERATIONS"})
    assert set(ops[T + "tcpConnector"]) == {"CREATE", "DELETE", "READ", "QUERY"}
    assert set(ops[T + "connection"]) == {"READ", "QUERY", "UPDATE"}  # adminStatus
    assert admin.ok({**NODE, "operation": "GET-MGMT-NODES"}) == []
    schema = admin.ok({**NODE, "operation": "GET-SCHEMA"})
    assert schema["prefix"] == "io.skupper.router"  # Skupper's shape: short type names
    port = schema["entityTypes"]["listener"]["attributes"]["port"]
    assert port["type"] == "string" and port["default"] == "5672"


def test_read_update_and_operational_types(admin: Client, router: Router) -> None:
    r = admin.ok({"operation": "READ", "type": T + "router", "name": "router"})
    assert r["id"] == "test" and r["workerThreads"] == 2 and r["version"]
    log = admin.ok({"operation": "READ", "type": T + "log", "name": "log/AGENT"})
    by_id = admin.ok({"operation": "READ", "type": T + "log", "identity": log["identity"]})
    assert by_id == log
    new = admin.ok(
        {"operation": "UPDATE", "type": T + "log", "name": "log/AGENT"}, {"enable": "debug+"}
    )
    assert new["enable"] == "debug+"
    admin.ok({"operation": "UPDATE", "type": T + "log", "name": "log/AGENT"}, {"enable": "default"})
    _, rows = _query(admin, "connection", ["host", "container", "listener", "isEncrypted"])
    assert ["anon", False] in [[r[2], r[3]] for r in rows]
    metrics = admin.ok({"operation": "READ", "type": T + "routerMetrics", "name": "routerMetrics"})
    assert metrics["amqpConnections"] >= 1 and metrics["workerThreads"] == 2
    net = admin.ok({"operation": "READ", "type": T + "network", "identity": "network"})
    assert net["networkId"] == "test"
    listener = admin.ok({"operation": "READ", "type": T + "listener", "name": "blocked"})
    assert listener["operStatus"] == "down" and "in use" in listener["lastError"]


def _query(
    c: Client, etype: str | None, names: list[str], **props: Any
) -> tuple[list[str], list[list[Any]]]:
    extra = {"entityType": T + etype} if etype else {}
    out = c.ok({**NODE, "operation": "QUERY", **extra, **props}, {"attributeNames": names})
    return out["attributeNames"], out["results"]


def test_query_attribute_names_and_paging(admin: Client) -> None:
    names, rows = _query(admin, "log", [])
    assert names[:3] == ["name", "identity", "type"] and "enable" in names
    assert len(rows) >= 20 and all(len(r) == len(names) for r in rows)
    names2, rows2 = _query(admin, "log", ["module", "enable"])
    assert names2 == ["module", "enable"]
    assert [r[0] for r in rows2] == [r[names.index("module")] for r in rows]
    _, page1 = _query(admin, "log", ["module"], offset=0, count=5)
    _, page2 = _query(admin, "log", ["module"], offset=5, count=5)
    assert page1 + page2 == [r[:1] for r in rows2[:10]] and len(page1) == 5
    _, every = _query(admin, None, ["type", "name"])
    kinds = {r[0] for r in every}
    assert {T + "router", T + "listener", T + "log", T + "network"} <= kinds


def test_create_pair_makes_traffic_flow_and_delete_stops_it(admin: Client) -> None:
    srv = ThreadedServer(echo)
    port = free_port()
    try:
        c = admin.ok(
            {"operation": "CREATE", "type": T + "tcpConnector", "name": "echo-c"},
            {"host": "127.0.0.1", "port": str(srv.port), "address": "echo"},
        )
        assert c["port"] == str(srv.port)  # a string on the wire, as Skupper types it
        status, _, body = admin.call(
            {"operation": "CREATE", "type": T + "tcpListener", "name": "echo-l"},
            {"host": "127.0.0.1", "port": str(port), "address": "echo"},
        )
        assert status == 201 and body["operStatus"] == "up"
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"ping")
        assert recv_exact(s, 4) == b"ping"
        _, flows = _query(admin, "tcpConnection", ["listener", "connector", "address", "bytesIn"])
        assert ["echo-l", "echo-c", "echo", 4] in flows
        s.close()
        assert (
            admin.call({"operation": "DELETE", "type": T + "tcpListener", "name": "echo-l"})[0]
            == 204
        )
        wait_listening(port, up=False)
        admin.ok({"operation": "DELETE", "type": T + "tcpConnector", "identity": c["identity"]})
        status, desc, _ = admin.call(
            {"operation": "READ", "type": T + "tcpConnector", "name": "echo-c"}
        )
        assert status == 404 and "echo-c" in desc
    finally:
        srv.close()


BAD = [
    ({"type": T + "log", "name": "log/AGENT"}, None, 400, "no 'operation'"),
    ({"operation": "READ", "type": T + "nosuch", "name": "x"}, None, 400, "unknown entity type"),
    ({"operation": "READ", "type": T + "tcpListenr", "name": "x"}, None, 400, "did you mean 'tcpListener'"),
    ({"operation": "CREATE", "type": T + "tcpConnector", "name": "u"},
     {"host": "127.0.0.1", "port": "1", "address": "a", "colour": "red"}, 400, "'colour' is unknown"),
    ({"operation": "CREATE", "type": T + "tcpConnector", "name": "w"},
     {"host": "127.0.0.1", "port": "not-a-port", "address": "a"}, 400, "invalid value 'not-a-port'"),
    ({"operation": "CREATE", "type": T + "tcpConnector", "name": "w"},
     {"host": "127.0.0.1", "address": "a"}, 400, "port"),
    ({"operation": "DELETE", "type": T + "tcpConnector", "name": "missing"}, None, 404, "'missing' not found"),
    # Skupper answers an operation a type does not have with 501
    ({"operation": "UPDATE", "type": T + "tcpConnector", "name": "x"}, {}, 501, "allowed: CREATE, DELETE"),
    ({"operation": "DELETE", "type": T + "connection", "name": "x"}, None, 501, "allowed: QUERY, READ, UPDATE"),
    ({"operation": "CREATE", "type": T + "vhost", "name": "v"}, {}, 501, "'io.skupper.router.vhost' is not implemented"),
    ({"operation": "FROB", "type": T + "log"}, None, 501, "not implemented"),
    ({"operation": "READ", "type": T + "log"}, None, 400, "'name' or 'identity'"),
    ({"operation": "CREATE", "type": T + "tcpConnector", "name": "b"}, "not a map", 400, "must be a map"),
    ({**NODE, "operation": "QUERY", "entityType": T + "log"}, {"attributeNames": ["nope"]}, 404, "Unknown attributes ['nope'] for type io.skupper.router.log."),
    ({**NODE, "operation": "QUERY", "offset": "x"}, {}, 400, "'offset' must be an integer"),
    ({"operation": "CREATE", "type": T + "listener", "name": "tls"},
     {"port": "0", "requireSsl": "true"}, 400, "requireSsl is true but no sslProfile"),
    ({"operation": "CREATE", "type": T + "listener", "name": "ext"},
     {"port": "0", "saslMechanisms": "EXTERNAL"}, 400, "EXTERNAL needs an sslProfile"),
    ({"operation": "CREATE", "type": T + "listener", "name": "gss"},
     {"port": "0", "saslMechanisms": "GSSAPI"}, 400, "supported: ANONYMOUS, PLAIN, EXTERNAL"),
    ({"operation": "CREATE", "type": T + "listener", "name": "edge"},
     {"port": "0", "role": "edge"}, 400, "role 'edge'"),
]  # fmt: skip


def test_bad_requests_get_status_and_description(admin: Client) -> None:
    for props, body, status, text in BAD:
        got, desc, _ = admin.call(props, body)
        assert (got, text in desc) == (status, True), (props, desc)
    # a duplicate name, after a successful create
    attrs = {"host": "127.0.0.1", "port": "1", "address": "dup"}
    admin.ok({"operation": "CREATE", "type": T + "tcpConnector", "name": "dup"}, attrs)
    got, desc, _ = admin.call(
        {"operation": "CREATE", "type": T + "tcpConnector", "name": "dup"}, attrs
    )
    assert got == 400 and "'dup' already exists" in desc
    admin.ok({"operation": "DELETE", "type": T + "tcpConnector", "name": "dup"})
    # the connection survived all of it
    assert admin.ok({**NODE, "operation": "GET-MGMT-NODES"}) == []


def test_authorisation_and_sasl_plain(router: Router) -> None:
    create = {"operation": "CREATE", "type": T + "tcpConnector", "name": "authz"}
    attrs = {"host": "127.0.0.1", "port": "1", "address": "z"}
    ro = Client(router.ro)
    status, desc, _ = ro.call(create, attrs)
    assert status == 403 and "anonymous" in desc
    assert ro.ok({**NODE, "operation": "QUERY", "entityType": T + "log"}, {})  # reads are fine
    ro.close()

    viewer = Client(router.secure, user="viewer", password=VIEWER_PW, allowed_mechs="PLAIN")
    status, desc, _ = viewer.call(create, attrs)
    assert status == 403 and "'viewer'" in desc
    viewer.close()

    admin = Client(router.secure, user="admin", password=ADMIN_PW, allowed_mechs="PLAIN")
    assert admin.call(create, attrs)[0] == 201
    assert (
        admin.call({"operation": "DELETE", "type": T + "tcpConnector", "name": "authz"})[0] == 204
    )
    _, rows = _query(admin, "connection", ["user", "sasl", "isAuthenticated", "listener"])
    assert ["admin", "PLAIN", True, "secure"] in rows
    admin.close()

    with pytest.raises(proton.ConnectionException):
        Client(router.secure, user="admin", password="wrong", allowed_mechs="PLAIN")
    with pytest.raises(proton.ConnectionException):
        Client(router.secure, sasl_enabled=False)  # bare AMQP where auth is required
    # TLS bytes on a plain listener: refused, never answered in plaintext AMQP
    s = socket.create_connection(("127.0.0.1", router.anon), timeout=10)
    s.sendall(b"\x16\x03\x01\x00\x05hello")
    assert s.recv(100) == b""
    s.close()
    log = router.d.stderr()
    assert ADMIN_PW not in log and VIEWER_PW not in log
    assert "authentication failed: wrong password for user 'admin'" in log


def test_bare_amqp_header_like_skmanage(router: Router) -> None:
    c = Client(router.anon, sasl_enabled=False)
    assert c.ok({**NODE, "operation": "GET-MGMT-NODES"}) == []
    c.close()


def test_metrics_healthz_readyz(router: Router, admin: Client) -> None:
    status, text = router.get("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    late = families["skiff_timer_lateness_seconds"]
    assert late.type == "histogram"
    buckets = [s for s in late.samples if s.name.endswith("_bucket")]
    assert {s.labels["priority"] for s in buckets} == {"high", "normal"}
    assert any(s.labels["le"] == "+Inf" for s in buckets)
    assert families["skiff_worker_busy_seconds"].type == "counter"
    assert len(families["skiff_worker_cpu_seconds"].samples) == 2
    assert families["skiff_amqp_connections_open"].samples
    assert "skiff_engine_accepted" in families
    # plain management input (this page's request, the admin's AMQP) is read
    # by the control loop itself, not handed over by a worker
    assert families["skiff_engine_app_direct_reads"].samples[0].value > 0
    assert router.get("/healthz") == (200, "ok\n")
    status, text = router.get("/readyz")
    assert status == 503 and "listener 'blocked' is down" in text
    assert router.get("/nope")[0] == 404
    # once the port is free, the listener binds on its own and the router is ready
    router.blocker.close()
    wait_for(lambda: router.get("/readyz")[0] == 200, timeout=20, what="readyz 200")
    assert listening(router.blocked)
    row = admin.ok({"operation": "READ", "type": T + "listener", "name": "blocked"})
    assert row["operStatus"] == "up" and row["lastError"] is None
