"""An exception while handling one management connection is logged and
contained (issue 14, finding 5): that request gets 500 or that connection
is closed; the listener, the loop and every other client go on."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import proton
import pytest
from proton import Link, Message
from proton.reactor import Container
from proton.utils import BlockingConnection, SyncRequestResponse
from test_limits_app import WAIT_S, InProcess, http_get, read_until_closed, run

import adaptors.app_listener as app_listener
from router.management import amqp_connection
from router.management.agent import Agent, Caller, Response

NODE = {"type": "org.amqp.management", "name": "self"}


class Client:
    def __init__(self, port: int, container_id: str | None = None) -> None:
        container = Container()
        if container_id:
            container.container_id = container_id
        self.conn = BlockingConnection(
            f"amqp://127.0.0.1:{port}", timeout=WAIT_S, container=container
        )
        self.rr = SyncRequestResponse(self.conn, "$management")

    def call(self, props: dict[str, Any]) -> tuple[int, str]:
        reply = self.rr.call(Message(properties=props))
        return int(reply.properties["statusCode"]), str(reply.properties["statusDescription"])

    def close(self) -> None:
        self.conn.close()


def test_agent_exception_answers_500_and_the_connection_serves_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = Agent.handle

    def handle(self: Agent, props: Any, body: object, caller: Caller) -> Response:
        if props and props.get("operation") == "BOOM":
            raise KeyError("a bug")
        return real(self, props, body, caller)

    monkeypatch.setattr(Agent, "handle", handle)

    def client(port: int) -> list[tuple[int, str]]:
        c = Client(port)
        try:
            return [c.call({**NODE, "operation": op}) for op in ("BOOM", "GET-MGMT-NODES")]
        finally:
            c.close()

    async def body(node: InProcess) -> None:
        port = node.listener("m")
        (boom, ok) = await asyncio.to_thread(client, port)
        assert boom == (500, "Internal Server Error: KeyError: 'a bug'")
        assert ok[0] == 200

    run(body)
    assert "management request failed" in caplog.text
    assert "KeyError: 'a bug'" in caplog.text  # the traceback


def test_bug_on_one_connection_closes_only_that_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = amqp_connection.AmqpConnection._link_opened

    def link_opened(self: amqp_connection.AmqpConnection, link: Link) -> None:
        if self.container == "victim":
            raise RuntimeError("bug in link handling")
        real(self, link)

    monkeypatch.setattr(amqp_connection.AmqpConnection, "_link_opened", link_opened)

    def scenario(port: int) -> tuple[int, int]:
        bystander = Client(port, container_id="bystander")
        try:
            with pytest.raises(proton.ProtonException):
                Client(port, container_id="victim")  # its link never opens: closed
            first = bystander.call({**NODE, "operation": "GET-MGMT-NODES"})[0]
            later = Client(port)  # the listener still accepts
            try:
                second = later.call({**NODE, "operation": "GET-MGMT-NODES"})[0]
            finally:
                later.close()
            return first, second
        finally:
            bystander.close()

    async def body(node: InProcess) -> None:
        port = node.listener("m")
        assert await asyncio.to_thread(scenario, port) == (200, 200)

    run(body)
    assert "internal error while handling input; closing this connection" in caplog.text
    assert "RuntimeError: bug in link handling" in caplog.text


def test_page_exception_answers_500_and_the_listener_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body(node: InProcess) -> None:
        def broken() -> Any:
            raise ZeroDivisionError("page bug")

        pages = dict(node.management.pages())
        pages["/broken"] = broken
        node.adaptor.serve_pages(pages)
        port = node.listener("h", http=True)
        reply = await asyncio.to_thread(http_get, port, "/broken")
        assert reply.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), reply
        assert b"page /broken failed" in reply
        ok = await asyncio.to_thread(http_get, port, "/healthz")
        assert ok.startswith(b"HTTP/1.1 200 OK"), ok

    run(body)
    assert "ZeroDivisionError: page bug" in caplog.text


def test_time_out_check_failure_closes_that_connection_and_housekeeping_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in one AMQP connection's time-out check closes that connection;
    the next ticks still time out an idle HTTP client (408)."""
    monkeypatch.setattr(app_listener, "HOUSEKEEPING_S", 0.1)

    def broken(self: amqp_connection.AmqpConnection, now: float) -> None:
        raise RuntimeError("bug in idle_check")

    monkeypatch.setattr(amqp_connection.AmqpConnection, "idle_check", broken)

    async def body(node: InProcess) -> None:
        amqp = node.listener("m")
        http = node.listener("h", http=True, requestTimeoutSeconds=1)
        victim = socket.create_connection(("127.0.0.1", amqp), timeout=WAIT_S)
        idle = socket.create_connection(("127.0.0.1", http), timeout=WAIT_S)
        closed, timed_out = await asyncio.gather(
            asyncio.to_thread(read_until_closed, victim),
            asyncio.to_thread(read_until_closed, idle),
        )
        assert closed == b""
        assert timed_out.startswith(b"HTTP/1.1 408 "), timed_out

    run(body)
    assert "internal error in its time-out checks; closing this connection" in caplog.text
    assert "RuntimeError: bug in idle_check" in caplog.text
