"""Rows of the read-only management entities: ``connection`` (AMQP app
connections), ``tcpConnection`` (relayed flows), ``routerMetrics``,
``network``, and the status attributes of the ``router`` entity.

Every row is computed when asked, from the engine's counters and the
adaptors' read-only views (``sources.py``): nothing here keeps a copy that
could drift from what it describes.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

from router.configs import RouterConfig
from router.engine import Engine
from router.management.agent import Agent, ManagementError
from router.management.sources import AppListeners, TcpFlows
from router.registry import Entity, Registry
from router.version import skiff_version

Row = dict[str, object]


class ManagementRows:
    """The row providers; ``provide`` registers them with the agent."""

    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        agent: Agent,
        listeners: AppListeners,
        tcp: TcpFlows | None,
        started: float,
    ) -> None:
        self._engine = engine
        self._registry = registry
        self._agent = agent
        self._listeners = listeners
        self._tcp = tcp
        self._started = started
        # rows of connections no listener accepted (router links dialled here)
        self.extra_connections: Callable[[], list[Row]] | None = None
        # the router network's counts in routerMetrics (nodeCount, addrCount, ...)
        self.network_counts: Callable[[], Mapping[str, int]] | None = None

    def provide(self) -> None:
        self._agent.provide("connection", self.connections)
        self._agent.provide("tcpConnection", self.tcp_connections)
        self._agent.provide("routerMetrics", self.router_metrics)
        self._agent.provide("network", self.network)
        self._agent.augment("router", self.router_extra)
        self._agent.on_update("connection", self.update_connection)

    def connections(self) -> list[Row]:
        """AMQP connections, then relayed TCP flows (protocol ``tcp``), as
        Skupper lists its adaptors' connections with its own."""
        now = time.monotonic()
        rows: list[Row] = [
            {
                "name": f"connection/{conn.id}",
                "identity": str(conn.id),
                "id": conn.id,
                "role": conn.settings.role,
                "dir": "in",
                "protocol": "amqp",
                "opened": True,
                "adminStatus": "enabled",
                "host": conn.peer,
                "container": conn.container,
                "isEncrypted": conn.tls.encrypted,
                "ssl": conn.tls.encrypted,
                "sslProto": conn.tls.protocol or None,
                "sslCipher": conn.tls.cipher or None,
                "tlsOrdinal": conn.tls.ordinal if conn.tls.encrypted else None,
                "isAuthenticated": conn.user is not None,
                "user": conn.user,
                "sasl": conn.mechanism,
                "operStatus": "up",
                "listener": conn.settings.listener,
                "uptimeSeconds": int(now - conn.opened),
            }
            for conn in self._listeners.amqp_connections()
        ]
        if self.extra_connections is not None:
            rows.extend(self.extra_connections())
        for flow in self.tcp_connections():
            encrypted = bool(flow.get("tlsConfigVersion"))
            rows.append(
                {
                    "name": f"connection/{flow['connectionId']}",
                    "identity": flow["identity"],
                    "id": flow["connectionId"],
                    "role": "normal",
                    "dir": "in",
                    "protocol": "tcp",
                    "opened": True,
                    "adminStatus": "enabled",
                    "host": flow["host"],
                    "container": None,
                    "isEncrypted": encrypted,
                    "ssl": encrypted,
                    "sslProto": flow.get("sslProto"),
                    "sslCipher": flow.get("sslCipher"),
                    "tlsOrdinal": flow["tlsOrdinal"] if encrypted else None,
                    "isAuthenticated": bool(flow.get("peerSubject")),
                    "user": flow.get("peerSubject"),
                    "sasl": None,
                    "operStatus": "up",
                    "listener": flow["listener"],
                    "uptimeSeconds": flow["uptimeSeconds"],
                }
            )
        return rows

    def update_connection(self, row: Mapping[str, object], attrs: Mapping[str, object]) -> None:
        """UPDATE of a connection: ``adminStatus: deleted`` closes an AMQP
        connection, as in Skupper; nothing else can change."""
        for key, value in attrs.items():
            if key != "adminStatus":
                raise ManagementError(
                    400, f"connection attribute '{key}' cannot be updated (only adminStatus)"
                )
            if value not in ("deleted", "enabled"):
                raise ManagementError(
                    400,
                    f"connection attribute 'adminStatus' has invalid value {value!r}: expected "
                    "one of enabled, deleted",
                )
        if attrs.get("adminStatus") != "deleted":
            return
        if row.get("protocol") != "amqp":
            raise ManagementError(
                501,
                f"closing a {row.get('protocol')} connection is not implemented by Skiff (delete "
                "its tcpListener with dropTcpConnections, or close the client)",
            )
        self._engine.app_close(int(str(row["id"])))

    def tcp_connections(self) -> list[Row]:
        now_ns = time.monotonic_ns()
        listeners: dict[int, tuple[str, str]] = {}
        connectors: dict[int, tuple[str, str]] = {}
        if self._tcp is not None:
            listeners = self._tcp.listeners_by_engine_id()
            connectors = self._tcp.connectors_by_engine_id()
        rows: list[Row] = []
        for info in self._engine.connections():
            if info.app:
                continue
            lname, laddress = listeners.get(info.listener_id, (str(info.listener_id), None))
            cname: str | None
            address: str | None
            # a flow's address is its connector's, or its listener's before it has one
            cname, address = connectors.get(info.target_id, (None, laddress))
            rows.append(
                {
                    "name": f"tcpConnection/{info.id}",
                    "identity": str(info.id),
                    "connectionId": info.id,
                    "direction": "in",
                    "listener": lname,
                    "connector": cname,
                    "address": address,
                    "host": info.peer,
                    "target": info.target or None,
                    "worker": info.worker,
                    "bytesIn": info.bytes_in,
                    "bytesOut": info.bytes_out,
                    "tlsConfigVersion": info.tls_version,
                    "tlsOrdinal": info.tls_ordinal,
                    "peerSubject": info.peer_subject or None,
                    "sslProto": info.tls_protocol or None,
                    "sslCipher": info.tls_cipher or None,
                    "uptimeSeconds": max(0, (now_ns - info.opened_ns) // 1_000_000_000),
                    # across routers: the router at the flow's other end
                    "remoteRouter": info.remote_router or None,
                    "remoteDirection": (
                        ("from" if info.remote_incoming else "to") if info.remote_router else None
                    ),
                }
            )
        return rows

    def router_metrics(self) -> list[Row]:
        opened = closed = bytes_in = bytes_out = 0
        for row in self._registry.query("tcpListener"):
            opened += int(str(row.get("connectionsOpened") or 0))
            closed += int(str(row.get("connectionsClosed") or 0))
            bytes_in += int(str(row.get("bytesIn") or 0))
            bytes_out += int(str(row.get("bytesOut") or 0))
        counters = self._engine.counters()
        amqp = len(self._listeners.amqp_connections())
        tcp = max(0, opened - closed)
        vm, rss = _memory()
        network = dict(self.network_counts()) if self.network_counts is not None else {}
        return [
            {
                **network,
                "name": "routerMetrics",
                "identity": "routerMetrics",
                "id": self._router_id(),
                "version": skiff_version(),
                "connectionCount": tcp + amqp,
                "connectionCounters": {"tcp": tcp, "amqp": amqp},
                "memoryUsage": vm,
                "residentMemoryUsage": rss,
                "connectionCounts": f"tcp: {max(0, opened - closed)}, amqp: {amqp}",
                "tcpConnectionsOpened": opened,
                "tcpConnectionsClosed": closed,
                "tcpConnectionsActive": max(0, opened - closed),
                "tcpBytesIn": bytes_in,
                "tcpBytesOut": bytes_out,
                "amqpConnections": amqp,
                "managementRequests": self._agent.requests,
                "accepted": counters.get("accepted", 0),
                "connectsFailed": counters.get("connects_failed", 0),
                "flowsFailed": counters.get("flows_failed", 0),
                "eventsDropped": counters.get("events_dropped", 0),
                "workerThreads": self._engine.workers,
                "uptimeSeconds": int(time.monotonic() - self._started),
            }
        ]

    def _router_id(self) -> str:
        router = self._registry.router
        rid = router.config_as(RouterConfig).id if router else None
        return str(rid or "skiff")

    def network(self) -> list[Row]:
        return [
            {
                "name": "network",
                "identity": "network",
                "tenantId": "",
                "networkId": self._router_id(),
            }
        ]

    def router_extra(self, row: Mapping[str, object]) -> Mapping[str, object]:
        """Skupper attributes of ``router`` that the registry does not keep."""
        return {"hostName": socket.gethostname()}

    def router_status(self) -> Mapping[str, object]:
        """Status attributes of the ``router`` entity."""
        return {
            "version": skiff_version(),
            "uptimeSeconds": int(time.monotonic() - self._started),
            "connectionCount": self._engine.counters().get("conns_live", 0),
            "tcpListenerCount": len(self._registry.entities("tcpListener")),
            "tcpConnectorCount": len(self._registry.entities("tcpConnector")),
        }


def _memory() -> tuple[int | None, int | None]:
    """Virtual and resident size of this process in bytes, where /proc has them."""
    try:
        with open("/proc/self/statm") as f:
            size, resident = (int(v) for v in f.read().split()[:2])
    except (OSError, ValueError):
        return None, None
    page = os.sysconf("SC_PAGE_SIZE")
    return size * page, resident * page


class RouterStatus:
    """Registry observer for ``router``: adds status attributes, changes nothing."""

    def __init__(self, rows: ManagementRows) -> None:
        self._rows = rows

    def on_create(self, entity: Entity) -> None:
        pass

    def on_update(self, old: Entity, new: Entity) -> None:
        pass

    def on_delete(self, entity: Entity) -> None:
        pass

    def status(self, entity: Entity) -> Mapping[str, object]:
        return self._rows.router_status()
