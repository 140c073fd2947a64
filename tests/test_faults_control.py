"""Fault tests for the control plane (issue 14): every kind of invalid file
on SIGHUP while connections are held, and every numeric attribute at its
bounds and just past them through the same path management CREATE takes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from daemon import Skiffd, free_port, skiffd_conf, tcp_connector, tcp_listener
from servers import ThreadedServer, echo, recv_exact

from router import schema
from router.registry import InvalidRequest, Registry


def _bad_files(good: str, busy_port: int, tmp: Path) -> dict[str, str | None]:
    """name -> file text (None: the path is made unreadable instead)."""
    return {
        "syntax": good + "tcpListener {\n    port 1\n",
        "unknown attribute": good + "tcpConnector {\n    host: h\n    prot: 1\n}\n",
        "bad value": good.replace("workerThreads: 2", "workerThreads: many"),
        "out of range": good + tcp_listener(70000, name="x"),
        "connector port 0": good + tcp_connector(0, address="z"),
        "4301 digits": good + tcp_listener(int("9" * 20), name="y").replace("9" * 20, "9" * 4301),
        "dangling sslProfile": good
        + "tcpListener {\n    name: t\n    port: 0\n    address: a\n    sslProfile: nope\n}\n",
        "duplicate port": good
        + tcp_listener(busy_port, name="d1")
        + tcp_listener(busy_port, name="d2"),
        "restart-only change": good.replace("workerThreads: 2", "workerThreads: 3"),
        "port in use": good + tcp_listener(busy_port, name="busy"),
        "JSON in a .conf": '[["router", {"id": "test"}]]',
        "binary": "\x00\x01\x02garbage\xff",
        "deep nesting": good + "router {\n" * 200,
        "unreadable": None,
    }


def test_every_kind_of_invalid_reload_drops_nothing(tmp_path: Path) -> None:
    srv = ThreadedServer(echo)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = free_port()
    good = skiffd_conf(tcp_listener(port), tcp_connector(srv.port))
    d = Skiffd(tmp_path, good)
    try:
        held = []
        for i in range(3):
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            c.sendall(b"%d" % i)
            assert recv_exact(c, 1) == b"%d" % i
            held.append(c)
        for kind, text in _bad_files(good, busy.getsockname()[1], tmp_path).items():
            if text is None:
                d.config_path.chmod(0)
                if os.getuid() == 0:  # root reads it anyway: remove it instead
                    d.config_path.unlink()
            else:
                d.rewrite(text)
            d.reload("the running one stays")
            for i, c in enumerate(held):
                c.sendall(b"%s %d" % (kind.encode(), i))
                want = b"%s %d" % (kind.encode(), i)
                assert recv_exact(c, len(want)) == want, kind
            if text is None and d.config_path.exists():
                d.config_path.chmod(0o644)
        err = d.stderr()
        assert "Traceback" not in err
        d.rewrite(good)
        for c in held:
            c.close()
    finally:
        srv.close()
        busy.close()
        assert d.stop() == 0


def _numeric_attributes() -> list[tuple[str, schema.AttributeSpec]]:
    out = []
    for spec in schema.ENTITY_TYPES.values():
        if schema.CREATE not in spec.operations:
            continue
        for attr in spec.configurable():
            if attr.type in (schema.AttrType.INTEGER, schema.AttrType.PORT):
                out.append((spec.short_name, attr))
    return out


_REQUIRED = {
    "tcpListener": {"port": 0, "address": "a"},
    "tcpConnector": {"host": "127.0.0.1", "port": 1, "address": "a"},
    "listener": {"port": 0},
    "sslProfile": {},
    "connector": {"role": "inter-router", "port": 1},
}


def _registry(type_name: str) -> Registry:
    """An empty registry; an interior router's when the type is a link's."""
    registry = Registry()
    if type_name == "connector":
        registry.create(
            "router", {"id": "r", "mode": "interior"}, source="builtin", check_operation=False
        )
    return registry


@pytest.mark.parametrize(
    ("type_name", "attr"), _numeric_attributes(), ids=lambda v: getattr(v, "name", v)
)
def test_create_at_the_bounds_and_just_past_them(
    type_name: str, attr: schema.AttributeSpec
) -> None:
    low = attr.minimum if attr.minimum is not None else 0
    high = attr.maximum if attr.maximum is not None else 65535
    for value in (low, high, str(high)):
        registry = _registry(type_name)  # one each: two listeners may not share a port
        registry.create(type_name, {**_REQUIRED[type_name], "name": "ok", attr.name: value})
    registry = _registry(type_name)
    for value in (low - 1, high + 1, str(high + 1), "9" * 5000, 2**64, -(2**64)):
        with pytest.raises(InvalidRequest, match=f"attribute '{attr.name}'") as info:
            registry.create(type_name, {**_REQUIRED[type_name], "name": "bad", attr.name: value})
        assert info.value.status == 400
        assert len(info.value.message) < 300
    assert registry.find(type_name, "bad") is None
