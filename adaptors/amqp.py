"""Transitional: what ``router/daemon.py`` still builds under its old name.

The app-connection listener is ``adaptors/app_listener.py`` and management
lives in ``router/management/`` (wired by ``service.Management``). This
class only puts the two together for the daemon; delete it once the daemon
does that itself (the four lines in ``router/management/service.py``).
"""

from __future__ import annotations

import asyncio

from adaptors.app_listener import AppListenerAdaptor
from adaptors.tcp import TcpAdaptor
from router.engine import Engine
from router.management.agent import Agent
from router.management.service import Management
from router.registry import Registry
from router.tls import TlsManager


class AmqpAdaptor:
    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        loop: asyncio.AbstractEventLoop,
        tcp: TcpAdaptor | None = None,
        started: float | None = None,
        tls: TlsManager | None = None,
    ) -> None:
        self.agent = Agent(registry)
        self.listeners = AppListenerAdaptor(engine, registry, loop, self.agent, tls)
        self.management = Management(
            engine, registry, loop, self.agent, self.listeners, tcp, tls, started
        )
        self.listeners.serve_pages(self.management.pages())

    def bound(self, name: str) -> tuple[int | None, str | None]:
        return self.listeners.bound(name)

    def close(self) -> None:
        self.listeners.close()
        self.management.close()
