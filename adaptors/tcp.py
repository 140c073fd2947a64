"""TCP adaptor: turns tcpListener / tcpConnector entities into engine objects.

A tcpListener's socket is open only while at least one tcpConnector with its
address exists (the Skupper router's meaning). Connectors become targets in
the engine's route table: an address id maps to the numeric addresses of its
connectors, resolved on the control loop. The engine picks among them per
client (fewest open flows, ties round-robin) and retries another when one
refuses or times out; no Python runs on that path.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from router.configs import RouterConfig, TcpConnectorConfig, TcpListenerConfig
from router.engine import (
    Engine,
    EngineError,
    Event,
    EventType,
    FlowStats,
    Listener,
    RemoteRoute,
    RouteTarget,
)
from router.engine import Target as EngineTarget
from router.log import get_logger
from router.registry import Entity, Registry
from router.resolver import Resolver, listen_host
from router.tls import TlsManager

_log = get_logger("TCP_ADAPTOR")

_ZERO = FlowStats(0, 0, 0, 0, 0, 0)


def _add(a: FlowStats, b: FlowStats) -> FlowStats:
    return FlowStats(
        a.opened + b.opened,
        a.closed + b.closed,
        a.bytes_in + b.bytes_in,
        a.bytes_out + b.bytes_out,
        a.failed + b.failed,
        a.active + b.active,
    )


@dataclass
class _ListenerState:
    entity: Entity
    config: TcpListenerConfig
    address_id: int
    listener: Listener | None = None
    # counters of sockets closed earlier (a listener closes when its last
    # connector goes and reopens when one comes back)
    base: FlowStats = _ZERO
    last_error: str | None = None
    host_ip: str | None = None


@dataclass
class _ConnectorState:
    entity: Entity
    config: TcpConnectorConfig
    address_id: int
    target: EngineTarget
    last_error: str | None = None
    closing: list[int] = field(default_factory=list)


class TcpAdaptor:
    """Registry observer for tcpListener and tcpConnector."""

    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        loop: asyncio.AbstractEventLoop,
        tls: TlsManager | None = None,
    ) -> None:
        self._engine = engine
        self._tls = tls
        if tls is not None:
            tls.on_published(self._profile_published)
        self._registry = registry
        self._loop = loop
        self._resolver = Resolver(loop, self._resolved)
        self._address_ids: dict[str, int] = {}
        self._listeners: dict[str, _ListenerState] = {}
        self._connectors: dict[str, _ConnectorState] = {}
        self._by_target: dict[int, _ConnectorState] = {}
        self._by_listener_uid: dict[int, _ListenerState] = {}
        self._retired: list[Listener] = []  # closing: kept until LISTENER_CLOSED
        self.routes_version = 0
        self._remote_addresses: frozenset[str] = frozenset()  # with targets at other routers
        self._remote_routes: dict[str, list[RemoteRoute]] = {}
        self._address_watchers: list[Callable[[Mapping[str, int]], None]] = []
        registry.subscribe("tcpListener", _Side(self, listener=True))
        registry.subscribe("tcpConnector", _Side(self, listener=False))
        engine.on_event(self._on_event)

    # ------------------------------------------------------------ helpers

    def _drop_flows(self) -> bool:
        router = self._registry.router
        return router.config_as(RouterConfig).drop_tcp_connections if router else True

    def _address_id(self, address: str) -> int:
        if address not in self._address_ids:
            self._address_ids[address] = len(self._address_ids)
        return self._address_ids[address]

    def _has_connector(self, address_id: int) -> bool:
        return any(c.address_id == address_id for c in self._connectors.values())

    # ------------------------------------------------------------ the network

    def local_address_counts(self) -> dict[str, int]:
        """Address -> how many local tcpConnectors serve it (what this router
        advertises to the network)."""
        counts: dict[str, int] = {}
        for c in self._connectors.values():
            counts[c.config.address] = counts.get(c.config.address, 0) + 1
        return counts

    def on_local_addresses(self, watcher: Callable[[Mapping[str, int]], None]) -> None:
        """Calls ``watcher(counts)`` whenever the local connectors change."""
        self._address_watchers.append(watcher)

    def _local_addresses_changed(self) -> None:
        counts = self.local_address_counts()
        for watcher in self._address_watchers:
            watcher(counts)

    def set_remote_addresses(self, addresses: frozenset[str]) -> None:
        """Addresses with targets at other routers: a tcpListener is up while
        its address has a target anywhere in the network (Skupper's rule)."""
        if addresses == self._remote_addresses:
            return
        self._remote_addresses = addresses
        for ls in self._listeners.values():
            self._sync_listener(ls)

    def set_remote_routes(self, routes: Mapping[str, Sequence[RemoteRoute]]) -> None:
        """The network's remote destinations per address (each through a
        neighbour ``Peer``): published beside the local targets, so the
        engine carries a client to another router when that is the choice,
        and delivers or forwards the flows other routers send here."""
        for address in routes:
            self._address_id(address)
        if {a: list(r) for a, r in routes.items()} == self._remote_routes:
            return
        self._remote_routes = {a: list(r) for a, r in routes.items()}
        self.publish()

    def _reachable(self, state: _ListenerState) -> bool:
        return (
            self._has_connector(state.address_id) or state.config.address in self._remote_addresses
        )

    def publish(self) -> None:
        """Builds the route table from the connectors and swaps it in."""
        table: dict[int, list[RouteTarget | RemoteRoute]] = {
            aid: [] for aid in self._address_ids.values()
        }
        for address, remote in self._remote_routes.items():
            table[self._address_id(address)].extend(remote)
        for c in self._connectors.values():
            cfg = c.config
            addrs = self._resolver.addresses(cfg.host)
            if not addrs:
                continue
            slot = self._tls.slot(cfg.ssl_profile) if (cfg.ssl_profile and self._tls) else None
            table[c.address_id].append(
                RouteTarget(
                    c.target,
                    addrs[0],
                    cfg.port,
                    cfg.host,
                    tls_slot=-1 if slot is None else slot,
                    verify_host=cfg.verify_hostname,
                )
            )
        names = {aid: address for address, aid in self._address_ids.items()}
        try:
            self.routes_version = self._engine.publish_routes(
                table, self._route_refused, names=names
            )
        except EngineError as e:
            # a remote destination the engine refuses (a released peer): the
            # local targets must still publish; the network's next table
            # brings the remote ones back
            _log.error(f"remote routes left out of the route table: {e}")
            local = {
                aid: [r for r in rs if isinstance(r, RouteTarget)] for aid, rs in table.items()
            }
            self.routes_version = self._engine.publish_routes(
                local, self._route_refused, names=names
            )

    def _route_refused(self, route: RouteTarget, reason: str) -> None:
        # one connector the engine cannot use must not keep the others unpublished
        c = self._by_target.get(route.target.user_id)
        name = c.entity.name if c else str(route.target.user_id)
        if c is not None:
            c.last_error = reason
        _log.error(f"tcpConnector '{name}' left out of the route table: {reason}")

    # ------------------------------------------------------------ listeners

    def _refuse_tls(self, cfg: TcpListenerConfig | TcpConnectorConfig) -> None:
        # never serve plaintext where TLS was asked for
        if cfg.ssl_profile and self._tls is None:
            raise ValueError(
                f"{cfg.entity_type} '{cfg.name}': sslProfile '{cfg.ssl_profile}' is set, but "
                "TLS is not enabled"
            )

    def _profile_published(self, profile: str) -> None:
        for ls in self._listeners.values():
            if ls.config.ssl_profile == profile:
                self._sync_listener(ls)
        if any(c.config.ssl_profile == profile for c in self._connectors.values()):
            self.publish()

    def add_listener(self, entity: Entity) -> None:
        state = self._listener_state(entity)
        self._listeners[entity.name] = state
        try:
            self._sync_listener(state, raise_errors=True)
        except BaseException:
            del self._listeners[entity.name]
            raise

    def replace_listener(self, old: Entity, new: Entity) -> None:
        """Swaps a changed listener in; when the new one cannot open, the old
        one and its flows are left exactly as they were.

        A different host or port opens before the old socket closes; the same
        one has to close first, so only there a failure to reopen (another
        process took the port in between) loses the old flows.
        """
        state = self._listener_state(new)
        before = self._listeners[old.name]
        same_socket = (before.host_ip, before.config.port) == (state.host_ip, state.config.port)
        if same_socket and before.config.port != 0:
            self._close_listener(before, drop=self._drop_flows())
        self._listeners[new.name] = state
        try:
            self._sync_listener(state, raise_errors=True)
        except BaseException:
            self._listeners[old.name] = before
            self._sync_listener(before)
            raise
        self._close_listener(before, drop=self._drop_flows())

    def _listener_state(self, entity: Entity) -> _ListenerState:
        """Checks everything about a listener that can be checked before it opens."""
        cfg = entity.config_as(TcpListenerConfig)
        self._refuse_tls(cfg)
        state = _ListenerState(entity, cfg, self._address_id(cfg.address))
        try:
            state.host_ip = listen_host(cfg.host)
        except ValueError as e:
            raise ValueError(f"tcpListener '{entity.name}' {e}") from None
        return state

    def remove_listener(self, entity: Entity) -> None:
        state = self._listeners.pop(entity.name, None)
        if state is not None:
            self._close_listener(state, drop=self._drop_flows())

    def _tls_wait(self, state: _ListenerState) -> str | None:
        """Why a TLS listener cannot open yet (its profile never loaded)."""
        profile = state.config.ssl_profile
        if profile is None or self._tls is None:
            return None
        return self._tls.wait_reason(profile)

    def _sync_listener(self, state: _ListenerState, raise_errors: bool = False) -> None:
        want = self._reachable(state)
        waiting = self._tls_wait(state) if want else None
        if waiting is not None:
            # never accept plaintext in place of TLS: stay down until loaded
            state.last_error = waiting
            want = False
        if want and state.listener is None:
            cfg = state.config
            profile = cfg.ssl_profile
            slot = self._tls.slot(profile) if (profile and self._tls) else None
            try:
                listener = self._engine.listen(
                    state.host_ip or "",
                    cfg.port,
                    address_id=state.address_id,
                    backlog=cfg.backlog,
                    max_connections=cfg.max_connections,
                    tls_slot=-1 if slot is None else slot,
                    authenticate_peer=cfg.authenticate_peer,
                    balanced=cfg.distribution == "balanced",
                    tls_resumption=cfg.tls_resumption,
                )
            except EngineError as e:
                state.last_error = str(e)
                msg = f"tcpListener '{state.entity.name}': {e}"
                if raise_errors:
                    raise ValueError(msg) from e
                _log.error(msg)
                return
            state.listener = listener
            state.last_error = None
            self._by_listener_uid[listener.user_id] = state
            _log.info(
                f"tcpListener '{state.entity.name}' listening on "
                f"{state.host_ip or '*'}:{listener.port} for address '{cfg.address}'"
            )
        elif not want and state.listener is not None:
            _log.info(
                f"tcpListener '{state.entity.name}' closed: no tcpConnector for address "
                f"'{state.config.address}' in the network"
            )
            self._close_listener(state, drop=False)
        if state.listener is None and waiting is not None:
            _log.warning(f"tcpListener '{state.entity.name}' stays down: {waiting}")

    def _close_listener(self, state: _ListenerState, drop: bool) -> None:
        if state.listener is None:
            return
        listener = state.listener
        state.base = _add(state.base, listener.stats())
        state.listener = None
        self._by_listener_uid.pop(listener.user_id, None)
        listener.close(drop_flows=drop)
        self._retired.append(listener)

    def listener_error(self, name: str) -> str | None:
        state = self._listeners.get(name)
        return state.last_error if state else None

    def listener_port(self, name: str) -> int | None:
        state = self._listeners.get(name)
        return state.listener.port if state and state.listener else None

    # ------------------------------------------------------------ connectors

    def replace_connector(self, old: Entity, new: Entity) -> None:
        """Everything that can refuse the new connector is checked before the
        old one (and, with dropTcpConnections, its flows) goes."""
        self._refuse_tls(new.config_as(TcpConnectorConfig))
        self.remove_connector(old)
        self.add_connector(new)

    def add_connector(self, entity: Entity) -> None:
        cfg = entity.config_as(TcpConnectorConfig)
        self._refuse_tls(cfg)
        aid = self._address_id(cfg.address)
        state = _ConnectorState(entity, cfg, aid, self._engine.target())
        self._connectors[entity.name] = state
        self._by_target[state.target.user_id] = state
        self._resolver.watch(cfg.host)
        self.publish()
        for ls in self._listeners.values():
            if ls.address_id == aid:
                self._sync_listener(ls)
        self._local_addresses_changed()

    def remove_connector(self, entity: Entity) -> None:
        state = self._connectors.pop(entity.name, None)
        if state is None:
            return
        self._resolver.unwatch(state.config.host)
        self.publish()
        if self._drop_flows():
            self._engine.close_target_flows(state.target)
        for ls in self._listeners.values():
            if ls.address_id == state.address_id:
                self._sync_listener(ls)
        # the target state lives on in flows not dropped; only events stop
        self._by_target.pop(state.target.user_id, None)
        self._local_addresses_changed()

    def _resolved(self, host: str) -> None:
        self.publish()

    async def settle(self) -> None:
        await self._resolver.settle()

    def close(self) -> None:
        self._resolver.close()
        for state in self._listeners.values():
            self._close_listener(state, drop=False)

    # ------------------------------------------------------------ events

    def _on_event(self, ev: Event) -> None:
        if ev.type == EventType.TARGET_DOWN:
            c = self._by_target.get(ev.id)
            if c is not None:
                reason = os.strerror(ev.a) if ev.a > 0 else "failed"
                c.last_error = reason
                _log.warning(
                    f"tcpConnector '{c.entity.name}' ({c.config.host}:{c.config.port}) is "
                    f"unreachable: {reason}; other connectors of '{c.config.address}' are "
                    f"used, retry in {ev.b} ms"
                )
        elif ev.type == EventType.TARGET_UP:
            c = self._by_target.get(ev.id)
            if c is not None:
                c.last_error = None
                _log.info(f"tcpConnector '{c.entity.name}' is reachable again")
        elif ev.type == EventType.ACCEPT_PAUSED:
            ls = self._by_listener_uid.get(ev.id)
            name = ls.entity.name if ls else str(ev.id)
            _log.warning(
                f"tcpListener '{name}': out of file descriptors ({os.strerror(ev.a)}); "
                f"accepting paused for {ev.b} ms"
            )
        elif ev.type == EventType.LISTENER_CLOSED:
            self._retired = [r for r in self._retired if r.user_id != ev.id]

    # ------------------------------------------------------------ status

    def listener_status(self, entity: Entity) -> Mapping[str, object]:
        state = self._listeners.get(entity.name)
        if state is None:
            return {}
        stats = state.base
        if state.listener is not None:
            stats = _add(stats, state.listener.stats())
        return {
            "operStatus": "up" if state.listener is not None else "down",
            **_counters(stats),
        }

    def connector_status(self, entity: Entity) -> Mapping[str, object]:
        state = self._connectors.get(entity.name)
        if state is None:
            return {}
        up = bool(self._resolver.addresses(state.config.host)) and not state.target.down
        return {"operStatus": "up" if up else "down", **_counters(state.target.stats())}

    # ------------------------------------------------------------ read-only view (management)

    def listeners_by_engine_id(self) -> dict[int, tuple[str, str]]:
        """(tcpListener name, address) by the engine user id of each open
        listening socket, the ``listener_id`` of its flows' ConnInfo."""
        return {
            uid: (ls.entity.name, ls.config.address) for uid, ls in self._by_listener_uid.items()
        }

    def connectors_by_engine_id(self) -> dict[int, tuple[str, str]]:
        """(tcpConnector name, address) by the engine user id of each
        connector's target, the ``target_id`` of its flows' ConnInfo."""
        return {uid: (cs.entity.name, cs.config.address) for uid, cs in self._by_target.items()}


def _counters(s: FlowStats) -> dict[str, object]:
    return {
        "connectionsOpened": s.opened,
        "connectionsClosed": s.closed,
        "bytesIn": s.bytes_in,
        "bytesOut": s.bytes_out,
    }


class _Side:
    """Adapts the registry's observer protocol to one entity type."""

    def __init__(self, adaptor: TcpAdaptor, listener: bool) -> None:
        self._a = adaptor
        self._listener = listener

    def on_create(self, entity: Entity) -> None:
        if self._listener:
            self._a.add_listener(entity)
        else:
            self._a.add_connector(entity)

    def on_update(self, old: Entity, new: Entity) -> None:
        if self._listener:
            self._a.replace_listener(old, new)
        else:
            self._a.replace_connector(old, new)

    def on_delete(self, entity: Entity) -> None:
        if self._listener:
            self._a.remove_listener(entity)
        else:
            self._a.remove_connector(entity)

    def status(self, entity: Entity) -> Mapping[str, object]:
        if self._listener:
            return self._a.listener_status(entity)
        return self._a.connector_status(entity)
