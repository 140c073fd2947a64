"""AMQP 1.0 server side of one management connection, on engine app bytes.

The engine owns the socket and hands bytes to the control loop; this class
drives python-qpid-proton's engine layer (Transport, Connection, Collector)
with them, with no proton reactor. It tells from the first bytes which
protocol the client starts with, runs the SASL layer itself (see
``sasl.py``), then feeds proton a stream without SASL. Management requests
arriving on links to ``$management`` go to the agent; answers go back on
the link whose (dynamic) source address the request named as reply-to.

Heartbeats never depend on this loop: once the peer's open frame tells its
idle timeout, the engine is asked to send the empty frame whenever the
connection was silent for half of it. Proton is never ticked, so it never
emits heartbeats of its own; a silent peer is detected by ``idle_check``.

A client must complete the protocol header, SASL and its ``open`` frame
within ``handshake_timeout_s`` of connecting (``handshake_check``). An
exception raised while handling one connection's bytes (a bug, or input
proton rejects) is logged with its traceback and closes that connection
only; an exception of the agent answers the request with status 500.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

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

from router.log import get_logger
from router.management import sasl
from router.management.agent import Agent, Caller, Response, routed_router, serves_address
from router.management.auth_gate import AuthGate, AuthJob, Check
from router.management.limits import HANDSHAKE_TIMEOUT_S
from router.network.channel import (
    ChannelOwner,
    ControlChannel,
    close_amqp,
    pump_events,
    push_input,
)

_log = get_logger("PROTOCOL")

EMPTY_FRAME = b"\x00\x00\x00\x08\x02\x00\x00\x00"
MANAGEMENT_SUFFIX = "$management"
MAX_HEADER_WAIT = 8
RECEIVER_CREDIT = 16
MAX_QUEUED_REPLIES = 256
ROUTER_LINK_ROLES = ("inter-router", "edge")

_reply_numbers = itertools.count(1)


@dataclass(frozen=True)
class AmqpSettings:
    """What a listener entity says about the connections it accepts."""

    listener: str
    role: str = "normal"
    container_id: str = "skiff"
    idle_timeout_s: int = 16
    max_frame_size: int = 16384
    authenticate_peer: bool = False
    mechanisms: tuple[str, ...] = ("ANONYMOUS", "PLAIN")
    users_file: str | None = None
    allow_anonymous_writes: bool = False
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    cost: int = 1  # inter-router: this end's link cost

    @property
    def router_link(self) -> bool:
        """Whether the connections are links from other routers, not clients."""
        return self.role in ROUTER_LINK_ROLES


@dataclass(frozen=True)
class TlsInfo:
    """The TLS layer the engine terminated for a connection (from ConnInfo)."""

    protocol: str = ""
    cipher: str = ""
    version: int = 0
    ordinal: int = 0
    peer_subject: str = ""

    @property
    def encrypted(self) -> bool:
        return bool(self.protocol)


PLAINTEXT = TlsInfo()


class Host(Protocol):
    """What a connection needs from its listener adaptor."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def agent(self) -> Agent: ...

    @property
    def auth_gate(self) -> AuthGate: ...

    def conn_write(self, conn_id: int, data: bytes) -> bool: ...

    def conn_close(self, conn_id: int, abort: bool = False) -> None: ...

    def conn_keepalive(self, conn_id: int, interval_s: float) -> None: ...

    def forward_management(
        self,
        router_id: str,
        properties: dict[str, object],
        body: object,
        caller: Caller,
        done: Callable[[Response], None],
    ) -> bool:
        """Sends a request for another router's management node over the
        router network; ``done`` gets the answer. False: this router is not
        in a network."""
        ...


@dataclass
class _ReplyLink:
    link: Link
    queue: deque[bytes] = field(default_factory=deque)


class AmqpConnection:
    """One accepted AMQP connection; all methods run on the control loop."""

    def __init__(
        self,
        conn_id: int,
        peer: str,
        settings: AmqpSettings,
        host: Host,
        tls: TlsInfo = PLAINTEXT,
        channel_owner: ChannelOwner | None = None,
    ) -> None:
        self.id = conn_id
        self.peer = peer
        self.settings = settings
        self.tls = tls
        self._host = host
        self.opened = time.monotonic()
        self.last_input = self.opened
        self._buf = bytearray()
        self._state = "header"  # header, sasl, auth, amqp, closed
        self.user: str | None = None
        self.mechanism: str | None = None
        self.can_write = settings.allow_anonymous_writes
        self.container: str | None = None
        self._transport: Transport | None = None
        self._connection: Connection | None = None
        self._collector: Collector | None = None
        self._replies: dict[str, _ReplyLink] = {}
        self._tag = itertools.count(1)
        self.requests = 0
        self.open_received = False  # the peer's open frame arrived: handshake done
        self._auth_job: AuthJob | None = None  # the gate's job while a check is pending
        # a link from another router: its control channel, once AMQP opens
        self._channel_owner = channel_owner
        self.channel: ControlChannel | None = None

    # ------------------------------------------------------------ input

    def feed(self, data: bytes) -> None:
        self.last_input = time.monotonic()
        if self._state == "closed":
            return
        try:
            self._feed(data)
        except Exception:  # noqa: BLE001 - one connection's failure stays its own
            self._crashed("handling input")

    def _crashed(self, doing: str) -> None:
        _log.exception(
            f"AMQP connection {self.id} from {self.peer}: internal error while {doing}; "
            "closing this connection"
        )
        self._close(abort=True)

    def _feed(self, data: bytes) -> None:
        if self._state == "amqp":
            self._amqp_input(data)
            return
        self._buf += data
        if len(self._buf) > sasl.MAX_SASL_FRAME * 2:
            self._fail("too many bytes before authentication completed")
            return
        self._advance()

    def eof(self) -> None:
        """The peer closed its side: let proton see it, then close ours."""
        if self._state == "amqp" and self._transport is not None:
            try:
                self._transport.close_tail()
                self._pump()
            except Exception:  # noqa: BLE001 - one connection's failure stays its own
                self._crashed("closing")
        self._close(abort=False)

    def closed(self) -> None:
        """The engine reports the socket gone: drop everything."""
        if self._channel_owner is not None and not (self.channel and self.channel.failed):
            self._channel_owner.channel_failed(self.id, "the connection closed")
        self._state = "closed"
        self._cancel_check()
        self._replies.clear()
        self._transport = self._connection = self._collector = None

    def idle_check(self, now: float) -> None:
        """Closes a peer silent for our whole idle timeout (we advertise half)."""
        limit = self.settings.idle_timeout_s
        if limit and self._state != "closed" and now - self.last_input > limit:
            _log.info(
                f"AMQP connection {self.id} from {self.peer}: no frame for {limit} s; closing"
            )
            self._close(abort=True)

    def handshake_check(self, now: float) -> str | None:
        """Closes a client that has not sent its open frame in time; then
        returns where it was stuck (the caller logs, rate-limited)."""
        limit = self.settings.handshake_timeout_s
        if self.open_received or self._state == "closed" or not limit:
            return None
        if now - self.opened <= limit:
            return None
        phase = self._phase()
        self._close(abort=True)
        return phase

    def _phase(self) -> str:
        return {
            "header": "the protocol header",
            "sasl": "SASL",
            "auth": "SASL authentication",
        }.get(self._state, "the AMQP open")

    # ------------------------------------------------------------ headers and SASL

    def _advance(self) -> None:
        while self._state in ("header", "sasl") and self._buf:
            if self._state == "header":
                if self._buf[0] == sasl.TLS_RECORD_HANDSHAKE:
                    # TLS is the engine's: a handshake reaching Python means the
                    # listener has no sslProfile (or TLS was nested in TLS)
                    self._fail(
                        f"the client starts TLS, but listener '{self.settings.listener}' "
                        "has no sslProfile"
                    )
                    return
                if len(self._buf) < len(sasl.AMQP_HEADER):
                    if not sasl.SASL_HEADER.startswith(bytes(self._buf)) and not (
                        sasl.AMQP_HEADER.startswith(bytes(self._buf))
                    ):
                        self._refuse_header()
                    return
                header = bytes(self._buf[:8])
                if header == sasl.SASL_HEADER:
                    del self._buf[:8]
                    self._state = "sasl"
                    self._host.conn_write(
                        self.id,
                        sasl.SASL_HEADER + sasl.mechanisms_frame(list(self._offered())),
                    )
                    continue
                if header == sasl.AMQP_HEADER:
                    if self.settings.authenticate_peer:
                        _log.info(
                            f"AMQP connection {self.id} from {self.peer}: refused, listener "
                            f"'{self.settings.listener}' requires SASL authentication"
                        )
                        self._refuse_header()
                        return
                    self._start_amqp()
                    return
                self._refuse_header()
                return
            try:
                frame = sasl.split_frame(self._buf)
            except sasl.SaslError as e:
                self._fail(str(e))
                return
            if frame is None:
                return
            body, used = frame
            del self._buf[:used]
            try:
                init = sasl.decode_init(body)
            except sasl.SaslError as e:
                self._fail(str(e))
                return
            self._sasl_init(init)

    def _offered(self) -> tuple[str, ...]:
        mechs = self.settings.mechanisms
        if self.settings.authenticate_peer:
            mechs = tuple(m for m in mechs if m != "ANONYMOUS")
        if not self.tls.peer_subject:
            # EXTERNAL only where the engine verified a client certificate
            mechs = tuple(m for m in mechs if m != "EXTERNAL")
        return mechs

    def _refuse_header(self) -> None:
        """Answers an unwanted protocol header with the one we want, then closes."""
        self._host.conn_write(self.id, sasl.SASL_HEADER)
        self._close(abort=False)

    def _sasl_init(self, init: sasl.SaslInit) -> None:
        mech = init.mechanism.upper()
        if mech not in self._offered():
            _log.info(
                f"AMQP connection {self.id} from {self.peer}: SASL mechanism {mech} not offered"
            )
            self._outcome(sasl.OUTCOME_AUTH)
            return
        self.mechanism = mech
        if mech == "ANONYMOUS":
            self._outcome(sasl.OUTCOME_OK)
            return
        if mech == "EXTERNAL":
            self._external(init.initial_response)
            return
        try:
            _authzid, authcid, password = sasl.parse_plain(init.initial_response)
        except sasl.SaslError as e:
            _log.info(f"AMQP connection {self.id} from {self.peer}: {e}")
            self._outcome(sasl.OUTCOME_AUTH)
            return
        self._check(
            functools.partial(sasl.verify_plain, self.settings.users_file, authcid, password)
        )

    def _check(self, check: Check) -> None:
        """Hands a credential check to the gate; a refusal fails at once."""
        self._state = "auth"
        job = self._host.auth_gate.submit(self.peer, check, self._verified)
        if isinstance(job, str):
            _log.info(f"AMQP connection {self.id} from {self.peer}: SASL refused: {job}")
            self._outcome(sasl.OUTCOME_SYS_TEMP)
            return
        self._auth_job = job

    def _external(self, response: bytes | None) -> None:
        subject = self.tls.peer_subject
        authzid = (response or b"").decode("utf-8", errors="replace")
        if authzid and authzid != subject:
            _log.warning(
                f"AMQP connection {self.id} from {self.peer}: EXTERNAL asks to act as "
                f"'{authzid}', but the client certificate is '{subject}'"
            )
            self._outcome(sasl.OUTCOME_AUTH)
            return
        self._check(functools.partial(sasl.verify_external, self.settings.users_file, subject))

    def _verified(self, result: sasl.AuthResult) -> None:
        self._auth_job = None
        if self._state != "auth":
            return  # closed meanwhile
        try:
            self._authenticated(result)
        except Exception:  # noqa: BLE001 - one connection's failure stays its own
            self._crashed("finishing SASL")

    def _authenticated(self, result: sasl.AuthResult) -> None:
        if result.temporary:
            _log.info(f"AMQP connection {self.id} from {self.peer}: SASL refused: {result.reason}")
            self._outcome(sasl.OUTCOME_SYS_TEMP)
            return
        if not result.ok:
            _log.warning(
                f"AMQP connection {self.id} from {self.peer}: authentication failed: "
                f"{result.reason}"
            )
            self._outcome(sasl.OUTCOME_AUTH)
            return
        self.user = result.user
        self.can_write = result.can_write
        _log.info(
            f"AMQP connection {self.id} from {self.peer}: authenticated as '{result.user}' "
            f"by {self.mechanism} ({'write' if result.can_write else 'read'} access)"
        )
        self._outcome(sasl.OUTCOME_OK)

    def _outcome(self, code: int) -> None:
        self._host.conn_write(self.id, sasl.outcome_frame(code))
        if code != sasl.OUTCOME_OK:
            self._close(abort=False)
            return
        self._state = "header-after-sasl"
        rest = bytes(self._buf)
        self._buf.clear()
        self._start_amqp(rest, expect_header=True)

    def _fail(self, reason: str) -> None:
        _log.info(f"AMQP connection {self.id} from {self.peer}: closing: {reason}")
        self._close(abort=False)

    # ------------------------------------------------------------ proton

    def _start_amqp(self, pending: bytes | None = None, expect_header: bool = False) -> None:
        transport = Transport(Transport.SERVER)
        transport.idle_timeout = float(self.settings.idle_timeout_s)
        transport.max_frame_size = self.settings.max_frame_size
        connection = Connection()
        connection.container = self.settings.container_id
        collector = Collector()
        connection.collect(collector)
        transport.bind(connection)
        self._transport, self._connection, self._collector = transport, connection, collector
        self._state = "amqp"
        data = bytes(self._buf) if pending is None else pending
        self._buf.clear()
        if data:
            self._amqp_input(data)

    def _amqp_input(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        problem = push_input(transport, data, self._pump)
        if problem is None:
            return
        _log.info(f"AMQP connection {self.id} from {self.peer}: closing: {problem}")
        if transport.capacity() >= 0:
            transport.close_tail()  # let proton answer with its own close
            self._pump()
        self._close(abort=False)

    def _pump(self) -> None:
        """Handles proton events, then writes what proton produced (whole frames)."""
        collector = self._collector
        transport = self._transport
        if collector is None or transport is None or self._state == "closed":
            return
        closed = pump_events(
            collector, transport, self._on_event, lambda out: self._host.conn_write(self.id, out)
        )
        if closed:
            condition = transport.condition
            if condition is not None and self._state != "closed":
                # proton refused the input (framing, protocol): say what
                _log.info(
                    f"AMQP connection {self.id} from {self.peer}: closing: {condition.name}: "
                    f"{condition.description}"
                )
            self._close(abort=False)

    def _on_event(self, event: Event) -> None:
        kind = event.type
        connection, session, link = event.connection, event.session, event.link
        if self.channel is not None and kind != Event.CONNECTION_REMOTE_CLOSE:
            self.channel.on_event(event)
            return
        if kind == Event.CONNECTION_REMOTE_OPEN and connection is not None:
            self.open_received = True
            self.container = connection.remote_container
            if self._channel_owner is not None:
                self._open_channel(connection)
                return
            connection.open()
            assert self._transport is not None
            peer_timeout = float(self._transport.remote_idle_timeout or 0.0)
            if peer_timeout > 0:
                # the engine sends the empty frame after half the peer's
                # timeout of silence: no Python, no GIL on that path
                self._host.conn_keepalive(self.id, peer_timeout / 2)
        elif kind == Event.SESSION_REMOTE_OPEN and session is not None:
            session.open()
        elif kind == Event.LINK_REMOTE_OPEN and link is not None:
            self._link_opened(link)
        elif kind == Event.LINK_REMOTE_CLOSE and link is not None:
            self._forget(link)
            link.close()
        elif kind == Event.LINK_REMOTE_DETACH and link is not None:
            self._forget(link)
            link.detach()
        elif kind == Event.SESSION_REMOTE_CLOSE and session is not None:
            session.close()
        elif kind == Event.CONNECTION_REMOTE_CLOSE and connection is not None:
            connection.close()
        elif kind == Event.LINK_FLOW and link is not None:
            if link.is_sender:
                self._flush_replies(link)
        elif kind == Event.DELIVERY and event.delivery is not None:
            self._delivery(event.delivery)

    def close_router_link(self, reason: str) -> None:
        """Closes a router link from this end: AMQP close, then the socket."""
        if self._state == "closed":
            return
        if self._state == "amqp" and self._connection is not None:
            try:
                close_amqp(self._connection, reason, self._pump)
            except Exception:  # noqa: BLE001 - the socket closes regardless
                _log.exception(f"AMQP connection {self.id}: sending close failed")
        self._close(abort=False)

    def _open_channel(self, connection: Connection) -> None:
        """A router link: answer the open with our cost, then carry control
        messages (``router.network.channel``) instead of management."""
        owner = self._channel_owner
        assert owner is not None and self._transport is not None
        connection.properties = ControlChannel.open_properties(
            self.settings.role, self.settings.cost
        )
        connection.open()
        peer_timeout = float(self._transport.remote_idle_timeout or 0.0)
        if peer_timeout > 0:
            self._host.conn_keepalive(self.id, peer_timeout / 2)
        self.channel = ControlChannel(
            self.id,
            connection,
            owner,
            self._pump,
            dialled=False,
            role=self.settings.role,
            cost=self.settings.cost,
            label=self.peer,
        )
        self.channel.remote_opened()

    def _link_opened(self, link: Link) -> None:
        if link.state & Endpoint.LOCAL_ACTIVE:
            return
        if link.is_sender:
            # the client's receiver: its source is where replies go
            if link.remote_source.dynamic:
                address = f"amqp:/_topo/0/{self.settings.container_id}/temp.{next(_reply_numbers)}"
            else:
                address = link.remote_source.address or ""
            if not address:
                link.condition = Condition("amqp:invalid-field", "receiver link without a source")
                link.open()
                link.close()
                return
            link.source.address = address
            link.source.dynamic = False
            link.target.copy(link.remote_target)
            self._replies[address] = _ReplyLink(link)
            link.open()
            return
        target = link.remote_target.address
        if (
            target is not None
            and not serves_address(target, self.settings.container_id)
            and routed_router(target, self.settings.container_id) is None
        ):
            link.target.address = target
            link.condition = Condition(
                "amqp:not-found",
                f"no such node '{target}': this router serves only $management (its own, or "
                "another router's through the network)",
            )
            link.open()
            link.close()
            return
        link.target.copy(link.remote_target)
        link.source.copy(link.remote_source)
        link.open()
        link.flow(RECEIVER_CREDIT)

    def _forget(self, link: Link) -> None:
        for address, reply in list(self._replies.items()):
            if reply.link is link:
                del self._replies[address]

    def _delivery(self, delivery: Delivery) -> None:
        link = delivery.link
        if link.is_sender:
            if delivery.updated and not delivery.settled:
                delivery.settle()
            return
        if not delivery.readable or delivery.partial:
            return
        payload = link.recv(delivery.pending)
        link.advance()
        delivery.update(Delivery.ACCEPTED)
        delivery.settle()
        if link.credit < RECEIVER_CREDIT // 2:
            link.flow(RECEIVER_CREDIT - link.credit)
        self._request(link, bytes(payload) if payload else b"")

    def _request(self, link: Link, payload: bytes) -> None:
        self.requests += 1
        request = Message()
        try:
            request.decode(payload)
        except Exception as e:  # noqa: BLE001 - proton's decode errors have no common base
            _log.info(
                f"AMQP connection {self.id} from {self.peer}: undecodable request dropped: {e}"
            )
            return
        reply_to = request.reply_to
        if not reply_to:
            _log.info(
                f"AMQP connection {self.id} from {self.peer}: request without reply-to ignored"
            )
            return
        target = link.remote_target.address or request.address or ""
        caller = Caller(self.user, self.can_write, self.id)
        correlation = request.correlation_id if request.correlation_id is not None else request.id
        remote = routed_router(str(target), self.settings.container_id)
        if remote is not None:
            self._forward(remote, request, caller, reply_to, correlation)
            return
        if not serves_address(str(target), self.settings.container_id):
            _log.info(f"AMQP connection {self.id}: request for '{target}' has no node; ignored")
            return
        try:
            response = self._host.agent.handle(request.properties, request.body, caller)
        except Exception as e:  # noqa: BLE001 - a bug answers 500; the connection serves on
            _log.exception(f"AMQP connection {self.id}: management request failed")
            response = Response(500, f"Internal Server Error: {type(e).__name__}: {e}")
        self._answer(reply_to, correlation, response)

    def _forward(
        self, router_id: str, request: Message, caller: Caller, reply_to: str, correlation: object
    ) -> None:
        """A request for another router's node: the network carries it there."""
        given: dict[Any, Any] = request.properties or {}
        props: dict[str, object] = {str(k): v for k, v in given.items()}

        def done(response: Response) -> None:
            if self._state != "closed":
                self._answer(reply_to, correlation, response)
                self._pump()

        if not self._host.forward_management(router_id, props, request.body, caller, done):
            self._answer(
                reply_to,
                correlation,
                Response(
                    404,
                    f"Not Found: router '{router_id}' is unknown: this router "
                    f"('{self.settings.container_id}') is not in a router network",
                ),
            )

    def _answer(self, reply_to: str, correlation: object, response: Response) -> None:
        try:
            encoded = self._reply(reply_to, correlation, response)
        except Exception as e:  # noqa: BLE001 - an unencodable answer is the router's bug
            _log.exception(f"AMQP connection {self.id}: management response not encodable")
            encoded = self._reply(
                reply_to,
                correlation,
                Response(500, f"Internal Server Error: response not encodable: {e}"),
            )
        self._send(reply_to, encoded)

    @staticmethod
    def _reply(reply_to: str, correlation: object, response: Response) -> bytes:
        reply = Message(
            address=reply_to,
            correlation_id=cast(Any, correlation),
            properties={
                **(response.properties or {}),
                "statusCode": response.status,
                "statusDescription": response.description,
            },
            body=cast(Any, response.body),
        )
        return bytes(reply.encode())

    def _send(self, address: str, encoded: bytes) -> None:
        reply = self._replies.get(address)
        if reply is None:
            _log.info(
                f"AMQP connection {self.id}: reply-to '{address}' is not a link of this "
                "connection; response dropped"
            )
            return
        if len(reply.queue) >= MAX_QUEUED_REPLIES:
            _log.warning(
                f"AMQP connection {self.id}: client grants no credit on '{address}'; "
                "response dropped"
            )
            return
        reply.queue.append(encoded)
        self._flush_replies(reply.link)

    def _flush_replies(self, link: Link) -> None:
        address = link.source.address
        reply = self._replies.get(address) if address else None
        if reply is None:
            return
        while reply.queue and link.credit > 0:
            delivery = link.delivery(str(next(self._tag)))
            link.send(reply.queue.popleft())
            link.advance()
            delivery.settle()

    # ------------------------------------------------------------ close

    def _cancel_check(self) -> None:
        job, self._auth_job = self._auth_job, None
        if job is not None:
            job.cancel()  # a queued check is dropped; a running one's answer is ignored

    def _close(self, abort: bool) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        self._cancel_check()
        self._host.conn_close(self.id, abort)
