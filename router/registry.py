"""The entity registry: the only way configuration entities change.

Configuration files, reloads and management requests all go through here,
so validation, name uniqueness, operation rules and observer notification
happen in one place.  Observers (adaptors, the TLS manager, logging) turn
entities into running things; when one refuses (a port in use), the registry
undoes the change so that what it holds always describes what runs.

The registry belongs to the control loop and is not thread-safe: the loop is
its only caller, which keeps it lock-free.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar, runtime_checkable

from router import schema
from router.config import ConfigEntity
from router.configs import EntityConfig
from router.log import get_logger

Source = Literal["config", "management", "builtin"]

C = TypeVar("C", bound=EntityConfig)

# Creation order; deletion runs in reverse so references stay valid.
_TYPE_ORDER = (
    "router",
    "log",
    "sslProfile",
    "listener",
    "connector",
    "tcpConnector",
    "tcpListener",
)
# Updates that can be refused (a listener's new port in use) run before those
# that cannot but drop flows (a connector moved elsewhere).
_UPDATE_ORDER = (
    "router",
    "log",
    "sslProfile",
    "listener",
    "connector",
    "tcpListener",
    "tcpConnector",
)


class RegistryError(Exception):
    """Failure of a registry operation; ``status`` is the management code."""

    status = 400

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidRequest(RegistryError):
    """Schema validation failed; wraps the SchemaError as ``__cause__``."""


class NotFound(RegistryError):
    status = 404


class DuplicateName(RegistryError):
    pass


class OperationNotAllowed(RegistryError):
    status = 400

    def __init__(self, operation: str, spec: schema.EntityTypeSpec) -> None:
        self.operation = operation
        self.allowed = sorted(spec.allowed_operations)
        super().__init__(
            f"operation {operation} is not allowed on {spec.full_name}; allowed: "
            f"{', '.join(self.allowed)}"
        )


class ObserverFailed(RegistryError):
    """An observer refused a change; the change was undone."""


class ApplyError(RegistryError):
    """A configuration file could not be applied; the previous one stays."""


@dataclass
class Entity:
    type: str
    name: str
    identity: str
    attributes: dict[str, object]
    source: Source
    file: str | None = None
    line: int | None = None
    _config: EntityConfig | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def spec(self) -> schema.EntityTypeSpec:
        return schema.entity_type(self.type)

    def config_as(self, kind: builtins.type[C]) -> C:
        """The typed configuration, built once from the validated attributes."""
        if kind.entity_type != self.type:
            raise TypeError(f"{self.type} '{self.name}' has no {kind.__name__}")
        if not isinstance(self._config, kind):
            self._config = kind.from_values(self.name, self.attributes)
        return self._config

    @property
    def origin(self) -> str:
        if self.file is None:
            return self.source
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def copy(self, **changes: object) -> Entity:
        clone = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        if "attributes" not in changes:
            clone.attributes = dict(self.attributes)
        return clone


class Observer(Protocol):
    def on_create(self, entity: Entity) -> None: ...

    def on_update(self, old: Entity, new: Entity) -> None: ...

    def on_delete(self, entity: Entity) -> None: ...


@runtime_checkable
class StatusProvider(Protocol):
    """Optional observer part supplying read-only status attributes."""

    def status(self, entity: Entity) -> Mapping[str, object]: ...


@dataclass
class ApplyResult:
    added: list[Entity] = field(default_factory=list)
    removed: list[Entity] = field(default_factory=list)
    changed: list[tuple[Entity, Entity]] = field(default_factory=list)

    @property
    def unchanged(self) -> bool:
        return not (self.added or self.removed or self.changed)


# Entity types that own a listening port; a port belongs to one of them.
_LISTENING_TYPES = ("listener", "tcpListener")
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})


def port_key(type_name: str, values: Mapping[str, object]) -> tuple[str, int] | None:
    """(host, port) a listening entity will own; None when it owns no fixed
    port (other types, or port 0: the kernel picks a free one)."""
    if type_name not in _LISTENING_TYPES:
        return None
    port = values.get("port")
    if not isinstance(port, int) or port == 0:
        return None
    host = str(values.get("host") or "")
    if host in _WILDCARD_HOSTS:
        host = "*"
    elif host == "localhost":
        host = "127.0.0.1"
    return host, port


# Link roles each router mode accepts, by entity type (as Skupper's router).
_ROLES_BY_MODE: Mapping[str, Mapping[str, frozenset[str]]] = {
    "standalone": {"listener": frozenset({"normal", "route-container"}), "connector": frozenset()},
    "interior": {
        "listener": frozenset({"normal", "route-container", "inter-router", "edge"}),
        "connector": frozenset({"inter-router"}),
    },
    "edge": {
        "listener": frozenset({"normal", "route-container"}),
        "connector": frozenset({"edge"}),
    },
}


def role_problem(mode: str, type_name: str, values: Mapping[str, object]) -> str | None:
    """Why a listener or connector's ``role`` does not fit the router's
    ``mode`` (e.g. an inter-router listener on a standalone router), or None."""
    allowed = _ROLES_BY_MODE.get(mode, {}).get(type_name)
    if allowed is None:
        return None
    role = str(values.get("role") or "normal")
    if role in allowed:
        return None
    if type_name == "connector" and role not in ("inter-router", "edge"):
        return (
            f"role '{role}' is not supported on a connector: Skiff dials only other routers "
            "(role inter-router from an interior router, role edge from an edge router)"
        )
    if role == "inter-edge":
        return "role 'inter-edge' is not supported by Skiff"
    fits = {
        ("listener", "inter-router"): "router mode interior",
        ("listener", "edge"): "router mode interior (edge routers dial interior ones)",
        ("connector", "inter-router"): "router mode interior",
        ("connector", "edge"): "router mode edge (an edge router dials an interior one)",
    }.get((type_name, role), "another router mode")
    return f"role '{role}' needs {fits}, and this router's mode is {mode}"


def _overlap(a: tuple[str, int], b: tuple[str, int]) -> bool:
    return a[1] == b[1] and (a[0] == b[0] or "*" in (a[0], b[0]))


def _status_of(error: BaseException) -> int:
    if isinstance(error, RegistryError):
        return error.status
    if isinstance(error, (schema.SchemaError, ValueError, OSError)):
        return 400
    return 500


class Registry:
    def __init__(self) -> None:
        self._entities: dict[str, dict[str, Entity]] = {t: {} for t in schema.ENTITY_TYPES}
        self._observers: dict[str, list[Observer]] = {t: [] for t in schema.ENTITY_TYPES}
        self._counters: dict[str, itertools.count[int]] = {
            t: itertools.count(1) for t in schema.ENTITY_TYPES
        }
        self._log = get_logger("AGENT")
        spec = schema.entity_type("log")
        for module in schema.LOG_MODULES:
            values = schema.complete(spec, {"module": module})
            name = spec.default_name(values)
            self._entities["log"][name] = Entity("log", name, name, values, "builtin")

    # -- observers ---------------------------------------------------------

    def subscribe(self, type_name: str, observer: Observer) -> None:
        """Adds an observer of later changes only.

        Existing entities are not replayed: subscribers are expected to be
        in place before the first ``apply_file``, and an observer can read
        ``entities()`` itself if it joins late.
        """
        spec = self._spec(type_name)
        self._observers[spec.short_name].append(observer)

    def unsubscribe(self, type_name: str, observer: Observer) -> None:
        spec = self._spec(type_name)
        self._observers[spec.short_name].remove(observer)

    # -- lookup ------------------------------------------------------------

    def find(self, type_name: str, key: str) -> Entity | None:
        """Looks an entity up by name or identity (log also by module)."""
        spec = self._spec(type_name)
        table = self._entities[spec.short_name]
        if key in table:
            return table[key]
        suffix = key.removeprefix(f"{spec.short_name}/")
        if suffix != key and suffix.isdigit():
            # only an identity's shape is worth a scan: a reload that adds N
            # entities to M must not cost N x M
            for entity in table.values():
                if entity.identity == key:
                    return entity
        if spec.short_name == "log" and f"log/{key}" in table:
            return table[f"log/{key}"]
        if spec.singleton and table and key in ("", spec.short_name):
            return next(iter(table.values()))
        return None

    def get(self, type_name: str, key: str) -> Entity:
        entity = self.find(type_name, key)
        if entity is None:
            spec = self._spec(type_name)
            names = list(self._entities[spec.short_name])
            raise NotFound(f"{spec.short_name} '{key}' not found{schema.did_you_mean(key, names)}")
        return entity

    def entities(self, type_name: str | None = None) -> list[Entity]:
        types = [self._spec(type_name).short_name] if type_name else list(_TYPE_ORDER)
        return [e for t in types for e in self._entities[t].values()]

    @property
    def router(self) -> Entity | None:
        return next(iter(self._entities["router"].values()), None)

    # -- management operations --------------------------------------------

    def create(
        self,
        type_name: str,
        attributes: Mapping[str, object],
        *,
        source: Source = "management",
        check_operation: bool = True,
        check_ports: bool = True,
        file: str | None = None,
        line: int | None = None,
    ) -> Entity:
        spec = self._spec(type_name)
        if check_operation and schema.CREATE not in spec.operations:
            raise OperationNotAllowed(schema.CREATE, spec)
        validated = self._validate(spec, attributes, partial=False)
        values = validated.values
        given = values.pop("name", None)
        name = str(given) if given not in (None, "") else spec.default_name(values)
        table = self._entities[spec.short_name]
        if spec.singleton and table:
            raise DuplicateName(f"{spec.short_name} already exists and only one is allowed")
        existing = self.find(spec.short_name, name)
        if existing is not None:
            raise DuplicateName(
                f"{spec.short_name} '{name}' already exists (from {existing.origin})"
            )
        self._check_role(spec.short_name, name, values)
        self._check_references(spec, name, values)
        if check_ports:
            self._check_port(spec.short_name, name, values)
        entity = Entity(
            spec.short_name,
            name,
            self._next_identity(spec),
            values,
            source,
            file,
            line,
        )
        self._insert(entity)
        for warning in validated.warnings:
            self._log.warning(warning)
        return entity

    def update(
        self,
        type_name: str,
        key: str,
        attributes: Mapping[str, object],
        *,
        source: Source | None = None,
        check_operation: bool = True,
        check_ports: bool = True,
        file: str | None = None,
        line: int | None = None,
    ) -> Entity:
        """Changes the given attributes; ``None`` resets one to its default."""
        spec = self._spec(type_name)
        if check_operation and schema.UPDATE not in spec.operations:
            raise OperationNotAllowed(schema.UPDATE, spec)
        old = self.get(spec.short_name, key)
        merged, warnings = self._merged(spec, old, attributes)
        self._check_references(spec, old.name, merged)
        if check_ports:
            self._check_port(spec.short_name, old.name, merged)
        new = old.copy(
            attributes=merged,
            source=source or old.source,
            file=file if source else old.file,
            line=line if source else old.line,
        )
        if merged != old.attributes:
            self._replace(old, new)
        else:
            self._entities[spec.short_name][old.name] = new
        for warning in warnings:
            self._log.warning(warning)
        return new

    def _merged(
        self, spec: schema.EntityTypeSpec, old: Entity, attributes: Mapping[str, object]
    ) -> tuple[dict[str, object], list[str]]:
        """The attributes ``old`` would have after an update; changes nothing."""
        validated = self._validate(spec, attributes, partial=True)
        changes = validated.values
        new_name = changes.pop("name", None)
        if new_name not in (None, old.name):
            raise InvalidRequest(
                f"{spec.short_name} attribute 'name' cannot be changed (is '{old.name}')"
            )
        merged = {**old.attributes, **changes}
        try:
            schema.complete(spec, merged)
        except schema.SchemaError as e:
            raise InvalidRequest(e.message) from e
        for attr in spec.configurable():
            if (
                attr.create_only
                and attr.name != "name"
                and merged.get(attr.name) != old.attributes.get(attr.name)
            ):
                raise InvalidRequest(
                    f"{spec.short_name} attribute '{attr.name}' cannot be changed while running "
                    f"(is {old.attributes.get(attr.name)!r}, requested {merged.get(attr.name)!r}); "
                    "a restart is required"
                )
        return merged, validated.warnings

    def delete(self, type_name: str, key: str, *, check_operation: bool = True) -> Entity:
        spec = self._spec(type_name)
        if check_operation and schema.DELETE not in spec.operations:
            raise OperationNotAllowed(schema.DELETE, spec)
        entity = self.get(spec.short_name, key)
        if spec.precreated:
            raise InvalidRequest(
                f"{spec.short_name} '{entity.name}' always exists and cannot be deleted"
            )
        users = self._users_of(entity)
        if users:
            names = ", ".join(f"{u.type} '{u.name}'" for u in users)
            raise InvalidRequest(f"{spec.short_name} '{entity.name}' is in use by {names}")
        self._remove(entity)
        return entity

    def read(self, type_name: str, key: str) -> dict[str, object]:
        """Configured and status attributes; secrets are left out."""
        return self._describe(self.get(type_name, key))

    def query(self, type_name: str | None = None) -> list[dict[str, object]]:
        return [self._describe(e) for e in self.entities(type_name)]

    # -- configuration files ----------------------------------------------

    def apply_file(self, entities: Sequence[ConfigEntity]) -> ApplyResult:
        """Makes the configuration-file entities match ``entities``.

        Only entities that came from a file are compared, so management
        changes survive a reload.  Either everything applies or, on the
        first failure, what was applied is undone and ApplyError raised.
        """
        desired: dict[tuple[str, str], ConfigEntity] = {}
        for ce in entities:
            spec = self._spec(ce.type)
            key = (spec.short_name, spec.short_name if spec.singleton else ce.name)
            if key in desired:
                raise ApplyError(f"{ce.file}:{ce.line}: {ce.type} '{ce.name}' is defined twice")
            desired[key] = ce
            existing = self.find(spec.short_name, ce.name)
            if not spec.precreated and existing is not None and existing.source != "config":
                raise ApplyError(
                    f"{ce.file}:{ce.line}: {ce.type} '{ce.name}' already exists (from "
                    f"{existing.origin})"
                )

        plan_delete: list[Entity] = []
        plan_create: list[tuple[ConfigEntity, Source]] = []
        plan_update: list[tuple[Entity, Mapping[str, object], Source, ConfigEntity | None]] = []
        for type_name in _TYPE_ORDER:
            spec = self._spec(type_name)
            if spec.precreated:
                self._plan_precreated(spec, desired, plan_update, plan_create)
                continue
            current = {
                e.name: e for e in self._entities[type_name].values() if e.source == "config"
            }
            wanted = {k[1]: ce for k, ce in desired.items() if k[0] == type_name}
            for name, entity in current.items():
                if name not in wanted:
                    plan_delete.append(entity)
            for name, ce in wanted.items():
                if name not in current:
                    plan_create.append((ce, "config"))
                elif current[name].attributes != ce.attributes:
                    # even for CREATE/DELETE-only types: observers replace
                    # the running object in one step they can refuse whole
                    plan_update.append(
                        (current[name], {"name": name, **ce.attributes}, "config", ce)
                    )

        merged = self._check_final_state(plan_delete, plan_create, plan_update)
        step: ConfigEntity | Entity | None = None
        first, plan_delete = self._port_moves(plan_delete, plan_create, plan_update, merged)
        result = ApplyResult()
        undo: list[Callable[[], None]] = []
        try:
            # 1. what must go before a create can take its port
            for entity in first:
                step = entity
                removed = self.delete(entity.type, entity.name, check_operation=False)
                undo.append(functools.partial(self._insert, removed))
                result.removed.append(removed)
            # 2. creates, then updates: the steps that can be refused (a port
            # in use) run while nothing a client sees has changed yet
            for ce, source in sorted(plan_create, key=lambda c: _TYPE_ORDER.index(c[0].type)):
                step = ce
                added = self.create(
                    ce.type,
                    {"name": ce.name, **ce.attributes},
                    source=source,
                    check_operation=False,
                    check_ports=False,
                    file=ce.file if source == "config" else None,
                    line=ce.line if source == "config" else None,
                )
                undo.append(functools.partial(self._remove, added))
                result.added.append(added)
            for old, attrs, source, maybe_ce in sorted(
                plan_update, key=lambda u: _UPDATE_ORDER.index(u[0].type)
            ):
                step = maybe_ce if maybe_ce is not None else old
                new = self.update(
                    old.type,
                    old.name,
                    attrs,
                    source=source,
                    check_operation=False,
                    check_ports=False,
                    file=maybe_ce.file if maybe_ce else None,
                    line=maybe_ce.line if maybe_ce else None,
                )
                undo.append(functools.partial(self._replace, new, old))
                if new.attributes != old.attributes:
                    result.changed.append((old, new))
            # 3. deletions last, users before what they use
            for entity in sorted(plan_delete, key=lambda e: -_TYPE_ORDER.index(e.type)):
                step = entity
                removed = self.delete(entity.type, entity.name, check_operation=False)
                undo.append(functools.partial(self._insert, removed))
                result.removed.append(removed)
        except (RegistryError, schema.SchemaError) as error:
            self._rollback(undo)
            raise ApplyError(self._locate(step, error), status=_status_of(error)) from error
        return result

    def _check_final_state(
        self,
        deletes: list[Entity],
        creates: list[tuple[ConfigEntity, Source]],
        updates: list[tuple[Entity, Mapping[str, object], Source, ConfigEntity | None]],
    ) -> dict[tuple[str, str], dict[str, object]]:
        """Validates the state a plan leads to before any of it runs: values,
        attributes that need a restart, references and port owners.  Returns
        the updated entities' merged attributes; raises ApplyError naming the
        file and line of the offending entity."""
        final: dict[tuple[str, str], tuple[dict[str, object], ConfigEntity | Entity]] = {}
        for entity in self.entities():
            final[(entity.type, entity.name)] = (entity.attributes, entity)
        for entity in deletes:
            final.pop((entity.type, entity.name), None)
        merged: dict[tuple[str, str], dict[str, object]] = {}
        for old, attrs, _source, maybe_ce in updates:
            try:
                values, _ = self._merged(old.spec, old, attrs)
            except RegistryError as error:
                where = maybe_ce if maybe_ce is not None else old
                raise ApplyError(self._locate(where, error), status=error.status) from error
            merged[(old.type, old.name)] = values
            final[(old.type, old.name)] = (values, maybe_ce if maybe_ce is not None else old)
        for ce, _source in creates:
            spec = self._spec(ce.type)
            try:
                values = dict(self._validate(spec, ce.attributes, partial=False).values)
            except RegistryError as error:
                raise ApplyError(self._locate(ce, error), status=error.status) from error
            final[(spec.short_name, ce.name)] = (values, ce)
        owners: dict[int, list[tuple[str, str, str]]] = {}  # port -> (host, type, name)
        routers = [(v, w) for (t, _), (v, w) in final.items() if t == "router"]
        mode = str(routers[0][0].get("mode")) if routers else "standalone"
        if mode != "standalone" and not routers[0][0].get("id"):
            raise ApplyError(
                self._locate(
                    routers[0][1],
                    InvalidRequest(
                        f"router mode {mode} needs an id: routers in a network are told apart "
                        "by it (unique in the network)"
                    ),
                )
            )
        for (type_name, name), (values, where) in final.items():
            spec = self._spec(type_name)
            problem = role_problem(mode, type_name, values)
            if problem is not None:
                raise ApplyError(
                    self._locate(where, InvalidRequest(f"{type_name} '{name}': {problem}"))
                )
            for attr in spec.configurable():
                target = values.get(attr.name)
                if attr.references is None or target is None:
                    continue
                if (attr.references, str(target)) not in final:
                    raise ApplyError(
                        self._locate(
                            where,
                            InvalidRequest(
                                f"{type_name} '{name}' attribute '{attr.name}' names "
                                f"{attr.references} '{target}', which would not exist"
                            ),
                        )
                    )
            key = port_key(type_name, values)
            if key is None:
                continue
            same_port = owners.setdefault(key[1], [])
            for other_host, other_type, other_name in same_port:
                if _overlap(key, (other_host, key[1])):
                    raise ApplyError(
                        self._locate(
                            where,
                            InvalidRequest(
                                f"{type_name} '{name}' port {key[1]} is also used by "
                                f"{other_type} '{other_name}'; a port belongs to one listener"
                            ),
                        )
                    )
            same_port.append((key[0], type_name, name))
        return merged

    @staticmethod
    def _port_moves(
        deletes: list[Entity],
        creates: list[tuple[ConfigEntity, Source]],
        updates: list[tuple[Entity, Mapping[str, object], Source, ConfigEntity | None]],
        merged: Mapping[tuple[str, str], Mapping[str, object]],
    ) -> tuple[list[Entity], list[Entity]]:
        """Splits deletions into those whose port another step takes (they
        must run first) and the rest (they run last)."""
        wanted: dict[int, set[str]] = {}  # port -> hosts that will take it
        keys = [port_key(ce.type, ce.attributes) for ce, _ in creates]
        for old, _a, _s, _c in updates:
            key = port_key(old.type, merged[(old.type, old.name)])
            if key != port_key(old.type, old.attributes):
                keys.append(key)
        for key in keys:
            if key is not None:
                wanted.setdefault(key[1], set()).add(key[0])
        first, last = [], []
        for entity in deletes:
            key = port_key(entity.type, entity.attributes)
            hosts = wanted.get(key[1], set()) if key is not None else set()
            if key is not None and any(_overlap(key, (h, key[1])) for h in hosts):
                first.append(entity)
            else:
                last.append(entity)
        return first, last

    def _plan_precreated(
        self,
        spec: schema.EntityTypeSpec,
        desired: Mapping[tuple[str, str], ConfigEntity],
        plan_update: list[tuple[Entity, Mapping[str, object], Source, ConfigEntity | None]],
        plan_create: list[tuple[ConfigEntity, Source]],
    ) -> None:
        wanted = {k[1]: ce for k, ce in desired.items() if k[0] == spec.short_name}
        if spec.singleton:
            ce = wanted.get(spec.short_name)
            current = self.router
            if current is None:
                if ce is not None:
                    plan_create.append((ce, "config"))
                else:
                    values = schema.complete(spec, {})
                    defaults = ConfigEntity(
                        spec.short_name, spec.short_name, values, 0, "<defaults>"
                    )
                    plan_create.append((defaults, "builtin"))
                return
            targets: list[tuple[Entity, ConfigEntity | None]] = [(current, ce)]
        else:
            targets = [(e, wanted.get(e.name)) for e in self._entities[spec.short_name].values()]
            for name, ce in wanted.items():
                if self.find(spec.short_name, name) is None:
                    raise ApplyError(
                        f"{ce.file}:{ce.line}: {spec.short_name} '{name}' does not exist"
                    )
        for entity, ce in targets:
            if ce is not None:
                attrs = dict(ce.attributes)
                source: Source = "config"
            elif entity.source == "config":
                keep = {a: entity.attributes.get(a) for a in ("module",) if a in entity.attributes}
                attrs = schema.complete(spec, keep)
                source = "builtin"
            else:
                continue
            if attrs != entity.attributes or source != entity.source:
                plan_update.append((entity, attrs, source, ce))

    def _rollback(self, undo: list[Callable[[], None]]) -> None:
        for action in reversed(undo):
            try:
                action()
            except (RegistryError, schema.SchemaError) as e:
                self._log.error(f"rolling back configuration change failed: {e}")

    @staticmethod
    def _locate(step: ConfigEntity | Entity | None, error: BaseException) -> str:
        message = getattr(error, "message", str(error))
        if isinstance(step, ConfigEntity):
            return f"{step.file}:{step.line}: {message}; previous configuration kept"
        if isinstance(step, Entity):
            return (
                f"{step.type} '{step.name}' ({step.origin}): {message}; previous configuration kept"
            )
        return f"{message}; previous configuration kept"

    # -- internals ---------------------------------------------------------

    def _spec(self, type_name: str) -> schema.EntityTypeSpec:
        try:
            return schema.entity_type(type_name)
        except schema.SchemaError as e:
            raise InvalidRequest(e.message) from e

    @staticmethod
    def _validate(
        spec: schema.EntityTypeSpec, attributes: Mapping[str, object], *, partial: bool
    ) -> schema.Validated:
        try:
            return schema.validate_attributes(spec, attributes, partial=partial)
        except schema.SchemaError as e:
            raise InvalidRequest(e.message) from e

    def _next_identity(self, spec: schema.EntityTypeSpec) -> str:
        return f"{spec.short_name}/{next(self._counters[spec.short_name])}"

    def _check_references(
        self, spec: schema.EntityTypeSpec, name: str, values: Mapping[str, object]
    ) -> None:
        for attr in spec.configurable():
            target = values.get(attr.name)
            if attr.references is None or target is None:
                continue
            if self.find(attr.references, str(target)) is None:
                known = [e.name for e in self.entities(attr.references)]
                raise InvalidRequest(
                    f"{spec.short_name} '{name}' attribute '{attr.name}' names {attr.references} "
                    f"'{target}', which does not exist{schema.did_you_mean(str(target), known)}"
                )

    def _check_role(self, type_name: str, name: str, values: Mapping[str, object]) -> None:
        router = self.router
        mode = str(router.attributes.get("mode")) if router is not None else "standalone"
        problem = role_problem(mode, type_name, values)
        if problem is not None:
            raise InvalidRequest(f"{type_name} '{name}': {problem}")

    def _check_port(self, type_name: str, name: str, values: Mapping[str, object]) -> None:
        """Refuses a second owner of a listening port (every listening socket
        sets SO_REUSEPORT, so the kernel would silently split clients)."""
        key = port_key(type_name, values)
        if key is None:
            return
        for other_type in _LISTENING_TYPES:
            for other in self._entities[other_type].values():
                if other_type == type_name and other.name == name:
                    continue
                other_key = port_key(other_type, other.attributes)
                if other_key is not None and _overlap(key, other_key):
                    raise InvalidRequest(
                        f"{type_name} '{name}' port {key[1]} is already used by {other_type} "
                        f"'{other.name}' (from {other.origin}); a port belongs to one listener"
                    )

    def _users_of(self, entity: Entity) -> list[Entity]:
        users = []
        for other_spec in schema.ENTITY_TYPES.values():
            refs = [a.name for a in other_spec.configurable() if a.references == entity.type]
            for other in self._entities[other_spec.short_name].values():
                if any(other.attributes.get(r) == entity.name for r in refs):
                    users.append(other)
        return users

    def _notify(
        self,
        entity_type: str,
        call: Callable[[Observer], None],
        undo: Callable[[Observer], None],
        what: str,
    ) -> None:
        """Calls every observer; if one fails, undoes those already told."""
        done: list[Observer] = []
        for observer in list(self._observers[entity_type]):
            try:
                call(observer)
            # Observers are foreign code: whatever they raise must roll back.
            except Exception as error:
                for told in reversed(done):
                    try:
                        undo(told)
                    except Exception as undo_error:  # noqa: BLE001 - keep undoing the others
                        self._log.error(
                            f"undoing {what} in {type(told).__name__} failed: {undo_error}"
                        )
                message = getattr(error, "message", None) or str(error) or type(error).__name__
                raise ObserverFailed(
                    f"{what} failed: {message}", status=_status_of(error)
                ) from error
            done.append(observer)

    def _insert(self, entity: Entity) -> None:
        table = self._entities[entity.type]
        table[entity.name] = entity
        try:
            self._notify(
                entity.type,
                lambda o: o.on_create(entity),
                lambda o: o.on_delete(entity),
                f"creating {entity.type} '{entity.name}'",
            )
        except ObserverFailed:
            del table[entity.name]
            raise

    def _remove(self, entity: Entity) -> None:
        table = self._entities[entity.type]
        del table[entity.name]
        try:
            self._notify(
                entity.type,
                lambda o: o.on_delete(entity),
                lambda o: o.on_create(entity),
                f"deleting {entity.type} '{entity.name}'",
            )
        except ObserverFailed:
            table[entity.name] = entity
            raise

    def _replace(self, old: Entity, new: Entity) -> None:
        table = self._entities[old.type]
        table[old.name] = new
        try:
            self._notify(
                old.type,
                lambda o: o.on_update(old, new),
                lambda o: o.on_update(new, old),
                f"updating {old.type} '{old.name}'",
            )
        except ObserverFailed:
            table[old.name] = old
            raise

    def _describe(self, entity: Entity) -> dict[str, object]:
        spec = entity.spec
        out: dict[str, object] = {
            "name": entity.name,
            "identity": entity.identity,
            "type": spec.full_name,
        }
        for attr in spec.configurable():
            if attr.name == "name" or attr.secret:
                continue
            out[attr.name] = entity.attributes.get(attr.name)
        for attr in spec.status_attributes():
            out.setdefault(attr.name, None)
        status_names = {a.name for a in spec.status_attributes()} - {"identity", "type"}
        for observer in self._observers[entity.type]:
            if not isinstance(observer, StatusProvider):
                continue
            try:
                status = observer.status(entity)
            except Exception as e:  # noqa: BLE001 - a broken status source must not fail the read
                self._log.error(f"status of {entity.type} '{entity.name}' failed: {e}")
                continue
            for key, value in status.items():
                if key in status_names:
                    out[key] = value
        return out
