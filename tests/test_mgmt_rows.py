"""The read-only management rows and the HTTP pages, on their own: what
each row says about a flow or connection, and what /metrics exposes (names,
labels, escaping, histogram shape)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.engine import ConnInfo, Engine, EngineOptions
from router.management.agent import Agent
from router.management.amqp_connection import PLAINTEXT, AmqpConnection, AmqpSettings, TlsInfo
from router.management.pages import MonitoringPages
from router.management.readiness import Readiness
from router.management.rows import ManagementRows
from router.management.sources import AppListenerInfo
from router.registry import Entity, Registry
from router.version import skiff_version

ODD = 'odd "name" \\ with\nnewline'


class AppListeners:
    def __init__(self, infos: list[AppListenerInfo], conns: list[AmqpConnection]) -> None:
        self.infos = infos
        self.conns = conns

    def listener_infos(self) -> list[AppListenerInfo]:
        return self.infos

    def amqp_connections(self) -> list[AmqpConnection]:
        return self.conns


class Tcp:
    def listener_port(self, name: str) -> int | None:
        return 9000

    def listener_error(self, name: str) -> str | None:
        return None

    def listeners_by_engine_id(self) -> dict[int, tuple[str, str]]:
        return {7: ("web", "web-addr")}

    def connectors_by_engine_id(self) -> dict[int, tuple[str, str]]:
        return {3: ("web-c", "web-addr")}


class Counters:
    """Registry observer: the tcpListener status counters the test says."""

    def __init__(self, **attrs: object) -> None:
        self.attrs = attrs

    def on_create(self, entity: Entity) -> None:
        pass

    def on_update(self, old: Entity, new: Entity) -> None:
        pass

    def on_delete(self, entity: Entity) -> None:
        pass

    def status(self, entity: Entity) -> Mapping[str, object]:
        return self.attrs


class FakeEngine:
    workers = 3

    def __init__(self, conns: list[ConnInfo]) -> None:
        self.conns = conns

    def connections(self) -> list[ConnInfo]:
        return self.conns

    def counters(self) -> dict[str, int]:
        return {"accepted": 11, "connects_failed": 2, "flows_failed": 1, "events_dropped": 0,
                "conns_live": 4}  # fmt: skip


def flow(conn_id: int, listener_id: int, target_id: int, app: bool = False) -> ConnInfo:
    opened = time.monotonic_ns() - 3_000_000_000
    return ConnInfo(conn_id, listener_id, target_id, 0, app, "10.0.0.1:5000", "10.0.0.2:80",
                    100, 200, opened, 1, 2, "")  # fmt: skip


def amqp(conn_id: int, listener: str, tls: TlsInfo = PLAINTEXT) -> AmqpConnection:
    host: object = None  # never used: the connection is not fed
    conn = AmqpConnection(conn_id, "10.0.0.9:4000", AmqpSettings(listener), host, tls)  # type: ignore[arg-type]
    conn.user = "admin"
    conn.mechanism = "PLAIN"
    return conn


def rows(engine: object, registry: Registry, conns: list[AmqpConnection]) -> ManagementRows:
    return ManagementRows(
        engine,  # type: ignore[arg-type]
        registry,
        Agent(registry),
        AppListeners([], conns),
        Tcp(),
        started=time.monotonic() - 42,
    )


def test_tcp_connection_rows_name_listener_connector_and_address() -> None:
    engine = FakeEngine(
        [
            flow(1, 7, 3),  # through listener 'web' to connector 'web-c'
            flow(2, 7, 0),  # not yet connected: the listener's address
            flow(3, 99, 0),  # its listener socket closed since: a bare id
            flow(4, 5, 0, app=True),  # an app connection is not a tcpConnection
        ]
    )
    by_id = {r["connectionId"]: r for r in rows(engine, Registry(), []).tcp_connections()}
    assert set(by_id) == {1, 2, 3}
    assert by_id[1]["listener"] == "web" and by_id[1]["connector"] == "web-c"
    assert by_id[1]["address"] == "web-addr" and by_id[1]["uptimeSeconds"] >= 3
    assert by_id[1]["name"] == "tcpConnection/1" and by_id[1]["tlsConfigVersion"] == 1
    assert (by_id[2]["listener"], by_id[2]["connector"], by_id[2]["address"]) == (
        "web", None, "web-addr",
    )  # fmt: skip
    assert (by_id[3]["listener"], by_id[3]["address"]) == ("99", None)


def test_connection_rows_and_router_metrics_count_amqp_connections() -> None:
    reg = Registry()
    reg.subscribe("tcpListener", Counters(connectionsOpened=5, connectionsClosed=3, bytesIn=10,
                                          bytesOut=20))  # fmt: skip
    reg.create("tcpListener", {"name": "web", "host": "127.0.0.1", "port": 9000, "address": "a"})
    tls = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 2, 1, "CN=x")
    r = rows(FakeEngine([]), reg, [amqp(5, "mgmt", tls), amqp(6, "mgmt")])
    conns = {c["id"]: c for c in r.connections()}
    assert conns[5]["listener"] == "mgmt" and conns[5]["isEncrypted"] is True
    assert conns[5]["sslProto"] == "TLSv1.3" and conns[5]["tlsOrdinal"] == 1
    assert conns[6]["isEncrypted"] is False and conns[6]["tlsOrdinal"] is None
    assert conns[6]["isAuthenticated"] is True and conns[6]["sasl"] == "PLAIN"
    (m,) = r.router_metrics()
    assert m["connectionCounts"] == "tcp: 2, amqp: 2"
    assert (m["tcpConnectionsOpened"], m["tcpBytesOut"], m["amqpConnections"]) == (5, 20, 2)
    assert (m["accepted"], m["connectsFailed"], m["workerThreads"]) == (11, 2, 3)
    assert m["uptimeSeconds"] >= 42


def test_network_and_router_status() -> None:
    reg = Registry()
    reg.create("router", {"id": "r1"}, check_operation=False)
    r = rows(FakeEngine([]), reg, [])
    assert r.network()[0]["networkId"] == "r1"
    status = r.router_status()
    assert status["version"] == skiff_version() and status["connectionCount"] == 4


@pytest.fixture
def engine() -> Iterator[Engine]:
    eng = Engine(EngineOptions(worker_threads=2))
    yield eng
    eng.stop()


class Health:
    def __init__(self, *reasons: str) -> None:
        self.reasons = list(reasons)

    def check(self) -> list[str]:
        return self.reasons


def pages(engine: Engine, reg: Registry, listeners: AppListeners, *health: str) -> MonitoringPages:
    live = Health(*health)
    return MonitoringPages(
        engine,
        reg,
        Agent(reg),
        live,
        Readiness(live, reg, listeners),
        listeners,
        started=time.monotonic(),
    )


def test_metrics_page_families_labels_escaping_and_histograms(engine: Engine) -> None:
    reg = Registry()
    reg.create("tcpListener", {"name": "web", "host": "127.0.0.1", "port": 9000, "address": "a"})
    listeners = AppListeners(
        [AppListenerInfo("amqp", False, True, 5672, None),
         AppListenerInfo(ODD, False, False, None, "in use"),
         AppListenerInfo("metrics", True, True, 8080, None)],
        [amqp(1, "amqp"), amqp(2, "amqp")],
    )  # fmt: skip
    reply = pages(engine, reg, listeners).metrics()
    assert reply.status == 200
    assert reply.content_type == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
    open_ = {s.labels["listener"]: s.value for s in families["skiff_amqp_connections_open"].samples}
    assert open_ == {"amqp": 2, ODD: 0}  # an HTTP listener has no AMQP series
    up = {
        (s.labels["kind"], s.labels["name"]): s.value for s in families["skiff_entity_up"].samples
    }
    assert up == {("tcpListener", "web"): 0, ("listener", "amqp"): 1, ("listener", ODD): 0,
                  ("listener", "metrics"): 1}  # fmt: skip
    assert families["skiff_tcp_connections_opened"].type == "counter"
    assert families["skiff_up"].samples[0].value == 1
    assert families["skiff_engine_conns_live"].type == "gauge"
    assert families["skiff_engine_accepted"].type == "counter"
    late = families["skiff_timer_lateness_seconds"]
    assert late.type == "histogram"
    for prio in ("high", "normal"):
        samples = [s for s in late.samples if s.labels.get("priority") == prio]
        buckets = [s for s in samples if s.name.endswith("_bucket")]
        (count,) = [s.value for s in samples if s.name.endswith("_count")]
        assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == count
        values = [b.value for b in buckets]
        assert values == sorted(values)  # cumulative
        assert any(s.name.endswith("_sum") for s in samples)
    waits = families["skiff_app_wait_seconds"]
    assert waits.type == "histogram"
    assert {s.labels["direction"] for s in waits.samples} == {"input", "output", "receive"}


def test_healthz_and_readyz_pages(engine: Engine) -> None:
    reg = Registry()
    good = AppListeners([AppListenerInfo("amqp", False, True, 5672, None)], [])
    assert pages(engine, reg, good).healthz().body == b"ok\n"
    assert pages(engine, reg, good).readyz().body == b"ready\n"
    sick = pages(engine, reg, good, "control loop made no progress for 6.0 s")
    assert sick.healthz().status == 503
    assert sick.readyz().body == b"not ready:\ncontrol loop made no progress for 6.0 s\n"
    down = AppListeners([AppListenerInfo("amqp", False, False, None, "in use")], [])
    reply = pages(engine, reg, down).readyz()
    assert reply.status == 503 and b"listener 'amqp' is down: in use" in reply.body
    assert set(pages(engine, reg, good).routes()) == {"/metrics", "/healthz", "/readyz"}
