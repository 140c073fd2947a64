"""Typed entity configs: one field per configurable schema attribute, values
of the schema's types, defaults only from the schema."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from router import schema
from router.configs import (
    CONFIG_TYPES,
    EntityConfig,
    ListenerConfig,
    RouterConfig,
    SslProfileConfig,
    TcpConnectorConfig,
    TcpListenerConfig,
    attribute_name,
)
from router.engine import Engine, EngineOptions
from router.registry import Registry

_PYTHON_TYPES: dict[schema.AttrType, object] = {
    schema.AttrType.STRING: str,
    schema.AttrType.ENUM: str,
    schema.AttrType.INTEGER: int,
    schema.AttrType.PORT: int,
    schema.AttrType.BOOLEAN: bool,
    schema.AttrType.LIST: tuple[str, ...],
}


def test_every_configurable_type_has_a_config() -> None:
    assert set(CONFIG_TYPES) == set(schema.ENTITY_TYPES)


@pytest.mark.parametrize("kind", list(CONFIG_TYPES.values()), ids=lambda k: k.entity_type)
def test_fields_match_the_schema(kind: type[EntityConfig]) -> None:
    spec = schema.entity_type(kind.entity_type)
    fields = {attribute_name(f.name): f for f in dataclasses.fields(kind)}
    assert set(fields) == {a.name for a in spec.configurable()}
    hints = typing.get_type_hints(kind)
    for name, f in fields.items():
        attr = spec.attributes[name]
        assert f.default is dataclasses.MISSING, f"{name}: defaults belong to the schema"
        expected = _PYTHON_TYPES[attr.type]
        hint = hints[f.name]
        # optional exactly when the schema has no default and does not require it
        optional = attr.default is None and not attr.required and name != "name"
        want = (expected | None) if optional else expected  # type: ignore[operator]
        assert hint == want, f"{kind.__name__}.{f.name}: {hint} != {want}"


def test_defaults_come_from_the_schema() -> None:
    cfg = TcpListenerConfig.from_attributes("l", {"port": "amqp", "address": "a"})
    assert cfg == TcpListenerConfig(
        name="l",
        host="",
        port=5672,
        address="a",
        backlog=0,
        ssl_profile=None,
        authenticate_peer=False,
        max_connections=0,
        distribution="closest",
        tls_resumption="tickets",
    )
    router = RouterConfig.from_attributes("router", {})
    assert (router.worker_threads, router.tls_loader_threads, router.mode) == (4, 2, "standalone")


def test_values_are_converted_once() -> None:
    cfg = ListenerConfig.from_attributes(
        "m", {"port": "5673", "saslMechanisms": "PLAIN ANONYMOUS", "http": "yes"}
    )
    assert cfg.port == 5673
    assert cfg.sasl_mechanisms == ("PLAIN", "ANONYMOUS")
    assert cfg.http is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]


def test_bad_values_are_schema_errors() -> None:
    with pytest.raises(schema.InvalidValue, match="'port'"):
        TcpConnectorConfig.from_attributes("c", {"host": "h", "port": "x", "address": "a"})
    with pytest.raises(schema.MissingAttribute, match="'address'"):
        TcpConnectorConfig.from_attributes("c", {"host": "h", "port": 1})


def test_from_values_refuses_uncompleted_values() -> None:
    with pytest.raises(KeyError, match=r"sslProfile. was not completed"):
        TcpConnectorConfig.from_values("c", {"host": "h", "port": 1, "address": "a"})


def test_entity_config_follows_updates() -> None:
    registry = Registry()
    registry.create("sslProfile", {"name": "p", "ordinal": 1})
    entity = registry.get("sslProfile", "p")
    assert entity.config_as(SslProfileConfig).ordinal == 1
    assert entity.config_as(SslProfileConfig) is entity.config_as(SslProfileConfig)
    updated = registry.update("sslProfile", "p", {"ordinal": 3})
    assert updated.config_as(SslProfileConfig).ordinal == 3
    assert entity.config_as(SslProfileConfig).ordinal == 1  # the old entity is unchanged
    with pytest.raises(TypeError, match="no TcpListenerConfig"):
        entity.config_as(TcpListenerConfig)


def test_engine_options_leave_unset_values_to_the_engine() -> None:
    eng = Engine(EngineOptions(worker_threads=1))
    try:
        assert eng.workers == 1
        # backlog unset: the engine's own default applies and the listener opens
        listener = eng.listen("127.0.0.1", 0)
        assert listener.port > 0
        listener.close()
    finally:
        eng.stop()
