"""A simulated network of ``RouterCore``s on a fake clock, for tests and the bench.

Links are in-process queues; a message sent is delivered (as the encoded map
body, like proton would hand it over) before time moves on, unless a test's
``drop`` filter eats it.  ``Close`` actions close both ends, like a TCP
connection reset.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from router.network.core import Action, Close, Log, Mode, NetworkConfig, Role, RouterCore, Send


@dataclass
class SimLink:
    conn: int
    a: str
    a_link: int
    b: str
    b_link: int
    role: Role
    cost: int


DropFilter = Callable[[str, str, str, dict[str, Any]], bool]  # (from, to, opcode, body)


class SimNet:
    def __init__(self, **config: Any) -> None:
        self.now = 0.0
        self.config = config
        self.routers: dict[str, RouterCore] = {}
        self.conns: dict[int, SimLink] = {}
        self.closed: list[tuple[str, int, str]] = []  # (router, link, reason)
        self.logs: list[tuple[str, str, str]] = []  # (router, level, text)
        self.drop: DropFilter | None = None
        self.delivered = 0
        self._ids = itertools.count(1)
        self._queue: deque[tuple[str, int, str, dict[str, Any]]] = deque()
        self._peer: dict[tuple[str, int], tuple[str, int, int]] = {}  # end -> far end, conn

    # -- building

    def add(self, router_id: str, *, mode: Mode = "interior", instance: int = 1,
            **config: Any) -> RouterCore:
        cfg = NetworkConfig(router_id, instance)
        cfg = replace(cfg, mode=mode, **{**self.config, **config})
        core = self.routers[router_id] = RouterCore(cfg)
        return core

    def connect(self, a: str, b: str, *, cost: int = 1, role: Role = "inter-router") -> int:
        """Open a link between routers a and b (for role edge, a is the edge)."""
        conn = next(self._ids)
        link = SimLink(conn, a, next(self._ids), b, next(self._ids), role, cost)
        self.conns[conn] = link
        self._peer[(a, link.a_link)] = (b, link.b_link, conn)
        self._peer[(b, link.b_link)] = (a, link.a_link, conn)
        self._apply(a, self.routers[a].link_opened(link.a_link, role, self.now, cost=cost,
                                                     label=f"to {b}"))
        if link.conn in self.conns:
            self._apply(b, self.routers[b].link_opened(link.b_link, role, self.now, cost=cost,
                                                         label=f"from {a}"))
        self.deliver()
        return conn

    def conn_between(self, a: str, b: str) -> int:
        for link in self.conns.values():
            if {link.a, link.b} == {a, b}:
                return link.conn
        raise KeyError((a, b))

    def cut(self, conn: int) -> None:
        link = self.conns.pop(conn, None)
        if link is None:
            return
        self._peer.pop((link.a, link.a_link), None)
        self._peer.pop((link.b, link.b_link), None)
        for rid, lid in ((link.a, link.a_link), (link.b, link.b_link)):
            if rid in self.routers:
                self._apply(rid, self.routers[rid].link_closed(lid, self.now))
        self.deliver()

    def kill(self, router_id: str) -> None:
        """kill -9: the router vanishes, its peers see their links close."""
        del self.routers[router_id]
        for conn, link in list(self.conns.items()):
            if router_id in (link.a, link.b):
                self.cut(conn)

    # -- running

    def set_addresses(self, router_id: str, counts: dict[str, int]) -> None:
        """A router's local tcpConnectors changed."""
        self._apply(router_id, self.routers[router_id].set_local_addresses(counts, self.now))
        self.deliver()

    def inject(self, to: str, link_id: int, opcode: Any, body: Any) -> None:
        """Deliver anything on a link, as if its peer had sent it."""
        self._apply(to, self.routers[to].receive(link_id, opcode, body, self.now))
        self.deliver()

    def link_id(self, conn: int, router_id: str) -> int:
        link = self.conns[conn]
        return link.a_link if link.a == router_id else link.b_link

    def run(self, seconds: float, step: float = 0.1) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = round(self.now + step, 6)
            self.tick()

    def run_timers(self, seconds: float) -> int:
        """Tick each router only when its ``next_due`` says so, as the wiring's
        timer will; the number of ticks.  Fails if a router asks to be ticked
        again and again at the same instant (a timer that would spin)."""
        end = self.now + seconds
        ticks = same_instant = 0
        while True:
            due = {rid: c.next_due(self.now) for rid, c in self.routers.items()}
            at = min(due.values(), default=end)
            if at > end:
                self.now = end
                return ticks
            if at > self.now:
                self.now, same_instant = at, 0
            same_instant += 1
            if same_instant > 100:
                raise AssertionError(f"a timer spins at {self.now}: {due}")
            for rid, when in due.items():
                if when <= self.now and rid in self.routers:
                    ticks += 1
                    self._apply(rid, self.routers[rid].tick(self.now))
            self.deliver()

    def tick(self) -> None:
        for rid in list(self.routers):
            if rid in self.routers:
                self._apply(rid, self.routers[rid].tick(self.now))
        self.deliver()

    def until(self, predicate: Callable[[], bool], limit: float, step: float = 0.05) -> float:
        """Run until predicate holds; the simulated seconds it took."""
        start = self.now
        while not predicate():
            if self.now - start > limit:
                raise AssertionError(f"not reached within {limit} s")
            self.now = round(self.now + step, 6)
            self.tick()
        return self.now - start

    def deliver(self, limit: int = 1_000_000) -> None:
        n = 0
        while self._queue:
            n += 1
            if n > limit:
                raise AssertionError("message storm: the network does not quiesce")
            rid, lid, opcode, body = self._queue.popleft()
            core = self.routers.get(rid)
            if core is None:
                continue
            self.delivered += 1
            self._apply(rid, core.receive(lid, opcode, body, self.now))
            # a change seen on receipt is acted on at once, as the wiring does
            if core.lsdb.recompute_due(self.now):
                self._apply(rid, core.tick(self.now))

    def _apply(self, rid: str, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(rid, action)
            elif isinstance(action, Close):
                self.closed.append((rid, action.link_id, action.reason))
                far = self._peer.get((rid, action.link_id))
                if far is not None:
                    self.cut(far[2])
            elif isinstance(action, Log):
                self.logs.append((rid, action.level, action.text))

    def _send(self, rid: str, action: Send) -> None:
        far = self._peer.get((rid, action.link_id))
        if far is None:
            return
        to, to_link, _ = far
        if self.drop is not None and self.drop(rid, to, action.opcode, action.body):
            return
        self._queue.append((to, to_link, action.opcode, action.body))

    # -- views

    def routes_to(self, router_id: str, address: str) -> list[tuple[str, int, str]]:
        """(destination router, cost, next hop) of an address seen from a router."""
        route = self.routers[router_id].routes().route(address)
        return [] if route is None else [(d.router_id, d.cost, d.next_hop) for d in route.remote]

    def all_ready(self) -> bool:
        return all(r.sync_status(self.now).ready for r in self.routers.values())
