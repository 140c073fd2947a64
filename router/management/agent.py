"""The management agent behind ``$management``.

It speaks the AMQP management conventions the Skupper tools use: request
application-properties ``operation``, ``type``, ``name``, ``identity``;
responses with ``statusCode`` and ``statusDescription``. Entity changes go
through the registry, which validates with the schema exactly as it does a
configuration file, so a bad attribute gets the same message either way.
Read-only types (connections, metrics) come from providers registered by
the adaptors. The agent never raises to its caller: every failure becomes a
status code, so a bad request never costs a client its connection.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from router import schema
from router.log import LEVEL_NUMBERS, get_logger
from router.management import log_ring
from router.registry import Registry, RegistryError

_log = get_logger("AGENT")

MANAGEMENT_TYPE = "org.amqp.management"
SELF = "self"
NODE_OPERATIONS = (
    "QUERY",
    "GET-TYPES",
    "GET-ANNOTATIONS",
    "GET-ATTRIBUTES",
    "GET-OPERATIONS",
    "GET-MGMT-NODES",
    "GET-SCHEMA",
    "GET-JSON-SCHEMA",
    "GET-LOG",
)
# Types a node operation may name: the AMQP management node and Skupper's
# ``management`` entity, which carries GET-SCHEMA, GET-JSON-SCHEMA, GET-LOG.
NODE_TYPES = frozenset({MANAGEMENT_TYPE, schema.TYPE_PREFIX + "management", "management", ""})
ENTITY_OPERATIONS = ("CREATE", "READ", "UPDATE", "DELETE")
WRITES = frozenset({"CREATE", "UPDATE", "DELETE"})

STATUS_TEXT = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}

# Types Skupper's core (C) agent answers: a QUERY naming an attribute they do
# not have gets a null column there, not an error (skstat -l asks for
# router.link adminStatus); every other type answers 404 "Unknown attributes".
C_AGENT_TYPES = frozenset(
    {
        "router.config.address",
        "router.config.autoLink",
        "router.address",
        "router.link",
        "routerMetrics",
        "connection",
    }
)

Rows = Callable[[], list[dict[str, object]]]
Augment = Callable[[Mapping[str, object]], Mapping[str, object]]
Updater = Callable[[Mapping[str, object], Mapping[str, object]], None]
# Decides whether a type may be read now: raises ManagementError (503) or
# returns application properties to add to the answer (a stale read's age).
Guard = Callable[[Mapping[object, object]], Mapping[str, object]]


class ManagementError(Exception):
    """A request the agent refuses; ``status`` is the response code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Caller:
    """Who sent a request, as the connection established it."""

    user: str | None
    can_write: bool
    connection_id: int = 0


@dataclass(frozen=True)
class Response:
    status: int
    description: str
    body: object = None
    properties: Mapping[str, object] | None = None  # added to the reply's own


def serves_address(address: str, router_id: str) -> bool:
    """Whether a request sent to ``address`` is this router's to answer:
    ``$management`` (also as ``amqp:/$management`` or ``_local/$management``)
    and ``_topo/0/<this router's id>/$management``, which ``skstat -r`` sends.
    Another router's node is not (see ``routed_router``)."""
    path = address.removeprefix("amqp:").lstrip("/")
    parts = path.split("/")
    if parts[-1] != "$management":
        return False
    if len(parts) == 1 or parts[:-1] == ["_local"]:
        return True
    return len(parts) == 4 and parts[0] == "_topo" and parts[2] == router_id


def routed_router(address: str, router_id: str) -> str | None:
    """The other router whose management node ``address`` names, as
    Skupper's tools address it (``_topo/0/<id>/$management`` for ``-r``,
    ``_edge/<id>/$management`` for ``--edge-router``); None when the address
    is this router's own node or no management node at all."""
    path = address.removeprefix("amqp:").lstrip("/")
    parts = path.split("/")
    if parts[-1] != "$management":
        return None
    if len(parts) == 4 and parts[0] == "_topo" and parts[2] and parts[2] != router_id:
        return parts[2]
    if len(parts) == 3 and parts[0] == "_edge" and parts[1] and parts[1] != router_id:
        return parts[1]
    return None


def _text(props: Mapping[object, object], key: str) -> str | None:
    value = props.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ManagementError(400, f"application property '{key}' must be a string, got {value!r}")
    return value


def _int(props: Mapping[object, object], key: str) -> int | None:
    value = props.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise ManagementError(400, f"application property '{key}' must be an integer")
    if isinstance(value, int):
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value)
    else:
        raise ManagementError(
            400, f"application property '{key}' must be an integer, got {value!r}"
        )
    if number < 0:
        raise ManagementError(400, f"application property '{key}' must not be negative")
    return number


def _attributes_body(body: object, operation: str) -> dict[str, object]:
    if body is None:
        return {}
    if not isinstance(body, Mapping):
        raise ManagementError(
            400, f"{operation} body must be a map of attributes, got {type(body).__name__}"
        )
    out: dict[str, object] = {}
    for key, value in body.items():
        if not isinstance(key, str):
            raise ManagementError(400, f"{operation} attribute names must be strings: {key!r}")
        out[str(key)] = value
    return out


@dataclass(frozen=True)
class EntityKind:
    """A type a request names: Skiff's spec, or None for a type of Skupper's
    schema that Skiff does not implement (known, never instantiated)."""

    short: str
    spec: schema.EntityTypeSpec | None

    @property
    def full(self) -> str:
        return schema.TYPE_PREFIX + self.short


_SKUPPER_TYPE_NAMES = {
    "boolean": "boolean",
    "integer": "integer",
    "enum": "enum",
    "list": "list",
    "string": "string",
    "port": "string",  # Skupper types ports as strings ("amqp" works)
}


def _fill(name: str, facts: Mapping[str, object]) -> object:
    """The value of an attribute Skiff does not keep: Skupper's default, 0 for
    a counter of something Skiff never has (links, deliveries), else null."""
    value = schema.skupper_default(facts)
    if value is not None:
        return value
    if facts.get("graph") and facts.get("type") == "integer" and not name.endswith("Seconds"):
        return 0
    return None


def _wire(facts: Mapping[str, object] | None, value: object) -> object:
    """A value in Skupper's wire type: a number Skupper types as a string
    (ports) goes out as a string."""
    if (
        facts is not None
        and facts.get("type") in ("string", "path")
        and isinstance(value, int)
        and not isinstance(value, bool)
    ):
        return str(value)
    return value


class Agent:
    """Answers management requests against the registry and live state."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._providers: dict[str, Rows] = {}
        self._augments: dict[str, Augment] = {}
        self._updaters: dict[str, Updater] = {}
        self._guards: dict[str, Guard] = {}
        self._log_ring = log_ring.install()
        self.requests = 0

    def provide(self, type_name: str, rows: Rows) -> None:
        """Registers the source of a read-only type's entities."""
        self._providers[schema.management_type(type_name).short_name] = rows

    def augment(self, type_name: str, extra: Augment) -> None:
        """Registers values of Skupper attributes that a registry type's rows
        lack (the router's ``hostName``); ``extra`` gets the row so far."""
        self._augments[schema.management_type(type_name).short_name] = extra

    def on_update(self, type_name: str, updater: Updater) -> None:
        """Registers what UPDATE of a read-only type does (``connection``
        ``adminStatus: deleted`` closes it); ``updater`` gets the row and the
        requested attributes and raises ManagementError to refuse."""
        self._updaters[schema.management_type(type_name).short_name] = updater

    def guard(self, type_name: str, check: Guard) -> None:
        """Registers a check run before a type is read: the network's types
        answer 503 until the router is synchronised (see ``Guard``)."""
        self._guards[schema.management_type(type_name).short_name] = check

    def _guarded(self, props: Mapping[object, object]) -> Mapping[str, object] | None:
        named = _text(props, "entityType") or _text(props, "type")
        if not named or not self._guards:
            return None
        try:
            short = schema.management_type(named).short_name
        except schema.SchemaError:
            return None
        check = self._guards.get(short)
        return None if check is None else check(props)

    # ------------------------------------------------------------ dispatch

    def handle(
        self, props: Mapping[object, object] | None, body: object, caller: Caller
    ) -> Response:
        self.requests += 1
        try:
            extra = self._guarded(props or {})
            response = self._handle(props or {}, body, caller)
            if extra:
                response = dataclasses.replace(response, properties=extra)
            return response
        except ManagementError as e:
            return self._error(e.status, e.message)
        except (RegistryError, schema.SchemaError) as e:
            return self._error(e.status, e.message)

    @staticmethod
    def _error(status: int, message: str) -> Response:
        return Response(status, f"{STATUS_TEXT.get(status, 'Error')}: {message}")

    def _handle(self, props: Mapping[object, object], body: object, caller: Caller) -> Response:
        operation = _text(props, "operation")
        if not operation:
            raise ManagementError(400, "request has no 'operation' application property")
        operation = operation.upper()
        type_name = _text(props, "type")
        if operation in NODE_OPERATIONS:
            if type_name is not None and type_name not in NODE_TYPES:
                raise ManagementError(
                    400,
                    f"{operation} is an operation of type '{MANAGEMENT_TYPE}', not '{type_name}'",
                )
            return self._node_operation(operation, props, body)
        if operation not in ENTITY_OPERATIONS:
            raise ManagementError(
                501,
                f"operation '{operation}' is not implemented; operations: "
                + ", ".join((*ENTITY_OPERATIONS, *NODE_OPERATIONS)),
            )
        name = _text(props, "name")
        identity = _text(props, "identity")
        attrs = _attributes_body(body, operation)
        if type_name is None and isinstance(attrs.get("type"), str):
            type_name = str(attrs["type"])
        if type_name in NODE_TYPES and operation == "READ" and not name and not identity:
            return Response(200, "OK", self._self_row())
        if type_name is None:
            if operation == "CREATE":
                raise ManagementError(400, "CREATE needs a 'type' application property")
            kind, row = self._find_anywhere(operation, name, identity)
            # READ, UPDATE and DELETE by name or identity alone, as Skupper allows
            if operation == "READ":
                return Response(200, "OK", row)
            key = str(row.get("name") or row.get("identity"))
            name, identity = key, None
        else:
            kind = self._kind(type_name)
        if operation in WRITES and kind.spec is None:
            raise ManagementError(
                501 if operation == "CREATE" else 404,
                f"entity type '{kind.full}' is not implemented by Skiff"
                if operation == "CREATE"
                else f"No entity with {self._ids(name, identity)} ({kind.full} is not "
                "implemented by Skiff)",
            )
        if operation in WRITES and not caller.can_write:
            who = f"user '{caller.user}'" if caller.user else "an anonymous client"
            raise ManagementError(
                403,
                f"{operation} needs write access and {who} does not have it on this listener "
                "(see docs/management.md, users file and allowAnonymousWrites)",
            )
        spec = kind.spec
        if spec is None or spec.short_name in schema.OPERATIONAL_TYPES:
            if operation == "READ":
                return Response(200, "OK", self._read_row(kind, name, identity))
            if operation == "UPDATE" and spec is not None and spec.short_name in self._updaters:
                row = self._read_row(kind, name, identity)
                attrs.pop("type", None)
                attrs.pop("identity", None)
                attrs.pop("name", None)
                self._updaters[spec.short_name](row, attrs)
                _log.info(
                    f"management: {self._who(caller)} updated {spec.short_name} "
                    f"'{row.get('name')}' ({', '.join(f'{k}={v}' for k, v in attrs.items())})"
                )
                return Response(200, "OK", row)
            raise ManagementError(
                501,
                f"operation {operation} is not implemented on {kind.full}; allowed: "
                + ", ".join(self._operations(kind)),
            )
        body_type = attrs.pop("type", None)
        if body_type is not None and schema.short_type_name(str(body_type)) != spec.short_name:
            raise ManagementError(
                400, f"body attribute 'type' is '{body_type}' but the request type is '{type_name}'"
            )
        attrs.pop("identity", None)
        if operation == "CREATE":
            if name is not None:
                attrs["name"] = name
            entity = self._registry.create(spec.short_name, attrs)
            _log.info(f"management: {self._who(caller)} created {spec.short_name} '{entity.name}'")
            return Response(201, "Created", self._registry_row(kind, entity.name))
        key = self._key(operation, name, identity)
        if operation == "READ":
            return Response(200, "OK", self._registry_row(kind, key))
        if operation == "UPDATE":
            if schema.UPDATE not in spec.operations:
                return Response(200, "OK", self._update_ignored(kind, key, attrs))
            entity = self._registry.update(spec.short_name, key, attrs)
            _log.info(f"management: {self._who(caller)} updated {spec.short_name} '{entity.name}'")
            return Response(200, "OK", self._registry_row(kind, entity.name))
        entity = self._registry.delete(spec.short_name, key)
        _log.info(f"management: {self._who(caller)} deleted {spec.short_name} '{entity.name}'")
        return Response(204, "No Content")

    def _update_ignored(
        self, kind: EntityKind, key: str, attrs: Mapping[str, object]
    ) -> dict[str, object]:
        """UPDATE of a type Skiff cannot update: allowed only where Skupper
        allows it (``tcpListener``) and only for attributes Skiff ignores
        (its ``observer``); the entity is answered unchanged."""
        assert kind.spec is not None
        skupper_ops = schema.skupper_type_facts(kind.short) or {}
        operations = skupper_ops.get("operations") or []
        if schema.UPDATE not in operations:  # type: ignore[operator]
            raise ManagementError(
                501,
                f"operation UPDATE is not implemented on {kind.full}; allowed: "
                + ", ".join(self._operations(kind)),
            )
        row = self._registry_row(kind, key)
        skupper = schema.skupper_attributes(kind.short)
        for attr, value in attrs.items():
            if attr in ("name", "identity", "type") and value in (row.get(attr), kind.full):
                continue
            resolved = schema.resolve_attribute(kind.spec, attr)
            facts = skupper.get(resolved.canonical or attr, {})
            if resolved.canonical is not None or not facts.get("update"):
                raise ManagementError(
                    400,
                    f"{kind.short} attribute '{attr}' cannot be updated; delete and create the "
                    f"{kind.short} instead",
                )
        return row

    @staticmethod
    def _who(caller: Caller) -> str:
        return f"user '{caller.user}'" if caller.user else "anonymous client"

    @staticmethod
    def _ids(name: str | None, identity: str | None) -> str:
        return f"identity={identity}" if identity else f"name={name}"

    @staticmethod
    def _key(operation: str, name: str | None, identity: str | None) -> str:
        if name:
            return name
        if identity:
            return identity
        raise ManagementError(400, f"{operation} needs a 'name' or 'identity' application property")

    @staticmethod
    def _spec(type_name: str) -> schema.EntityTypeSpec:
        kind = Agent._kind(type_name)
        if kind.spec is None:
            raise ManagementError(501, f"entity type '{kind.full}' is not implemented by Skiff")
        return kind.spec

    @staticmethod
    def _kind(type_name: str) -> EntityKind:
        try:
            spec = schema.management_type(type_name)
            return EntityKind(spec.short_name, spec)
        except schema.SchemaError:
            pass
        short = schema.skupper_type_name(type_name)
        if short is None:
            alias = schema.SKUPPER_TYPE_ALIASES.get(schema.short_type_name(type_name))
            short = alias
        if short is not None and (
            schema.skupper_type_facts(short) is not None or short in schema.UNSUPPORTED_ENTITY_TYPES
        ):
            return EntityKind(schema.SKUPPER_TYPE_ALIASES.get(short, short), None)
        known = [s.short_name for s in schema.management_types()] + schema.skupper_type_names()
        bare = schema.short_type_name(type_name)
        raise ManagementError(
            400, f"unknown entity type '{type_name}'{schema.did_you_mean(bare, known)}"
        )

    # ------------------------------------------------------------ rows

    @staticmethod
    def _kinds() -> list[EntityKind]:
        """Every type answered for: Skiff's, then Skupper's other types."""
        out = [EntityKind(s.short_name, s) for s in schema.management_types()]
        have = {k.short for k in out}
        out += [EntityKind(t, None) for t in schema.skupper_type_names() if t not in have]
        return out

    @staticmethod
    def _columns(kind: EntityKind, *, secrets: bool = False) -> list[str]:
        """Attribute names of a type: Skiff's, then Skupper's others."""
        names: dict[str, None] = {}
        if kind.spec is not None:
            for a in kind.spec.attributes.values():
                if secrets or not a.secret:
                    names.setdefault(a.name)
        for attr, facts in schema.skupper_attributes(kind.short).items():
            if secrets or not facts.get("hidden"):
                names.setdefault(attr)
        return list(names)

    def _complete(self, kind: EntityKind, row: Mapping[str, object]) -> dict[str, object]:
        """A row with every attribute of the type, in Skupper's wire types."""
        skupper = schema.skupper_attributes(kind.short)
        secret = {a.name for a in kind.spec.attributes.values() if a.secret} if kind.spec else set()
        extra = self._augments.get(kind.short)
        merged: Mapping[str, object] = row
        if extra is not None:
            merged = {**row, **extra(row)}
        out: dict[str, object] = {}
        for name in self._columns(kind):
            if name in secret:
                continue
            facts = skupper.get(name)
            if name in merged:
                value = merged[name]
            elif facts is not None:
                value = _fill(name, facts)
            else:
                value = None
            out[name] = _wire(facts, value)
        out["type"] = kind.full
        return out

    def _rows(self, kind: EntityKind) -> list[dict[str, object]]:
        spec = kind.spec
        if spec is None:
            facts = schema.skupper_type_facts(kind.short)
            if facts is not None and facts.get("singleton"):
                # Skupper always has its singletons (policy): one row of defaults
                return [self._complete(kind, {"name": kind.short, "identity": kind.short})]
            return []
        if spec.short_name in schema.OPERATIONAL_TYPES:
            provider = self._providers.get(spec.short_name)
            rows = provider() if provider is not None else []
        else:
            rows = self._registry.query(spec.short_name)
        return [self._complete(kind, row) for row in rows]

    def _registry_row(self, kind: EntityKind, key: str) -> dict[str, object]:
        return self._complete(kind, self._registry.read(kind.short, key))

    def _read_row(
        self, kind: EntityKind, name: str | None, identity: str | None
    ) -> dict[str, object]:
        key = self._key("READ", name, identity)
        for row in self._rows(kind):
            if key in (row.get("name"), row.get("identity")):
                return row
        raise ManagementError(404, f"{kind.short} '{key}' not found")

    def _find_anywhere(
        self, operation: str, name: str | None, identity: str | None
    ) -> tuple[EntityKind, dict[str, object]]:
        """The entity a request names by name or identity alone."""
        key = self._key(operation, name, identity)
        field = "name" if name else "identity"
        for kind in self._kinds():
            if kind.spec is not None and kind.short in schema.ENTITY_TYPES:
                entity = self._registry.find(kind.short, key)
                if entity is not None and key in (entity.name, entity.identity):
                    return kind, self._registry_row(kind, entity.name)
                continue
            for row in self._rows(kind):
                if row.get(field) == key:
                    return kind, row
        raise ManagementError(404, f"No entity with {field}={key}")

    def _self_row(self) -> dict[str, object]:
        return {"name": SELF, "identity": SELF, "type": MANAGEMENT_TYPE}

    # ------------------------------------------------------------ node operations

    def _types_filter(self, props: Mapping[object, object]) -> list[EntityKind]:
        entity_type = _text(props, "entityType")
        if entity_type:
            return [self._kind(entity_type)]
        return self._kinds()

    def _operations(self, kind: EntityKind) -> list[str]:
        if kind.spec is None:
            return ["READ"]
        ops = set(kind.spec.allowed_operations)
        if kind.spec.short_name in schema.OPERATIONAL_TYPES:
            ops -= {schema.CREATE, schema.DELETE}
        if kind.short in self._updaters:
            ops.add(schema.UPDATE)
        facts = schema.skupper_type_facts(kind.short) or {}
        if kind.short in schema.ENTITY_TYPES and schema.UPDATE in (
            facts.get("operations") or []  # type: ignore[operator]
        ):
            ops.add(schema.UPDATE)  # tcpListener: Skupper's UPDATE of what Skiff ignores
        return sorted(ops)

    @staticmethod
    def _bases(kind: EntityKind) -> list[str]:
        if kind.spec is not None:
            base = (
                "configurationEntity" if kind.short in schema.ENTITY_TYPES else "operationalEntity"
            )
        else:
            facts = schema.skupper_type_facts(kind.short) or {}
            base = str(facts.get("extends") or "configurationEntity")
        return [schema.TYPE_PREFIX + base, schema.TYPE_PREFIX + "entity"]

    def _node_operation(
        self, operation: str, props: Mapping[object, object], body: object
    ) -> Response:
        name = _text(props, "name")
        if name not in (None, SELF, "") and not name.endswith("$management"):
            raise ManagementError(404, f"management node '{name}' not found (use 'self')")
        if operation == "QUERY":
            return Response(200, "OK", self._query(props, body))
        if operation == "GET-TYPES":
            return Response(200, "OK", {k.full: self._bases(k) for k in self._types_filter(props)})
        if operation == "GET-ANNOTATIONS":
            return Response(200, "OK", {})
        if operation == "GET-ATTRIBUTES":
            return Response(
                200,
                "OK",
                {k.full: self._columns(k, secrets=True) for k in self._types_filter(props)},
            )
        if operation == "GET-OPERATIONS":
            return Response(
                200, "OK", {k.full: self._operations(k) for k in self._types_filter(props)}
            )
        if operation == "GET-MGMT-NODES":
            # a standalone router knows no other management nodes
            return Response(200, "OK", [])
        if operation == "GET-LOG":
            return Response(200, "OK", self._get_log(props))
        if operation == "GET-JSON-SCHEMA":
            indent = _int(props, "indent")
            return Response(200, "OK", json.dumps(self._schema(), indent=indent))
        return Response(200, "OK", self._schema())

    def _get_log(self, props: Mapping[object, object]) -> list[list[object]]:
        limit = _int(props, "limit")
        level = _text(props, "level")
        if level is not None:
            word = level.lower().removesuffix("+")
            if word not in LEVEL_NUMBERS:
                raise ManagementError(
                    400,
                    f"GET-LOG level '{level}' is unknown{schema.did_you_mean(word, LEVEL_NUMBERS)}"
                    f": expected one of {', '.join(LEVEL_NUMBERS)}",
                )
            level = word
        return self._log_ring.recent(limit or None, level)

    def _query(self, props: Mapping[object, object], body: object) -> dict[str, object]:
        request = _attributes_body(body, "QUERY")
        names_value = request.get("attributeNames")
        if names_value is None:
            names: list[str] = []
        elif isinstance(names_value, list) and all(isinstance(n, str) for n in names_value):
            names = [str(n) for n in names_value]
        else:
            raise ManagementError(400, "QUERY attributeNames must be a list of strings")
        entity_type = _text(props, "entityType") or (
            request.get("entityType") if isinstance(request.get("entityType"), str) else None
        )
        offset = _int(props, "offset") or 0
        count = _int(props, "count")
        kinds = (
            [self._kind(str(entity_type))]
            if entity_type
            else [k for k in self._kinds() if k.spec is not None]
        )
        if names:
            known: dict[str, None] = {}
            for k in kinds:
                known.update(dict.fromkeys(self._columns(k, secrets=True)))
            unknown = [n for n in names if n not in known]
            if unknown and not (entity_type and kinds[0].short in C_AGENT_TYPES):
                # Skupper's answer: 404 "Unknown attributes [...] for type T."
                where = f" for type {kinds[0].full}" if entity_type else ""
                raise ManagementError(
                    404,
                    f"Unknown attributes {unknown}{where}.{schema.did_you_mean(unknown[0], known)}",
                )
        else:
            seen: dict[str, None] = {}
            for k in kinds:
                seen.update(dict.fromkeys(self._columns(k)))
            names = list(seen)
        results: list[list[object]] = []
        for k in kinds:
            if not entity_type and k.short in self._guards:
                try:
                    self._guards[k.short](props)
                except ManagementError:
                    continue  # not synchronised: left out, never served partial
            for row in self._rows(k):
                values = [row.get(n) for n in names]
                if any(v is not None for v in values):  # as Skupper: no all-null rows
                    results.append(values)
        selected = results[offset:] if count is None else results[offset : offset + count]
        return {"attributeNames": names, "results": selected}

    def _schema(self) -> dict[str, object]:
        """The schema in Skupper's GET-SCHEMA shape (short type names as keys)."""
        types: dict[str, object] = {}
        for kind in self._kinds():
            skupper = schema.skupper_attributes(kind.short)
            attributes: dict[str, object] = {}
            for attr in self._columns(kind, secrets=True):
                if attr == "type":
                    continue  # Skupper dumps it separately
                facts = skupper.get(attr)
                spec = kind.spec
                spec_attr = spec.attributes.get(attr) if spec is not None else None
                entry: dict[str, object] = {}
                if spec is not None and spec_attr is not None:
                    entry["type"] = (
                        list(spec_attr.choices)
                        if spec_attr.choices
                        else _SKUPPER_TYPE_NAMES[spec_attr.type.value]
                    )
                    if facts is not None and facts.get("type") != "string":
                        entry["type"] = facts.get("type")
                    default = schema.default_value(spec, spec_attr, {})
                    if default is not None:
                        entry["default"] = _wire(facts, default)
                    entry["required"] = spec_attr.required
                    entry["description"] = spec_attr.description
                    if spec_attr.status:
                        entry["readOnly"] = True
                    if spec_attr.create_only:
                        entry["create"] = True
                else:
                    assert facts is not None
                    entry["type"] = facts.get("type")
                    if "default" in facts:
                        entry["default"] = schema.skupper_default(facts)
                    entry["required"] = bool(facts.get("required"))
                    entry["description"] = "Skupper attribute; not kept by Skiff."
                if attr in ("name", "identity"):
                    entry["unique"] = True
                entry["deprecated"] = False
                entry["graph"] = bool(facts.get("graph")) if facts is not None else False
                attributes[attr] = entry
            facts_type = schema.skupper_type_facts(kind.short) or {}
            types[kind.short] = {
                "attributes": attributes,
                "operations": self._operations(kind),
                "description": kind.spec.description
                if kind.spec is not None
                else "Skupper entity type; not implemented by Skiff.",
                "fullyQualifiedType": kind.full,
                "references": [],
                "deprecated": False,
                "singleton": bool(kind.spec.singleton)
                if kind.spec is not None
                else bool(facts_type.get("singleton")),
            }
        return {"prefix": schema.TYPE_PREFIX.rstrip("."), "entityTypes": types}
