"""The HTTP pages of monitoring: ``/metrics``, ``/healthz``, ``/readyz``.

Served by ``listener { http: true }`` through ``HttpConnection``; each page
is computed on the control loop when asked, from the engine's atomics and
the adaptors' read-only views, so a scrape never stops a worker.
"""

from __future__ import annotations

from router.engine import Engine
from router.management import metrics
from router.management.agent import Agent
from router.management.http import HttpReply, Route
from router.management.limits import LimitStats
from router.management.network_view import network_metrics
from router.management.readiness import Liveness, Readiness
from router.management.sources import AppListeners
from router.network.service import NetworkService
from router.registry import Registry
from router.tls import TlsManager


class MonitoringPages:
    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        agent: Agent,
        health: Liveness,
        readiness: Readiness,
        listeners: AppListeners,
        started: float,
        tls: TlsManager | None = None,
        limits: LimitStats | None = None,
        network: NetworkService | None = None,
    ) -> None:
        self._engine = engine
        self._registry = registry
        self._agent = agent
        self._health = health
        self._readiness = readiness
        self._listeners = listeners
        self._started = started
        self._tls = tls
        self._limits = limits
        self._network = network

    def routes(self) -> dict[str, Route]:
        return {"/metrics": self.metrics, "/healthz": self.healthz, "/readyz": self.readyz}

    def metrics(self) -> HttpReply:
        infos = self._listeners.listener_infos()
        # every AMQP listener has a series, 0 while it has no connection
        amqp_open = {info.name: 0 for info in infos if not info.http}
        for conn in self._listeners.amqp_connections():
            amqp_open[conn.settings.listener] = amqp_open.get(conn.settings.listener, 0) + 1
        text = metrics.render(
            self._engine,
            self._registry,
            started=self._started,
            amqp_open=sorted(amqp_open.items()),
            listeners_up=[(info.name, info.up) for info in infos],
            management_requests=self._agent.requests,
            tls_profiles=self._tls.profiles() if self._tls is not None else None,
        )
        if self._limits is not None:
            text += self._limits.render([info.name for info in infos])
        if self._network is not None:
            text += network_metrics(self._network)
        return HttpReply(200, text.encode(), metrics.CONTENT_TYPE)

    def healthz(self) -> HttpReply:
        reasons = self._health.check()
        if reasons:
            return HttpReply(503, ("\n".join(reasons) + "\n").encode())
        return HttpReply(200, b"ok\n")

    def readyz(self) -> HttpReply:
        reasons = self._readiness.reasons()
        if reasons:
            return HttpReply(503, ("not ready:\n" + "\n".join(reasons) + "\n").encode())
        return HttpReply(200, b"ready\n")
