from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from router.config import (
    DEFAULT_CONFIG,
    ConfigError,
    ConfigFile,
    load_config,
    parse_config_text,
)

F = "skrouterd.conf"


def parse(text: str, filename: str = F) -> ConfigFile:
    return parse_config_text(textwrap.dedent(text), filename)


def error(text: str, filename: str = F) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, filename)
    return str(info.value)


EXAMPLE = """\
# comment
router {
    id: r1
    mode: interior
    workerThreads: 8   # trailing comment
}

tcpListener {
    host: 127.0.0.1
    port: 9000
    address: web
}

tcpConnector{
    name: backend
    host: 127.0.0.1
    port: "8080"
    address: web
}
"""


def test_parses_entities_with_converted_values_and_defaults() -> None:
    config = parse(EXAMPLE)
    types = [e.type for e in config.entities]
    assert types == ["router", "tcpListener", "tcpConnector"]
    router, listener, connector = config.entities
    assert router.attributes["workerThreads"] == 8
    assert router.attributes["dropTcpConnections"] is True
    assert listener.attributes == {
        "host": "127.0.0.1",
        "port": 9000,
        "address": "web",
        "backlog": 0,
        "sslProfile": None,
        "authenticatePeer": False,
        "maxConnections": 0,
        "distribution": "closest",
        "tlsResumption": "tickets",
    }
    assert listener.name == "tcpListener/127.0.0.1:9000"
    assert listener.line == 8
    assert connector.name == "backend"
    assert connector.attributes["port"] == 8080
    assert [str(w) for w in config.warnings] == [
        "skrouterd.conf:17: attribute 'port': the quotes are removed, but skrouterd refuses a "
        "double-quoted value (write it without quotes)",
    ]


def test_default_config_is_valid() -> None:
    config = parse_config_text(DEFAULT_CONFIG, F)
    (router,) = config.of_type("router")
    assert router.attributes["id"] == "skiff"
    assert router.attributes["mode"] == "standalone"


def test_hash_inside_value_is_kept_unless_after_whitespace() -> None:
    config = parse(
        """\
        sslProfile {
            name: p
            password: pa#ss # comment
            ciphers: "A #B"  # quoted keeps ' #'
        }
        """
    )
    attrs = config.entities[0].attributes
    # skrouterd ends a value at its first '#': Skiff follows, and says so
    assert attrs["password"] == "pa"
    assert attrs["ciphers"] == "A #B"
    warnings = [str(w) for w in config.warnings]
    assert (
        "skrouterd.conf:3: attribute 'password': value 'pa#ss # comment' is read as 'pa'"
        in (warnings[0])
    )
    assert "the quotes are removed, but skrouterd refuses a double-quoted value" in warnings[1]


def test_unknown_attribute_names_file_line_and_suggestion() -> None:
    message = error(
        """\
        tcpListener {
            prot: 9000
        }
        """
    )
    assert (
        message
        == "skrouterd.conf:2: tcpListener attribute 'prot' is unknown (did you mean 'port'?)"
    )


def test_unknown_entity_type_with_suggestion() -> None:
    message = error("tcpListenr {\n}\n")
    assert (
        message
        == "skrouterd.conf:1: unknown entity type 'tcpListenr' (did you mean 'tcpListener'?)"
    )


def test_wrong_type_names_attribute_value_and_expectation() -> None:
    message = error("router {\n  workerThreads: lots\n}\n")
    assert message.startswith(
        "skrouterd.conf:2: router attribute 'workerThreads' has invalid value 'lots'"
    )
    assert "expected an integer from 1 to 255" in message


def test_missing_required_attribute_reports_entity_line() -> None:
    message = error("\n\ntcpConnector {\n  host: a\n  port: 1\n}\n")
    assert message == "skrouterd.conf:3: tcpConnector attribute 'address' is required but missing"


def test_duplicate_attribute_in_one_entity() -> None:
    message = error("tcpListener {\n port: 1\n address: a\n port: 2\n}\n")
    assert (
        message == "skrouterd.conf:4: tcpListener attribute 'port' is given twice; first at line 2"
    )


def test_unterminated_entity_at_end_of_file() -> None:
    message = error("router {\n  id: x\n")
    assert (
        message
        == "skrouterd.conf:1: router entity is not terminated ('}' missing before end of file)"
    )


def test_unterminated_entity_before_next_one() -> None:
    message = error("router {\n  id: x\nlog {\n}\n")
    assert message.startswith("skrouterd.conf:3: router entity opened at line 1 is not terminated")


def test_closing_brace_without_entity() -> None:
    assert error("\n}\n") == "skrouterd.conf:2: '}' without an open entity"


def test_line_that_is_neither() -> None:
    assert "skrouterd.conf:1: expected 'entityType {'" in error("hello world\n")
    assert "skrouterd.conf:2: expected 'attribute: value' or '}'" in error("router {\n  id x\n}\n")
    assert "outside of any entity" in error("id: x\n")


def test_duplicate_entity_names_of_one_type() -> None:
    message = error("sslProfile {\n name: a\n}\nsslProfile {\n name: a\n}\n")
    assert message == "skrouterd.conf:4: sslProfile 'a' is defined twice (first at line 1)"


def test_duplicate_generated_names_hint_at_name() -> None:
    text = "tcpListener {\n port: 1\n address: a\n}\ntcpListener {\n port: 1\n address: b\n}\n"
    assert "(give each a distinct 'name')" in error(text)


def test_more_than_one_router() -> None:
    message = error("router {\n}\nrouter {\n}\n")
    assert message == "skrouterd.conf:3: only one router entity is allowed (first at line 1)"


def test_undefined_ssl_profile_reference() -> None:
    message = error(
        """\
        sslProfile {
            name: server-tls
        }
        tcpListener {
            port: 1
            address: a
            sslProfile: server-tsl
        }
        """
    )
    assert message.startswith(
        "skrouterd.conf:4: tcpListener attribute 'sslProfile' names sslProfile 'server-tsl'"
    )
    assert "not defined (did you mean 'server-tls'?)" in message


def test_status_attribute_in_file_is_an_error() -> None:
    assert "skrouterd.conf:2: tcpListener attribute 'bytesIn' is read-only" in error(
        "tcpListener {\n bytesIn: 3\n}\n"
    )


def test_unterminated_quote() -> None:
    assert "skrouterd.conf:2: unterminated quoted value" in error('router {\n id: "abc\n}\n')


def test_dashed_spelling_is_read_and_unsupported_attribute_warns() -> None:
    config = parse(
        """\
        router {
            worker-threads: 2
            hello-max-age-seconds: 5
            debugDumpFile: /tmp/x
        }
        tcpConnector {
            host: h
            port: 1
            address: a
            siteId: s1
        }
        linkRoute {
            prefix: x
        }
        """
    )
    router, connector = config.entities
    assert router.attributes["workerThreads"] == 2
    assert router.attributes["helloMaxAgeSeconds"] == 5
    assert "debugDumpFile" not in router.attributes
    assert "siteId" not in connector.attributes
    warnings = [str(w) for w in config.warnings]
    assert warnings == [
        "skrouterd.conf:4: router attribute 'debugDumpFile' is not supported by Skiff and "
        "is ignored",
        "skrouterd.conf:10: tcpConnector attribute 'siteId' is not supported by Skiff and is "
        "ignored",
        "skrouterd.conf:12: entity type 'linkRoute' is not supported by Skiff and is ignored",
    ]


JSON_OK = """\
[
  ["router", {"id": "r", "workerThreads": "2"}],
  ["tcpListener", {"port": 9000, "address": "web", "authenticatePeer": "no"}],
  ["io.skupper.router.tcpConnector", {"host": "h", "port": "80", "address": "web"}]
]
"""


def test_json_shape_is_accepted_with_native_or_string_values() -> None:
    config = parse_config_text(JSON_OK, "skrouterd.json")
    router, listener, connector = config.entities
    assert router.attributes["workerThreads"] == 2
    assert listener.attributes["authenticatePeer"] is False
    assert listener.line == 3
    assert connector.type == "tcpConnector"
    assert connector.attributes["port"] == 80


def test_json_syntax_error_reports_line() -> None:
    message = error('[\n  ["router", {"id": "r",}]\n]\n', "skrouterd.json")
    assert message.startswith("skrouterd.json:2: invalid JSON:")


def test_json_wrong_shape() -> None:
    assert error('{"router": {}}', "skrouterd.json").startswith(
        'skrouterd.json:1: expected a JSON list of ["entityType", {attributes}] pairs, got a '
        "JSON object"
    )
    message = error('[\n ["router", {}],\n ["tcpListener"]\n]', "skrouterd.json")
    assert message.startswith("skrouterd.json:3: entry 2: expected a JSON list")


def test_json_attribute_errors_use_entry_line() -> None:
    message = error('[\n\n ["tcpListener", {"prot": 1}]\n]', "skrouterd.json")
    assert (
        message
        == "skrouterd.json:3: tcpListener attribute 'prot' is unknown (did you mean 'port'?)"
    )


def test_json_duplicate_key() -> None:
    message = error('[["router", {"id": "a", "id": "b"}]]', "skrouterd.json")
    assert message == "skrouterd.json:1: router attribute 'id' is given twice"


def test_load_config_picks_format_by_suffix(tmp_path: Path) -> None:
    conf = tmp_path / "a.conf"
    conf.write_text(EXAMPLE)
    assert len(load_config(conf).entities) == 3
    js = tmp_path / "a.json"
    js.write_text(JSON_OK)
    assert load_config(js).entities[0].attributes["id"] == "r"


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.conf"
    with pytest.raises(ConfigError, match=r"nope\.conf: cannot read configuration file"):
        load_config(path)
