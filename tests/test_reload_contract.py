"""A rejected reload changes nothing a client can observe; a port belongs to
one listener (issue 14, findings 2 and 3)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from daemon import Skiffd, free_port, skiffd_conf, tcp_connector, tcp_listener
from servers import ThreadedServer, echo, recv_exact

from router.config import parse_config_text
from router.registry import ApplyError, Registry, Source


def _held(port: int, n: int) -> list[socket.socket]:
    held = []
    for i in range(n):
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.sendall(bytes([65 + i]))
        assert recv_exact(c, 1) == bytes([65 + i])
        held.append(c)
    return held


def _still_relayed(held: list[socket.socket]) -> None:
    for i, c in enumerate(held):
        c.sendall(b"still %d" % i)
        assert recv_exact(c, len(b"still %d" % i)) == b"still %d" % i


@pytest.mark.parametrize("why", ["busy port", "workerThreads"])
def test_a_rejected_reload_drops_no_connection(tmp_path: Path, why: str) -> None:
    """The file moves the connector (which, applied, would close its flows)
    and also asks for something that cannot be had."""
    old_srv, new_srv = ThreadedServer(echo), ThreadedServer(echo)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = free_port()
    good = skiffd_conf(tcp_listener(port), tcp_connector(old_srv.port))
    d = Skiffd(tmp_path, good)
    try:
        held = _held(port, 5)
        moved = skiffd_conf(tcp_listener(port), tcp_connector(new_srv.port))
        if why == "busy port":
            bad = moved + tcp_listener(busy.getsockname()[1], name="extra")
        else:
            bad = moved.replace("workerThreads: 2", "workerThreads: 3")
        d.rewrite(bad)
        d.reload("configuration rejected, the running one stays")
        if why == "workerThreads":
            assert "'workerThreads' cannot be changed while running" in d.stderr()
            assert "a restart is required" in d.stderr()
        _still_relayed(held)
        assert new_srv.accepted == 0
        for c in held:
            c.close()
    finally:
        old_srv.close()
        new_srv.close()
        busy.close()
        assert d.stop() == 0


def test_a_changed_listener_that_cannot_open_keeps_the_old_one(tmp_path: Path) -> None:
    srv = ThreadedServer(echo)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = free_port()
    d = Skiffd(tmp_path, skiffd_conf(tcp_listener(port, name="l"), tcp_connector(srv.port)))
    try:
        held = _held(port, 2)
        moved = tcp_listener(busy.getsockname()[1], name="l")
        d.rewrite(skiffd_conf(moved, tcp_connector(srv.port)))
        d.reload("configuration rejected, the running one stays")
        _still_relayed(held)
        c = socket.create_connection(("127.0.0.1", port), timeout=10)  # still accepting
        c.sendall(b"new")
        assert recv_exact(c, 3) == b"new"
        c.close()
        for c in held:
            c.close()
    finally:
        srv.close()
        busy.close()
        assert d.stop() == 0


def _apply(registry: Registry, text: str) -> None:
    registry.apply_file(parse_config_text(text, "ports.conf").entities)


LISTENER = "tcpListener {{\n name: {name}\n host: {host}\n port: {port}\n address: a\n}}\n"
AMQP = "listener {{\n name: {name}\n host: {host}\n port: {port}\n}}\n"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (LISTENER.format(name="a", host="127.0.0.1", port=9000), LISTENER),
        (LISTENER.format(name="a", host="", port=9000), LISTENER),
        (AMQP.format(name="m", host="127.0.0.1", port=9000), LISTENER),
        (LISTENER.format(name="a", host="127.0.0.1", port=9000), AMQP),
    ],
)
def test_two_listeners_on_one_port_are_refused(first: str, second: str) -> None:
    text = first + second.format(name="b", host="127.0.0.1", port=9000)
    with pytest.raises(ApplyError, match=r"ports.conf:\d+: .* port 9000 is also used by"):
        _apply(Registry(), text)
    # a different port is fine
    _apply(Registry(), first + second.format(name="b", host="127.0.0.1", port=9001))


def test_fixed_hosts_share_a_port_number_only_when_they_differ() -> None:
    a = LISTENER.format(name="a", host="127.0.0.2", port=9000)
    _apply(Registry(), a + LISTENER.format(name="b", host="127.0.0.1", port=9000))
    with pytest.raises(ApplyError, match="port 9000 is also used by"):
        _apply(Registry(), a + LISTENER.format(name="b", host="0.0.0.0", port=9000))


def test_management_create_on_a_used_port_is_refused() -> None:
    registry = Registry()
    _apply(registry, LISTENER.format(name="a", host="127.0.0.1", port=9000))
    with pytest.raises(Exception, match="port 9000 is already used by tcpListener 'a'") as info:
        registry.create("listener", {"name": "m", "host": "localhost", "port": 9000})
    assert getattr(info.value, "status", None) == 400
    source: Source = "management"
    registry.create("tcpListener", {"name": "z", "port": 0, "address": "a"}, source=source)
    registry.create("tcpListener", {"name": "y", "port": 0, "address": "a"}, source=source)


def test_a_port_can_move_between_listeners_in_one_reload() -> None:
    registry = Registry()
    _apply(registry, LISTENER.format(name="a", host="127.0.0.1", port=9000))
    _apply(registry, LISTENER.format(name="b", host="127.0.0.1", port=9000))
    assert [e.name for e in registry.entities("tcpListener")] == ["b"]


def test_check_refuses_a_shared_port(tmp_path: Path) -> None:
    conf = tmp_path / "dup.conf"
    conf.write_text(
        LISTENER.format(name="a", host="127.0.0.1", port=9000)
        + AMQP.format(name="m", host="", port=9000)
    )
    out = subprocess.run(
        [sys.executable, "-m", "router", "--check", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "port 9000 is also used by" in out.stderr and "dup.conf:" in out.stderr
