"""A configuration file means to skiffd what it means to skrouterd 3.x.

One case per syntax form Skupper's loader accepts, and a corpus of
Skupper-style configurations (``tests/compat_corpus``, written for these
tests) that must load, and start, with warnings at most.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from daemon import Skiffd, free_port

from router.config import ConfigError, ConfigFile, load_config, parse_config_text

CORPUS = Path(__file__).parent / "compat_corpus"
F = "skrouterd.conf"


def parse(text: str, filename: str = F) -> ConfigFile:
    return parse_config_text(textwrap.dedent(text), filename)


def warnings(config: ConfigFile) -> list[str]:
    return [str(w) for w in config.warnings]


def only(config: ConfigFile, type_name: str) -> dict[str, object]:
    (entity,) = config.of_type(type_name)
    return entity.attributes


# -- names -------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["sslProfile", "ssl-profile", "ssl_profile"])
def test_entity_type_in_any_of_skuppers_spellings(spelling: str) -> None:
    config = parse(f"{spelling} {{\n    name: p\n    cert-file: /c.pem\n}}\n")
    assert only(config, "sslProfile")["certFile"] == "/c.pem"
    assert warnings(config) == []


@pytest.mark.parametrize(
    "spelling", ["workerThreads", "worker-threads", "worker_threads", "worker threads"]
)
def test_attribute_in_any_of_skuppers_spellings(spelling: str) -> None:
    config = parse(f"router {{\n    {spelling}: 3\n}}\n") if " " not in spelling else None
    if config is None:  # a space ends the name in the file syntax; JSON keeps it
        config = parse_config_text(f'[["router", {{"{spelling}": 3}}]]', "r.json")
    assert only(config, "router")["workerThreads"] == 3


def test_full_type_names_and_aliases() -> None:
    config = parse(
        """\
        io.skupper.router.tcpConnector {
            port: 80
            address: a
        }
        address {
            prefix: a
        }
        router.config.address {
            prefix: b
        }
        """
    )
    assert only(config, "tcpConnector")["port"] == 80
    assert sum("'address' is not supported" in w for w in warnings(config)) == 1


def test_a_misspelt_attribute_in_neither_schema_is_still_an_error() -> None:
    with pytest.raises(ConfigError, match=r"F?:2: router attribute 'wokerThreads' is unknown"):
        parse("router {\n    wokerThreads: 2\n}\n", "F?")
    with pytest.raises(ConfigError, match="did you mean 'area'"):
        parse("router {\n    aera: 1\n}\n")
    with pytest.raises(ConfigError, match="unknown entity type 'tcpListner'"):
        parse("tcpListner {\n    port: 1\n}\n")


# -- log levels --------------------------------------------------------------


@pytest.mark.parametrize(
    ("enable", "levels"),
    [
        ("warn+", {"warning", "error", "critical"}),
        ("Info", {"info"}),
        ("INFO+", {"info", "notice", "warning", "error", "critical"}),
        ("debug;error", {"debug", "error"}),
        ("debug error:critical", {"debug", "error", "critical"}),
        ("crit", {"critical"}),
        ("none", set()),
        ("n", set()),
    ],
)
def test_log_levels_by_case_insensitive_prefix(enable: str, levels: set[str]) -> None:
    from router.schema import parse_enable

    config = parse(f"log {{\n    module: DEFAULT\n    enable: {enable}\n}}\n")
    assert only(config, "log")["enable"] == enable
    assert parse_enable(enable).levels == frozenset(levels)


def test_http_observer_log_modules_are_known() -> None:
    for module in ("HTTP1_OBSERVER", "HTTP2_OBSERVER", "HTTP2_DECODER"):
        config = parse(f"log {{\n    module: {module}\n    enable: warning+\n}}\n")
        assert only(config, "log")["module"] == module


def test_an_unknown_level_is_an_error_with_its_line() -> None:
    with pytest.raises(ConfigError, match=r":3: log attribute 'enable' has unknown level 'loud'"):
        parse("log {\n    module: DEFAULT\n    enable: loud\n}\n")


# -- comments and values -----------------------------------------------------


def test_hash_ends_a_value_as_in_skrouterd_and_says_so() -> None:
    config = parse("sslProfile {\n    name: p\n    password: se#cret\n}\n")
    assert only(config, "sslProfile")["password"] == "se"
    assert warnings(config) == [
        "skrouterd.conf:3: attribute 'password': value 'se#cret' is read as 'se', as skrouterd "
        "reads it ('#' starts a comment anywhere in a value)"
    ]


def test_hash_after_a_structural_line_is_a_comment() -> None:
    config = parse("router {# the router\n    id: r\n}# end\n")
    assert only(config, "router")["id"] == "r"


def test_pattern_keeps_its_hash() -> None:
    config = parse("address {\n    pattern: a.#.b  # comment\n}\n")
    assert warnings(config) == [
        "skrouterd.conf:1: entity type 'address' is not supported by Skiff and is ignored"
    ]


@pytest.mark.parametrize(("quoted", "refusal"), [('"x y"', "refuses"), ("'x y'", "keeps")])
def test_quotes_are_removed_with_a_warning_saying_how_skrouterd_differs(
    quoted: str, refusal: str
) -> None:
    config = parse(f"router {{\n    metadata: {quoted}\n}}\n")
    assert only(config, "router")["metadata"] == "x y"
    (warning,) = warnings(config)
    assert f"the quotes are removed, but skrouterd {refusal}" in warning


def test_comment_lines_in_json_files() -> None:
    config = parse_config_text(
        '# comment first\n[\n  # a comment line\n  ["router", {"id": "j"}],\n'
        '    #indented\n  ["tcpConnector", {"port": 1, "address": "a"}]\n]\n',
        "skrouterd.json",
    )
    assert only(config, "router")["id"] == "j"
    (connector,) = config.of_type("tcpConnector")
    assert connector.line == 6 and connector.attributes["host"] == "127.0.0.1"


def test_map_attributes_in_file_syntax_are_read_and_ignored() -> None:
    config = parse(
        """\
        listener {
            port: 0
            openProperties: {
                "vendor": "x",
                "nested": {
                    "n": 1
                }
            }
        }
        vhost {
            hostname: $default
            groups: {
                "$default": {
                    "users": "*",
                    "remoteHosts": "*"
                }
            }
        }
        """
    )
    assert only(config, "listener")["port"] == 0
    assert "listener attribute 'openProperties' is not supported" in " ".join(warnings(config))


def test_map_attributes_as_skuppers_test_harness_writes_them() -> None:
    # one "key": value line each, JSON values on one line, trailing commas
    config = parse(
        """\
        listener {
            port: 0
            openProperties: {
                "vendor": "x",
                "nested": {"a": [1, 2]},
            }
        }
        dummy {
            arg1: {
                plain: word   # a comment
                "quoted": 1,
                inner: {
                    deep: value
                }
            }
        }
        """
    )
    assert only(config, "listener")["port"] == 0
    assert len(config.warnings) == 2


def test_an_unterminated_map_attribute_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r":2: map attribute 'openProperties' is not terminated"):
        parse('listener {\n    openProperties: {\n        "a": 1\n')


# -- Skupper-only entities, attributes and defaults ---------------------------


def test_skupper_entities_and_attributes_skiff_lacks_warn() -> None:
    config = parse(
        """\
        router {
            area: 1
            saslConfigDir: /etc/sasl2
        }
        network {
            networkId: n
        }
        tcpListener {
            port: 9000
            address: a
            multiAddressStrategy: priority
        }
        listener {
            port: 5672
            socketAddressFamily: IPv6
        }
        proxyProfile {
            host: p
            port: 3128
        }
        listenerAddress {
            address: a
            value: 1
            listener: l
        }
        """
    )
    text = " ".join(warnings(config))
    for name in ("'area'", "'saslConfigDir'", "'network'", "'multiAddressStrategy'",
                 "'socketAddressFamily'", "'proxyProfile'", "'listenerAddress'"):  # fmt: skip
        assert name in text


def test_skuppers_defaults() -> None:
    config = parse("tcpConnector {\n    port: 80\n    address: a\n}\ntcpListener {\n"
                   "    port: 81\n    address: a\n}\nlistener {\n}\n")  # fmt: skip
    assert only(config, "tcpConnector")["host"] == "127.0.0.1"
    assert only(config, "tcpListener")["backlog"] == 0
    listener = only(config, "listener")
    assert listener["port"] == 5672 and listener["host"] == ""
    assert listener["allowAnonymousWrites"] is None  # decided by the bound address


def test_network_roles_are_read() -> None:
    config = parse("router {\n    mode: interior\n}\nlistener {\n    role: inter-router\n"
                   "    port: 55672\n    cost: 5\n}\nconnector {\n    role: inter-router\n"
                   "    host: 10.0.0.2\n    port: 55673\n}\n")  # fmt: skip
    assert only(config, "listener")["cost"] == 5
    connector = only(config, "connector")
    assert (connector["host"], connector["port"], connector["cost"]) == ("10.0.0.2", 55673, 1)
    assert connector["idleTimeoutSeconds"] == 16 and connector["verifyHostname"] is True
    assert warnings(config) == []


# -- the corpus ----------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CORPUS.iterdir()), ids=lambda p: p.name)
def test_corpus_configuration_loads(path: Path) -> None:
    config = load_config(path)
    assert config.of_type("router"), path
    for warning in config.warnings:
        assert "is not supported by Skiff" in warning.message or "skrouterd" in warning.message \
            or "standalone" in warning.message, warning  # fmt: skip


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.conf")), ids=lambda p: p.name)
def test_corpus_configuration_starts(path: Path, tmp_path: Path) -> None:
    """skiffd runs each corpus file (its ports moved to free ones)."""
    text = re.sub(r"(?m)^(\s*port:) \S+$", lambda m: f"{m.group(1)} {free_port()}",
                  path.read_text())  # fmt: skip
    text = text.replace("host: 0.0.0.0", "host: 127.0.0.1")
    d = Skiffd(tmp_path, text)
    assert d.stop() == 0, d.stderr()
