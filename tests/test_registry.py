from __future__ import annotations

import textwrap
from collections.abc import Mapping

import pytest

from router import schema
from router.config import ConfigEntity, parse_config_text
from router.registry import (
    ApplyError,
    DuplicateName,
    Entity,
    InvalidRequest,
    NotFound,
    ObserverFailed,
    OperationNotAllowed,
    Registry,
)


class Recorder:
    """Observer that records calls and can refuse chosen entity names."""

    def __init__(self, refuse: set[str] | None = None) -> None:
        self.events: list[tuple[str, str]] = []
        self.refuse = refuse or set()
        self.counters: dict[str, int] = {}

    def on_create(self, entity: Entity) -> None:
        if entity.name in self.refuse:
            raise OSError(98, "Address already in use")
        self.events.append(("create", entity.name))

    def on_update(self, old: Entity, new: Entity) -> None:
        if new.name in self.refuse:
            raise RuntimeError("cannot update")
        self.events.append(("update", new.name))

    def on_delete(self, entity: Entity) -> None:
        self.events.append(("delete", entity.name))

    def status(self, entity: Entity) -> Mapping[str, object]:
        return {
            "bytesIn": self.counters.get(entity.name, 0),
            "operStatus": "up",
            "notInSchema": 1,
        }


def conf(text: str) -> list[ConfigEntity]:
    return parse_config_text(textwrap.dedent(text), "skrouterd.conf").entities


BASE = """\
router {
    id: r1
}
tcpListener {
    name: front
    port: 9000
    address: web
}
tcpConnector {
    name: back
    host: 127.0.0.1
    port: 8080
    address: web
}
"""


def test_log_entities_exist_for_every_module() -> None:
    registry = Registry()
    logs = registry.entities("log")
    assert {e.attributes["module"] for e in logs} == set(schema.LOG_MODULES)
    default = registry.read("log", "DEFAULT")
    assert default["identity"] == "log/DEFAULT"
    assert default["enable"] == "info+"
    assert registry.read("log", "log/TCP_ADAPTOR")["enable"] == "default"


def test_create_read_query_delete() -> None:
    registry = Registry()
    entity = registry.create("tcpListener", {"name": "l1", "port": "9000", "address": "web"})
    assert entity.identity == "tcpListener/1"
    assert entity.source == "management"
    record = registry.read("tcpListener", "l1")
    assert record["type"] == "io.skupper.router.tcpListener"
    assert record["port"] == 9000
    assert record["identity"] == "tcpListener/1"
    assert record["bytesIn"] is None
    assert registry.read("io.skupper.router.tcpListener", "tcpListener/1")["name"] == "l1"
    assert [r["name"] for r in registry.query("tcpListener")] == ["l1"]
    registry.delete("tcpListener", "tcpListener/1")
    assert registry.query("tcpListener") == []
    with pytest.raises(NotFound) as info:
        registry.read("tcpListener", "l1")
    assert info.value.status == 404


def test_create_without_name_generates_one() -> None:
    registry = Registry()
    entity = registry.create("tcpConnector", {"host": "h", "port": 1, "address": "a"})
    assert entity.name == "tcpConnector/h:1:a"


def test_validation_errors_are_bad_requests() -> None:
    registry = Registry()
    with pytest.raises(
        InvalidRequest,
        match=r"tcpListener attribute 'prot' is unknown \(did you mean 'port'\?\)",
    ) as info:
        registry.create("tcpListener", {"prot": 1, "address": "a"})
    assert info.value.status == 400
    with pytest.raises(InvalidRequest, match="unknown entity type 'tcpListner'"):
        registry.create("tcpListner", {})


def test_duplicate_name_is_rejected() -> None:
    registry = Registry()
    registry.create("tcpListener", {"name": "l1", "port": 1, "address": "a"})
    with pytest.raises(DuplicateName, match="tcpListener 'l1' already exists") as info:
        registry.create("tcpListener", {"name": "l1", "port": 2, "address": "a"})
    assert info.value.status == 400


def test_update_not_allowed_on_tcp_connector_lists_allowed_operations() -> None:
    registry = Registry()
    registry.create("tcpConnector", {"name": "c", "host": "h", "port": 1, "address": "a"})
    with pytest.raises(OperationNotAllowed) as info:
        registry.update("tcpConnector", "c", {"port": 2})
    assert str(info.value) == (
        "operation UPDATE is not allowed on io.skupper.router.tcpConnector; allowed: CREATE, "
        "DELETE, QUERY, READ"
    )
    assert info.value.status == 400


def test_log_cannot_be_created_or_deleted_by_management() -> None:
    registry = Registry()
    with pytest.raises(OperationNotAllowed, match="allowed: QUERY, READ, UPDATE"):
        registry.create("log", {"module": "TLS"})
    with pytest.raises(OperationNotAllowed):
        registry.delete("log", "TLS")


def test_update_log_and_reset_to_default() -> None:
    registry = Registry()
    recorder = Recorder()
    registry.subscribe("log", recorder)
    updated = registry.update("log", "TCP_ADAPTOR", {"enable": "debug+"})
    assert updated.attributes["enable"] == "debug+"
    assert recorder.events == [("update", "log/TCP_ADAPTOR")]
    assert registry.update("log", "TCP_ADAPTOR", {"enable": None}).attributes["enable"] == "default"
    with pytest.raises(InvalidRequest, match="unknown level 'loud'"):
        registry.update("log", "TCP_ADAPTOR", {"enable": "loud"})
    with pytest.raises(InvalidRequest, match="'module' cannot be changed"):
        registry.update("log", "TCP_ADAPTOR", {"module": "TLS"})


def test_update_cannot_rename() -> None:
    registry = Registry()
    registry.create("sslProfile", {"name": "p"})
    with pytest.raises(InvalidRequest, match="'name' cannot be changed"):
        registry.update("sslProfile", "p", {"name": "q"})


def test_read_omits_secrets_and_merges_status() -> None:
    registry = Registry()
    recorder = Recorder()
    recorder.counters["l"] = 42
    registry.subscribe("tcpListener", recorder)
    registry.create("sslProfile", {"name": "p", "password": "hunter2"})
    record = registry.read("sslProfile", "p")
    assert "password" not in record
    assert "hunter2" not in repr(record)
    registry.create("tcpListener", {"name": "l", "port": 1, "address": "a"})
    record = registry.read("tcpListener", "l")
    assert record["bytesIn"] == 42
    assert record["operStatus"] == "up"
    assert "notInSchema" not in record


def test_references_are_checked_both_ways() -> None:
    registry = Registry()
    with pytest.raises(InvalidRequest, match="names sslProfile 'p', which does not exist"):
        registry.create("tcpListener", {"name": "l", "port": 1, "address": "a", "sslProfile": "p"})
    registry.create("sslProfile", {"name": "p"})
    registry.create("tcpListener", {"name": "l", "port": 1, "address": "a", "sslProfile": "p"})
    with pytest.raises(InvalidRequest, match="sslProfile 'p' is in use by tcpListener 'l'"):
        registry.delete("sslProfile", "p")


def test_observer_failure_rolls_back_create() -> None:
    registry = Registry()
    first, second = Recorder(), Recorder(refuse={"busy"})
    registry.subscribe("tcpListener", first)
    registry.subscribe("tcpListener", second)
    with pytest.raises(
        ObserverFailed,
        match=r"creating tcpListener 'busy' failed: .*Address already in use",
    ) as info:
        registry.create("tcpListener", {"name": "busy", "port": 1, "address": "a"})
    assert info.value.status == 400
    assert registry.find("tcpListener", "busy") is None
    assert first.events == [("create", "busy"), ("delete", "busy")]


def test_observer_failure_rolls_back_update_with_server_error_status() -> None:
    registry = Registry()
    registry.subscribe("sslProfile", Recorder(refuse={"p"}))
    registry.create("sslProfile", {"name": "q", "ordinal": 1})
    registry.subscribe("sslProfile", Recorder(refuse={"q"}))
    with pytest.raises(ObserverFailed) as info:
        registry.update("sslProfile", "q", {"ordinal": 2})
    assert info.value.status == 500
    assert registry.get("sslProfile", "q").attributes["ordinal"] == 1


def test_apply_file_creates_router_and_entities() -> None:
    registry = Registry()
    result = registry.apply_file(conf(BASE))
    assert {(e.type, e.name) for e in result.added} == {
        ("router", "router"),
        ("tcpListener", "front"),
        ("tcpConnector", "back"),
    }
    assert registry.router is not None
    assert registry.router.attributes["id"] == "r1"
    assert registry.get("tcpListener", "front").source == "config"
    assert registry.get("tcpListener", "front").origin == "skrouterd.conf:4"
    assert registry.apply_file(conf(BASE)).unchanged


def test_apply_file_without_router_uses_defaults() -> None:
    registry = Registry()
    registry.apply_file([])
    assert registry.router is not None
    assert registry.router.source == "builtin"
    assert registry.router.attributes["workerThreads"] == 4


def test_connector_created_by_config_even_though_management_cannot_update() -> None:
    registry = Registry()
    registry.apply_file(conf(BASE))
    changed = BASE.replace("port: 8080", "port: 8081")
    recorder = Recorder()
    registry.subscribe("tcpConnector", recorder)
    result = registry.apply_file(conf(changed))
    assert [(old.attributes["port"], new.attributes["port"]) for old, new in result.changed] == [
        (8080, 8081)
    ]
    # No management UPDATE on tcpConnector, but a file change replaces the
    # running connector in one step its observers can refuse whole.
    assert recorder.events == [("update", "back")]


def test_apply_file_keeps_management_entities_and_removes_dropped_config_ones() -> None:
    registry = Registry()
    registry.apply_file(conf(BASE))
    registry.create("tcpListener", {"name": "mgmt", "port": 9100, "address": "web"})
    result = registry.apply_file(conf("router {\n id: r1\n}\n"))
    assert {(e.type, e.name) for e in result.removed} == {
        ("tcpListener", "front"),
        ("tcpConnector", "back"),
    }
    assert [e.name for e in registry.entities("tcpListener")] == ["mgmt"]


def test_apply_file_rejects_name_taken_by_management() -> None:
    registry = Registry()
    registry.apply_file([])
    registry.create("tcpListener", {"name": "front", "port": 1, "address": "a"})
    with pytest.raises(
        ApplyError,
        match=r"skrouterd.conf:4: tcpListener 'front' already exists \(from management\)",
    ):
        registry.apply_file(conf(BASE))
    assert registry.router is not None and registry.router.source == "builtin"


def test_management_cannot_take_a_config_name() -> None:
    registry = Registry()
    registry.apply_file(conf(BASE))
    with pytest.raises(DuplicateName, match=r"already exists \(from skrouterd.conf:4\)"):
        registry.create("tcpListener", {"name": "front", "port": 1, "address": "a"})


def test_apply_file_rolls_back_on_observer_failure() -> None:
    registry = Registry()
    registry.apply_file(conf(BASE))
    recorder = Recorder(refuse={"second"})
    registry.subscribe("tcpListener", recorder)
    new_text = BASE.replace("port: 8080", "port: 8081") + textwrap.dedent(
        """\
        tcpListener {
            name: second
            port: 9001
            address: web
        }
        """
    )
    with pytest.raises(ApplyError) as info:
        registry.apply_file(conf(new_text))
    assert "skrouterd.conf:15: creating tcpListener 'second' failed" in str(info.value)
    assert "previous configuration kept" in str(info.value)
    assert registry.find("tcpListener", "second") is None
    assert registry.get("tcpConnector", "back").attributes["port"] == 8080
    assert registry.get("tcpListener", "front").source == "config"


def test_apply_file_restart_only_router_attribute_is_refused() -> None:
    registry = Registry()
    registry.apply_file(conf(BASE))
    with pytest.raises(
        ApplyError,
        match="router attribute 'workerThreads' cannot be changed while running",
    ):
        registry.apply_file(conf(BASE.replace("id: r1", "id: r1\n    workerThreads: 8")))
    assert registry.router is not None and registry.router.attributes["workerThreads"] == 4


def test_apply_file_log_entities_update_and_reset() -> None:
    registry = Registry()
    recorder = Recorder()
    registry.subscribe("log", recorder)
    registry.apply_file(conf("log {\n module: TCP_ADAPTOR\n enable: debug+\n}\n"))
    entity = registry.get("log", "TCP_ADAPTOR")
    assert entity.attributes["enable"] == "debug+"
    assert entity.source == "config"
    registry.apply_file([])
    entity = registry.get("log", "TCP_ADAPTOR")
    assert entity.attributes["enable"] == "default"
    assert entity.source == "builtin"
    assert recorder.events == [
        ("update", "log/TCP_ADAPTOR"),
        ("update", "log/TCP_ADAPTOR"),
    ]


def test_apply_file_updates_ssl_profile_in_place() -> None:
    registry = Registry()
    text = "sslProfile {\n name: p\n ordinal: 1\n}\n"
    registry.apply_file(conf(text))
    identity = registry.get("sslProfile", "p").identity
    recorder = Recorder()
    registry.subscribe("sslProfile", recorder)
    result = registry.apply_file(conf(text.replace("ordinal: 1", "ordinal: 2")))
    assert len(result.changed) == 1
    assert recorder.events == [("update", "p")]
    assert registry.get("sslProfile", "p").identity == identity
