"""Loader for configuration files in the ``skrouterd.conf`` and JSON shapes.

The loader only parses and validates; it never touches the running router.
That split lets a reload (SIGHUP) reject a bad file as a whole before the
registry changes anything.  Every value is checked through ``router.schema``
so messages match those of management requests, prefixed with ``FILE:LINE``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from router import schema

DEFAULT_CONFIG = """\
# Skiff configuration (skrouterd.conf syntax).
#
# A standalone router.  Add tcpListener / tcpConnector entities to relay
# TCP services, e.g.
#
#   tcpListener {
#       host: 127.0.0.1
#       port: 9000
#       address: web
#   }
#   tcpConnector {
#       host: 127.0.0.1
#       port: 8080
#       address: web
#   }

router {
    id: skiff
    mode: standalone
}

log {
    module: DEFAULT
    enable: info+
}

# AMQP management (skiff-manage, skmanage) on the loopback interface only;
# clients there may change the router without authenticating.
listener {
    name: management
    host: 127.0.0.1
    port: 5672
    allowAnonymousWrites: true
}

# Prometheus /metrics, /healthz and /readyz.
listener {
    name: metrics
    host: 127.0.0.1
    port: 9090
    http: true
}
"""


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the spot."""

    def __init__(self, message: str, *, file: str, line: int | None = None) -> None:
        self.file = file
        self.line = line
        self.problem = message
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class ConfigWarning:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class ConfigEntity:
    """One validated entity; ``attributes`` hold converted values with defaults."""

    type: str
    name: str
    attributes: dict[str, object]
    line: int
    file: str
    # True when the file gave no name and one was derived from the content.
    generated_name: bool = False


@dataclass
class ConfigFile:
    path: str
    entities: list[ConfigEntity] = field(default_factory=list)
    warnings: list[ConfigWarning] = field(default_factory=list)

    def of_type(self, type_name: str) -> list[ConfigEntity]:
        return [e for e in self.entities if e.type == type_name]


@dataclass
class _RawEntity:
    type: str
    line: int
    attributes: list[tuple[str, object, int]] = field(default_factory=list)
    # JSON objects may repeat a key; the parser keeps all pairs to report it.


_OPEN = re.compile(r"([A-Za-z_][\w.\-]*)\s*\{")
_KEY = re.compile(r"([A-Za-z_][\w.\-]*)\s*:(.*)")
_TRAILING_COMMENT = re.compile(r"\s#.*$")


def load_config(path: str | Path) -> ConfigFile:
    p = Path(path)
    name = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("cannot read configuration file: no such file", file=name) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"configuration file is not UTF-8 text ({e.reason})", file=name) from None
    except OSError as e:
        raise ConfigError(f"cannot read configuration file: {e.strerror or e}", file=name) from None
    return parse_config_text(text, name, json_format=p.suffix.lower() == ".json")


def parse_config_text(
    text: str, filename: str = "<config>", *, json_format: bool | None = None
) -> ConfigFile:
    """Parses ``text`` as if read from ``filename``.

    The format follows the file name (``.json`` means JSON) unless
    ``json_format`` says otherwise.
    """
    if json_format is None:
        json_format = filename.lower().endswith(".json")
    raw = _parse_json(text, filename) if json_format else _parse_conf(text, filename)
    result = ConfigFile(path=filename)
    for entity in raw:
        converted = _validate(entity, filename, result.warnings)
        if converted is not None:
            result.entities.append(converted)
    _cross_check(result)
    return result


def _parse_value(value: str, filename: str, line: int) -> str:
    v = value.strip()
    if v[:1] in ('"', "'"):
        end = v.find(v[0], 1)
        if end == -1:
            raise ConfigError(f"unterminated quoted value {v!r}", file=filename, line=line)
        rest = v[end + 1 :].strip()
        if rest and not rest.startswith("#"):
            raise ConfigError(
                f"unexpected text {rest!r} after quoted value", file=filename, line=line
            )
        return v[1:end]
    return _TRAILING_COMMENT.sub("", v).strip()


def _parse_conf(text: str, filename: str) -> list[_RawEntity]:
    entities: list[_RawEntity] = []
    current: _RawEntity | None = None
    for lineno, raw_line in enumerate(text.splitlines(), start=1):
        stripped = raw_line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        structural = _TRAILING_COMMENT.sub("", stripped).strip()
        opened = _OPEN.fullmatch(structural)
        if current is None:
            if opened:
                current = _RawEntity(opened.group(1), lineno)
            elif structural == "}":
                raise ConfigError("'}' without an open entity", file=filename, line=lineno)
            elif _KEY.fullmatch(structural):
                raise ConfigError(
                    f"attribute line {structural!r} outside of any entity (expected 'entityType "
                    f"{{')",
                    file=filename,
                    line=lineno,
                )
            else:
                raise ConfigError(
                    f"expected 'entityType {{', a comment or a blank line, got {structural!r}",
                    file=filename,
                    line=lineno,
                )
            continue
        if structural == "}":
            entities.append(current)
            current = None
        elif opened:
            raise ConfigError(
                f"{current.type} entity opened at line {current.line} is not terminated with '}}' "
                f"before '{opened.group(1)} {{'",
                file=filename,
                line=lineno,
            )
        else:
            keyed = _KEY.fullmatch(stripped)
            if not keyed:
                raise ConfigError(
                    "expected 'attribute: value' or "
                    f"'}}' in {current.type} entity, got {structural!r}",
                    file=filename,
                    line=lineno,
                )
            value = _parse_value(keyed.group(2), filename, lineno)
            current.attributes.append((keyed.group(1), value, lineno))
    if current is not None:
        raise ConfigError(
            f"{current.type} entity is not terminated ('}}' missing before end of file)",
            file=filename,
            line=current.line,
        )
    return entities


class _Pairs(dict[str, object]):
    """JSON object that remembers keys given twice, which json.loads drops."""

    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[str, object]]) -> _Pairs:
    obj = _Pairs()
    obj.duplicates = []
    for k, v in pairs:
        if k in obj:
            obj.duplicates.append(k)
        obj[k] = v
    return obj


def _json_kind(value: object) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "null" if value is None else type(value).__name__


_SHAPE = 'expected a JSON list of ["entityType", {attributes}] pairs'


def _parse_json(text: str, filename: str) -> list[_RawEntity]:
    decoder = json.JSONDecoder(object_pairs_hook=_pairs_hook)
    try:
        document = decoder.decode(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"invalid JSON: {e.msg} (column {e.colno})", file=filename, line=e.lineno
        ) from None
    if not isinstance(document, list):
        raise ConfigError(f"{_SHAPE}, got a JSON {_json_kind(document)}", file=filename, line=1)
    # Decode again element by element to learn where each entry starts;
    # the whole text is known to be valid JSON at this point.
    starts: list[int] = []
    pos = text.index("[") + 1
    ws = re.compile(r"[\s,]*")
    for _ in document:
        match = ws.match(text, pos)
        pos = match.end() if match else pos
        starts.append(text.count("\n", 0, pos) + 1)
        _, pos = decoder.raw_decode(text, pos)
    entities: list[_RawEntity] = []
    for index, (item, line) in enumerate(zip(document, starts, strict=True), start=1):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], dict)
        ):
            raise ConfigError(
                f"entry {index}: {_SHAPE}, got {json.dumps(item)[:60]}",
                file=filename,
                line=line,
            )
        attrs: _Pairs = (
            item[1] if isinstance(item[1], _Pairs) else _pairs_hook(list(item[1].items()))
        )
        if attrs.duplicates:
            raise ConfigError(
                f"{item[0]} attribute '{attrs.duplicates[0]}' is given twice",
                file=filename,
                line=line,
            )
        entity = _RawEntity(item[0], line)
        entity.attributes = [(k, v, line) for k, v in attrs.items()]
        entities.append(entity)
    return entities


def _validate(raw: _RawEntity, filename: str, warnings: list[ConfigWarning]) -> ConfigEntity | None:
    if schema.is_unsupported_type(raw.type):
        warnings.append(
            ConfigWarning(
                filename,
                raw.line,
                f"entity type '{raw.type}' is not supported by Skiff and is ignored",
            )
        )
        return None
    try:
        spec = schema.entity_type(raw.type)
    except schema.SchemaError as e:
        raise ConfigError(e.message, file=filename, line=raw.line) from None
    values: dict[str, object] = {}
    seen: dict[str, tuple[str, int]] = {}
    for key, value, line in raw.attributes:
        try:
            resolved = schema.resolve_attribute(spec, key)
            if resolved.warning:
                warnings.append(ConfigWarning(filename, line, resolved.warning))
            if resolved.canonical is None:
                continue
            name = resolved.canonical
            if name in seen:
                first_key, first_line = seen[name]
                spelled = "" if first_key == key else f" (as '{first_key}')"
                raise ConfigError(
                    f"{spec.short_name} attribute '{name}' is given twice{spelled}; first at "
                    f"line {first_line}",
                    file=filename,
                    line=line,
                )
            seen[name] = (key, line)
            values[name] = schema.convert(spec, spec.attributes[name], value)
        except schema.SchemaError as e:
            raise ConfigError(e.message, file=filename, line=line) from None
    try:
        schema.complete(spec, values)
    except schema.SchemaError as e:
        raise ConfigError(e.message, file=filename, line=raw.line) from None
    given = values.pop("name", None)
    name = str(given) if given not in (None, "") else spec.default_name(values)
    return ConfigEntity(
        type=spec.short_name,
        name=name,
        attributes=values,
        line=raw.line,
        file=filename,
        generated_name=given in (None, ""),
    )


def _cross_check(config: ConfigFile) -> None:
    first: dict[tuple[str, str], ConfigEntity] = {}
    router: ConfigEntity | None = None
    for entity in config.entities:
        spec = schema.entity_type(entity.type)
        if spec.singleton:
            if router is not None:
                raise ConfigError(
                    f"only one {entity.type} entity is allowed (first at line {router.line})",
                    file=entity.file,
                    line=entity.line,
                )
            router = entity
            continue
        key = (entity.type, entity.name)
        if key in first:
            hint = " (give each a distinct 'name')" if entity.generated_name else ""
            raise ConfigError(
                f"{entity.type} '{entity.name}' is defined twice (first at line "
                f"{first[key].line}){hint}",
                file=entity.file,
                line=entity.line,
            )
        first[key] = entity
    names: dict[str, list[str]] = {}
    for type_name, name in first:
        names.setdefault(type_name, []).append(name)
    for entity in config.entities:
        spec = schema.entity_type(entity.type)
        for attr in spec.configurable():
            target = entity.attributes.get(attr.name)
            if attr.references is None or target is None:
                continue
            defined = names.get(attr.references, [])
            if str(target) not in defined:
                raise ConfigError(
                    f"{entity.type} attribute '{attr.name}' names {attr.references} '{target}', "
                    f"which is not defined{schema.did_you_mean(str(target), defined)}",
                    file=entity.file,
                    line=entity.line,
                )


def entity_attributes(entity: ConfigEntity) -> Mapping[str, object]:
    """Attributes including the name, as a registry create expects them."""
    return {"name": entity.name, **entity.attributes}


__all__: Sequence[str] = (
    "DEFAULT_CONFIG",
    "ConfigEntity",
    "ConfigError",
    "ConfigFile",
    "ConfigWarning",
    "entity_attributes",
    "load_config",
    "parse_config_text",
)
