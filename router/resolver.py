"""Host name resolution for connectors, on the control loop.

Workers never resolve names: the control plane resolves each connector host
with the loop's getaddrinfo (a thread of the default executor, so the loop
itself does not wait), caches the answer, re-resolves periodically, and the
TCP adaptor publishes the numeric addresses in the route table.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from router.log import get_logger

DEFAULT_REFRESH_SECONDS = 30.0

_log = get_logger("ROUTER")


def numeric_host(host: str) -> str | None:
    """The address itself when host is already numeric, else None."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def listen_host(host: str) -> str:
    """The address a listening socket binds for a listener's ``host``.

    Listeners never resolve names (a bind must not wait for DNS): '' or '::'
    mean all interfaces (''), 'localhost' is 127.0.0.1, anything else must
    be a numeric address. Raises ValueError naming the host otherwise.
    """
    if host in ("", "::"):
        return ""
    if host == "localhost":
        return "127.0.0.1"
    ip = numeric_host(host)
    if ip is None:
        raise ValueError(
            f"host '{host}' must be a numeric address, 'localhost' or empty (all interfaces)"
        )
    return ip


@dataclass
class Resolution:
    host: str
    addresses: tuple[str, ...] = ()
    error: str | None = None
    resolved_at: float = 0.0


class Resolver:
    """Caches host -> addresses; calls on_change(host) when an answer changes."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[str], None],
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
    ) -> None:
        self._loop = loop
        self._on_change = on_change
        self._refresh = refresh_seconds
        self._cache: dict[str, Resolution] = {}
        self._users: dict[str, int] = {}
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def addresses(self, host: str) -> tuple[str, ...]:
        """Resolved addresses now (numeric hosts need no look-up)."""
        ip = numeric_host(host)
        if ip is not None:
            return (ip,)
        res = self._cache.get(host)
        return res.addresses if res else ()

    def error(self, host: str) -> str | None:
        res = self._cache.get(host)
        return res.error if res else None

    def watch(self, host: str) -> None:
        """Starts resolving host (if it is a name) and keeps it fresh."""
        if numeric_host(host) is not None:
            return
        self._users[host] = self._users.get(host, 0) + 1
        if host not in self._cache and host not in self._pending:
            self._start(host)
        self._arm()

    def unwatch(self, host: str) -> None:
        if host not in self._users:
            return
        self._users[host] -= 1
        if self._users[host] <= 0:
            del self._users[host]
            self._cache.pop(host, None)
            task = self._pending.pop(host, None)
            if task:
                task.cancel()

    def close(self) -> None:
        if self._timer:
            self._timer.cancel()
        for task in self._pending.values():
            task.cancel()
        self._pending.clear()

    async def settle(self) -> None:
        """Waits for look-ups in flight (start-up and tests)."""
        while self._pending:
            await asyncio.gather(*list(self._pending.values()), return_exceptions=True)

    def _start(self, host: str) -> None:
        self._pending[host] = self._loop.create_task(self._resolve(host))

    async def _resolve(self, host: str) -> None:
        try:
            infos = await self._loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            # IPv4 first: loopback services often listen on 127.0.0.1 only
            addrs = sorted({str(i[4][0]) for i in infos}, key=lambda a: (":" in a, a))
            res = Resolution(host, tuple(addrs), None, time.monotonic())
        except (socket.gaierror, OSError, UnicodeError) as e:
            old = self._cache.get(host)
            # keep the last good answer through a transient failure
            res = Resolution(host, old.addresses if old else (), str(e), time.monotonic())
            _log.warning(f"cannot resolve '{host}': {e}")
        finally:
            self._pending.pop(host, None)
        if host not in self._users:
            return
        old = self._cache.get(host)
        self._cache[host] = res
        if old is None or old.addresses != res.addresses:
            self._on_change(host)

    def _arm(self) -> None:
        if self._timer is None and self._users:
            self._timer = self._loop.call_later(self._refresh, self._tick)

    def _tick(self) -> None:
        self._timer = None
        for host in list(self._users):
            if host not in self._pending:
                self._start(host)
        self._arm()
