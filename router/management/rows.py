"""Rows of the read-only management entities: ``connection`` (AMQP app
connections), ``tcpConnection`` (relayed flows), ``routerMetrics``,
``network``, and the status attributes of the ``router`` entity.

Every row is computed when asked, from the engine's counters and the
adaptors' read-only views (``sources.py``): nothing here keeps a copy that
could drift from what it describes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from router.configs import RouterConfig
from router.engine import Engine
from router.management.agent import Agent
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

    def provide(self) -> None:
        self._agent.provide("connection", self.connections)
        self._agent.provide("tcpConnection", self.tcp_connections)
        self._agent.provide("routerMetrics", self.router_metrics)
        self._agent.provide("network", self.network)

    def connections(self) -> list[Row]:
        now = time.monotonic()
        return [
            {
                "name": f"connection/{conn.id}",
                "identity": str(conn.id),
                "id": conn.id,
                "role": conn.settings.role,
                "dir": "in",
                "host": conn.peer,
                "container": conn.container,
                "isEncrypted": conn.tls.encrypted,
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
                    "uptimeSeconds": max(0, (now_ns - info.opened_ns) // 1_000_000_000),
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
        return [
            {
                "name": "routerMetrics",
                "identity": "routerMetrics",
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

    def network(self) -> list[Row]:
        router = self._registry.router
        rid = router.config_as(RouterConfig).id if router else None
        return [
            {
                "name": "network",
                "identity": "network",
                "tenantId": "",
                "networkId": str(rid or "skiff"),
            }
        ]

    def router_status(self) -> Mapping[str, object]:
        """Status attributes of the ``router`` entity."""
        return {
            "version": skiff_version(),
            "uptimeSeconds": int(time.monotonic() - self._started),
            "connectionCount": self._engine.counters().get("conns_live", 0),
            "tcpListenerCount": len(self._registry.entities("tcpListener")),
            "tcpConnectorCount": len(self._registry.entities("tcpConnector")),
        }


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
