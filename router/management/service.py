"""Management wired once: the row providers on the agent, the ``router``
entity's status, liveness, readiness and the HTTP pages.

The agent is made first and given to the app-connection listener adaptor
(its AMQP connections answer ``$management`` with it); ``Management`` then
reads that adaptor and the TCP adaptor through their read-only views, and
the adaptor serves ``pages()`` on its HTTP listeners::

    agent = Agent(registry)
    app = AppListenerAdaptor(engine, registry, loop, agent, tls)
    management = Management(engine, registry, loop, agent, app, tcp, tls, started)
    app.serve_pages(management.pages())
"""

from __future__ import annotations

import asyncio
import time

from router.engine import Engine
from router.management.agent import Agent
from router.management.health import HealthMonitor
from router.management.http import Route
from router.management.limits import LimitStats
from router.management.network_view import NetworkManagement
from router.management.pages import MonitoringPages
from router.management.readiness import Readiness
from router.management.rows import ManagementRows, RouterStatus
from router.management.sources import AppListeners, TcpFlows
from router.network.service import NetworkService
from router.registry import Registry
from router.tls import TlsManager


class Management:
    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        loop: asyncio.AbstractEventLoop,
        agent: Agent,
        listeners: AppListeners,
        tcp: TcpFlows | None = None,
        tls: TlsManager | None = None,
        started: float | None = None,
        network: NetworkService | None = None,
    ) -> None:
        self.started = time.monotonic() if started is None else started
        self.agent = agent
        self.health = HealthMonitor(engine, loop)
        self.rows = ManagementRows(engine, registry, agent, listeners, tcp, self.started)
        self.rows.provide()
        self.network = NetworkManagement(network, agent) if network is not None else None
        if self.network is not None:
            self.network.provide()
            self.rows.extra_connections = self.network.connections
            self.rows.network_counts = self.network.counts
        registry.subscribe("router", RouterStatus(self.rows))
        self.readiness = Readiness(self.health, registry, listeners, tcp, tls, network)
        # the app listener adaptor counts what its limits refused
        limits = getattr(listeners, "limits", None)
        self._pages = MonitoringPages(
            engine,
            registry,
            agent,
            self.health,
            self.readiness,
            listeners,
            self.started,
            tls,
            limits if isinstance(limits, LimitStats) else None,
            network,
        )

    def pages(self) -> dict[str, Route]:
        """What ``http: true`` listeners serve (path -> page)."""
        return self._pages.routes()

    def close(self) -> None:
        self.health.close()
