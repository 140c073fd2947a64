"""Loader for configuration files in the ``skrouterd.conf`` and JSON shapes.

The loader only parses and validates; it never touches the running router.
That split lets a reload (SIGHUP) reject a bad file as a whole before the
registry changes anything.  Every value is checked through ``router.schema``
so messages match those of management requests, prefixed with ``FILE:LINE``.

Bad input never escapes as anything but :class:`ConfigError`: a file is read
up to :data:`MAX_CONFIG_BYTES` only (``/dev/zero`` or a pipe cannot exhaust
memory), text must be UTF-8 without control characters, numbers, names and
values have length caps, and JSON nesting too deep for the decoder is reported
at its line.  Both parsers run in time linear in the size of the file.
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


MAX_CONFIG_BYTES = 16 * 1024 * 1024
"""Largest configuration file accepted (16 MiB); reading stops there.

A router configuration of 40,000 entities is about 5 MiB of JSON.
"""

# Limits that keep every error message short and every conversion cheap.
_MAX_NUMBER_DIGITS = 100  # far above any 64-bit value; Python refuses 4,300
_MAX_VALUE_CHARS = 65536  # an attribute value (paths, passwords, log specs)
_MAX_NAME_CHARS = 256  # an entity type or attribute name
_MAX_JSON_DEPTH = 100  # reported when the JSON decoder runs out of stack
_MAX_MESSAGE_CHARS = 1000


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the spot."""

    def __init__(self, message: str, *, file: str, line: int | None = None) -> None:
        if len(message) > _MAX_MESSAGE_CHARS:
            message = f"{message[:_MAX_MESSAGE_CHARS]}... ({len(message)} characters in all)"
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
# Characters no configuration text may hold: C0 controls but tab (and the
# newline that ends a line), DEL, and unpaired UTF-16 surrogates, which a
# JSON \u escape can produce and no encoder can write out again.
_BAD_IN_FILE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")
_BAD_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
_DIGITS = re.compile(r"\s*[+-]?\d+\s*")
_MIB = 1024 * 1024


def load_config(path: str | Path) -> ConfigFile:
    p = Path(path)
    name = str(path)
    text = _decode(_read_capped(p, name), name)
    return parse_config_text(text, name, json_format=p.suffix.lower() == ".json")


def _read_capped(p: Path, name: str) -> bytes:
    """Reads at most one byte past the cap, so /dev/zero or a pipe cannot run on."""
    try:
        with p.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("cannot read configuration file: no such file", file=name) from None
    except IsADirectoryError:
        raise ConfigError("cannot read configuration file: it is a directory", file=name) from None
    except OSError as e:
        raise ConfigError(f"cannot read configuration file: {e.strerror or e}", file=name) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"configuration file is larger than the {MAX_CONFIG_BYTES // _MIB} MiB cap "
            f"({MAX_CONFIG_BYTES} bytes); not read further",
            file=name,
        )
    return data


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = _normalize_newlines(data[: e.start].decode("utf-8"))
        line = before.count("\n") + 1
        column = len(before) - before.rfind("\n")
        raise ConfigError(
            f"configuration file is not UTF-8 text: byte 0x{data[e.start]:02x} at column "
            f"{column} ({e.reason})",
            file=name,
            line=line,
        ) from None


def _normalize_newlines(text: str) -> str:
    """CRLF and lone CR become LF, as when a file is read in text mode."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _line_at(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _char_name(char: str) -> str:
    kind = "unpaired surrogate" if "\ud800" <= char <= "\udfff" else "control character"
    return f"{kind} U+{ord(char):04X}"


def parse_config_text(
    text: str, filename: str = "<config>", *, json_format: bool | None = None
) -> ConfigFile:
    """Parses ``text`` as if read from ``filename``.

    The format follows the file name (``.json`` means JSON) unless
    ``json_format`` says otherwise.  A leading byte order mark is skipped and
    line ends may be LF, CRLF or CR.
    """
    if json_format is None:
        json_format = filename.lower().endswith(".json")
    text = _normalize_newlines(text.removeprefix("\ufeff"))
    result = ConfigFile(path=filename)
    raw = (
        _parse_json(text, filename) if json_format else _parse_conf(text, filename, result.warnings)
    )
    for entity in raw:
        converted = _validate(entity, filename, result.warnings)
        if converted is not None:
            result.entities.append(converted)
    _cross_check(result)
    return result


def _strip_comment(text: str) -> str:
    return _TRAILING_COMMENT.sub("", text).strip() if "#" in text else text


# Attributes whose values may hold '#' (Skupper reads the first word whole).
_HASH_OK = frozenset({"pattern", "bindingKey", "hostname"})
# Map attributes whose nested lines Skupper reads as raw JSON.
_JSON_MAPS = frozenset({"openProperties", "groups"})
_MAP_OPEN = re.compile(r"(\$*[A-Za-z_][\w\-]*)\s*:\s*\{")


def _parse_value(
    key: str, value: str, filename: str, line: int, warnings: list[ConfigWarning]
) -> str:
    """Reads a value as skrouterd does, warning where a reader could differ.

    skrouterd ends a value at its first '#' (except for ``pattern``,
    ``bindingKey`` and ``hostname``, whose first word is read whole): Skiff
    does the same.  skrouterd keeps single quotes as part of the value and
    refuses double quotes; Skiff removes either and warns.
    """
    v = value.strip()
    if v[:1] in ('"', "'"):
        quote = v[0]
        end = v.find(quote, 1)
        if end == -1:
            raise ConfigError(f"unterminated quoted value {v!r}", file=filename, line=line)
        rest = v[end + 1 :].strip()
        if rest and not rest.startswith("#"):
            raise ConfigError(
                f"unexpected text {rest!r} after quoted value", file=filename, line=line
            )
        skrouterd = (
            "skrouterd refuses a double-quoted value"
            if quote == '"'
            else "skrouterd keeps single quotes as part of the value"
        )
        warnings.append(
            ConfigWarning(
                filename,
                line,
                f"attribute '{key}': the quotes are removed, but {skrouterd} (write it "
                "without quotes)",
            )
        )
        return v[1:end]
    if key in _HASH_OK:
        return v.split()[0] if v else v
    if "#" in v:
        read = v.split("#", 1)[0].strip()
        if read != _strip_comment(v):
            warnings.append(
                ConfigWarning(
                    filename,
                    line,
                    f"attribute '{key}': value {v!r} is read as {read!r}, as skrouterd "
                    "reads it ('#' starts a comment anywhere in a value)",
                )
            )
        v = read
    return v


_SPARE_COMMA = re.compile(r",\s*([\]}])")
_CONF_ITEM = re.compile(r"([\w-]+)[ \t]*:[ \t]*([^ \t{]+.*)")


def _parse_map(
    key: str, lines: list[tuple[int, str]], filename: str, line: int
) -> dict[str, object]:
    """A nested map attribute (``openProperties: {`` ... ``}``), read as
    Skupper reads it: ``openProperties`` and ``groups`` hold JSON lines;
    other maps may mix ``name: value`` lines (made JSON) with JSON lines.
    Spare commas before a closing brace are dropped.  Skiff implements none
    of these attributes, so the value only has to be readable.
    """
    body: list[str] = []
    for _, text in lines:
        if not text or text.startswith("#"):
            continue
        if key not in _JSON_MAPS:
            structural = text.split("#", 1)[0].strip()
            opened = _MAP_OPEN.fullmatch(structural)
            item = _CONF_ITEM.fullmatch(structural)
            if opened:
                text = json.dumps(opened.group(1)) + ": {"
            elif item and not structural.startswith('"'):
                text = f"{json.dumps(item.group(1))}: {json.dumps(item.group(2).strip())},"
            elif structural == "}":
                text = "},"
        body.append(text)
    document = _SPARE_COMMA.sub(r"\1", "{" + "\n".join(body)).rstrip().rstrip(",")
    try:
        value = json.loads(document)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ConfigError(
            f"attribute '{key}': invalid map ({getattr(e, 'msg', e)})",
            file=filename,
            line=line,
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"attribute '{key}': expected a map", file=filename, line=line)
    return value


def _parse_conf(
    text: str, filename: str, warnings: list[ConfigWarning] | None = None
) -> list[_RawEntity]:
    if warnings is None:
        warnings = []
    bad = _BAD_IN_FILE.search(text)
    if bad is not None:
        raise ConfigError(
            f"{_char_name(bad.group())} in the configuration (is it a text file?)",
            file=filename,
            line=_line_at(text, bad.start()),
        )
    entities: list[_RawEntity] = []
    current: _RawEntity | None = None
    nested: tuple[str, int, list[tuple[int, str]]] | None = None
    depth = 0
    for lineno, raw_line in enumerate(text.split("\n"), start=1):
        stripped = raw_line.strip()
        if nested is not None:
            # inside a map attribute: collect until its braces balance
            key, start, lines = nested
            structural = _strip_comment(stripped) if not stripped.startswith("#") else ""
            if structural.endswith("{"):
                depth += 1
            elif structural.endswith("}"):
                depth -= 1
            lines.append((lineno, stripped))
            if depth == 0 and current is not None:
                current.attributes.append((key, _parse_map(key, lines, filename, start), start))
                nested = None
            continue
        if not stripped or stripped.startswith("#"):
            continue
        # as in skrouterd, '#' anywhere starts a comment on a structural line
        structural = stripped.split("#", 1)[0].strip()
        opened = _OPEN.fullmatch(structural) if structural.endswith("{") else None
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
        map_open = _MAP_OPEN.fullmatch(structural)
        if structural == "}":
            entities.append(current)
            current = None
        elif map_open:
            nested = (map_open.group(1), lineno, [])
            depth = 1
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
            value = _parse_value(keyed.group(1), keyed.group(2), filename, lineno, warnings)
            current.attributes.append((keyed.group(1), value, lineno))
    if nested is not None:
        raise ConfigError(
            f"map attribute '{nested[0]}' is not terminated ('}}' missing before end of file)",
            file=filename,
            line=nested[1],
        )
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


class _LongNumber:
    """A JSON integer literal too long to convert; rejected where it is used."""

    __slots__ = ("digits",)

    def __init__(self, literal: str) -> None:
        self.digits = len(literal.lstrip("-"))

    def __repr__(self) -> str:
        return f"<number of {self.digits} digits>"


def _parse_int(literal: str) -> int | _LongNumber:
    # int() of a long literal is slow and refuses 4,301 digits with ValueError.
    return int(literal) if len(literal) <= _MAX_NUMBER_DIGITS else _LongNumber(literal)


def _json_kind(value: object) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float, _LongNumber)):
        return "number"
    return "null" if value is None else type(value).__name__


def _preview(value: object, size: int = 60) -> str:
    try:
        return json.dumps(value, default=repr)[:size]
    except (RecursionError, ValueError):
        return f"a JSON {_json_kind(value)}"


_SHAPE = 'expected a JSON list of ["entityType", {attributes}] pairs'
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_NESTING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def _skip_space(text: str, pos: int) -> int:
    match = _JSON_SPACE.match(text, pos)
    return pos if match is None else match.end()


def _json_entries(text: str, decoder: json.JSONDecoder) -> list[tuple[object, int]] | None:
    """Decodes a top-level JSON list element by element, with each one's line.

    Lines are counted incrementally, so the whole pass is linear in the size
    of the text.  None means the text is not a well-formed JSON list; the
    caller then decodes it whole for the decoder's precise message.
    """
    pos = _skip_space(text, 0)
    if not text.startswith("[", pos):
        return None
    pos = _skip_space(text, pos + 1)
    entries: list[tuple[object, int]] = []
    line, counted = 1, 0
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            line += text.count("\n", counted, pos)
            counted = pos
            try:
                item, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                return None
            entries.append((item, line))
            pos = _skip_space(text, pos)
            if text.startswith(",", pos):
                pos = _skip_space(text, pos + 1)
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                return None
    if _skip_space(text, pos) != len(text):
        return None
    return entries


def _too_deep(text: str, filename: str) -> ConfigError:
    """The error for JSON nested beyond the decoder's stack, at its line."""
    depth = deepest = where = 0
    for match in _JSON_NESTING.finditer(text):
        char = text[match.start()]
        if char in "[{":
            depth += 1
            if depth > deepest:
                deepest, where = depth, match.start()
                if depth > _MAX_JSON_DEPTH:
                    break
        elif char in "]}":
            depth -= 1
    return ConfigError(
        f"invalid JSON: nested too deeply (more than {min(deepest - 1, _MAX_JSON_DEPTH)} levels)",
        file=filename,
        line=_line_at(text, where),
    )


_JSON_COMMENT_LINE = re.compile(r"^[ \t]*#.*$", re.MULTILINE)


def _parse_json(text: str, filename: str) -> list[_RawEntity]:
    # Skupper ignores lines whose first non-blank character is '#'; they are
    # blanked, not removed, so line numbers stay right.
    if "#" in text:
        text = _JSON_COMMENT_LINE.sub("", text)
    decoder = json.JSONDecoder(object_pairs_hook=_pairs_hook, parse_int=_parse_int)
    try:
        entries = _json_entries(text, decoder)
        if entries is None:
            document = decoder.decode(text)  # raises with the precise message
            first = _skip_space(text, 0)
            if not isinstance(document, list):
                raise ConfigError(
                    f"{_SHAPE}, got a JSON {_json_kind(document)}",
                    file=filename,
                    line=_line_at(text, first),
                )
            entries = [(item, 1) for item in document]
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"invalid JSON: {e.msg} (column {e.colno})", file=filename, line=e.lineno
        ) from None
    except RecursionError:
        raise _too_deep(text, filename) from None
    entities: list[_RawEntity] = []
    for index, (item, line) in enumerate(entries, start=1):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], dict)
        ):
            raise ConfigError(
                f"entry {index}: {_SHAPE}, got {_preview(item)}",
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


def _value_problem(value: object, *, in_list: bool = False) -> str | None:
    """Why a value is refused before conversion, or None; never recurses deeply."""
    if isinstance(value, str):
        if len(value) > _MAX_VALUE_CHARS:
            return f"a value of {len(value)} characters (at most {_MAX_VALUE_CHARS})"
        # isprintable() is False for every character refused (and a few more)
        bad = None if value.isprintable() else _BAD_IN_VALUE.search(value)
        return None if bad is None else f"a value with {_char_name(bad.group())}"
    if isinstance(value, _LongNumber):
        return f"a number of {value.digits} digits (at most {_MAX_NUMBER_DIGITS})"
    if isinstance(value, dict):
        return "invalid value (a JSON object)"
    if isinstance(value, list):
        if in_list:
            return "invalid value (a nested JSON list)"
        for element in value:
            problem = _value_problem(element, in_list=True)
            if problem is not None:
                return problem
    return None


def _name_problem(name: str) -> str | None:
    if len(name) > _MAX_NAME_CHARS:
        return f"a name of {len(name)} characters (at most {_MAX_NAME_CHARS})"
    bad = None if name.isprintable() else _BAD_IN_VALUE.search(name)
    return None if bad is None else f"a name with {_char_name(bad.group())}"


def _validate(raw: _RawEntity, filename: str, warnings: list[ConfigWarning]) -> ConfigEntity | None:
    problem = _name_problem(raw.type)
    if problem is not None:
        raise ConfigError(f"invalid entity type: {problem}", file=filename, line=raw.line)
    if schema.is_unsupported_type(raw.type):
        for key, _value, line in raw.attributes:
            try:
                schema.check_skupper_attribute(raw.type, key)
            except schema.SchemaError as e:
                raise ConfigError(e.message, file=filename, line=line) from None
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
        problem = _name_problem(key)
        if problem is not None:
            raise ConfigError(
                f"invalid {spec.short_name} attribute: {problem}", file=filename, line=line
            )
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
            attr = spec.attributes[name]
            problem = _value_problem(value)
            if (
                problem is None
                and isinstance(value, str)
                and len(value) > _MAX_NUMBER_DIGITS
                and attr.type in (schema.AttrType.INTEGER, schema.AttrType.PORT)
                and _DIGITS.fullmatch(value)
            ):
                problem = f"a number of {len(value.strip())} digits (at most {_MAX_NUMBER_DIGITS})"
            if problem is not None:
                raise ConfigError(
                    f"{spec.short_name} attribute '{name}' has {problem}: expected "
                    f"{attr.expected()}",
                    file=filename,
                    line=line,
                )
            values[name] = schema.convert(spec, attr, value)
        except ConfigError:
            raise
        except schema.SchemaError as e:
            raise ConfigError(e.message, file=filename, line=line) from None
        except (ValueError, TypeError, OverflowError, RecursionError) as e:
            # schema.convert raises SchemaError only; anything else is a bug
            # there, but still this file's fault and reported as such.
            raise ConfigError(
                f"{spec.short_name} attribute '{key}' has a value that cannot be used ({e})",
                file=filename,
                line=line,
            ) from None
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
    references: dict[str, list[schema.AttributeSpec]] = {}
    for entity in config.entities:
        if entity.type not in references:
            references[entity.type] = [
                a
                for a in schema.entity_type(entity.type).configurable()
                if a.references is not None
            ]
        for attr in references[entity.type]:
            target = entity.attributes.get(attr.name)
            if target is None or attr.references is None:
                continue
            if (attr.references, str(target)) not in first:
                defined = [name for type_name, name in first if type_name == attr.references]
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
