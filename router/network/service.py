"""The router network wired to the engine, the registry and the control loop.

``NetworkService`` runs one ``RouterCore`` (router mode interior or edge):

* **Links.** ``connector`` entities (role inter-router or edge) dial through
  the engine (``Engine.app_connect``: TCP and TLS on a worker, no blocking
  on the loop) and re-dial forever with capped exponential back-off.
  ``listener`` entities with those roles accept through the app listener
  adaptor, which hands each connection to an ``AmqpConnection`` with this
  service as its channel owner.  Either way a ``ControlChannel`` carries the
  control messages once both ends' AMQP links are open.
* **Clock.** ``tick`` runs at the core's ``next_due`` on a loop timer, and
  after every input, so HELLOs go out by elapsed time, not by counting
  ticks.  The engine sends the AMQP heartbeats (``app_set_keepalive``), so a
  busy loop never makes a link look dead to the far end.
* **Results.** The route table goes to the TCP adaptor (a ``tcpListener``
  is up while its address has a target anywhere in the network); the
  management views, readiness and metrics read the core.

Every call from the loop into the core is guarded: an exception in the
handling of one link closes that link, with its traceback in the log.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from router.configs import ConnectorConfig, RouterConfig
from router.engine import Engine, EngineError, Event, EventType, Peer, RemoteRoute
from router.log import get_logger
from router.management.agent import Agent, Caller, Response
from router.network.channel import ControlChannel, DialledConnection
from router.network.core import Action, Close, Log, NetworkConfig, Role, RouterCore, Send
from router.network.linkstate import shortest_paths
from router.network.routes import RouteTable
from router.network.sync import SyncStatus
from router.registry import Entity, Registry
from router.resolver import numeric_host
from router.tls import TlsManager

_log = get_logger("ROUTER_HELLO")

MGMT_REQUEST = "MGMT"  # a management request for another router, hop by hop
MGMT_REPLY = "MGMT_REPLY"
MGMT_TIMEOUT_S = 10.0
MGMT_HOPS = 32  # hops a routed request may take before it is dropped
MAX_PENDING_MGMT = 1024  # routed requests waiting for an answer

# Warm data connections kept per neighbour and worker: a flow claims one and
# a replacement is dialled, so a flow needs no dial (nor TLS handshake).
DATA_POOL_PER_WORKER = 2

BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 8.0
HOUSEKEEPING_S = 0.5
DIAL_TIMEOUT_S = 10.0
STABLE_LINK_S = 10.0  # a link up this long resets its connector's back-off


@dataclass
class _Connector:
    entity: Entity
    config: ConnectorConfig
    status: str = "CONNECTING"
    message: str = ""
    dials: int = 0
    conn_id: int | None = None  # the attempt or link in progress
    user_id: int = 0
    backoff: float = BACKOFF_FIRST_S
    retry: asyncio.TimerHandle | None = None
    up_since: float | None = None
    deleted: bool = False
    ip: str = ""  # the address dialled (data connections go there too)
    slot: int = -1  # the sslProfile's TLS slot, -1 plain


@dataclass
class _Link:
    """One router link that has reached AMQP (dialled or accepted)."""

    conn_id: int
    channel: ControlChannel
    opened: float
    connector: str | None = None
    stats: dict[str, int] = field(default_factory=dict)


class NetworkService:
    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        loop: asyncio.AbstractEventLoop,
        router: RouterConfig,
        router_id: str,
        tls: TlsManager | None = None,
    ) -> None:
        mode = router.mode
        assert mode in ("interior", "edge"), mode
        self.engine = engine
        self.loop = loop
        self.router_id = router_id
        self.mode = mode
        self.config = NetworkConfig(
            router_id=router_id,
            instance=int(time.time() * 1000),
            mode="interior" if mode == "interior" else "edge",
            hello_interval=float(router.hello_interval_seconds),
            hello_max_age=float(router.hello_max_age_seconds),
            ra_interval=float(router.ra_interval_seconds),
            ra_interval_flux=float(router.ra_interval_flux_seconds),
            remote_ls_max_age=float(router.remote_ls_max_age_seconds),
            max_routers=router.max_routers,
        )
        self.core = RouterCore(self.config)
        engine.set_router_id(router_id)  # the origin of the flows it sends
        self._tls = tls
        self._connectors: dict[str, _Connector] = {}
        self._dialling: dict[int, _Connector] = {}  # user id -> connector (before APP_OPEN)
        self._dialled: dict[int, DialledConnection] = {}  # conn id -> client connection
        self._conn_connector: dict[int, _Connector] = {}  # conn id -> its connector
        self._links: dict[int, _Link] = {}  # conn id -> link (control links open)
        self._accepted: dict[int, Callable[[str], None]] = {}  # conn id -> close it
        self._tick_handle: asyncio.TimerHandle | None = None
        self._housekeeping: asyncio.TimerHandle | None = None
        self._routes: RouteTable | None = None
        self._route_listeners: list[Callable[[RouteTable], None]] = []
        # neighbour router id -> the engine's peer its data connections go to
        self._peers: dict[str, tuple[int, Peer]] = {}  # (link id, peer): links we dialled
        # neighbours that dialled us: flows to them claim the INBOUND data
        # connections they keep here (docs/dataplane.md, "Pools (INBOUND)")
        self._reverse: dict[str, tuple[int, Peer]] = {}
        self._peers_changed = False
        self._lsdb_computed = -1  # lsdb.recomputations the remote routes were made at
        self._remote_listeners: list[Callable[[Mapping[str, list[RemoteRoute]]], None]] = []
        self._closed = False
        self._agent: Agent | None = None
        self._pending: dict[int, tuple[Callable[[Response], None], asyncio.TimerHandle]] = {}
        self._mgmt_numbers = itertools.count(1)
        self.started = time.monotonic()
        self.handler_errors = 0
        self.convergence_s: float | None = None  # last change until routes settled
        self._change_started: float | None = None
        engine.on_event(self._on_event)
        engine.on_overflow(self._resync)
        registry.subscribe("connector", _ConnectorObserver(self))
        if tls is not None:
            tls.on_published(self._profile_published)
        self._schedule_tick()
        self._housekeeping = loop.call_later(HOUSEKEEPING_S, self._housekeep)
        _log.info(
            f"router '{router_id}' joins the network as {mode} (instance {self.config.instance})"
        )

    # ------------------------------------------------------------ clock

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def _schedule_tick(self) -> None:
        if self._closed:
            return
        now = self.now()
        due = max(self.core.next_due(now), now + 0.001)
        if self._tick_handle is not None:
            if abs(self._tick_handle.when() - (self.loop.time() + due - now)) < 0.001:
                return
            self._tick_handle.cancel()
        self._tick_handle = self.loop.call_later(due - now, self._tick)

    def _tick(self) -> None:
        self._tick_handle = None
        # read what the links sent before judging their silence: under a
        # backlog, a neighbour's HELLO may wait behind other input
        self.engine.dispatch_pending()
        for conn in list(self._dialled.values()):
            self._read(conn)
        self._run(lambda now: self.core.tick(now))

    def _run(self, step: Callable[[float], list[Action]]) -> None:
        """One input to the core, then its actions, routes and the next tick."""
        now = self.now()
        try:
            actions = step(now)
        except Exception:  # noqa: BLE001 - a bug in the core must not stop the loop
            self.handler_errors += 1
            _log.exception("network core failed handling an input")
            actions = []
        self._carry_out(actions)
        self._publish_routes(now)
        self._schedule_tick()

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                link = self._links.get(action.link_id)
                if link is not None:
                    link.channel.send(action.opcode, action.body)
            elif isinstance(action, Close):
                self._close_conn(action.link_id, action.reason)
            elif isinstance(action, Log):
                getattr(_log, action.level)(action.text)

    def _publish_routes(self, now: float) -> None:
        table = self.core.routes()
        computed = self.core.lsdb.recomputations
        if self._routes is not None and table.version == self._routes.version:
            # the alternates (_alternates) follow the whole graph, not only
            # our table: a link between two other routers can add or remove
            # one while our own next hops stay as they are
            if self._peers_changed or computed != self._lsdb_computed:
                self._peers_changed = False
                self._lsdb_computed = computed
                self._publish_remote(table)
            return
        self._routes = table
        self._peers_changed = False
        self._lsdb_computed = computed
        self._publish_remote(table)
        if self._change_started is not None:
            self.convergence_s = now - self._change_started
        self._notify(self._route_listeners, table, "route table")

    def remote_routes(self, table: RouteTable) -> dict[str, list[RemoteRoute]]:
        """The table's remote destinations as the engine takes them: each
        through the peer of its next hop (destinations whose next hop has no
        peer, i.e. no data path yet, are left out)."""
        peers = self.peers()
        alternates = self._alternates(peers)
        out: dict[str, list[RemoteRoute]] = {}
        for address, route in table.routes.items():
            remote = []
            for d in route.remote:
                hop_peer = peers.get(d.next_hop)
                if hop_peer is not None:
                    remote.append(RemoteRoute(d.router_id, d.cost, hop_peer, d.targets))
                for hop, cost in alternates.get(d.router_id, ()):
                    if hop != d.next_hop:
                        remote.append(RemoteRoute(d.router_id, cost, peers[hop], d.targets))
            out[address] = remote
        return out

    def _alternates(self, peers: Mapping[str, Peer]) -> dict[str, list[tuple[str, int]]]:
        """Loop-free alternate next hops (as in IP fast reroute): for each
        router, the other neighbours with a data path that reach it without
        coming back through us, with the path cost through them. The engine
        tries them, dearer, when the best next hop fails, so clients keep
        working while routing converges after a neighbour dies."""
        if self.mode != "interior" or not peers:
            return {}
        lsdb = self.core.lsdb
        graph = lsdb.graph()
        mine = lsdb.paths.cost
        out: dict[str, list[tuple[str, int]]] = {}
        for hop in peers:
            link_cost = graph.get(self.router_id, {}).get(hop)
            if link_cost is None:
                continue
            theirs = shortest_paths(hop, graph).cost
            back = theirs.get(self.router_id)
            if back is None:
                continue
            for dest, dist in theirs.items():
                if dest in (self.router_id, hop) or dest not in mine:
                    continue
                if dist < back + mine[dest]:  # loop-free: not through us
                    out.setdefault(dest, []).append((hop, link_cost + dist))
        return out

    def on_remote_routes(self, listener: Callable[[Mapping[str, list[RemoteRoute]]], None]) -> None:
        """Calls ``listener(routes)`` whenever the remote destinations the
        engine should use change (the route table or the peers)."""
        self._remote_listeners.append(listener)

    def _publish_remote(self, table: RouteTable) -> None:
        self._notify(self._remote_listeners, self.remote_routes(table), "remote route")

    def _notify(self, listeners: list[Callable[[Any], None]], value: Any, what: str) -> None:
        """Hands value to every listener; one consumer's bug must not cost
        the others (counted and logged)."""
        for listener in listeners:
            try:
                listener(value)
            except Exception:  # noqa: BLE001 - see the docstring
                self.handler_errors += 1
                _log.exception(f"{what} consumer failed")

    def _add_peer(self, router_id: str, link_id: int, state: _Connector) -> None:
        """A dialled link is up: its far router gets data connections at the
        address (and with the TLS profile) the link was dialled with."""
        cfg = state.config
        try:
            peer = self.engine.peer(
                router_id,
                state.ip,
                cfg.port,
                host=cfg.host,
                tls_slot=state.slot,
                verify_host=cfg.verify_hostname and state.slot >= 0,
                # warm data connections per worker, so a flow needs no dial
                # (nor TLS handshake) while the pool has one
                pool_size=DATA_POOL_PER_WORKER,
                # and as many kept at the far router for its flows towards
                # us: only the dialling side dials, so a site that cannot be
                # reached (NAT, no listener) still receives flows
                inbound_pool_size=DATA_POOL_PER_WORKER,
                instance=self.config.instance,
                link_id=link_id,
            )
        except EngineError as e:
            _log.error(f"router link {link_id} to '{router_id}': no data path: {e}")
            return
        old = self._peers.get(router_id)
        self._peers[router_id] = (link_id, peer)
        if old is not None:
            old[1].release()
        self._peers_changed = True

    def _add_reverse_peer(self, router_id: str, link_id: int) -> None:
        """A link the far router dialled is up: flows towards it claim the
        INBOUND data connections it keeps at our inter-router listener."""
        old = self._reverse.pop(router_id, None)
        if old is not None:
            old[1].release()  # one reverse peer per router id in the engine
        try:
            peer = self.engine.reverse_peer(router_id)
        except EngineError as e:
            _log.error(f"router link {link_id} from '{router_id}': no data path: {e}")
            return
        self._reverse[router_id] = (link_id, peer)
        self._peers_changed = True

    def _drop_peer(self, link_id: int) -> None:
        for peers in (self._peers, self._reverse):
            for router_id, (lid, peer) in list(peers.items()):
                if lid == link_id:
                    del peers[router_id]
                    peer.release()  # open data connections keep their own reference
                    self._peers_changed = True

    def peers(self) -> dict[str, Peer]:
        """The peer each neighbour's flows go through: the link this router
        dialled when there is one (it dials as the flows need), otherwise
        the neighbour's INBOUND connections."""
        out = {rid: peer for rid, (_, peer) in self._reverse.items()}
        out.update({rid: peer for rid, (_, peer) in self._peers.items()})
        return out

    def on_routes(self, listener: Callable[[RouteTable], None]) -> None:
        """Calls ``listener(table)`` whenever the route table changes."""
        self._route_listeners.append(listener)

    @property
    def routes(self) -> RouteTable:
        return self.core.routes()

    def set_local_addresses(self, counts: Mapping[str, int]) -> None:
        """The local tcpConnectors changed: advertise their addresses."""
        self._mark_change()
        self._run(lambda now: self.core.set_local_addresses(dict(counts), now))

    def _mark_change(self) -> None:
        self._change_started = self.now()

    # ------------------------------------------------------------ ChannelOwner

    def channel_ready(self, channel: ControlChannel) -> None:
        conn_id = channel.conn_id
        connector = self._conn_connector.get(conn_id)
        self._links[conn_id] = _Link(
            conn_id, channel, self.now(), connector.entity.name if connector else None
        )
        if connector is not None:
            connector.status, connector.message = "SUCCESS", ""
            connector.up_since = self.now()
            if channel.peer_container:
                self._add_peer(channel.peer_container, conn_id, connector)
        elif channel.peer_container:
            self._add_reverse_peer(channel.peer_container, conn_id)
        role: Role = "edge" if channel.role == "edge" else "inter-router"
        label = f"{'to' if channel.dialled else 'from'} {channel.label}"
        if channel.peer_container:
            label += f" (container {channel.peer_container})"
        _log.info(f"{role} link {conn_id} up {label}, cost {channel.cost}")
        self._mark_change()
        self._run(
            lambda now: self.core.link_opened(conn_id, role, now, cost=channel.cost, label=label)
        )

    def channel_message(self, channel: ControlChannel, opcode: Any, body: Any, size: int) -> None:
        conn_id = channel.conn_id
        if conn_id not in self._links:
            return
        if opcode in (MGMT_REQUEST, MGMT_REPLY):
            self._routed_management(channel, str(opcode), body)
            return
        self._run(lambda now: self.core.receive(conn_id, opcode, body, now, size=size))

    def channel_failed(self, conn_id: int, reason: str) -> None:
        was_link = self._links.pop(conn_id, None) is not None
        connector = self._conn_connector.get(conn_id)
        if connector is not None:
            connector.message = reason
        if was_link or connector is not None:
            _log.info(f"router link {conn_id}: {reason}")
        self._close_engine_conn(conn_id, reason)
        self._drop_peer(conn_id)
        if was_link:
            self._mark_change()
            self._run(lambda now: self.core.link_closed(conn_id, now))

    # ------------------------------------------------------------ routed management

    def serve_management(self, agent: Agent) -> None:
        """Answers requests other routers route here (``_topo/0/<id>/$management``)."""
        self._agent = agent

    def _link_towards(self, router_id: str) -> int | None:
        """The link a message for ``router_id`` leaves on, or None when unreachable."""
        neighbours = {**self.core.interior_neighbours(), **self.core.edge_neighbours()}
        if router_id in neighbours:
            return neighbours[router_id]
        hop = self.core.routes().next_hops.get(router_id)
        if hop is None and self.mode == "edge":
            hop = self.core.uplink()  # an edge reaches everything through its interior
        return neighbours.get(hop) if hop is not None else None

    def forward_management(
        self,
        router_id: str,
        properties: Mapping[str, object],
        body: object,
        caller: Caller,
        done: Callable[[Response], None],
    ) -> None:
        """Carries a management request to ``router_id``; ``done`` gets its
        answer, or a 404 when the router is unknown, or a 503 when it does not
        answer within ``MGMT_TIMEOUT_S``."""
        link_id = self._link_towards(router_id)
        if link_id is None or link_id not in self._links:
            done(
                Response(
                    404,
                    f"Not Found: router '{router_id}' is unknown or unreachable "
                    f"from router '{self.router_id}'",
                )
            )
            return
        if len(self._pending) >= MAX_PENDING_MGMT:
            done(
                Response(
                    503,
                    f"Service Unavailable: {MAX_PENDING_MGMT} routed management "
                    "requests are already waiting for an answer",
                )
            )
            return
        number = next(self._mgmt_numbers)
        timer = self.loop.call_later(MGMT_TIMEOUT_S, self._mgmt_timeout, number, router_id)
        self._pending[number] = (done, timer)
        message = {
            "origin": self.router_id,
            "target": router_id,
            "corr": number,
            "hops": MGMT_HOPS,
            "write": caller.can_write,
            "user": caller.user or "",
            "props": dict(properties),
            "body": body,
        }
        if not self._send_routed(link_id, MGMT_REQUEST, message):
            self._mgmt_done(
                number, Response(413, "Request Entity Too Large: the request is too large to route")
            )

    def _send_routed(self, link_id: int, opcode: str, message: dict[str, Any]) -> bool:
        link = self._links.get(link_id)
        if link is None:
            return False
        return link.channel.send(opcode, message) >= 0

    def _mgmt_timeout(self, number: int, router_id: str) -> None:
        self._mgmt_done(
            number,
            Response(
                503,
                f"Service Unavailable: router '{router_id}' did not answer within "
                f"{MGMT_TIMEOUT_S:g} s",
            ),
        )

    def _mgmt_done(self, number: int, response: Response) -> None:
        entry = self._pending.pop(number, None)
        if entry is None:
            return
        done, timer = entry
        timer.cancel()
        try:
            done(response)
        except Exception:  # noqa: BLE001 - the asking connection's bug stays its own
            self.handler_errors += 1
            _log.exception("routed management: delivering an answer failed")

    def _routed_management(self, channel: ControlChannel, opcode: str, body: Any) -> None:
        problem = _routed_problem(body)
        if problem is not None:
            self.channel_failed(
                channel.conn_id, f"protocol error: {opcode} from {channel.label}: {problem}"
            )
            return
        target = str(body["target"])
        if target != self.router_id:
            hops = int(body["hops"]) - 1
            link_id = self._link_towards(target)
            if hops <= 0 or link_id is None:
                _log.info(
                    f"routed management {opcode} for '{target}' dropped at "
                    f"'{self.router_id}': {'hop limit' if hops <= 0 else 'no route'}"
                )
                return
            self._send_routed(link_id, opcode, {**body, "hops": hops})
            return
        if opcode == MGMT_REPLY:
            self._mgmt_done(
                int(body["corr"]),
                Response(
                    int(body["status"]),
                    str(body["description"]),
                    body.get("body"),
                    body.get("replyProps") or None,
                ),
            )
            return
        self._answer_routed(body)

    def _answer_routed(self, request: Mapping[str, Any]) -> None:
        origin = str(request["origin"])
        if self._agent is None:
            response = Response(503, "Service Unavailable: management is not running")
        else:
            caller = Caller(str(request["user"]) or f"router:{origin}", bool(request["write"]), 0)
            try:
                response = self._agent.handle(request["props"], request.get("body"), caller)
            except Exception as e:  # noqa: BLE001 - a bug answers 500, as on a local request
                _log.exception("routed management request failed")
                response = Response(500, f"Internal Server Error: {type(e).__name__}: {e}")
        reply = {
            "origin": self.router_id,
            "target": origin,
            "corr": request["corr"],
            "hops": MGMT_HOPS,
            "status": response.status,
            "description": response.description,
            "body": response.body,
            "replyProps": dict(response.properties or {}),
        }
        link_id = self._link_towards(origin)
        if link_id is None:
            return  # the asker is gone; its own time-out answers it
        if not self._send_routed(link_id, MGMT_REPLY, reply):
            reply.update(
                status=413,
                description="Request Entity Too Large: the answer is too large to route back; "
                "ask for fewer rows (count, offset)",
                body=None,
            )
            self._send_routed(link_id, MGMT_REPLY, reply)

    # ------------------------------------------------------------ accepted links

    def accepted(self, conn_id: int, close: Callable[[str], None]) -> None:
        """The app listener adaptor accepted a router link (its AmqpConnection
        reports here as channel owner)."""
        self._accepted[conn_id] = close

    def accepted_closed(self, conn_id: int) -> None:
        self._accepted.pop(conn_id, None)

    # ------------------------------------------------------------ connectors

    def add_connector(self, entity: Entity) -> None:
        cfg = entity.config_as(ConnectorConfig)
        state = _Connector(entity, cfg)
        self._connectors[entity.name] = state
        self.core.sync.expected_links = len(self._connectors)
        _log.info(
            f"connector '{entity.name}': {cfg.role} link to {cfg.host}:{cfg.port}, cost {cfg.cost}"
        )
        self._dial(state)

    def remove_connector(self, entity: Entity) -> None:
        state = self._connectors.pop(entity.name, None)
        if state is None:
            return
        self.core.sync.expected_links = len(self._connectors)
        state.deleted = True
        if state.retry is not None:
            state.retry.cancel()
        if state.conn_id is not None:
            self._close_conn(state.conn_id, f"connector '{entity.name}' deleted")
        self._dialling = {u: c for u, c in self._dialling.items() if c is not state}

    def connector_status(self, entity: Entity) -> Mapping[str, object]:
        state = self._connectors.get(entity.name)
        if state is None:
            return {}
        return {
            "connectionStatus": state.status,
            "connectionMsg": state.message,
            "dials": state.dials,
        }

    def _profile_published(self, profile: str) -> None:
        for state in self._connectors.values():
            if state.config.ssl_profile == profile and state.conn_id is None and state.retry:
                state.retry.cancel()
                state.retry = None
                self._dial(state)

    def _dial(self, state: _Connector) -> None:
        state.retry = None
        if state.deleted or self._closed:
            return
        cfg = state.config
        slot = -1
        if cfg.ssl_profile is not None and self._tls is not None:
            waiting = self._tls.wait_reason(cfg.ssl_profile)
            if waiting is not None:
                self._retry(state, waiting)
                return
            found = self._tls.slot(cfg.ssl_profile)
            slot = -1 if found is None else found
        ip = numeric_host(cfg.host) or ("127.0.0.1" if cfg.host == "localhost" else None)
        if ip is None:
            self.loop.create_task(self._resolve_and_dial(state))
            return
        self._connect(state, ip, slot)

    async def _resolve_and_dial(self, state: _Connector) -> None:
        cfg = state.config
        try:
            infos = await self.loop.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM)
        except OSError as e:
            self._retry(state, f"cannot resolve {cfg.host}: {e}")
            return
        ips = [str(info[4][0]) for info in infos]
        if not ips or state.deleted:
            if not state.deleted:
                self._retry(state, f"{cfg.host} has no address")
            return
        slot = -1
        if cfg.ssl_profile is not None and self._tls is not None:
            found = self._tls.slot(cfg.ssl_profile)
            slot = -1 if found is None else found
        self._connect(state, ips[0], slot)

    def _connect(self, state: _Connector, ip: str, slot: int) -> None:
        cfg = state.config
        state.dials += 1
        state.status = "CONNECTING"
        uid = self.engine.new_user_id()
        try:
            conn_id = self.engine.app_connect(
                ip,
                cfg.port,
                user_id=uid,
                host=cfg.host,
                tls_slot=slot,
                verify_host=cfg.verify_hostname and slot >= 0,
                timeout_s=DIAL_TIMEOUT_S,
            )
        except EngineError as e:
            self._retry(state, f"cannot dial {ip}:{cfg.port}: {e}")
            return
        state.user_id = uid
        state.conn_id = conn_id
        state.ip, state.slot = ip, slot
        self._dialling[uid] = state
        self._conn_connector[conn_id] = state

    def _retry(self, state: _Connector, reason: str) -> None:
        if state.deleted or self._closed:
            return
        if state.up_since is not None and self.now() - state.up_since >= STABLE_LINK_S:
            state.backoff = BACKOFF_FIRST_S
        state.up_since = None
        state.status = "FAILED"
        state.message = reason
        delay = state.backoff
        state.backoff = min(state.backoff * 2, BACKOFF_MAX_S)
        _log.info(
            f"connector '{state.entity.name}' to {state.config.host}:{state.config.port}: "
            f"{reason}; dialling again in {delay:g} s"
        )
        if state.retry is not None:
            state.retry.cancel()
        state.retry = self.loop.call_later(delay, self._dial, state)

    # ------------------------------------------------------------ engine events

    def _on_event(self, ev: Event) -> None:
        if ev.type == EventType.APP_OPEN:
            state = self._dialling.pop(ev.a, None)
            if state is not None:
                self._dial_opened(ev.id, state)
        elif ev.type == EventType.APP_READABLE:
            conn = self._dialled.get(ev.id)
            if conn is not None:
                self._read(conn)
        elif ev.type == EventType.APP_CLOSED:
            self._engine_closed(ev.id, int(ev.a))

    def _resync(self) -> None:
        """Engine events were dropped (a ring overflowed while the loop was
        busy): forget links that closed meanwhile, and read every other one.
        A dial whose APP_OPEN was lost never starts AMQP; the far end's
        handshake time-out closes it and the connector dials again."""
        live = {c.id for c in self.engine.connections() if c.app and c.outbound}
        for conn_id in [c for c in self._dialled if c not in live]:
            self._engine_closed(conn_id, 0)
        for conn in list(self._dialled.values()):
            self._read(conn)

    def _dial_opened(self, conn_id: int, state: _Connector) -> None:
        if state.deleted or self._closed:
            self.engine.app_close(conn_id, abort=True)
            return
        cfg = state.config
        info = self.engine.conn_info(conn_id)
        peer = info.peer if info is not None else f"{cfg.host}:{cfg.port}"
        mechanisms = cfg.sasl_mechanisms or (
            ("EXTERNAL", "ANONYMOUS") if info is not None and info.tls_protocol else ("ANONYMOUS",)
        )
        conn = DialledConnection(
            conn_id,
            peer,
            self,
            self,
            container_id=self.router_id,
            hostname=cfg.host,
            role=cfg.role,
            cost=cfg.cost,
            idle_timeout_s=cfg.idle_timeout_seconds,
            max_frame_size=cfg.max_frame_size,
            mechanisms=tuple(m.upper() for m in mechanisms),
            now=self.now(),
        )
        self._dialled[conn_id] = conn
        self._read(conn)

    def _read(self, conn: DialledConnection) -> None:
        try:
            while True:
                try:
                    data = self.engine.app_read(conn.id)
                except EngineError:
                    return  # gone; APP_CLOSED follows
                if data is None:
                    conn.eof()
                    return
                if not data:
                    return
                conn.feed(data, self.now())
        except Exception:  # noqa: BLE001 - one link's failure stays its own
            self.handler_errors += 1
            _log.exception(f"router link {conn.id}: internal error; closing this link")
            self.channel_failed(conn.id, "internal error")

    def _engine_closed(self, conn_id: int, error: int) -> None:
        conn = self._dialled.pop(conn_id, None)
        state = self._conn_connector.pop(conn_id, None)
        if conn_id in self._links:
            self.channel_failed(conn_id, "the connection closed")
        if conn is not None:
            conn.closed()
        if state is not None:
            state.conn_id = None
            self._dialling = {u: c for u, c in self._dialling.items() if c is not state}
            if not state.deleted and state.retry is None:
                why = state.message or "connection closed"
                if conn is None and error:
                    why = f"cannot connect: {self.engine.app_close_reason(error)}"
                self._retry(state, why)

    # ------------------------------------------------------------ ClientHost

    def conn_write(self, conn_id: int, data: bytes) -> bool:
        try:
            self.engine.app_write(conn_id, data)
        except EngineError:
            return False
        return True

    def conn_close(self, conn_id: int, abort: bool = False) -> None:
        try:
            self.engine.app_close(conn_id, abort)
        except EngineError:
            pass  # already gone

    def conn_keepalive(self, conn_id: int, interval_s: float) -> None:
        from router.management.amqp_connection import EMPTY_FRAME

        try:
            self.engine.app_set_keepalive(conn_id, EMPTY_FRAME, interval_s)
        except EngineError:
            pass  # gone; APP_CLOSED follows

    # ------------------------------------------------------------ closing links

    def _close_conn(self, conn_id: int, reason: str) -> None:
        link = self._links.get(conn_id)
        if link is not None and not link.channel.failed:
            link.channel.fail(reason)  # reports channel_failed: core and engine
            return
        self._close_engine_conn(conn_id, reason)

    def _close_engine_conn(self, conn_id: int, reason: str = "") -> None:
        conn = self._dialled.get(conn_id)
        if conn is not None:
            conn.close(reason)
            return
        close = self._accepted.pop(conn_id, None)
        if close is not None:
            close(reason)
            return
        self.conn_close(conn_id, abort=False)

    def _housekeep(self) -> None:
        try:
            now = self.now()
            for conn in list(self._dialled.values()):
                if conn.idle_expired(now):
                    self._read(conn)  # bytes may wait in the engine while the loop was busy
                    if conn.idle_expired(now):
                        conn.eof()
                elif not conn.open_received and now - conn.opened > DIAL_TIMEOUT_S:
                    self.channel_failed(conn.id, f"no AMQP open within {DIAL_TIMEOUT_S:g} s")
        except Exception:  # noqa: BLE001 - housekeeping must keep running
            self.handler_errors += 1
            _log.exception("network housekeeping failed")
        finally:
            if not self._closed:
                self._housekeeping = self.loop.call_later(HOUSEKEEPING_S, self._housekeep)

    # ------------------------------------------------------------ views

    def sync_status(self) -> SyncStatus:
        return self.core.sync_status(self.now())

    def links(self) -> list[_Link]:
        return list(self._links.values())

    def metrics(self) -> dict[str, float | int | None]:
        out = dict(self.core.metrics())
        out["convergenceSeconds"] = self.convergence_s
        out["handlerErrors"] = self.handler_errors
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for handle in (self._tick_handle, self._housekeeping):
            if handle is not None:
                handle.cancel()
        for state in self._connectors.values():
            state.deleted = True
            if state.retry is not None:
                state.retry.cancel()
        for conn_id in list(self._links):
            self._close_engine_conn(conn_id, f"router '{self.router_id}' is stopping")
        for number in list(self._pending):
            self._mgmt_done(number, Response(503, "Service Unavailable: the router is stopping"))


class _ConnectorObserver:
    def __init__(self, service: NetworkService) -> None:
        self._s = service

    def on_create(self, entity: Entity) -> None:
        self._s.add_connector(entity)

    def on_update(self, old: Entity, new: Entity) -> None:
        self._s.remove_connector(old)
        self._s.add_connector(new)

    def on_delete(self, entity: Entity) -> None:
        self._s.remove_connector(entity)

    def status(self, entity: Entity) -> Mapping[str, object]:
        return self._s.connector_status(entity)


def _routed_problem(body: Any) -> str | None:
    """What is wrong with a routed management message from a peer, or None."""
    if not isinstance(body, dict):
        return "the body is not a map"
    for key in ("origin", "target"):
        value = body.get(key)
        if not isinstance(value, str) or not 0 < len(value) <= 255:
            return f"{key} is not a router id"
    for key in ("corr", "hops"):
        value = body.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
            return f"{key} is not a non-negative integer"
    if "props" in body:
        if not isinstance(body["props"], dict) or not isinstance(body.get("write"), bool):
            return "a request needs props (a map) and write (a boolean)"
    elif not isinstance(body.get("status"), int) or not isinstance(body.get("description"), str):
        return "a reply needs status and description"
    return None
