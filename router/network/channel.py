"""Control messages over one AMQP connection between two routers.

An inter-router or edge link is an AMQP 1.0 connection on the engine's app
bytes (the engine does TCP, TLS and the heartbeats). On it, the dialling
side opens one session with two links for address ``_skiff/control``: a
sender (its messages to the far end) and a receiver (the far end's). Each
message's body is the map ``messages.encode`` gives and its ``opcode``
application property names it, as Skupper's router does. Messages are sent
pre-settled: the protocol above (sequence numbers, RA, LSR, MAR) recovers
anything lost with a link.

``ControlChannel`` is the part both sides share; it sits on a proton
``Connection`` and is fed that connection's events. The accepting side runs
it inside ``AmqpConnection`` (which already does the header, SASL, the
handshake time-out and the engine's keep-alive); the dialling side runs it
inside ``DialledConnection`` below, which does the client's half of the same.

Bounds: a message is at most ``MAX_MESSAGE`` bytes (the decoder's limit),
and at most ``MAX_QUEUED`` bytes wait for the far end's credit; beyond that
the link is closed as stuck rather than buffering without end.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from proton import (
    Collector,
    Condition,
    Connection,
    Delivery,
    Endpoint,
    Event,
    Link,
    Message,
    Transport,
)

from router.management import sasl
from router.network.messages import MAX_MESSAGE_SIZE

CONTROL_ADDRESS = "_skiff/control"
COST_PROPERTY = "skiff:cost"
ROLE_PROPERTY = "skiff:role"
RECEIVER_CREDIT = 256
MAX_MESSAGE = MAX_MESSAGE_SIZE
MAX_QUEUED = 64 * 1024 * 1024


class ChannelOwner(Protocol):
    """What a channel reports to (the network service)."""

    def channel_ready(self, channel: ControlChannel) -> None: ...

    def channel_message(
        self, channel: ControlChannel, opcode: Any, body: Any, size: int
    ) -> None: ...

    def channel_failed(self, conn_id: int, reason: str) -> None: ...


class ControlChannel:
    """The pair of control links on one AMQP connection."""

    def __init__(
        self,
        conn_id: int,
        connection: Connection,
        owner: ChannelOwner,
        flush: Callable[[], None],
        *,
        dialled: bool,
        role: str,
        cost: int,
        label: str,
    ) -> None:
        self.conn_id = conn_id
        self.connection = connection
        self.dialled = dialled
        self.role = role
        self.local_cost = cost
        self.label = label
        self.peer_container = ""
        self.remote_cost = 1
        self._owner = owner
        self._flush = flush
        self._sender: Link | None = None
        self._receiver: Link | None = None
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._tags = itertools.count(1)
        self.ready = False
        self.failed = False

    @property
    def cost(self) -> int:
        """The link's cost: the larger of the two ends' (both ends agree)."""
        return max(self.local_cost, self.remote_cost)

    # ------------------------------------------------------------ setup

    @staticmethod
    def open_properties(role: str, cost: int) -> dict[Any, Any]:
        from proton import symbol

        return {symbol(COST_PROPERTY): cost, symbol(ROLE_PROPERTY): role}

    def remote_opened(self) -> None:
        """The far end's open frame arrived: read its cost, start the links."""
        props = self.connection.remote_properties or {}
        cost = props.get(COST_PROPERTY)
        if isinstance(cost, int) and not isinstance(cost, bool) and 1 <= cost < 2**31:
            self.remote_cost = int(cost)
        role = props.get(ROLE_PROPERTY)
        if role is not None and str(role) != self.role:
            self.fail(
                f"the far end's side of this link has role '{role}', this end's is '{self.role}'"
            )
            return
        self.peer_container = self.connection.remote_container or ""
        if self.dialled:
            session = self.connection.session()
            session.open()
            sender = session.sender("control-out")
            sender.target.address = CONTROL_ADDRESS
            sender.snd_settle_mode = Link.SND_SETTLED
            sender.open()
            receiver = session.receiver("control-in")
            receiver.source.address = CONTROL_ADDRESS
            receiver.open()
            receiver.flow(RECEIVER_CREDIT)
            self._sender, self._receiver = sender, receiver

    # ------------------------------------------------------------ proton events

    def on_event(self, event: Event) -> None:
        kind = event.type
        link = event.link
        if kind == Event.SESSION_REMOTE_OPEN and event.session is not None:
            if not event.session.state & Endpoint.LOCAL_ACTIVE:
                event.session.open()
        elif kind == Event.LINK_REMOTE_OPEN and link is not None:
            self._link_opened(link)
        elif kind in (Event.LINK_REMOTE_CLOSE, Event.LINK_REMOTE_DETACH) and link is not None:
            if link == self._sender or link == self._receiver:
                self.fail("the far end closed a control link")
        elif kind == Event.LINK_FLOW and link is not None and link == self._sender:
            self._drain()
        elif kind == Event.DELIVERY and event.delivery is not None:
            self._delivery(event.delivery)
        self._check_ready()

    def _link_opened(self, link: Link) -> None:
        if link.state & Endpoint.LOCAL_ACTIVE:
            return  # our own link, now open at both ends
        address = (link.remote_target if link.is_receiver else link.remote_source).address
        taken = self._receiver if link.is_receiver else self._sender
        if self.dialled or address != CONTROL_ADDRESS or taken is not None:
            link.condition = Condition(
                "amqp:not-found" if address != CONTROL_ADDRESS else "amqp:resource-locked",
                f"this router link carries only one pair of {CONTROL_ADDRESS} links",
            )
            link.open()
            link.close()
            return
        if link.is_receiver:
            link.target.copy(link.remote_target)
            link.open()
            link.flow(RECEIVER_CREDIT)
            self._receiver = link
        else:
            link.source.copy(link.remote_source)
            link.snd_settle_mode = Link.SND_SETTLED
            link.open()
            self._sender = link

    def _check_ready(self) -> None:
        if self.ready or self.failed:
            return
        links = (self._sender, self._receiver)
        if all(
            lk is not None
            and lk.state & Endpoint.LOCAL_ACTIVE
            and lk.state & Endpoint.REMOTE_ACTIVE
            for lk in links
        ):
            self.ready = True
            self._owner.channel_ready(self)

    def _delivery(self, delivery: Delivery) -> None:
        link = delivery.link
        if link != self._receiver:
            if link.is_sender and delivery.updated and not delivery.settled:
                delivery.settle()
            return
        if delivery.pending > MAX_MESSAGE:
            self.fail(f"a control message of more than {MAX_MESSAGE} bytes")
            return
        if not delivery.readable or delivery.partial:
            return
        payload = link.recv(delivery.pending)
        link.advance()
        delivery.settle()
        if link.credit < RECEIVER_CREDIT // 2:
            link.flow(RECEIVER_CREDIT - link.credit)
        data = bytes(payload) if payload else b""
        message = Message()
        try:
            message.decode(data)
        except Exception as e:  # noqa: BLE001 - proton's decode errors have no common base
            self.fail(f"an undecodable control message ({type(e).__name__}: {e})")
            return
        props: dict[Any, Any] = message.properties or {}
        self._owner.channel_message(self, props.get("opcode"), message.body, len(data))

    # ------------------------------------------------------------ output

    def send(self, opcode: str, body: dict[str, Any]) -> int:
        """Queues one message; returns its size, or -1 when it was not sent
        (the link failed, or the message is larger than the far end takes)."""
        if self.failed:
            return -1
        data = bytes(Message(body=body, properties={"opcode": opcode}).encode())
        if len(data) > MAX_MESSAGE:
            return -1
        if self._queued + len(data) > MAX_QUEUED:
            self.fail(f"the far end takes no control messages ({self._queued} bytes wait)")
            return -1
        self._queue.append(data)
        self._queued += len(data)
        self._drain()
        self._flush()
        return len(data)

    def _drain(self) -> None:
        sender = self._sender
        if sender is None or (not self.ready and not sender.state & Endpoint.REMOTE_ACTIVE):
            return
        while self._queue and sender.credit > 0:
            data = self._queue.popleft()
            self._queued -= len(data)
            delivery = sender.delivery(str(next(self._tags)))
            sender.send(data)
            sender.advance()
            delivery.settle()

    def fail(self, reason: str) -> None:
        if self.failed:
            return
        self.failed = True
        self._queue.clear()
        self._queued = 0
        self._owner.channel_failed(self.conn_id, reason)


def pump_events(
    collector: Collector,
    transport: Transport,
    on_event: Callable[[Event], None],
    write: Callable[[bytes], object],
) -> bool:
    """Handles proton's pending events, then writes the whole frames it
    produced; True once the transport has closed (its output side ended)."""
    while (event := collector.peek()) is not None:
        try:
            on_event(event)
        finally:
            collector.pop()
    # proton hands its output out in buffer-sized pieces of whole frames
    while (pending := transport.pending()) > 0:
        out = transport.peek(pending)
        transport.pop(pending)
        if out:
            write(bytes(out))
    return pending < 0 or transport.closed


def push_input(transport: Transport, data: bytes, pump: Callable[[], None]) -> str | None:
    """Feeds ``data`` to proton in the pieces its input buffer takes,
    handling events (``pump``) after each; what went wrong, or None. Bytes
    after proton closed its input side are discarded."""
    view = memoryview(data)
    while view:
        capacity = transport.capacity()
        if capacity < 0:
            return None  # proton closed its input side; the rest is discarded
        if capacity == 0:
            pump()
            if transport.capacity() == 0:
                return "proton input buffer stuck"
            continue
        chunk = view[:capacity]
        try:
            transport.push(bytes(chunk))
        except Exception as e:  # noqa: BLE001 - proton reports framing errors as exceptions
            return f"bad AMQP input: {e}"
        view = view[len(chunk) :]
        pump()
    return None


def close_amqp(connection: Connection | None, reason: str, flush: Callable[[], None]) -> None:
    """Sends AMQP close (``amqp:connection:forced`` with ``reason``) on an
    open connection and flushes it; nothing when AMQP never opened."""
    if connection is None or not connection.state & Endpoint.LOCAL_ACTIVE:
        return
    if reason:
        connection.condition = Condition("amqp:connection:forced", reason[:200])
    connection.close()
    flush()


class ClientHost(Protocol):
    def conn_write(self, conn_id: int, data: bytes) -> bool: ...

    def conn_close(self, conn_id: int, abort: bool = False) -> None: ...

    def conn_keepalive(self, conn_id: int, interval_s: float) -> None: ...


class DialledConnection:
    """The client side of a router link on engine app bytes: the SASL
    exchange (EXTERNAL when the engine presented our certificate, else
    ANONYMOUS), then proton's AMQP client with a ``ControlChannel``."""

    def __init__(
        self,
        conn_id: int,
        peer: str,
        host: ClientHost,
        owner: ChannelOwner,
        *,
        container_id: str,
        hostname: str,
        role: str,
        cost: int,
        idle_timeout_s: int,
        max_frame_size: int,
        mechanisms: tuple[str, ...],
        now: float,
    ) -> None:
        self.id = conn_id
        self.peer = peer
        self._host = host
        self._owner = owner
        self._container_id = container_id
        self._hostname = hostname
        self._role = role
        self._cost = cost
        self.idle_timeout_s = idle_timeout_s
        self._max_frame_size = max_frame_size
        self._mechanisms = mechanisms
        self._buf = bytearray()
        self._state = "sasl-header"  # sasl-header, sasl-mechs, sasl-outcome, amqp, closed
        self.opened = now
        self.last_input = now
        self.open_received = False
        self._transport: Transport | None = None
        self._collector: Collector | None = None
        self.channel: ControlChannel | None = None
        host.conn_write(conn_id, sasl.SASL_HEADER)

    # ------------------------------------------------------------ input

    def feed(self, data: bytes, now: float) -> None:
        self.last_input = now
        if self._state == "closed":
            return
        if self._state == "amqp":
            self._amqp_input(data)
            return
        self._buf += data
        if len(self._buf) > 2 * sasl.MAX_SASL_FRAME:
            self._fail("too many bytes before SASL completed")
            return
        try:
            self._advance()
        except sasl.SaslError as e:
            self._fail(f"SASL: {e}")

    def _advance(self) -> None:
        while self._state.startswith("sasl") and self._buf:
            if self._state == "sasl-header":
                if len(self._buf) < 8:
                    return
                header = bytes(self._buf[:8])
                del self._buf[:8]
                if header != sasl.SASL_HEADER:
                    raise sasl.SaslError(f"the far end answered with header {header!r}")
                self._state = "sasl-mechs"
                continue
            frame = sasl.split_frame(self._buf)
            if frame is None:
                return
            body, used = frame
            del self._buf[:used]
            descriptor, fields = sasl.decode_performative(body)
            if self._state == "sasl-mechs":
                if descriptor != sasl.SASL_MECHANISMS:
                    raise sasl.SaslError(f"expected sasl-mechanisms, got {descriptor!r}")
                offered = sasl.mechanism_names(fields[0] if fields else None)
                mech = next((m for m in self._mechanisms if m in offered), None)
                if mech is None:
                    raise sasl.SaslError(
                        f"the far end offers {sorted(offered) or 'nothing'}, this end uses "
                        f"{list(self._mechanisms)}"
                    )
                self._host.conn_write(self.id, sasl.init_frame(mech, b"", self._hostname))
                self._state = "sasl-outcome"
                continue
            if descriptor != sasl.SASL_OUTCOME:
                raise sasl.SaslError(f"expected sasl-outcome, got {descriptor!r}")
            code = fields[0] if fields else None
            if code != sasl.OUTCOME_OK:
                raise sasl.SaslError(f"authentication refused by the far end (code {code})")
            self._start_amqp()

    def _start_amqp(self) -> None:
        transport = Transport(Transport.CLIENT)
        transport.idle_timeout = float(self.idle_timeout_s)
        transport.max_frame_size = self._max_frame_size
        connection = Connection()
        connection.container = self._container_id
        connection.hostname = self._hostname
        connection.properties = ControlChannel.open_properties(self._role, self._cost)
        collector = Collector()
        connection.collect(collector)
        transport.bind(connection)
        self._transport, self._collector = transport, collector
        self.channel = ControlChannel(
            self.id,
            connection,
            self._owner,
            self._pump,
            dialled=True,
            role=self._role,
            cost=self._cost,
            label=self.peer,
        )
        self._state = "amqp"
        connection.open()  # proton writes the AMQP header and reads the far end's
        rest = bytes(self._buf)
        self._buf.clear()
        if rest:
            self._amqp_input(rest)
        else:
            self._pump()

    def _amqp_input(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        problem = push_input(transport, data, self._pump)
        if problem is not None:
            self._fail(problem)

    def _pump(self) -> None:
        collector, transport = self._collector, self._transport
        if collector is None or transport is None or self._state == "closed":
            return
        if pump_events(collector, transport, self._on_event, self._write):
            cond = transport.condition or (
                self.channel.connection.remote_condition if self.channel else None
            )
            why = (
                f"{cond.name}: {cond.description}" if cond is not None else "closed by the far end"
            )
            self._fail(why)

    def _write(self, data: bytes) -> None:
        self._host.conn_write(self.id, data)

    def _on_event(self, event: Event) -> None:
        channel = self.channel
        if channel is None:
            return
        if event.type == Event.CONNECTION_REMOTE_OPEN:
            self.open_received = True
            assert self._transport is not None
            peer_timeout = float(self._transport.remote_idle_timeout or 0.0)
            if peer_timeout > 0:
                self._host.conn_keepalive(self.id, peer_timeout / 2)
            channel.remote_opened()
        elif event.type == Event.CONNECTION_REMOTE_CLOSE:
            cond = channel.connection.remote_condition
            self._fail(
                f"the far end closed the connection: {cond.name}: {cond.description}"
                if cond is not None
                else "the far end closed the connection"
            )
            return
        channel.on_event(event)

    def eof(self) -> None:
        self._fail("the far end closed the connection")

    def idle_expired(self, now: float) -> bool:
        limit = self.idle_timeout_s
        return bool(limit) and now - self.last_input > limit

    # ------------------------------------------------------------ close

    def _fail(self, reason: str) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        channel = self.channel
        if channel is None:
            self._owner.channel_failed(self.id, reason)
        elif not channel.failed:
            channel.fail(reason)
        self._host.conn_close(self.id, abort=False)

    def close(self, reason: str = "") -> None:
        """Closes from this end (already reported to the owner): an AMQP
        close frame (with ``reason`` as its condition) goes out first, so
        the far end sees a clean close rather than a cut connection."""
        if self._state == "closed":
            return
        close_amqp(self.channel.connection if self.channel else None, reason, self._pump)
        self._state = "closed"
        self._host.conn_close(self.id, abort=False)

    def closed(self) -> None:
        self._state = "closed"
        self._transport = self._collector = None
