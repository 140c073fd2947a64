"""Readiness: is the router serving what it is configured for?

Liveness (``health.py``) says the loop and the workers turn; readiness
adds what configuration promised: every ``listener`` bound, every
``tcpListener`` whose address has connectors open, every ``tcpConnector``
reachable. Each reason names the entity and says why, so ``/readyz`` is a
to-do list, not a bare 503.
"""

from __future__ import annotations

from typing import Protocol

from router.configs import TcpConnectorConfig, TcpListenerConfig
from router.management.sources import AppListeners, TcpFlows
from router.network.sync import SyncStatus
from router.registry import Registry


class Liveness(Protocol):
    def check(self) -> list[str]: ...


class ProfileWaits(Protocol):
    """The TlsManager's answer to "why is a listener on this profile down"."""

    def wait_reason(self, name: str) -> str | None: ...


class NetworkSync(Protocol):
    """The network service's answer to "has the full network state arrived"."""

    def sync_status(self) -> SyncStatus: ...


class Readiness:
    def __init__(
        self,
        health: Liveness,
        registry: Registry,
        listeners: AppListeners,
        tcp: TcpFlows | None = None,
        tls: ProfileWaits | None = None,
        network: NetworkSync | None = None,
    ) -> None:
        self._health = health
        self._registry = registry
        self._listeners = listeners
        self._tcp = tcp
        self._tls = tls
        self._network = network

    def reasons(self) -> list[str]:
        """Why the router is not ready; empty when it is."""
        reasons = list(self._health.check())
        if self._network is not None:
            status = self._network.sync_status()
            if not status.ready:
                reasons.append(f"not synchronised with the router network: {status.reason}")
        for info in self._listeners.listener_infos():
            if not info.up:
                reasons.append(f"listener '{info.name}' is down: {info.error or 'not bound'}")
        connected = {
            e.config_as(TcpConnectorConfig).address
            for e in self._registry.entities("tcpConnector")
        }
        for entity in self._registry.entities("tcpListener"):
            cfg = entity.config_as(TcpListenerConfig)
            if cfg.address not in connected:
                continue  # listens only once a connector exists: not a fault
            if self._tcp is not None and self._tcp.listener_port(entity.name) is None:
                error = self._tcp.listener_error(entity.name)
                if cfg.ssl_profile and self._tls is not None:
                    error = self._tls.wait_reason(cfg.ssl_profile) or error
                reasons.append(
                    f"tcpListener '{entity.name}' is down although tcpConnectors serve "
                    f"address '{cfg.address}': {error or 'see the log for the bind error'}"
                )
        for row in self._registry.query("tcpConnector"):
            if row.get("operStatus") == "down":
                reasons.append(
                    f"tcpConnector '{row['name']}' is down: {row.get('host')}:{row.get('port')} "
                    "does not answer or does not resolve"
                )
        return reasons
