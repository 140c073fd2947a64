"""What management reads from the adaptors: small typed read-only views.

Management shows state the adaptors own (app connections and listener
sockets, which entity an engine flow belongs to) without reaching into
their private maps. It depends on the Protocols below, never on the
adaptor modules, so ``router`` imports nothing from ``adaptors``; each
adaptor offers these methods in one place of its class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from router.management.amqp_connection import AmqpConnection


@dataclass(frozen=True)
class AppListenerInfo:
    """One ``listener`` entity as its adaptor sees it now."""

    name: str
    http: bool
    up: bool
    port: int | None  # the bound port while up
    error: str | None  # why it is down: the lastError status attribute


class AppListeners(Protocol):
    """The app-connection listener adaptor (``listener`` entities)."""

    def listener_infos(self) -> list[AppListenerInfo]:
        """Every configured listener, sorted by name."""
        ...

    def amqp_connections(self) -> list[AmqpConnection]:
        """Open AMQP connections, including those of listeners deleted since."""
        ...


class TcpFlows(Protocol):
    """The TCP adaptor (``tcpListener`` / ``tcpConnector`` entities)."""

    def listener_port(self, name: str) -> int | None: ...

    def listener_error(self, name: str) -> str | None: ...

    def listeners_by_engine_id(self) -> dict[int, tuple[str, str]]: ...

    def connectors_by_engine_id(self) -> dict[int, tuple[str, str]]: ...
