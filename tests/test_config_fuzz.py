"""Property tests (Hypothesis) of the configuration parsers.

* Whatever the text or bytes, the only exception is ConfigError, and its
  message starts with ``FILE:LINE:`` for a line inside the file.
* Valid generated configurations give the same entities from the conf and
  the JSON shape, at the lines where they were written, and again when the
  parsed entities are written out and read back.

Cases found while writing these are kept as ``@example``s and as plain
tests in test_config_limits.py.  SKIFF_FUZZ_EXAMPLES=5000 runs longer.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from router import schema
from router.config import ConfigError, ConfigFile, entity_attributes, load_config, parse_config_text

EXAMPLES = int(os.environ.get("SKIFF_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def lines_in(text: str) -> int:
    return text.replace("\r\n", "\n").replace("\r", "\n").count("\n") + 1


def parse_or_error(text: str, filename: str) -> ConfigFile | None:
    """Parses; on ConfigError checks the message names the file and a line."""
    try:
        return parse_config_text(text, filename)
    except ConfigError as e:
        assert e.line is not None, e
        assert 1 <= e.line <= lines_in(text), (e, lines_in(text))
        assert str(e).startswith(f"{filename}:{e.line}: "), e
        return None


# -- arbitrary input ------------------------------------------------------------


@FUZZ
@given(st.text())
@example("router {\n    id: a\x00b\n}\n")
@example("\ufeffrouter {\r\n}\r\n")
@example("router {\n    workerThreads: " + "9" * 4301 + "\n}\n")
@example("x" * 300 + " {\n}\n")
@example("router {\x0c}\n")
def test_any_text_conf(text: str) -> None:
    parse_or_error(text, "f.conf")


@FUZZ
@given(st.text())
@example("[" * 100_000)
@example("[" * 100_000 + "]" * 100_000)
@example('[["router", {"workerThreads": ' + "9" * 4301 + "}]]")
@example('[["router", {"id": "\\ud800"}]]')
@example('\ufeff[["router", {}]]')
@example("[1,]")
@example("[] x")
@example("")
def test_any_text_json(text: str) -> None:
    parse_or_error(text, "f.json")


@FUZZ
@given(st.binary(max_size=300), st.booleans())
@example(b"router {\n    id: caf\xe9\n}\n", False)
@example(b"\xef\xbb\xbf[]", True)
@example(b"\xed\xa0\x80", False)  # an encoded surrogate is not UTF-8
def test_any_bytes_from_a_file(data: bytes, as_json: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("f.json" if as_json else "f.conf")
        path.write_bytes(data)
        try:
            load_config(path)
        except ConfigError as e:
            assert e.line is not None, e
            assert 1 <= e.line <= data.count(b"\n") + data.count(b"\r") + 1, e
            assert str(e).startswith(f"{path}:{e.line}: "), e


# -- structured noise -----------------------------------------------------------

TYPES = [
    *schema.ENTITY_TYPES,
    "io.skupper.router.tcpListener",
    "linkRoute",
    "tcpListner",
    "x" * 300,
]
KEYS = sorted(
    {name for spec in schema.ENTITY_TYPES.values() for name in spec.attributes}
    | {"worker-threads", "siteId", "prot", "k" * 300}
)
SCALARS = st.one_of(
    st.text(max_size=20),
    st.integers().map(str),
    st.integers(4290, 4310).map(lambda n: "9" * n),
    st.sampled_from(
        ["true", "no", "amqp", "http", "info+", '"quoted"', "'x", "a # c", '"a" b', "''", "\x00"]
    ),
)
CONF_LINES = st.one_of(
    st.builds(lambda t, sp: f"{t}{sp}{{", st.sampled_from(TYPES), st.sampled_from(["", " "])),
    st.builds(lambda k, v: f"    {k}: {v}", st.sampled_from(KEYS), SCALARS),
    st.just("}"),
    st.just(""),
    st.text(max_size=20).map(lambda s: "# " + s),
    st.text(max_size=30),
)


@FUZZ
@given(st.lists(CONF_LINES, max_size=30), st.sampled_from(["\n", "\r\n", "\r"]))
def test_structured_conf_noise(lines: list[str], newline: str) -> None:
    parse_or_error(newline.join(lines), "f.conf")


_BIG = re.compile(r'"__BIG(\d+)__"')
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.integers(4290, 4400).map(lambda n: f"__BIG{n}__"),
    st.sampled_from(["true", "amqp", "info+", "\u0000", "\ud800"]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
ENTRIES = st.one_of(
    st.tuples(
        st.sampled_from(TYPES),
        st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=6),
    ).map(list),
    JSON_VALUES,
)


def render_json(value: object) -> str:
    """json.dumps, with __BIGn__ placeholders turned into n-digit numbers."""
    return _BIG.sub(lambda m: "9" * int(m.group(1)), json.dumps(value, indent=1))


@FUZZ
@given(st.lists(ENTRIES, max_size=8) | JSON_VALUES)
def test_structured_json_noise(document: object) -> None:
    parse_or_error(render_json(document), "f.json")


@FUZZ
@given(
    st.lists(ENTRIES, max_size=6),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 8), st.text(max_size=4))),
)
def test_mutated_json(document: list[object], edits: list[tuple[int, int, str]]) -> None:
    text = render_json(document)
    for at, cut, insert in edits:
        at %= len(text) + 1
        text = text[:at] + insert + text[at + cut :]
    parse_or_error(text, "f.json")


@settings(FUZZ, max_examples=max(30, EXAMPLES // 5))
@given(st.integers(1, 3000), st.sampled_from("[{"), st.booleans())
def test_deep_json(depth: int, opener: str, closed: bool) -> None:
    inner = ("[" * depth + "]" * depth) if opener == "[" else ('{"a":' * depth + "1" + "}" * depth)
    text = inner if not closed else f'[["router", {{"id": {inner}}}]]'
    parse_or_error(text, "f.json")


# -- valid configurations round-trip ----------------------------------------------

# Text a value may hold: no control characters (refused), and not both quote
# characters (the conf syntax cannot quote such a value).
VALUE_TEXT = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x85\u2028\u2029"),
    max_size=12,
).filter(lambda s: not ('"' in s and "'" in s))
NAMES = VALUE_TEXT.filter(lambda s: s != "")
PLAIN = st.from_regex(r"[A-Za-z0-9_./:@-]{1,12}", fullmatch=True)


@dataclass
class Entity:
    type: str
    attributes: dict[str, object]


@st.composite
def configurations(draw: st.DrawFn) -> list[Entity]:
    entities: list[Entity] = []
    if draw(st.booleans()):
        entities.append(
            Entity(
                "router",
                {
                    "id": draw(VALUE_TEXT),
                    "mode": draw(st.sampled_from(["standalone", "interior", "edge"])),
                    "workerThreads": draw(st.integers(1, 64)),
                    "dropTcpConnections": draw(st.booleans()),
                    "metadata": draw(VALUE_TEXT),
                },
            )
        )
    profiles = draw(st.lists(NAMES, max_size=3, unique=True))
    for name in profiles:
        entities.append(
            Entity(
                "sslProfile",
                {"name": name, "certFile": draw(VALUE_TEXT), "ordinal": draw(st.integers(0, 99))},
            )
        )
    for type_name in ("tcpListener", "tcpConnector"):
        for name in draw(st.lists(NAMES, max_size=4, unique=True)):
            attributes: dict[str, object] = {
                "name": name,
                "host": draw(VALUE_TEXT),
                # the schema's range: a listener may ask for 0, a connector not
                "port": draw(
                    st.integers(
                        schema.entity_type(type_name).attributes["port"].minimum or 0, 65535
                    )
                ),
                "address": draw(VALUE_TEXT),
            }
            if profiles and draw(st.booleans()):
                attributes["sslProfile"] = draw(st.sampled_from(profiles))
            flag = "authenticatePeer" if type_name == "tcpListener" else "verifyHostname"
            attributes[flag] = draw(st.booleans())
            entities.append(Entity(type_name, attributes))
    return draw(st.permutations(entities))


def conf_value(value: object, plain: bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if plain and re.fullmatch(r"[A-Za-z0-9_./:@-]+", text):
        return text
    return f"'{text}'" if '"' in text else f'"{text}"'


def render_conf(entities: list[Entity], plain: bool, gap: int) -> tuple[str, list[int]]:
    lines: list[str] = ["# generated"]
    starts: list[int] = []
    for entity in entities:
        lines.extend([""] * gap)
        starts.append(len(lines) + 1)
        lines.append(f"{entity.type} {{")
        for key, value in entity.attributes.items():
            lines.append(f"    {key}: {conf_value(value, plain)}  # note")
        lines.append("}")
    return "\n".join(lines) + "\n", starts


def render_entries(entities: list[Entity], gap: int) -> tuple[str, list[int]]:
    lines = ["["]
    starts: list[int] = []
    for i, entity in enumerate(entities):
        lines.extend([""] * gap)
        starts.append(len(lines) + 1)
        comma = "," if i < len(entities) - 1 else ""
        lines.append(json.dumps([entity.type, entity.attributes]) + comma)
    lines.append("]")
    return "\n".join(lines), starts


def summary(config: ConfigFile) -> list[tuple[str, str, dict[str, object]]]:
    return [(e.type, e.name, e.attributes) for e in config.entities]


@settings(FUZZ, max_examples=max(100, EXAMPLES * 2 // 3))
@given(configurations(), st.booleans(), st.integers(0, 3))
@example([Entity("router", {"id": " # x ", "metadata": "'"})], False, 0)
def test_valid_configurations_round_trip(entities: list[Entity], plain: bool, gap: int) -> None:
    conf_text, conf_lines = render_conf(entities, plain, gap)
    json_text, json_lines = render_entries(entities, gap)
    from_conf = parse_config_text(conf_text, "f.conf")
    from_json = parse_config_text(json_text, "f.json")
    assert [e.line for e in from_conf.entities] == conf_lines
    assert [e.line for e in from_json.entities] == json_lines
    assert summary(from_conf) == summary(from_json)
    for given_entity, parsed in zip(entities, from_conf.entities, strict=True):
        assert parsed.type == given_entity.type
        for key, value in given_entity.attributes.items():
            got = parsed.name if key == "name" else parsed.attributes[key]
            assert got == value, (key, value, got)
    # Parsed entities written out again (with every default) read back the same.
    again = [
        Entity(e.type, {k: v for k, v in entity_attributes(e).items() if v is not None})
        for e in from_conf.entities
    ]
    assert summary(parse_config_text(render_entries(again, 0)[0], "g.json")) == summary(from_conf)
    assert summary(parse_config_text(render_conf(again, plain, 0)[0], "g.conf")) == summary(
        from_conf
    )
