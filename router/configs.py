"""Typed, frozen configuration of each entity type.

The schema converts every attribute once (``router.schema``) and fills its
defaults; this module turns the converted values into one frozen dataclass
per entity type, so the code that uses a value reads ``cfg.port`` (an
``int``) instead of re-casting ``attrs["port"]`` and restating its default.

Defaults live in exactly one place, the schema's ``AttributeSpec``: the
dataclasses here have none, and ``from_values`` refuses values that the
schema did not complete.  Field names are the schema's camelCase attribute
names in snake_case (``caCertFile`` -> ``ca_cert_file``); a test checks that
every configurable attribute of the schema has its field and vice versa.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from router import schema

_CAMEL = re.compile(r"_([a-z0-9])")

C = TypeVar("C", bound="EntityConfig")


def attribute_name(field_name: str) -> str:
    """Schema attribute of a dataclass field: ``ca_cert_file`` -> ``caCertFile``."""
    return _CAMEL.sub(lambda m: m.group(1).upper(), field_name)


@dataclasses.dataclass(frozen=True)
class EntityConfig:
    """Base of the typed configs; ``entity_type`` is the schema's short name."""

    entity_type: ClassVar[str] = ""

    name: str

    @classmethod
    def from_values(cls: type[C], name: str, values: Mapping[str, object]) -> C:
        """Builds the config from converted, completed schema values.

        Raises KeyError naming the attribute when a value is missing: the
        caller skipped ``schema.complete``, which is a bug, not bad input.
        """
        kwargs: dict[str, Any] = {"name": name}
        for f in dataclasses.fields(cls):
            if f.name == "name":
                continue
            attr = attribute_name(f.name)
            if attr not in values:
                raise KeyError(f"{cls.entity_type} attribute '{attr}' was not completed")
            value = values[attr]
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    def attributes(self) -> dict[str, object]:
        """The schema attribute values this config was built from."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[attribute_name(f.name)] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_attributes(cls: type[C], name: str, raw: Mapping[str, object]) -> C:
        """Validates raw attribute values through the schema, then builds the
        config; raises ``schema.SchemaError`` for a bad value."""
        spec = schema.entity_type(cls.entity_type)
        return cls.from_values(name, schema.validate_attributes(spec, raw).values)


@dataclasses.dataclass(frozen=True)
class RouterConfig(EntityConfig):
    entity_type: ClassVar[str] = "router"

    id: str | None
    mode: str
    worker_threads: int
    worker_cpus: str
    worker_nice: int | None
    control_cpus: str
    drop_tcp_connections: bool
    tls_loader_threads: int
    drain_grace_seconds: int
    hello_interval_seconds: int
    hello_max_age_seconds: int
    ra_interval_seconds: int
    ra_interval_flux_seconds: int
    remote_ls_max_age_seconds: int
    max_routers: int
    metadata: str | None


    @property
    def worker_cpu_list(self) -> tuple[int, ...]:
        """``workerCpus`` as CPU numbers; empty when the workers are not pinned."""
        return schema.parse_cpu_list(self.worker_cpus)

    @property
    def control_cpu_list(self) -> tuple[int, ...]:
        """``controlCpus`` as CPU numbers; empty when the loop is not pinned."""
        return schema.parse_cpu_list(self.control_cpus)


@dataclasses.dataclass(frozen=True)
class LogConfig(EntityConfig):
    entity_type: ClassVar[str] = "log"

    module: str
    enable: str
    include_timestamp: bool
    output_file: str | None


@dataclasses.dataclass(frozen=True)
class SslProfileConfig(EntityConfig):
    entity_type: ClassVar[str] = "sslProfile"

    ca_cert_file: str | None
    cert_file: str | None
    private_key_file: str | None
    password: str | None
    ciphers: str | None
    protocols: str | None
    ordinal: int
    oldest_valid_ordinal: int
    check_interval_seconds: int
    allow_invalid_certificate_dates: bool


@dataclasses.dataclass(frozen=True)
class ListenerConfig(EntityConfig):
    """An AMQP (or, with ``http``, HTTP) listener of the control plane."""

    entity_type: ClassVar[str] = "listener"

    host: str
    port: int
    role: str
    ssl_profile: str | None
    cost: int
    authenticate_peer: bool
    require_ssl: bool
    sasl_mechanisms: tuple[str, ...] | None
    idle_timeout_seconds: int
    max_frame_size: int
    max_connections: int
    initial_handshake_timeout_seconds: int
    request_timeout_seconds: int
    backlog: int
    http: bool
    healthz: bool
    metrics: bool
    websockets: bool
    users_file: str | None
    allow_anonymous_writes: bool | None

    @property
    def loopback_only(self) -> bool:
        """Whether ``host`` binds loopback addresses only (127.0.0.0/8, ::1,
        localhost); an empty host means every interface."""
        return is_loopback_host(self.host)

    @property
    def anonymous_writes(self) -> bool:
        """The effective policy: ``allowAnonymousWrites`` when given, else
        allowed on a loopback-only listener and refused on any other."""
        if self.allow_anonymous_writes is not None:
            return self.allow_anonymous_writes
        return self.loopback_only

    def anonymous_writes_policy(self) -> str:
        """One phrase for the start-up log: the policy and why."""
        allowed = "anonymous writes " + ("allowed" if self.anonymous_writes else "refused")
        if self.allow_anonymous_writes is not None:
            why = f"allowAnonymousWrites: {str(self.allow_anonymous_writes).lower()}"
        elif self.loopback_only:
            why = "loopback-only listener"
        else:
            why = "not loopback-only; set allowAnonymousWrites: true to allow"
        return f"{allowed} ({why})"


@dataclasses.dataclass(frozen=True)
class ConnectorConfig(EntityConfig):
    """A link to another router, dialled by this one."""

    entity_type: ClassVar[str] = "connector"

    host: str
    port: int
    role: str
    cost: int
    ssl_profile: str | None
    sasl_mechanisms: tuple[str, ...] | None
    idle_timeout_seconds: int
    verify_hostname: bool
    max_frame_size: int


@dataclasses.dataclass(frozen=True)
class TcpListenerConfig(EntityConfig):
    entity_type: ClassVar[str] = "tcpListener"

    host: str
    port: int
    address: str
    backlog: int
    ssl_profile: str | None
    authenticate_peer: bool
    max_connections: int
    distribution: str
    tls_resumption: str


@dataclasses.dataclass(frozen=True)
class TcpConnectorConfig(EntityConfig):
    entity_type: ClassVar[str] = "tcpConnector"

    host: str
    port: int
    address: str
    ssl_profile: str | None
    verify_hostname: bool


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and literal loopback addresses; a host name
    other than ``localhost`` could resolve anywhere and is not loopback."""
    name = host.strip().strip("[]").lower()
    if name in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


CONFIG_TYPES: Mapping[str, type[EntityConfig]] = {
    c.entity_type: c
    for c in (
        RouterConfig,
        LogConfig,
        SslProfileConfig,
        ListenerConfig,
        ConnectorConfig,
        TcpListenerConfig,
        TcpConnectorConfig,
    )
}
