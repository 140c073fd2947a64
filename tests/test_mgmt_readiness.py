"""Readiness (``/readyz``) on its own: each reason names the entity and
says why, and only real faults count (a tcpListener without connectors is
not one)."""

from __future__ import annotations

from collections.abc import Mapping

from router.management.amqp_connection import AmqpConnection
from router.management.readiness import Readiness
from router.management.sources import AppListenerInfo
from router.registry import Entity, Registry


class Health:
    def __init__(self, *reasons: str) -> None:
        self.reasons = list(reasons)

    def check(self) -> list[str]:
        return self.reasons


class AppListeners:
    def __init__(self, *infos: AppListenerInfo) -> None:
        self.infos = list(infos)

    def listener_infos(self) -> list[AppListenerInfo]:
        return self.infos

    def amqp_connections(self) -> list[AmqpConnection]:
        return []


class Tcp:
    """Ports and errors of tcpListeners by name (absent: down)."""

    def __init__(self, ports: Mapping[str, int], errors: Mapping[str, str] | None = None) -> None:
        self.ports = dict(ports)
        self.errors = dict(errors or {})

    def listener_port(self, name: str) -> int | None:
        return self.ports.get(name)

    def listener_error(self, name: str) -> str | None:
        return self.errors.get(name)

    def listeners_by_engine_id(self) -> dict[int, tuple[str, str]]:
        return {}

    def connectors_by_engine_id(self) -> dict[int, tuple[str, str]]:
        return {}


class Tls:
    def __init__(self, waiting: Mapping[str, str]) -> None:
        self.waiting = dict(waiting)

    def wait_reason(self, name: str) -> str | None:
        return self.waiting.get(name)


class ConnectorStatus:
    """Registry observer giving tcpConnectors the operStatus the test says."""

    def __init__(self, down: set[str]) -> None:
        self.down = down

    def on_create(self, entity: Entity) -> None:
        pass

    def on_update(self, old: Entity, new: Entity) -> None:
        pass

    def on_delete(self, entity: Entity) -> None:
        pass

    def status(self, entity: Entity) -> Mapping[str, object]:
        return {"operStatus": "down" if entity.name in self.down else "up"}


def registry(down: set[str] | None = None) -> Registry:
    reg = Registry()
    reg.subscribe("tcpConnector", ConnectorStatus(down or set()))
    return reg


def tcp_pair(reg: Registry, name: str, address: str, port: int, listener: bool = True) -> None:
    if listener:
        reg.create(
            "tcpListener", {"name": name, "host": "127.0.0.1", "port": port, "address": address}
        )
    reg.create(
        "tcpConnector",
        {"name": f"{name}-c", "host": "127.0.0.1", "port": 9999, "address": address},
    )


def up(name: str, http: bool = False) -> AppListenerInfo:
    return AppListenerInfo(name, http, True, 5672, None)


def test_ready_when_everything_configured_is_served() -> None:
    reg = registry()
    tcp_pair(reg, "web", "web", 9000)
    r = Readiness(
        Health(), reg, AppListeners(up("amqp"), up("metrics", http=True)), Tcp({"web": 9000})
    )
    assert r.reasons() == []


def test_liveness_reasons_come_first() -> None:
    r = Readiness(
        Health("I/O worker 1 made no progress for 6.0 s"),
        registry(),
        AppListeners(AppListenerInfo("amqp", False, False, None, "Address in use")),
    )
    assert r.reasons() == [
        "I/O worker 1 made no progress for 6.0 s",
        "listener 'amqp' is down: Address in use",
    ]


def test_down_listener_without_error_says_not_bound() -> None:
    infos = (AppListenerInfo("b", False, False, None, None), up("a"))
    assert Readiness(Health(), registry(), AppListeners(*infos)).reasons() == [
        "listener 'b' is down: not bound"
    ]


def test_tcp_listener_without_connector_is_not_a_fault() -> None:
    reg = registry()
    reg.create("tcpListener", {"name": "idle", "host": "127.0.0.1", "port": 9001, "address": "x"})
    assert Readiness(Health(), reg, AppListeners(), Tcp({})).reasons() == []


def test_tcp_listener_down_with_connectors_says_why() -> None:
    reg = registry()
    tcp_pair(reg, "web", "web", 9000)
    tcp_pair(reg, "db", "db", 9002)
    tcp = Tcp({}, {"web": "Address already in use"})
    assert Readiness(Health(), reg, AppListeners(), tcp).reasons() == [
        "tcpListener 'web' is down although tcpConnectors serve address 'web': "
        "Address already in use",
        "tcpListener 'db' is down although tcpConnectors serve address 'db': "
        "see the log for the bind error",
    ]


def test_tcp_listener_waiting_for_its_profile_names_the_profile() -> None:
    reg = registry()
    reg.create("sslProfile", {"name": "p", "certFile": "/nowhere.pem"})
    reg.create(
        "tcpListener",
        {"name": "s", "host": "127.0.0.1", "port": 9003, "address": "s", "sslProfile": "p"},
    )
    tcp_pair(reg, "s", "s", 0, listener=False)
    tls = Tls({"p": "sslProfile 'p' has not loaded: /nowhere.pem: No such file"})
    reasons = Readiness(Health(), reg, AppListeners(), Tcp({}, {"s": "old"}), tls).reasons()
    assert reasons == [
        "tcpListener 's' is down although tcpConnectors serve address 's': "
        "sslProfile 'p' has not loaded: /nowhere.pem: No such file"
    ]
    # once loaded, the listener's own error is shown again
    tls.waiting.clear()
    assert (
        Readiness(Health(), reg, AppListeners(), Tcp({}, {"s": "old"}), tls)
        .reasons()[0]
        .endswith(": old")
    )


def test_unreachable_connector_is_named_with_its_endpoint() -> None:
    reg = registry(down={"web-c"})
    tcp_pair(reg, "web", "web", 9000)
    assert Readiness(Health(), reg, AppListeners(), Tcp({"web": 9000})).reasons() == [
        "tcpConnector 'web-c' is down: 127.0.0.1:9999 does not answer or does not resolve"
    ]
