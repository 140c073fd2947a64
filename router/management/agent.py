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

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from router import schema
from router.log import get_logger
from router.registry import Registry, RegistryError

_log = get_logger("AGENT")

MANAGEMENT_TYPE = "org.amqp.management"
SELF = "self"
NODE_OPERATIONS = (
    "QUERY",
    "GET-TYPES",
    "GET-ATTRIBUTES",
    "GET-OPERATIONS",
    "GET-MGMT-NODES",
    "GET-SCHEMA",
)
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
}

Rows = Callable[[], list[dict[str, object]]]


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


class Agent:
    """Answers management requests against the registry and live state."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._providers: dict[str, Rows] = {}
        self.requests = 0

    def provide(self, type_name: str, rows: Rows) -> None:
        """Registers the source of a read-only type's entities."""
        self._providers[schema.management_type(type_name).short_name] = rows

    # ------------------------------------------------------------ dispatch

    def handle(
        self, props: Mapping[object, object] | None, body: object, caller: Caller
    ) -> Response:
        self.requests += 1
        try:
            return self._handle(props or {}, body, caller)
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
            if type_name not in (None, MANAGEMENT_TYPE):
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
        if type_name is None:
            type_name = attrs.get("type") if isinstance(attrs.get("type"), str) else None  # type: ignore[assignment]
        if type_name is None:
            raise ManagementError(400, f"{operation} needs a 'type' application property")
        spec = self._spec(type_name)
        if operation in WRITES and not caller.can_write:
            who = f"user '{caller.user}'" if caller.user else "an anonymous client"
            raise ManagementError(
                403,
                f"{operation} needs write access and {who} does not have it on this listener "
                "(see docs/management.md, users file and allowAnonymousWrites)",
            )
        if spec.short_name in schema.OPERATIONAL_TYPES:
            if operation != "READ":
                raise ManagementError(
                    400,
                    f"operation {operation} is not allowed on {spec.full_name}; "
                    "allowed: QUERY, READ",
                )
            return Response(200, "OK", self._read_operational(spec, name, identity))
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
            return Response(201, "Created", self._registry.read(spec.short_name, entity.name))
        key = self._key(operation, name, identity)
        if operation == "READ":
            return Response(200, "OK", self._registry.read(spec.short_name, key))
        if operation == "UPDATE":
            entity = self._registry.update(spec.short_name, key, attrs)
            _log.info(f"management: {self._who(caller)} updated {spec.short_name} '{entity.name}'")
            return Response(200, "OK", self._registry.read(spec.short_name, entity.name))
        entity = self._registry.delete(spec.short_name, key)
        _log.info(f"management: {self._who(caller)} deleted {spec.short_name} '{entity.name}'")
        return Response(204, "No Content")

    @staticmethod
    def _who(caller: Caller) -> str:
        return f"user '{caller.user}'" if caller.user else "anonymous client"

    @staticmethod
    def _key(operation: str, name: str | None, identity: str | None) -> str:
        if name:
            return name
        if identity:
            return identity
        raise ManagementError(400, f"{operation} needs a 'name' or 'identity' application property")

    @staticmethod
    def _spec(type_name: str) -> schema.EntityTypeSpec:
        try:
            return schema.management_type(type_name)
        except schema.SchemaError as e:
            known = [s.short_name for s in schema.management_types()]
            short = schema.short_type_name(type_name)
            if short in schema.UNSUPPORTED_ENTITY_TYPES:
                raise ManagementError(400, e.message) from e
            raise ManagementError(
                400, f"unknown entity type '{type_name}'{schema.did_you_mean(short, known)}"
            ) from e

    # ------------------------------------------------------------ read-only types

    def _rows(self, spec: schema.EntityTypeSpec) -> list[dict[str, object]]:
        if spec.short_name in schema.OPERATIONAL_TYPES:
            provider = self._providers.get(spec.short_name)
            rows = provider() if provider is not None else []
            return [{"type": spec.full_name, **row} for row in rows]
        return self._registry.query(spec.short_name)

    def _read_operational(
        self, spec: schema.EntityTypeSpec, name: str | None, identity: str | None
    ) -> dict[str, object]:
        key = self._key("READ", name, identity)
        for row in self._rows(spec):
            if key in (row.get("name"), row.get("identity")):
                return row
        raise ManagementError(404, f"{spec.short_name} '{key}' not found")

    # ------------------------------------------------------------ node operations

    def _types_filter(self, props: Mapping[object, object]) -> list[schema.EntityTypeSpec]:
        entity_type = _text(props, "entityType")
        if entity_type:
            return [self._spec(entity_type)]
        return schema.management_types()

    def _node_operation(
        self, operation: str, props: Mapping[object, object], body: object
    ) -> Response:
        name = _text(props, "name")
        if name not in (None, SELF, "") and not name.endswith("$management"):
            raise ManagementError(404, f"management node '{name}' not found (use 'self')")
        if operation == "QUERY":
            return Response(200, "OK", self._query(props, body))
        if operation == "GET-TYPES":
            return Response(
                200,
                "OK",
                {
                    s.full_name: [MANAGEMENT_TYPE, TYPE_BASE[s.short_name in schema.ENTITY_TYPES]]
                    for s in self._types_filter(props)
                },
            )
        if operation == "GET-ATTRIBUTES":
            return Response(
                200,
                "OK",
                {s.full_name: list(s.attributes) for s in self._types_filter(props)},
            )
        if operation == "GET-OPERATIONS":
            return Response(
                200,
                "OK",
                {s.full_name: sorted(s.allowed_operations) for s in self._types_filter(props)},
            )
        if operation == "GET-MGMT-NODES":
            # a standalone router knows no other management nodes
            return Response(200, "OK", [])
        return Response(200, "OK", self._schema())

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
        specs = [self._spec(str(entity_type))] if entity_type else schema.management_types()
        if names:
            known = {a for s in specs for a in s.attributes}
            for attr in names:
                if attr not in known:
                    candidates = sorted(known)
                    where = specs[0].short_name if len(specs) == 1 else "any entity type"
                    raise ManagementError(
                        400,
                        f"attribute '{attr}' is unknown for {where}"
                        f"{schema.did_you_mean(attr, candidates)}",
                    )
        else:
            seen: dict[str, None] = {}
            for s in specs:
                for a in s.attributes.values():
                    if not a.secret:
                        seen.setdefault(a.name)
            names = list(seen)
        secret = {a.name for s in specs for a in s.attributes.values() if a.secret}
        rows: list[dict[str, object]] = []
        for s in specs:
            rows.extend(self._rows(s))
        selected = rows[offset:] if count is None else rows[offset : offset + count]
        results = [[None if n in secret else row.get(n) for n in names] for row in selected]
        return {"attributeNames": names, "results": results}

    def _schema(self) -> dict[str, object]:
        types: dict[str, object] = {}
        for s in schema.management_types():
            attributes: dict[str, object] = {}
            for a in s.attributes.values():
                entry: dict[str, object] = {
                    "type": a.type.value,
                    "description": a.description,
                    "required": a.required,
                    "graph": False,
                }
                if a.default is not None:
                    entry["default"] = a.default
                if a.choices:
                    entry["choices"] = list(a.choices)
                if a.status:
                    entry["readOnly"] = True
                if a.create_only:
                    entry["create"] = True
                attributes[a.name] = entry
            types[s.full_name] = {
                "description": s.description,
                "operations": sorted(s.allowed_operations),
                "attributes": attributes,
                "singleton": s.singleton,
            }
        return {"prefix": schema.TYPE_PREFIX, "entityTypes": types}


TYPE_BASE = {
    True: schema.TYPE_PREFIX + "configurationEntity",
    False: schema.TYPE_PREFIX + "operationalEntity",
}
