"""App-connection listener adaptor: ``listener`` entities -> engine app
listeners, and each accepted connection -> its protocol driver.

A listener's socket is an engine listener opened with ``app=True``: the
engine accepts and reads, and hands the bytes to the control loop, where
each connection is an ``AmqpConnection`` (proton engine layer, SASL run by
Skiff) serving the management agent or, for ``http: true``, an
``HttpConnection`` serving the pages it is given (``/metrics``,
``/healthz``, ``/readyz``; see ``router/management/service.py``).
Keep-alive frames are the engine's job.

A listener with an ``sslProfile`` is a TLS listener of the engine: the
engine terminates TLS (optional TLS, told by the first byte, unless
``requireSsl``) and the control loop sees plaintext only. It stays down
until its profile has published a first configuration, then opens; later
versions of the profile apply to new connections without reopening.

A listener from the configuration file that cannot bind (port in use) does
not stop the router: it stays ``down`` with ``lastError``, readiness
reports it, and binding is retried every few seconds. Management CREATE of
such a listener is refused instead, so the client sees the error.

Limits (``router/management/limits.py``): each listener holds at most its
``maxConnections`` (0: ``listener_cap``) connections (the engine refuses
more at accept), all of them together at most a share of the descriptor
limit (refused here, at open), HTTP requests (``requestTimeoutSeconds``)
and AMQP handshakes (``initialHandshakeTimeoutSeconds``) have a time-out
(checked by the housekeeping tick). Refusals are logged at most once per interval and
counted for ``/metrics``. An exception while handling one connection
closes that connection, with its traceback in the log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from router.configs import ListenerConfig, RouterConfig
from router.engine import Engine, EngineError, Event, EventType, Listener
from router.log import get_logger
from router.management import limits
from router.management.agent import Agent, Caller, Response
from router.management.amqp_connection import (
    EMPTY_FRAME,
    PLAINTEXT,
    ROUTER_LINK_ROLES,
    AmqpConnection,
    AmqpSettings,
    TlsInfo,
)
from router.management.auth_gate import AuthGate
from router.management.http import HttpConnection, Route
from router.management.sources import AppListenerInfo
from router.network.service import NetworkService
from router.registry import Entity, Registry
from router.resolver import listen_host
from router.tls import TlsManager

_log = get_logger("SERVER")

RETRY_BIND_S = 5.0
DATA_POOL_CAP = 1024  # idle pooled data connections other routers may keep here
HOUSEKEEPING_S = 1.0


@dataclass
class _ListenerState:
    entity: Entity
    config: ListenerConfig
    host_ip: str
    settings: AmqpSettings
    cap: int  # connections it may hold: maxConnections, or the default cap
    listener: Listener | None = None
    last_error: str | None = None
    next_retry: float = 0.0
    connections: set[int] = field(default_factory=set)
    waiting_tls: bool = False  # down until its sslProfile publishes a config

    @property
    def http(self) -> bool:
        return self.config.http

    @property
    def profile(self) -> str | None:
        return self.config.ssl_profile or None


Conn = AmqpConnection | HttpConnection


def _host_ip(cfg: ListenerConfig) -> str:
    try:
        return listen_host(cfg.host)
    except ValueError as e:
        raise ValueError(f"listener '{cfg.name}' {e}") from None


class AppListenerAdaptor:
    """Registry observer for ``listener``; the host of every app connection."""

    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        loop: asyncio.AbstractEventLoop,
        agent: Agent,
        tls: TlsManager | None = None,
    ) -> None:
        self.engine = engine
        self.tls = tls
        self.registry = registry
        self.loop = loop
        self.agent = agent
        self._pages: dict[str, Route] = {}
        self._listeners: dict[str, _ListenerState] = {}
        self._by_uid: dict[int, _ListenerState] = {}
        self._network: NetworkService | None = None
        self._conns: dict[int, tuple[Conn, _ListenerState]] = {}
        self._closing = False
        budget = limits.app_budget()
        self.limits = limits.LimitStats(budget, limits.listener_cap(budget))
        self._refusals = limits.RateLimitedLog(_log)
        self.auth_gate = AuthGate(loop, get_logger("AUTHSERVICE"), self.limits)
        if tls is not None:
            tls.on_published(self._profile_published)
        registry.subscribe("listener", _ListenerObserver(self))
        engine.on_event(self._on_event)
        engine.on_overflow(self._resync)
        self._housekeeping = loop.call_later(HOUSEKEEPING_S, self._tick)

    def serve_network(self, network: NetworkService) -> None:
        """Lets ``listener`` entities with role inter-router or edge accept
        links from other routers (router mode interior). Given once at
        start-up, before any listener entity exists."""
        self._network = network

    def serve_pages(self, pages: Mapping[str, Route]) -> None:
        """The pages ``http: true`` listeners answer (path -> page). Given
        once at start-up, before any listener entity exists."""
        self._pages = dict(pages)

    # ------------------------------------------------------------ Host protocol

    def conn_write(self, conn_id: int, data: bytes) -> bool:
        try:
            self.engine.app_write(conn_id, data)
        except EngineError as e:
            _log.debug(f"connection {conn_id}: write dropped: {e}")
            return False
        return True

    def conn_close(self, conn_id: int, abort: bool = False) -> None:
        self.engine.app_close(conn_id, abort)

    def forward_management(
        self,
        router_id: str,
        properties: dict[str, object],
        body: object,
        caller: Caller,
        done: Callable[[Response], None],
    ) -> bool:
        if self._network is None:
            return False
        self._network.forward_management(router_id, properties, body, caller, done)
        return True

    def conn_keepalive(self, conn_id: int, interval_s: float) -> None:
        try:
            self.engine.app_set_keepalive(conn_id, EMPTY_FRAME, interval_s)
        except EngineError as e:
            _log.warning(f"connection {conn_id}: engine keep-alive not set: {e}")

    # ------------------------------------------------------------ entities

    def _router_id(self) -> str:
        router = self.registry.router
        rid = router.config_as(RouterConfig).id if router else None
        return rid or "skiff"

    def add(self, entity: Entity) -> None:
        cfg = entity.config_as(ListenerConfig)
        role = cfg.role
        router_link = role in ROUTER_LINK_ROLES
        if role not in ("normal", "route-container") and not (
            router_link and self._network is not None
        ):
            raise ValueError(
                f"listener '{entity.name}': role '{role}' needs router mode interior (this "
                "router does not join a network)"
            )
        profile = cfg.ssl_profile or None
        authenticate = cfg.authenticate_peer
        if profile is not None and self.tls is None:
            # never serve in plaintext what was asked to be protected
            raise ValueError(
                f"listener '{entity.name}': sslProfile '{profile}' is set, but TLS is not "
                "enabled in this router"
            )
        if cfg.require_ssl and profile is None:
            raise ValueError(
                f"listener '{entity.name}': requireSsl is true but no sslProfile is set"
            )
        if router_link and authenticate and profile is None:
            raise ValueError(
                f"listener '{entity.name}': authenticatePeer on an {role} listener needs an "
                "sslProfile (routers authenticate each other by certificate: mutual TLS and "
                "SASL EXTERNAL)"
            )
        if cfg.sasl_mechanisms:
            mechs = tuple(m.upper() for m in cfg.sasl_mechanisms)
        elif router_link:
            mechs = ("EXTERNAL",) if authenticate else ("ANONYMOUS",)
        else:
            mechs = ("ANONYMOUS", "PLAIN")
        for mech in mechs:
            if mech not in ("ANONYMOUS", "PLAIN", "EXTERNAL"):
                raise ValueError(
                    f"listener '{entity.name}': SASL mechanism '{mech}' is not available; "
                    "supported: ANONYMOUS, PLAIN, EXTERNAL"
                )
        if "EXTERNAL" in mechs and (profile is None or not authenticate):
            raise ValueError(
                f"listener '{entity.name}': SASL EXTERNAL needs an sslProfile and "
                "authenticatePeer: true (the client certificate is requested only then)"
            )
        if authenticate and mechs == ("ANONYMOUS",):
            raise ValueError(
                f"listener '{entity.name}': authenticatePeer is true but only ANONYMOUS is allowed"
            )
        if "PLAIN" in mechs and authenticate and not cfg.users_file:
            raise ValueError(
                f"listener '{entity.name}': authenticatePeer needs a usersFile for PLAIN"
            )
        settings = AmqpSettings(
            listener=entity.name,
            container_id=self._router_id(),
            idle_timeout_s=cfg.idle_timeout_seconds,
            max_frame_size=cfg.max_frame_size,
            authenticate_peer=authenticate,
            mechanisms=mechs,
            users_file=cfg.users_file or None,
            allow_anonymous_writes=cfg.anonymous_writes,
            handshake_timeout_s=float(cfg.initial_handshake_timeout_seconds),
            role=role,
            cost=cfg.cost,
        )
        cap = limits.listener_cap(self.limits.budget, cfg.max_connections)
        state = _ListenerState(entity, cfg, _host_ip(cfg), settings, cap)
        self._listeners[entity.name] = state
        self.limits.caps[entity.name] = cap
        if not self._bind(state) and entity.source == "management" and not state.waiting_tls:
            # waiting for TLS material is not an error of the request: the
            # listener opens once its profile loads (as a tcpListener does)
            del self._listeners[entity.name]
            self.limits.caps.pop(entity.name, None)
            raise ValueError(f"listener '{entity.name}': {state.last_error}")

    def _tls_wait(self, state: _ListenerState) -> str | None:
        """Why a TLS listener cannot open yet (its profile never loaded)."""
        profile = state.profile
        if profile is None or self.tls is None:
            return None
        return self.tls.wait_reason(profile)

    def _profile_published(self, profile: str) -> None:
        for state in list(self._listeners.values()):
            if state.profile == profile and state.listener is None:
                self._bind(state)

    def _bind(self, state: _ListenerState) -> bool:
        cfg = state.config
        waiting = self._tls_wait(state)
        if waiting is not None:
            # never accept plaintext in place of TLS: stay down until loaded
            if not state.waiting_tls or waiting != state.last_error:
                # a first load is normal at start-up; a failed one is not
                log = _log.warning if self.tls and self.tls.error(str(state.profile)) else _log.info
                log(f"listener '{state.entity.name}' stays down: {waiting}")
            state.waiting_tls = True
            state.last_error = waiting
            return False
        was_waiting, state.waiting_tls = state.waiting_tls, False
        profile = state.profile
        slot = self.tls.slot(profile) if (profile and self.tls) else None
        try:
            listener = self.engine.listen(
                state.host_ip,
                cfg.port,
                app=True,
                max_connections=state.cap,
                backlog=cfg.backlog,
                tls_slot=-1 if slot is None else slot,
                # a router link with an sslProfile is always TLS
                tls_optional=slot is not None
                and not cfg.require_ssl
                and cfg.role not in ROUTER_LINK_ROLES,
                authenticate_peer=slot is not None and cfg.authenticate_peer,
                # other routers' data connections (first bytes "SK") stay in C
                data_ok=cfg.role in ROUTER_LINK_ROLES,
                data_pool_cap=DATA_POOL_CAP,
            )
        except EngineError as e:
            first = state.last_error is None
            state.last_error = str(e)
            state.next_retry = time.monotonic() + RETRY_BIND_S
            if first:
                _log.error(
                    f"listener '{state.entity.name}' cannot listen on {state.host_ip or '*'}:"
                    f"{cfg.port}: {e}; retrying every {RETRY_BIND_S:g} s"
                )
            return False
        state.listener = listener
        if state.last_error is not None and not was_waiting:
            _log.info(f"listener '{state.entity.name}' could bind after all")
        state.last_error = None
        self._by_uid[listener.user_id] = state
        if slot is None:
            security = ""
        else:
            security = (
                f" with TLS (sslProfile '{profile}'"
                + (", required" if cfg.require_ssl else ", optional")
                + (", client certificate required" if cfg.authenticate_peer else "")
                + ")"
            )
        _log.info(
            f"listener '{state.entity.name}' serving {'HTTP' if state.http else 'AMQP'} on "
            f"{state.host_ip or '*'}:{listener.port}{security}"
            + ("" if state.http else f"; {cfg.anonymous_writes_policy()}")
        )
        return True

    def remove(self, entity: Entity) -> None:
        state = self._listeners.pop(entity.name, None)
        if state is not None:
            self.limits.caps.pop(entity.name, None)
        if state is None or state.listener is None:
            return
        self._by_uid.pop(state.listener.user_id, None)
        state.listener.close()
        state.listener = None
        _log.info(f"listener '{entity.name}' closed; its open connections stay")

    def status(self, entity: Entity) -> Mapping[str, object]:
        state = self._listeners.get(entity.name)
        if state is None:
            return {}
        return {
            "operStatus": "up" if state.listener is not None else "down",
            "boundPort": state.listener.port if state.listener is not None else None,
            "lastError": self._error(state),
            "connectionCount": len(state.connections),
        }

    def _error(self, state: _ListenerState) -> str | None:
        if state.waiting_tls:
            return self._tls_wait(state) or state.last_error  # the profile's error of now
        return state.last_error

    def bound(self, name: str) -> tuple[int | None, str | None]:
        """(port, last error) of a listener, for the daemon's banner."""
        state = self._listeners.get(name)
        if state is None:
            return None, None
        return (state.listener.port if state.listener else None), state.last_error

    # ------------------------------------------------------------ engine events

    def _on_event(self, ev: Event) -> None:
        if ev.type == EventType.APP_READABLE:
            self._readable(ev.id)
        elif ev.type == EventType.APP_OPEN and ev.b == 0:
            # b == 1: a connection the engine dialled (Engine.app_connect),
            # its caller's and not a listener's
            self._opened(ev.id, ev.a)
        elif ev.type == EventType.APP_CLOSED:
            entry = self._conns.pop(ev.id, None)
            if entry is not None:
                conn, state = entry
                state.connections.discard(ev.id)
                conn.closed()
                if self._network is not None and state.settings.router_link:
                    self._network.accepted_closed(ev.id)

    def _resync(self) -> None:
        """Some engine events were dropped (a ring overflowed while the loop was
        busy): rebuild the set of connections from the engine itself."""
        live = {c.id: c for c in self.engine.connections() if c.app and not c.outbound}
        for conn_id in [cid for cid in self._conns if cid not in live]:
            conn, state = self._conns.pop(conn_id)
            state.connections.discard(conn_id)
            conn.closed()
        for conn_id, info in live.items():
            if conn_id not in self._conns:
                self._opened(conn_id, info.listener_id)
            self._readable(conn_id)

    def _refuse(self, conn_id: int, state: _ListenerState, reason: str, why: str) -> None:
        self.engine.app_close(conn_id, abort=True)
        name = state.entity.name
        self.limits.refused[(name, reason)] += 1
        self._refusals.warning(
            f"refused:{name}:{reason}", f"listener '{name}': connection refused: {why}"
        )

    def _opened(self, conn_id: int, listener_uid: int) -> None:
        state = self._by_uid.get(listener_uid)
        if state is None or self._closing:
            self.engine.app_close(conn_id, abort=True)
            return
        # connections the engine dialled (inter-router links) count too
        outbound = self.engine.counters().get("app_outbound_live", 0)
        if len(self._conns) + outbound >= self.limits.budget:
            self._refuse(
                conn_id,
                state,
                limits.REFUSED_BUDGET,
                f"the app listeners hold {len(self._conns) + outbound} connections"
                + (f" ({outbound} of them dialled)" if outbound else "")
                + f", their share (1/{limits.APP_FD_SHARE}) of the descriptor limit; "
                "the rest is kept for relayed connections",
            )
            return
        if len(state.connections) >= state.cap:
            # normally the engine refuses these at accept already
            self._refuse(
                conn_id,
                state,
                limits.REFUSED_CAP,
                f"it holds {len(state.connections)} connections, its cap",
            )
            return
        if len(state.connections) + 1 == state.cap:
            self._refusals.warning(
                f"cap:{state.entity.name}",
                f"listener '{state.entity.name}' reached its cap of {state.cap} "
                "connections; the engine refuses further clients until some close "
                "(skiff_engine_limit_rejected_total)",
            )
        info = self.engine.conn_info(conn_id)
        if info is None:
            return  # gone already; APP_CLOSED follows
        conn: Conn
        if state.http:
            conn = HttpConnection(
                conn_id,
                self._pages,
                self,
                float(state.config.request_timeout_seconds),
                info.peer,
            )
        else:
            tls = PLAINTEXT
            if info.tls_protocol:
                tls = TlsInfo(
                    info.tls_protocol,
                    info.tls_cipher,
                    info.tls_version,
                    info.tls_ordinal,
                    info.peer_subject,
                )
            network = self._network if state.settings.router_link else None
            conn = AmqpConnection(conn_id, info.peer, state.settings, self, tls, network)
            if network is not None:
                network.accepted(conn_id, conn.close_router_link)
        self._conns[conn_id] = (conn, state)
        state.connections.add(conn_id)

    def _readable(self, conn_id: int) -> None:
        entry = self._conns.get(conn_id)
        if entry is None:
            return
        conn = entry[0]
        try:
            while True:
                try:
                    data = self.engine.app_read(conn_id)
                except EngineError:
                    return  # already gone; APP_CLOSED follows
                if data is None:
                    conn.eof()
                    return
                if not data:
                    return
                conn.feed(data)
        except Exception:  # noqa: BLE001 - one connection's failure stays its own
            _log.exception(
                f"connection {conn_id} of listener '{entry[1].entity.name}': internal error; "
                "closing this connection"
            )
            self.engine.app_close(conn_id, abort=True)

    # ------------------------------------------------------------ housekeeping

    def _tick(self) -> None:
        """Time-outs of every connection, then bind retries; a failure on one
        connection closes it and never stops the housekeeping."""
        try:
            now = time.monotonic()
            for conn, state in list(self._conns.values()):
                try:
                    self._check_times(conn, state.entity.name, now)
                except Exception:  # noqa: BLE001 - one connection's failure stays its own
                    _log.exception(
                        f"connection {conn.id} of listener '{state.entity.name}': internal "
                        "error in its time-out checks; closing this connection"
                    )
                    self.engine.app_close(conn.id, abort=True)
            for state in self._listeners.values():
                if state.listener is None and not state.waiting_tls and now >= state.next_retry:
                    self._bind(state)
        finally:
            self._housekeeping = self.loop.call_later(HOUSEKEEPING_S, self._tick)

    def _check_times(self, conn: Conn, name: str, now: float) -> None:
        if isinstance(conn, HttpConnection):
            if conn.expired(now):
                self.limits.timeouts[(name, limits.TIMEOUT_HTTP)] += 1
                self._refusals.warning(
                    f"timeout:{name}",
                    f"listener '{name}': HTTP client {conn.peer} sent no complete request "
                    f"within {conn.request_timeout_s:g} s; answered 408 and closed",
                )
            return
        handshake = conn.settings.handshake_timeout_s
        if now - conn.last_input > conn.settings.idle_timeout_s > 0 or (
            not conn.open_received and now - conn.opened > handshake > 0
        ):
            # bytes may wait in the engine while the loop was busy
            self._readable(conn.id)
        conn.idle_check(now)
        stuck = conn.handshake_check(now)
        if stuck is not None:
            self.limits.timeouts[(name, limits.TIMEOUT_AMQP)] += 1
            self._refusals.warning(
                f"timeout:{name}",
                f"listener '{name}': AMQP client {conn.peer} did not open within "
                f"{conn.settings.handshake_timeout_s:g} s (stuck in {stuck}); closed",
            )

    def close(self) -> None:
        """Stops accepting; connections end with the engine."""
        self._closing = True
        self._housekeeping.cancel()
        for state in self._listeners.values():
            if state.listener is not None:
                state.listener.close()
                state.listener = None
        self.auth_gate.close()

    # ------------------------------------------------------------ read-only view (management)

    def listener_infos(self) -> list[AppListenerInfo]:
        """Every configured listener, sorted by name."""
        return [
            AppListenerInfo(
                name,
                state.http,
                state.listener is not None,
                state.listener.port if state.listener is not None else None,
                self._error(state),
            )
            for name, state in sorted(self._listeners.items())
        ]

    def amqp_connections(self) -> list[AmqpConnection]:
        """Open AMQP connections, including those of listeners deleted since."""
        return [conn for conn, _ in self._conns.values() if isinstance(conn, AmqpConnection)]


class _ListenerObserver:
    """The registry's observer protocol for ``listener``."""

    def __init__(self, adaptor: AppListenerAdaptor) -> None:
        self._a = adaptor

    def on_create(self, entity: Entity) -> None:
        self._a.add(entity)

    def on_update(self, old: Entity, new: Entity) -> None:
        self._a.remove(old)
        self._a.add(new)

    def on_delete(self, entity: Entity) -> None:
        self._a.remove(entity)

    def status(self, entity: Entity) -> Mapping[str, object]:
        return self._a.status(entity)
