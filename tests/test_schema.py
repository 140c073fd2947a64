from __future__ import annotations

import pytest

from router import schema


def spec(name: str) -> schema.EntityTypeSpec:
    return schema.entity_type(name)


def test_full_and_short_names_resolve_to_the_same_type() -> None:
    assert spec("tcpListener") is spec("io.skupper.router.tcpListener")
    assert spec("tcpListener").full_name == "io.skupper.router.tcpListener"


def test_unknown_type_suggests_a_close_name() -> None:
    with pytest.raises(
        schema.UnknownEntityType,
        match=r"unknown entity type 'tcpListner'.*did you mean 'tcpListener'",
    ):
        spec("tcpListner")


def test_unsupported_skupper_type_is_known_but_refused() -> None:
    assert schema.is_unsupported_type("io.skupper.router.linkRoute")
    with pytest.raises(schema.UnknownEntityType, match="not supported by Skiff"):
        spec("httpListener")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (True, True),
        ("true", True),
        ("YES", True),
        ("1", True),
        ("False", False),
        ("no", False),
        ("0", False),
        (0, False),
    ],
)
def test_boolean_forms(raw: object, expected: bool) -> None:
    assert schema.convert(spec("router"), "dropTcpConnections", raw) is expected


def test_boolean_rejects_other_words() -> None:
    with pytest.raises(schema.InvalidValue) as info:
        schema.convert(spec("router"), "dropTcpConnections", "maybe")
    message = str(info.value)
    assert "router attribute 'dropTcpConnections'" in message
    assert "'maybe'" in message
    assert "expected a boolean" in message


def test_integer_accepts_decimal_strings_and_checks_range() -> None:
    router = spec("router")
    assert schema.convert(router, "workerThreads", "8") == 8
    assert schema.convert(router, "workerThreads", 3) == 3
    with pytest.raises(
        schema.InvalidValue,
        match=r"'workerThreads' has invalid value '0' \(out of range\): expected an integer "
        r"from 1 to 255",
    ):
        schema.convert(router, "workerThreads", "0")
    with pytest.raises(schema.InvalidValue, match="expected an integer"):
        schema.convert(router, "workerThreads", "four")
    with pytest.raises(schema.InvalidValue):
        schema.convert(router, "workerThreads", True)


def test_port_accepts_numbers_and_service_names() -> None:
    listener = spec("listener")
    assert schema.convert(listener, "port", "amqp") == 5672
    assert schema.convert(listener, "port", "amqps") == 5671
    assert schema.convert(spec("tcpListener"), "port", "9000") == 9000
    with pytest.raises(
        schema.InvalidValue, match=r"'port' has invalid value '70000' \(out of range\)"
    ):
        schema.convert(spec("tcpListener"), "port", "70000")
    with pytest.raises(schema.InvalidValue, match="expected a port number"):
        schema.convert(spec("tcpListener"), "port", "no-such-service-name")


def test_port_accepts_a_tcp_service_name_as_skupper_does() -> None:
    import socket

    try:
        http = socket.getservbyname("http", "tcp")
    except OSError:
        pytest.skip("this system has no services database (/etc/services)")
    assert schema.convert(spec("tcpListener"), "port", "http") == http


def test_enum_checks_choices_and_hints_at_case() -> None:
    router = spec("router")
    assert schema.convert(router, "mode", "interior") == "interior"
    with pytest.raises(schema.InvalidValue) as info:
        schema.convert(router, "mode", "Edge")
    assert "did you mean 'edge'" in str(info.value)
    assert "expected one of standalone, interior, edge" in str(info.value)


def test_list_of_strings_splits_on_spaces_and_commas() -> None:
    listener = spec("listener")
    assert schema.convert(listener, "saslMechanisms", "ANONYMOUS, PLAIN EXTERNAL") == [
        "ANONYMOUS",
        "PLAIN",
        "EXTERNAL",
    ]
    assert schema.convert(listener, "saslMechanisms", ["PLAIN"]) == ["PLAIN"]
    with pytest.raises(schema.InvalidValue):
        schema.convert(listener, "saslMechanisms", [1, 2])


def test_defaults_and_required_attributes() -> None:
    values = schema.validate_attributes(
        spec("tcpListener"), {"port": "9000", "address": "web"}
    ).values
    assert values["host"] == ""
    assert values["backlog"] == 0  # Skupper's default: the system's
    assert values["authenticatePeer"] is False
    assert values["maxConnections"] == 0
    # Skupper's schema gives tcpConnector host a default, port none
    connector = schema.validate_attributes(spec("tcpConnector"), {"port": 1, "address": "a"})
    assert connector.values["host"] == "127.0.0.1"
    with pytest.raises(schema.MissingAttribute, match="tcpConnector attribute 'port' is required"):
        schema.validate_attributes(spec("tcpConnector"), {"address": "a"})


def test_router_defaults_match_skupper() -> None:
    values = schema.validate_attributes(spec("router"), {}).values
    assert values["mode"] == "standalone"
    assert values["workerThreads"] == 4
    assert values["dropTcpConnections"] is True
    assert values["id"] is None


def test_unknown_attribute_with_suggestion() -> None:
    with pytest.raises(
        schema.UnknownAttribute,
        match=r"tcpListener attribute 'prot' is unknown \(did you mean 'port'\?\)",
    ):
        schema.validate_attributes(spec("tcpListener"), {"prot": 9000, "address": "a"})


def test_status_attribute_cannot_be_set() -> None:
    with pytest.raises(schema.ReadOnlyAttribute, match="'bytesIn' is read-only"):
        schema.validate_attributes(spec("tcpListener"), {"port": 1, "address": "a", "bytesIn": 3})


def test_dashed_spelling_is_accepted_as_skupper_does() -> None:
    result = schema.validate_attributes(spec("router"), {"worker-threads": "2"})
    assert result.values["workerThreads"] == 2
    assert result.warnings == []
    result = schema.validate_attributes(spec("router"), {"worker_threads": "3"})
    assert result.values["workerThreads"] == 3


def test_dashed_and_camel_spelling_together_is_a_duplicate() -> None:
    with pytest.raises(schema.DuplicateAttribute, match="'workerThreads' is given twice"):
        schema.validate_attributes(spec("router"), {"worker-threads": "2", "workerThreads": 3})


def test_unsupported_attribute_is_ignored_with_warning() -> None:
    result = schema.validate_attributes(
        spec("tcpListener"), {"port": 1, "address": "a", "siteId": "x"}
    )
    assert "siteId" not in result.values
    assert result.warnings == [
        "tcpListener attribute 'siteId' is not supported by Skiff and is ignored"
    ]


def test_operations_per_type() -> None:
    assert spec("tcpConnector").allowed_operations == {
        "CREATE",
        "DELETE",
        "READ",
        "QUERY",
    }
    assert spec("log").allowed_operations == {"UPDATE", "READ", "QUERY"}
    assert spec("router").allowed_operations == {"READ", "QUERY"}
    assert spec("sslProfile").implemented is True
    assert spec("sslProfile").attributes["password"].secret


def test_log_enable_default_depends_on_module() -> None:
    log = spec("log")
    assert schema.validate_attributes(log, {"module": "DEFAULT"}).values["enable"] == "info+"
    assert schema.validate_attributes(log, {"module": "TCP_ADAPTOR"}).values["enable"] == "default"


def test_log_enable_is_checked_by_convert() -> None:
    with pytest.raises(
        schema.InvalidValue, match=r"unknown level 'warnng\+'.*did you mean 'warning'"
    ):
        schema.convert(spec("log"), "enable", "debug,warnng+")


def test_parse_enable() -> None:
    assert schema.parse_enable("warning+").levels == frozenset({"warning", "error", "critical"})
    assert schema.parse_enable("debug, error").levels == frozenset({"debug", "error"})
    assert schema.parse_enable("none").levels == frozenset()
    assert schema.parse_enable("default").inherits
    # as in Skupper: 'none' adds nothing, 'default' anywhere follows DEFAULT,
    # a level may be a case-insensitive prefix, separators are , ; : and space
    assert schema.parse_enable("none,info").levels == frozenset({"info"})
    assert schema.parse_enable("info,default").inherits
    assert schema.parse_enable("warn+").levels == frozenset({"warning", "error", "critical"})
    assert schema.parse_enable("Info").levels == frozenset({"info"})
    assert schema.parse_enable("ERR+;crit").levels == frozenset({"error", "critical"})
    assert schema.parse_enable("n").levels == frozenset()
    assert schema.parse_enable("d").inherits  # Skupper matches 'default' first
    assert schema.parse_enable("deb").levels == frozenset({"debug"})
    with pytest.raises(schema.InvalidValue, match="is empty"):
        schema.parse_enable(" ")


def test_generated_names_come_from_content() -> None:
    tcp = spec("tcpConnector")
    assert tcp.default_name({"host": "h", "port": 80, "address": "web"}) == "tcpConnector/h:80:web"
    assert spec("router").default_name({}) == "router"


def test_did_you_mean() -> None:
    assert schema.did_you_mean("adress", ["address", "host"]) == " (did you mean 'address'?)"
    assert schema.did_you_mean("zzz", ["address"]) == ""


def test_every_configurable_integer_has_explicit_bounds() -> None:
    for spec in schema.ENTITY_TYPES.values():
        for attr in spec.configurable():
            if attr.type is schema.AttrType.INTEGER:
                assert attr.minimum is not None and attr.maximum is not None, (
                    f"{spec.short_name}.{attr.name} needs a documented range"
                )


@pytest.mark.parametrize(
    ("type_name", "attr", "value"),
    [
        ("tcpConnector", "port", 0),
        ("tcpConnector", "port", "0"),
        ("tcpListener", "port", "9" * 5000),
        ("tcpListener", "port", 65536),
        ("tcpListener", "backlog", 2**62),
        ("router", "workerThreads", 4294967297),
        ("listener", "idleTimeoutSeconds", 2**40),
        ("listener", "maxFrameSize", 2**33),
        ("sslProfile", "ordinal", 2**64),
    ],
)
def test_values_past_their_bounds_are_refused_naming_the_attribute(
    type_name: str, attr: str, value: object
) -> None:
    spec = schema.entity_type(type_name)
    with pytest.raises(schema.InvalidValue, match=f"attribute '{attr}'") as info:
        schema.convert(spec, attr, value)
    assert info.value.attribute == attr


def test_values_at_their_bounds_are_accepted() -> None:
    for spec in schema.ENTITY_TYPES.values():
        for attr in spec.configurable():
            if attr.type is schema.AttrType.INTEGER:
                assert attr.minimum is not None and attr.maximum is not None
                assert schema.convert(spec, attr, attr.minimum) == attr.minimum
                assert schema.convert(spec, attr, str(attr.maximum)) == attr.maximum
    connector = schema.entity_type("tcpConnector")
    assert schema.convert(connector, "port", "1") == 1
    assert schema.convert(schema.entity_type("tcpListener"), "port", 0) == 0
