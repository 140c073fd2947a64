"""Compatibility with Skupper's management schema, built from its facts.

``router.skupper_facts`` is Skupper's ``skrouter.json`` as data.  Every
entity type and attribute there must be known to Skiff: the configuration
loader accepts it (or ignores it with a warning), the management agent
answers QUERY for every type and lets every attribute name be asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from router import schema, skupper_facts
from router.config import parse_config_text
from router.management.agent import Agent, Caller
from router.registry import Registry

T = schema.TYPE_PREFIX
NODE = {"type": "org.amqp.management", "name": "self"}
CONCRETE = schema.skupper_type_names()
CONFIGURATION = [
    t for t in CONCRETE if skupper_facts.TYPES[t]["extends"] == "configurationEntity"
]
WRITER = Caller(None, True)


def agent() -> Agent:
    registry = Registry()
    registry.create("router", {"id": "R"}, source="builtin", check_operation=False)
    return Agent(registry)


def call(a: Agent, props: dict[str, object], body: object = None) -> tuple[int, str, Any]:
    r = a.handle(props, body, WRITER)
    return r.status, r.description, r.body


def sample(facts: Mapping[str, object]) -> str:
    """A value Skupper's schema accepts for an attribute, as a file writes it."""
    kind = facts.get("type")
    if "default" in facts and facts["default"] is not None:
        default = facts["default"]
        return str(default).lower() if isinstance(default, bool) else str(default)
    if isinstance(kind, list):
        return str(kind[0])
    return {"integer": "1", "boolean": "true", "path": "/tmp/x", "map": "x"}.get(str(kind), "x")


def test_the_facts_cover_skuppers_types() -> None:
    assert {"router", "listener", "tcpListener", "tcpConnector", "sslProfile", "log",
            "network", "connection", "routerMetrics", "policy", "vhost", "router.link",
            "router.node", "router.address", "router.config.address", "allocator",
            "logStats", "site", "listenerAddress", "proxyProfile"} <= set(CONCRETE)  # fmt: skip


@pytest.mark.parametrize("type_name", CONCRETE)
def test_every_type_is_known(type_name: str) -> None:
    short = schema.skupper_type_name(type_name)
    assert short is not None
    assert short in schema.ENTITY_TYPES or short in schema.UNSUPPORTED_ENTITY_TYPES
    if short in schema.ENTITY_TYPES:
        assert schema.entity_type(T + type_name).short_name == type_name


@pytest.mark.parametrize("type_name", sorted(schema.ENTITY_TYPES))
def test_every_attribute_of_an_implemented_type_is_known(type_name: str) -> None:
    spec = schema.entity_type(type_name)
    for attr in schema.skupper_attributes(type_name):
        if attr in ("identity", "type"):
            continue
        # known: either Skiff's own or ignored with a warning, never unknown
        assert attr in spec.attributes or attr in spec.unsupported, attr


def _skupper_config_line(attr: str, facts: Mapping[str, object]) -> str | None:
    if attr in ("identity", "type") or facts.get("type") in ("map", "properties"):
        return None
    return f"    {attr}: {sample(facts)}\n"


@pytest.mark.parametrize("type_name", [t for t in CONFIGURATION if t not in schema.ENTITY_TYPES])
def test_every_other_configurable_type_and_its_attributes_load_with_a_warning(
    type_name: str,
) -> None:
    lines = [
        line
        for attr, facts in schema.skupper_attributes(type_name).items()
        if (line := _skupper_config_line(attr, facts)) is not None
    ]
    config = parse_config_text(f"{type_name} {{\n{''.join(lines)}}}\n", "skrouterd.conf")
    assert config.entities == []
    assert [str(w) for w in config.warnings] == [
        f"skrouterd.conf:1: entity type '{type_name}' is not supported by Skiff and is ignored"
    ]


def test_a_misspelt_attribute_of_an_ignored_type_is_still_an_error() -> None:
    with pytest.raises(Exception, match=r"vhost attribute 'hostnme' is unknown.*'hostname'"):
        parse_config_text("vhost {\n    hostnme: x\n}\n", "skrouterd.conf")


@pytest.mark.parametrize("type_name", sorted(schema.ENTITY_TYPES))
def test_each_skupper_only_attribute_of_an_implemented_type_warns(type_name: str) -> None:
    spec = schema.entity_type(type_name)
    required = {
        "tcpListener": "    port: 9000\n    address: a\n",
        "tcpConnector": "    port: 80\n    address: a\n",
        "log": "    module: DEFAULT\n",
    }.get(type_name, "")
    extra = [
        line
        for attr, facts in schema.skupper_attributes(type_name).items()
        if attr not in spec.attributes and (line := _skupper_config_line(attr, facts)) is not None
    ]
    config = parse_config_text(f"{type_name} {{\n{required}{''.join(extra)}}}\n", "x.conf")
    warned = " ".join(str(w) for w in config.warnings)
    for line in extra:
        assert f"'{line.split(':')[0].strip()}' is not supported by Skiff" in warned


@pytest.mark.parametrize("type_name", CONCRETE)
def test_every_type_answers_query(type_name: str) -> None:
    status, desc, body = call(agent(), {**NODE, "operation": "QUERY", "entityType": T + type_name})
    assert status == 200, desc
    assert set(schema.skupper_attributes(type_name)) - {"password", "saslPassword"} <= set(
        body["attributeNames"]
    )


@pytest.mark.parametrize("type_name", CONCRETE)
def test_every_attribute_name_can_be_asked_for(type_name: str) -> None:
    names = list(schema.skupper_attributes(type_name))
    status, desc, body = call(
        agent(),
        {**NODE, "operation": "QUERY", "entityType": T + type_name},
        {"attributeNames": names},
    )
    assert status == 200, desc
    assert body["attributeNames"] == names
    for row in body["results"]:
        assert len(row) == len(names)


@pytest.mark.parametrize("type_name", CONCRETE)
def test_types_skiff_does_not_implement_cannot_be_created(type_name: str) -> None:
    if type_name in schema.ENTITY_TYPES or type_name in schema.OPERATIONAL_TYPES:
        return
    status, desc, _ = call(agent(), {"operation": "CREATE", "type": T + type_name, "name": "n"}, {})
    assert status == 501 and f"'{T}{type_name}' is not implemented by Skiff" in desc


def test_unimplemented_types_have_no_rows_but_singletons_have_one() -> None:
    a = agent()
    for type_name in ("router.link", "router.node", "router.address", "vhost", "allocator"):
        _, _, body = call(a, {**NODE, "operation": "QUERY", "entityType": T + type_name})
        assert body["results"] == [], type_name
    names = ["maxConnections", "defaultVhost", "totalDenials"]
    _, _, body = call(
        a, {**NODE, "operation": "QUERY", "entityType": T + "policy"}, {"attributeNames": names}
    )
    assert body["results"] == [[65535, "$default", 0]]


def test_unknown_attribute_is_404_as_in_skupper_but_core_types_give_null() -> None:
    a = agent()
    status, desc, _ = call(
        a, {**NODE, "operation": "QUERY", "entityType": T + "router"}, {"attributeNames": ["aera"]}
    )
    assert status == 404
    assert "Unknown attributes ['aera'] for type io.skupper.router.router." in desc
    assert "did you mean 'area'" in desc
    # Skupper's core agent answers router.link, connection... with a null column
    status, _, body = call(
        a,
        {**NODE, "operation": "QUERY", "entityType": T + "router.link"},
        {"attributeNames": ["linkType", "adminStatus"]},
    )
    assert status == 200 and body["attributeNames"] == ["linkType", "adminStatus"]


def test_router_row_has_skuppers_attributes_with_defaults() -> None:
    status, _, row = call(agent(), {"operation": "READ", "type": T + "router", "name": "router"})
    assert status == 200
    assert row["id"] == "R" and row["mode"] == "standalone"
    assert row["area"] == "0"  # Skupper's default, typed string on the wire
    assert row["helloIntervalSeconds"] == 1 and row["saslConfigName"] == "skrouterd"
    assert row["debugDumpFile"] is None and row["defaultDistribution"] == "balanced"


def test_ports_are_strings_on_the_wire_and_defaults_follow_skupper() -> None:
    a = agent()
    status, desc, row = call(
        a, {"operation": "CREATE", "type": T + "tcpConnector", "name": "c"},
        {"port": "8080", "address": "svc"},
    )  # fmt: skip
    assert status == 201, desc
    assert row["port"] == "8080" and row["host"] == "127.0.0.1"  # Skupper's default host
    status, desc, row = call(
        a, {"operation": "CREATE", "type": "tcpListener", "name": "l"},
        {"port": 0, "address": "svc", "multiAddressStrategy": "none"},
    )  # fmt: skip
    assert status == 201, desc
    assert row["port"] == "0" and row["backlog"] == 0 and row["observer"] == "auto"


def test_read_update_delete_by_name_or_identity_without_type() -> None:
    a = agent()
    call(a, {"operation": "CREATE", "type": T + "tcpConnector", "name": "c"},
         {"port": "80", "address": "svc"})  # fmt: skip
    status, desc, row = call(a, {"operation": "READ", "name": "c"})
    assert status == 200 and row["type"] == T + "tcpConnector", desc
    status, _, by_id = call(a, {"operation": "READ", "identity": row["identity"]})
    assert status == 200 and by_id == row
    status, desc, _ = call(a, {"operation": "READ", "name": "nothing"})
    assert status == 404 and "No entity with name=nothing" in desc
    status, _, log = call(a, {"operation": "UPDATE", "name": "log/AGENT"}, {"enable": "warn+"})
    assert status == 200 and log["enable"] == "warn+"
    status, desc, _ = call(a, {"operation": "DELETE", "name": "c"})
    assert status == 204, desc
    assert call(a, {"operation": "READ", "name": "c"})[0] == 404


def test_tcp_listener_update_allows_only_what_skupper_allows() -> None:
    a = agent()
    call(a, {"operation": "CREATE", "type": "tcpListener", "name": "l"},
         {"port": 0, "address": "svc"})  # fmt: skip
    status, desc, _ = call(a, {"operation": "UPDATE", "type": "tcpListener", "name": "l"},
                           {"observer": "none"})  # fmt: skip
    assert status == 200, desc
    status, desc, _ = call(a, {"operation": "UPDATE", "type": "tcpListener", "name": "l"},
                           {"port": "1"})  # fmt: skip
    assert status == 400 and "cannot be updated" in desc


def test_node_operations_in_skuppers_shape() -> None:
    a = agent()
    assert call(a, {**NODE, "operation": "GET-ANNOTATIONS"})[2] == {}
    assert call(a, {**NODE, "operation": "GET-MGMT-NODES"})[2] == []
    types = call(a, {**NODE, "operation": "GET-TYPES"})[2]
    assert set(types) >= {T + t for t in CONCRETE}
    assert types[T + "listener"] == [T + "configurationEntity", T + "entity"]
    assert types[T + "router.link"] == [T + "operationalEntity", T + "entity"]
    got = call(a, {**NODE, "operation": "GET-SCHEMA"})[2]
    assert got["prefix"] == "io.skupper.router"
    assert set(got["entityTypes"]) >= set(CONCRETE)
    vhost_groups = got["entityTypes"]["vhostUserGroupSettings"]["attributes"]
    assert vhost_groups["maxSenders"]["default"] == 2147483647  # skstat --vhostgroups reads it
    text = call(a, {"type": T + "management", "operation": "GET-JSON-SCHEMA", "indent": 2})[2]
    assert isinstance(text, str) and '"entityTypes"' in text


def test_get_log_returns_recent_records_with_level_filter() -> None:
    from router.log import get_logger

    a = agent()
    get_logger("AGENT").warning("compat test warning record")
    records = call(a, {**NODE, "operation": "GET-LOG"})[2]
    mine = [r for r in records if r[2] == "compat test warning record"]
    assert mine and mine[-1][0] == "AGENT" and mine[-1][1] == "warning"
    assert isinstance(mine[-1][5], int) and len(mine[-1]) == 6
    assert len(call(a, {**NODE, "operation": "GET-LOG", "limit": 1})[2]) == 1
    errors = call(a, {**NODE, "operation": "GET-LOG", "level": "error"})[2]
    assert all(r[1] in ("error", "critical") for r in errors)
    status, desc, _ = call(a, {**NODE, "operation": "GET-LOG", "level": "loud"})
    assert status == 400 and "unknown" in desc


def test_writes_on_unimplemented_types_and_missing_entities() -> None:
    a = agent()
    status, desc, _ = call(a, {"operation": "DELETE", "type": T + "vhost", "name": "v"})
    assert status == 404 and "not implemented by Skiff" in desc
    status, _, _ = call(a, {"operation": "READ", "type": "policy", "name": "policy"})
    assert status == 200


@pytest.mark.parametrize(
    ("address", "served"),
    [
        ("$management", True),
        ("amqp:/$management", True),
        ("_local/$management", True),
        ("_topo/0/R/$management", True),  # skstat -r R
        ("amqp:/_topo/0/R/$management", True),
        ("_topo/0/Other/$management", False),  # another router: not answered here
        ("_edge/E/$management", False),
        ("$management2", False),
        ("queue", False),
    ],
)
def test_which_management_addresses_this_router_answers(address: str, served: bool) -> None:
    from router.management.agent import serves_address

    assert serves_address(address, "R") is served


def test_operations_advertised_are_answered() -> None:
    a = agent()
    ops = call(a, {**NODE, "operation": "GET-OPERATIONS"})[2]
    assert "UPDATE" in ops[T + "tcpListener"]  # Skupper's; Skiff answers it
    assert "UPDATE" not in ops[T + "network"]  # readable only
    assert ops[T + "vhost"] == ["READ"]
    status, _, _ = call(a, {"operation": "UPDATE", "type": "network", "name": "network"}, {})
    assert status == 501
