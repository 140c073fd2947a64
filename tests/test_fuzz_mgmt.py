"""Fuzzing of management input (issue 14): request properties and bodies
straight into the agent, and raw bytes (SASL and AMQP frames, mutated
client streams, truncated headers, huge sizes, HTTP heads) on the sockets
of a real listener while a parallel client keeps asking.

Properties: no exception escapes, every rejection names what was wrong,
the router keeps serving the parallel client throughout, and no traceback
reaches the log. The run is deterministic (``derandomize``) and bounded in
examples so that it fits the normal test run; ``SKIFF_FUZZ_SCALE=10``
explores ten times as many. Cases it found are kept below as ``@example``s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import uvloop
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from proton import Connection, Data, Described, Message, Transport, symbol, ulong
from proton.utils import BlockingConnection, SyncRequestResponse
from test_limits_app import InProcess

from router import schema
from router.management.agent import STATUS_TEXT, Agent, Caller
from router.management.sasl import AMQP_HEADER, SASL_HEADER, SASL_INIT
from router.registry import Registry

SCALE = int(os.environ.get("SKIFF_FUZZ_SCALE", "1"))
READ_S = 0.3  # how long a fuzz connection waits for the router's answer
NODE = {"type": "org.amqp.management", "name": "self"}


def fuzz_settings(examples: int) -> Any:
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


# ---------------------------------------------------------------- the agent

TYPES = sorted(schema.ENTITY_TYPES) + sorted(schema.OPERATIONAL_TYPES)
ATTRIBUTES = sorted({a for t in schema.ENTITY_TYPES.values() for a in t.attributes})
OPERATIONS = ["CREATE", "READ", "UPDATE", "DELETE", "QUERY", "GET-TYPES", "GET-ATTRIBUTES",
              "GET-OPERATIONS", "GET-MGMT-NODES", "GET-SCHEMA"]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=10), st.sampled_from(ATTRIBUTES)), inner,
                        max_size=4),
    ),
    max_leaves=10,
)  # fmt: skip
type_names = st.one_of(
    st.sampled_from(TYPES),
    st.sampled_from(TYPES).map(lambda t: schema.TYPE_PREFIX + t),
    st.just("org.amqp.management"),
    st.text(max_size=30),
)
properties = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "operation": st.one_of(st.sampled_from(OPERATIONS), st.text(max_size=12), values),
            "type": st.one_of(type_names, values),
            "name": st.one_of(st.text(max_size=12), values),
            "identity": st.one_of(st.text(max_size=12), values),
            "entityType": st.one_of(type_names, values),
            "attributeNames": values,
            "offset": st.one_of(st.integers(-5, 5), values),
            "count": st.one_of(st.integers(-5, 5), values),
        },
    ),
    st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), values, max_size=4),
)
bodies = st.one_of(
    values,
    st.dictionaries(st.sampled_from(ATTRIBUTES), values, max_size=6),
    st.fixed_dictionaries({"attributeNames": st.lists(st.sampled_from(ATTRIBUTES), max_size=4)}),
)


@pytest.fixture(scope="module")
def agent() -> Agent:
    registry = Registry()
    registry.create("router", {"id": "fuzz"}, source="builtin", check_operation=False)
    return Agent(registry)


@fuzz_settings(400)
@given(props=properties, body=bodies, can_write=st.booleans())
@example(props={"operation": "QUERY", "offset": -1}, body=None, can_write=False)
@example(props={"operation": "CREATE", "type": "tcpListener", "name": ""}, body=[], can_write=True)
@example(props={"operation": "UPDATE", "type": "log", "name": "log/DEFAULT"}, body={"enable": 1},
         can_write=True)  # fmt: skip
def test_agent_answers_every_request(agent: Agent, props: Any, body: Any, can_write: bool) -> None:
    response = agent.handle(props, body, Caller("fuzz", can_write))
    assert response.status in STATUS_TEXT, response
    assert response.status != 500, response  # 500 would be a bug of the agent
    if response.status >= 400:
        text, _, why = response.description.partition(": ")
        assert text == STATUS_TEXT[response.status] and why.strip(), response
    # the answer travels as an AMQP message: it must encode
    Message(properties={"statusCode": response.status}, body=response.body).encode()


# ---------------------------------------------------------------- raw bytes on a listener


class Served:
    """A router (engine, listeners, management) on a uvloop in its own thread,
    and a client asking it GET-MGMT-NODES back to back on another."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.amqp = self.http = 0
        threading.Thread(target=self._serve, daemon=True).start()
        assert self._ready.wait(30), "the router did not start"
        self.answers = 0
        self.failures: list[str] = []
        self._asking = True
        self._asker = threading.Thread(target=self._ask, daemon=True)
        self._asker.start()

    def _serve(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            node = InProcess(self.loop)
            try:
                self.amqp = node.listener("m", allowAnonymousWrites=True)
                self.http = node.listener("h", http=True)
                self._stop = asyncio.Event()
                self._ready.set()
                await self._stop.wait()
            finally:
                node.close()

        uvloop.run(main())
        self._stopped.set()

    def _ask(self) -> None:
        try:
            conn = BlockingConnection(f"amqp://127.0.0.1:{self.amqp}", timeout=20)
            rr = SyncRequestResponse(conn, "$management")
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.failures.append(f"connect: {e!r}")
            return
        try:
            while self._asking:
                reply = rr.call(Message(properties={**NODE, "operation": "GET-MGMT-NODES"}))
                if reply.properties["statusCode"] != 200:
                    self.failures.append(repr(reply.properties))
                self.answers += 1
                time.sleep(0.01)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.failures.append(f"request: {e!r}")
        finally:
            conn.close()

    def close(self) -> None:
        self._asking = False
        self._asker.join(30)
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._stopped.wait(30)


class Tracebacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(self.format(record))


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    handler = Tracebacks()
    logging.getLogger().addHandler(handler)
    router = Served()
    try:
        yield router
        answers = router.answers
        time.sleep(0.2)
        assert router.answers > answers, "the parallel client stopped getting answers"
    finally:
        router.close()
        logging.getLogger().removeHandler(handler)
    assert not router.failures, router.failures
    assert router.answers > 0
    assert not handler.records, "\n".join(handler.records)


def exchange(port: int, data: bytes, half_close: bool) -> bytes:
    """Sends data, then reads what comes back for a moment (or until closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    got = b""
    try:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return got
        s.settimeout(READ_S)
        while True:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                return got
            if not chunk:
                return got
            got += chunk
    finally:
        s.close()


def frame(size: int, doff: int, ftype: int, channel: int, body: bytes) -> bytes:
    return struct.pack("!IBBH", size & 0xFFFFFFFF, doff & 0xFF, ftype & 0xFF, channel) + body


def client_stream() -> bytes:
    """What a proton client sends to open a connection, a session and a link."""
    transport = Transport()
    conn = Connection()
    transport.bind(conn)
    conn.container = "fuzz"
    conn.open()
    session = conn.session()
    session.open()
    sender = session.sender("fuzz-sender")
    sender.target.address = "$management"
    sender.open()
    out = b""
    while (n := transport.pending()) > 0:
        out += bytes(transport.peek(n))
        transport.pop(n)
    return out


CLIENT = client_stream()


def described(code: int, fields: list[Any]) -> bytes:
    data = Data()
    data.put_object(Described(ulong(code), cast(Any, fields)))
    return bytes(data.encode())


sasl_fields = st.lists(
    st.one_of(
        st.sampled_from(["PLAIN", "ANONYMOUS", "EXTERNAL", "GSSAPI"]).map(symbol),
        st.binary(max_size=64),
        st.text(max_size=16),
        st.none(),
        st.integers(0, 2**32),
    ),
    max_size=4,
)


@st.composite
def hostile_streams(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["raw", "sasl-frame", "sasl-init", "amqp", "mutated", "prefix"]))
    if kind == "raw":
        return draw(st.binary(max_size=512))
    if kind == "sasl-frame":
        body = draw(st.binary(max_size=64))
        size = draw(st.one_of(st.just(8 + len(body)), st.integers(0, 2**32 - 1)))
        return SASL_HEADER + frame(size, draw(st.integers(0, 255)), draw(st.integers(0, 3)),
                                   draw(st.integers(0, 65535)), body)  # fmt: skip
    if kind == "sasl-init":
        code = draw(st.one_of(st.just(SASL_INIT), st.integers(0x40, 0x44), st.integers(0, 2**20)))
        fields = draw(sasl_fields)
        try:
            body = described(code, fields)
        except Exception:  # noqa: BLE001 - proton cannot encode that value: skip it
            body = b""
        tail = draw(st.binary(max_size=32))
        return SASL_HEADER + frame(8 + len(body), 2, 1, 0, body) + tail
    if kind == "amqp":
        return AMQP_HEADER + draw(st.binary(max_size=256))
    if kind == "mutated":
        stream = bytearray(AMQP_HEADER + CLIENT[8:] if draw(st.booleans()) else CLIENT)
        for _ in range(draw(st.integers(1, 6))):
            i = draw(st.integers(0, len(stream) - 1))
            stream[i] = draw(st.integers(0, 255))
        return bytes(stream)
    cut = draw(st.integers(0, len(CLIENT)))
    return CLIENT[:cut]


@fuzz_settings(120)
@given(data=hostile_streams(), half_close=st.booleans())
@example(data=SASL_HEADER + frame(0xFFFFFFFF, 2, 1, 0, b""), half_close=False)
@example(data=SASL_HEADER + frame(8, 0, 1, 0, b""), half_close=True)
@example(data=SASL_HEADER[:5], half_close=True)
@example(data=b"\x16\x03\x01\x00\x05hello", half_close=False)
@example(data=AMQP_HEADER + frame(0xFFFFFFF0, 2, 0, 0, b"\x00"), half_close=False)
def test_hostile_bytes_on_the_amqp_port(served: Served, data: bytes, half_close: bool) -> None:
    exchange(served.amqp, data, half_close)


http_heads = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda method, path, version, headers: (
            f"{method} {path} {version}\r\n{headers}\r\n\r\n".encode("utf-8", "replace")
        ),
        st.one_of(st.sampled_from(["GET", "HEAD", "POST", "DELETE"]), st.text(max_size=8)),
        st.one_of(
            st.sampled_from(["/metrics", "/healthz", "/readyz", "/", "*"]), st.text(max_size=30)
        ),
        st.one_of(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2"]), st.text(max_size=8)),
        st.text(max_size=60),
    ),
)


@fuzz_settings(80)
@given(head=http_heads)
@example(head=b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 3000)
@example(head=b"GET /healthz HTTP/1.1\r\n\r\n")
def test_hostile_bytes_on_the_http_port(served: Served, head: bytes) -> None:
    reply = exchange(served.http, head, half_close=False)
    if reply:
        status_line = reply.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1.1 "), reply[:100]
        status = int(status_line.split()[1])
        assert status in (200, 400, 404, 405, 408, 431), reply[:200]
        if status >= 400:
            assert reply.split(b"\r\n\r\n", 1)[1].strip(), reply  # says what was wrong
