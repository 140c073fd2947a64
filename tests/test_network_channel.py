"""Control channel between two routers, both ends in process over byte pipes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from router.management.amqp_connection import AmqpConnection, AmqpSettings, TlsInfo
from router.network.channel import MAX_QUEUED, ControlChannel, DialledConnection


class Owner:
    def __init__(self) -> None:
        self.ready: list[ControlChannel] = []
        self.messages: list[tuple[int, Any, Any, int]] = []
        self.failed: list[tuple[int, str]] = []

    def channel_ready(self, channel: ControlChannel) -> None:
        self.ready.append(channel)

    def channel_message(self, channel: ControlChannel, opcode: Any, body: Any, size: int) -> None:
        self.messages.append((channel.conn_id, opcode, body, size))

    def channel_failed(self, conn_id: int, reason: str) -> None:
        self.failed.append((conn_id, reason))


class Pipe:
    """Both ends' host: bytes written by one end are queued for the other."""

    def __init__(self) -> None:
        self.to_server: list[bytes] = []
        self.to_client: list[bytes] = []
        self.closed: set[int] = set()
        self.keepalive: dict[int, float] = {}
        self.loop = asyncio.new_event_loop()

    # Host protocol (both ends): conn 1 is the client, 2 the server
    def conn_write(self, conn_id: int, data: bytes) -> bool:
        (self.to_server if conn_id == 1 else self.to_client).append(data)
        return True

    def conn_close(self, conn_id: int, abort: bool = False) -> None:
        self.closed.add(conn_id)

    def conn_keepalive(self, conn_id: int, interval_s: float) -> None:
        self.keepalive[conn_id] = interval_s

    @property
    def agent(self) -> Any:
        raise AssertionError("a router link must not reach the management agent")

    @property
    def auth_gate(self) -> Any:
        raise AssertionError("ANONYMOUS needs no credential check")


def pair(
    server_role: str = "inter-router",
    client_role: str = "inter-router",
    costs: tuple[int, int] = (3, 5),
) -> tuple[Pipe, DialledConnection, AmqpConnection, Owner, Owner]:
    pipe = Pipe()
    client_owner, server_owner = Owner(), Owner()
    client = DialledConnection(
        1, "B", pipe, client_owner, container_id="A", hostname="b", role=client_role,
        cost=costs[0], idle_timeout_s=16, max_frame_size=16384,
        mechanisms=("EXTERNAL", "ANONYMOUS"), now=0.0,
    )  # fmt: skip
    settings = AmqpSettings(listener="ir", role=server_role, container_id="B", cost=costs[1])
    server = AmqpConnection(2, "A", settings, pipe, TlsInfo(), channel_owner=server_owner)
    return pipe, client, server, client_owner, server_owner


def run(pipe: Pipe, client: DialledConnection, server: AmqpConnection) -> None:
    for _ in range(50):
        if not pipe.to_server and not pipe.to_client:
            return
        while pipe.to_server:
            server.feed(pipe.to_server.pop(0))
        while pipe.to_client:
            client.feed(pipe.to_client.pop(0), 0.0)


def test_both_ends_become_ready_and_exchange_messages() -> None:
    pipe, client, server, co, so = pair()
    run(pipe, client, server)
    assert len(co.ready) == 1 and len(so.ready) == 1
    assert co.ready[0].cost == so.ready[0].cost == 5  # the larger end's
    assert co.ready[0].peer_container == "B" and so.ready[0].peer_container == "A"
    # proton advertises half of 16 s; the engine sends a frame after half of that
    assert pipe.keepalive == {1: 4.0, 2: 4.0}
    co.ready[0].send("HELLO", {"id": "A", "seen": ["B"]})
    so.ready[0].send("RA", {"id": "B", "ls_seq": 3})
    run(pipe, client, server)
    assert [(m[1], m[2]) for m in so.messages] == [("HELLO", {"id": "A", "seen": ["B"]})]
    assert [(m[1], m[2]) for m in co.messages] == [("RA", {"id": "B", "ls_seq": 3})]
    assert so.messages[0][3] > 10
    assert not co.failed and not so.failed and not pipe.closed


def test_many_messages_flow_past_the_credit_window() -> None:
    pipe, client, server, co, so = pair()
    run(pipe, client, server)
    for i in range(1000):
        co.ready[0].send("HELLO", {"n": i})
    run(pipe, client, server)
    assert [m[2]["n"] for m in so.messages] == list(range(1000))


def test_mismatched_roles_fail_the_link() -> None:
    pipe, client, server, co, so = pair(server_role="edge", client_role="inter-router")
    run(pipe, client, server)
    assert not co.ready or not so.ready
    assert any("role" in reason for _, reason in co.failed + so.failed)


def test_a_management_link_on_a_router_link_is_refused() -> None:
    pipe, client, server, co, so = pair()
    run(pipe, client, server)
    assert client.channel is not None
    session = client.channel.connection.session()
    session.open()
    sender = session.sender("mgmt")
    sender.target.address = "$management"
    sender.open()
    client._pump()
    run(pipe, client, server)
    assert (
        sender.remote_condition is not None
        and "carries only" in sender.remote_condition.description
    )
    assert not co.failed and not so.failed


def test_a_peer_granting_no_credit_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe, client, server, co, _so = pair()
    run(pipe, client, server)
    channel = co.ready[0]
    big = {"x": "y" * 65536}
    sent = 0
    while not co.failed and sent < MAX_QUEUED // 65536 + 2 * 256:
        channel.send("MAU", big)  # never delivered: the pipe is not run
        sent += 1
    assert co.failed and "takes no control messages" in co.failed[0][1]
