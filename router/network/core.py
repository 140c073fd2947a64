"""One router's network control plane, composed from the sans-I/O parts.

The wiring owns the links (AMQP connections driven by proton) and the clock;
it calls:

* ``link_opened(link_id, role, cost, now, label)`` when an inter-router or
  edge link is up at the AMQP level, ``link_closed(link_id, now)`` when it
  is gone;
* ``receive(link_id, opcode, body, now, size)`` for every message arriving on
  one (the body as proton decoded it, untrusted);
* ``set_local_addresses(counts, now)`` when the local tcpConnectors change;
* ``tick(now)`` at ``next_due(now)`` at the latest (and after ``receive``).

Each returns a list of actions to carry out in order: ``Send`` a message on a
link, ``Close`` a link (its reason is also logged), ``Log`` a line.  The
results are read with ``routes()`` (the engine's snapshot), ``sync_status``
(readiness), and the public tables (``hello``, ``lsdb``, ``remote``,
``edges``) for management views.

Distribution: control messages travel hop by hop.  A router's own LSU and
MAU go to each two-way interior neighbour; a received LSU or MAU that moves
our copy forward is flooded on to the other neighbours (a stale one stops).
RAs go down the origin's shortest-path tree (to the neighbours that reach
the origin through us, or to all while that is unknown), at most once per
origin and sequences within half the flux RA interval, so a copy circling a
loop while paths disagree dies.  When a neighbour becomes two-way both sides send it
their whole database (every LSU and full address set they hold), so a router
starting into a running network is synchronised after one exchange.  LSR and
MAR are answered by the neighbour they are sent to, from its copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from router.network.addresses import AddressSet, AddressTables, MauResult, sum_counts
from router.network.hello import (
    HELLO_INTERVAL,
    HELLO_MAX_AGE,
    HelloEvent,
    HelloProtocol,
    NeighbourLost,
    NeighbourUp,
    PeerRefused,
)
from router.network.linkstate import (
    MAX_ROUTERS,
    RA_INTERVAL,
    RA_INTERVAL_FLUX,
    REMOTE_LS_MAX_AGE,
    LinkStateDB,
    LsuResult,
)
from router.network.messages import (
    LSR,
    LSU,
    MAR,
    MAU,
    RA,
    Hello,
    Message,
    ProtocolError,
    decode,
    encode,
)
from router.network.routes import RouteTable, build_routes
from router.network.sync import SyncStatus, SyncTracker

Role = Literal["inter-router", "edge"]
Mode = Literal["interior", "edge"]


@dataclass(frozen=True)
class Send:
    link_id: int
    opcode: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Close:
    link_id: int
    reason: str


@dataclass(frozen=True)
class Log:
    level: Literal["info", "warning", "error"]
    text: str


Action = Send | Close | Log


@dataclass(frozen=True)
class NetworkConfig:
    """The router entity's network attributes (Skupper's names and defaults)."""

    router_id: str
    instance: int  # must grow across restarts (e.g. the start time in ms)
    mode: Mode = "interior"
    hello_interval: float = HELLO_INTERVAL  # helloIntervalSeconds
    hello_max_age: float = HELLO_MAX_AGE  # helloMaxAgeSeconds
    ra_interval: float = RA_INTERVAL  # raIntervalSeconds
    ra_interval_flux: float = RA_INTERVAL_FLUX  # raIntervalFluxSeconds
    remote_ls_max_age: float = REMOTE_LS_MAX_AGE  # remoteLsMaxAgeSeconds
    max_routers: int = MAX_ROUTERS


@dataclass
class _Link:
    role: Role
    cost: int
    label: str


# what each side of a link may send besides HELLO
_INTERIOR_OPCODES = frozenset({"RA", "LSU", "LSR", "MAU", "MAR"})
_EDGE_OPCODES = frozenset({"MAU", "MAR"})


class RouterCore:
    def __init__(self, config: NetworkConfig) -> None:
        self.config = config
        self.router_id = config.router_id
        self.instance = config.instance
        self.mode: Mode = config.mode
        self.hello = HelloProtocol(
            config.router_id,
            config.instance,
            hello_interval=config.hello_interval,
            hello_max_age=config.hello_max_age,
        )
        self.lsdb = LinkStateDB(
            config.router_id,
            config.instance,
            max_routers=config.max_routers,
            remote_ls_max_age=config.remote_ls_max_age,
            ra_interval=config.ra_interval,
            ra_interval_flux=config.ra_interval_flux,
        )
        self.advertised = AddressSet(config.router_id, config.instance)
        self.local_counts: dict[str, int] = {}
        self.remote = AddressTables()  # interior routers' address sets
        # on an interior: attached edges' sets; on an edge: its interiors' views
        self.edges = AddressTables()
        self.edge_views: dict[int, AddressSet] = {}  # interior: what each edge link is told
        self.sync = SyncTracker()
        self.protocol_errors = 0
        self.links_refused = 0
        self._links: dict[int, _Link] = {}
        self._ra_forwarded: dict[str, tuple[tuple[int, int, int], float]] = {}
        self._full_logged: set[str] = set()
        self._impostors: set[int] = set()
        self._routes: RouteTable | None = None
        self._routes_dirty = True
        self._routes_version = 0

    # ------------------------------------------------------------------
    # links

    def link_opened(
        self, link_id: int, role: Role, now: float, *, cost: int = 1, label: str = ""
    ) -> list[Action]:
        if self.mode == "edge" and role != "edge":
            reason = (
                f"router {self.router_id!r} is an edge router: it takes no inter-router "
                f"links (link {link_id} {label})"
            )
            self.links_refused += 1
            return [Close(link_id, reason), Log("error", reason)]
        self._links[link_id] = _Link(role, cost, label)
        self.hello.add_link(link_id, cost, label)
        return self.tick(now)

    def link_closed(self, link_id: int, now: float) -> list[Action]:
        if link_id not in self._links:
            return []
        # handled while the link's role is still known; hello has forgotten it
        actions = self._hello_events(self.hello.remove_link(link_id), now)
        del self._links[link_id]
        self.edge_views.pop(link_id, None)
        return actions

    def _drop(self, link_id: int, reason: str, now: float) -> list[Action]:
        actions: list[Action] = [Close(link_id, reason), Log("error", reason)]
        return actions + self.link_closed(link_id, now)

    def _role(self, link_id: int) -> Role | None:
        link = self._links.get(link_id)
        return None if link is None else link.role

    def _links_of(self, role: Role) -> list[int]:
        return [lid for lid, lk in self._links.items() if lk.role == role]

    def interior_neighbours(self) -> dict[str, int]:
        """Two-way interior neighbours -> the link used for each."""
        found = self.hello.neighbours(self._links_of("inter-router"))
        return {rid: n.link_id for rid, n in found.items()}

    def edge_neighbours(self) -> dict[str, int]:
        """Two-way peers over edge links (our edges, or an edge's interiors)."""
        found = self.hello.neighbours(self._links_of("edge"))
        return {rid: n.link_id for rid, n in found.items()}

    def uplink(self) -> str | None:
        """On an edge router: the interior router in use (cheapest uplink)."""
        found = self.hello.neighbours(self._links_of("edge"))
        return next(iter(found), None) if self.mode == "edge" else None

    # ------------------------------------------------------------------
    # input

    def receive(
        self, link_id: int, opcode: Any, body: Any, now: float, *, size: int | None = None
    ) -> list[Action]:
        link = self._links.get(link_id)
        if link is None:
            return []
        peer = self.hello.peer_of(link_id)
        who = f"{peer!r} on link {link_id}" if peer else f"the peer on link {link_id}"
        if link.label:
            who += f" ({link.label})"
        try:
            msg = decode(opcode, body, size=size)
        except ProtocolError as exc:
            self.protocol_errors += 1
            return self._drop(link_id, f"protocol error from {who}: {exc}", now)
        if isinstance(msg, Hello):
            try:
                events = self.hello.receive(link_id, msg, now)
            except PeerRefused as exc:
                self.links_refused += 1
                return self._drop(link_id, exc.reason, now)
            actions = self._hello_events(events, now)
            # the reply to a new peer, if due; silence is the timer's to judge
            sends, lost = self.hello.tick(now, judge_silence=False)
            return actions + [self._send(lid, m) for lid, m in sends] + self._hello_events(
                lost, now
            )
        if peer is None:
            self.protocol_errors += 1
            return self._drop(link_id, f"{msg.OPCODE} from {who} before its HELLO", now)
        allowed = _EDGE_OPCODES if link.role == "edge" else _INTERIOR_OPCODES
        if msg.OPCODE not in allowed:
            self.protocol_errors += 1
            return self._drop(link_id, f"{msg.OPCODE} from {who} is not allowed on an "
                                       f"{link.role} link", now)
        if link.role == "edge" and isinstance(msg, MAU) and msg.id != peer:
            self.protocol_errors += 1
            return self._drop(link_id, f"{who} sent the addresses of {msg.id!r} on an edge link",
                              now)
        return self._dispatch(link_id, link.role, msg, now)

    def _dispatch(self, link_id: int, role: Role, msg: Message, now: float) -> list[Action]:
        if isinstance(msg, RA):
            return self._on_ra(link_id, msg, now)
        if isinstance(msg, LSU):
            return self._on_lsu(link_id, msg, now)
        if isinstance(msg, LSR):
            lsu = self.lsdb.lsu_for(msg.target)
            return [self._send(link_id, lsu)] if lsu is not None else []
        if isinstance(msg, MAR):
            return self._on_mar(link_id, role, msg)
        if isinstance(msg, MAU):
            if role == "edge":
                return self._on_edge_mau(link_id, msg, now)
            return self._on_mau(link_id, msg, now)
        return []

    def _own_id(self, link_id: int, opcode: str, instance: int) -> list[Action]:
        """A flooded message under our id.  A lower instance is our previous
        life still travelling; a higher one is another router using our id."""
        if instance <= self.instance or instance in self._impostors:
            return []
        self._impostors.add(instance)
        peer = self.hello.peer_of(link_id)
        return [Log("error", f"duplicate router id {self.router_id!r}: a {opcode} of another "
                             f"router with this id (instance {instance}, ours {self.instance}) "
                             f"arrived on link {link_id} from {peer!r}")]

    def _on_ra(self, link_id: int, msg: RA, now: float) -> list[Action]:
        if msg.id == self.router_id:
            return self._own_id(link_id, "RA", msg.instance)
        behind = self.lsdb.receive_ra(msg, now)
        if behind is None:
            return self._full(msg.id)
        actions: list[Action] = []
        if behind:
            actions.append(self._send(link_id, LSR(self.router_id, msg.id)))
        if self.remote.note_advertised(msg.id, msg.instance, msg.mobile_seq):
            actions.append(self._send(link_id, self.remote.mar_for(msg.id, self.router_id)))
            self._routes_dirty = True
        key = (msg.instance, msg.ls_seq, msg.mobile_seq)
        last = self._ra_forwarded.get(msg.id)
        if last is None or last[0] != key or now - last[1] >= self.config.ra_interval_flux / 2:
            self._ra_forwarded[msg.id] = (key, now)
            actions += self._ra_down_tree(msg, exclude=link_id)
        return actions

    def _on_lsu(self, link_id: int, msg: LSU, now: float) -> list[Action]:
        if msg.id == self.router_id:
            return self._own_id(link_id, "LSU", msg.instance)
        result = self.lsdb.receive_lsu(msg, now)
        if result is LsuResult.ACCEPTED:
            return self._flood(msg, exclude=link_id)
        if result is LsuResult.REFUSED_FULL:
            return self._full(msg.id)
        return []

    def _on_mau(self, link_id: int, msg: MAU, now: float) -> list[Action]:
        if msg.id == self.router_id:
            return self._own_id(link_id, "MAU", msg.instance)
        if not self.lsdb.note_router(msg.id, now):
            return self._full(msg.id)
        result = self.remote.receive(msg)
        if result is MauResult.APPLIED:
            self._routes_dirty = True
            return self._flood(msg, exclude=link_id)
        if result is MauResult.GAP:
            return [self._send(link_id, self.remote.mar_for(msg.id, self.router_id))]
        if result is MauResult.REFUSED:
            return [Log("warning", f"address set of {msg.id!r} refused: more than "
                                   f"{self.remote.max_addresses} addresses")]
        return []

    def _on_edge_mau(self, link_id: int, msg: MAU, now: float) -> list[Action]:
        result = self.edges.receive(msg)
        if result is MauResult.GAP:
            return [self._send(link_id, self.edges.mar_for(msg.id, self.router_id))]
        if result is MauResult.REFUSED:
            return [Log("warning", f"address set of {msg.id!r} refused: more than "
                                   f"{self.edges.max_addresses} addresses")]
        if result is not MauResult.APPLIED:
            return []
        self._routes_dirty = True
        return self._readvertise() if self.mode == "interior" else []

    def _on_mar(self, link_id: int, role: Role, msg: MAR) -> list[Action]:
        if msg.target == self.router_id:
            if role == "edge" and self.mode == "interior":
                view = self.edge_views.get(link_id)
                return [self._send(link_id, view.full())] if view is not None else []
            return [self._send(link_id, self.advertised.full())]
        if role == "edge":
            return []
        full = self.remote.full_for(msg.target)
        return [self._send(link_id, full)] if full is not None else []

    def _full(self, router_id: str) -> list[Action]:
        if router_id in self._full_logged:
            return []
        self._full_logged.add(router_id)
        return [Log("warning", f"link-state database full ({self.lsdb.max_routers} routers): "
                               f"router {router_id!r} refused")]

    # ------------------------------------------------------------------
    # neighbours

    def _hello_events(self, events: list[HelloEvent], now: float) -> list[Action]:
        actions: list[Action] = []
        for ev in events:
            role = self._role(ev.link_id)
            if isinstance(ev, NeighbourUp):
                actions.append(Log("info", f"neighbour {ev.router_id!r} up on link {ev.link_id} "
                                           f"({role})"))
                self.sync.neighbour_up(ev.router_id)
                actions += self._neighbour_up(ev, role, now)
            elif isinstance(ev, NeighbourLost):
                actions.append(Log("info", f"neighbour {ev.router_id!r} lost on link "
                                           f"{ev.link_id}: {ev.reason}"))
                actions += self._neighbour_lost(ev, role, now)
        return actions

    def _neighbour_up(self, ev: NeighbourUp, role: Role | None, now: float) -> list[Action]:
        self._routes_dirty = True
        if role == "inter-router":
            actions = self._neighbours_changed(now)
            return actions + self._database_to(ev.link_id)
        if self.mode == "interior":
            # an edge attached to us: tell it what the network has
            view = self.edge_views[ev.link_id] = AddressSet(self.router_id, self.instance)
            view.set(self._edge_view(ev.router_id))
            return [self._send(ev.link_id, view.full())]
        # an edge router's uplink: our addresses
        return [self._send(ev.link_id, self.advertised.full())]

    def _neighbour_lost(self, ev: NeighbourLost, role: Role | None, now: float) -> list[Action]:
        self._routes_dirty = True
        if role == "inter-router":
            self.sync.neighbour_lost(ev.router_id, now)
            return self._neighbours_changed(now)
        if self.mode == "interior":
            self.edge_views.pop(ev.link_id, None)
            if ev.router_id not in self.edge_neighbours():
                self.edges.forget(ev.router_id)
                return self._readvertise()
            return []
        if ev.router_id not in self.edge_neighbours():
            self.sync.neighbour_lost(ev.router_id, now)
            self.edges.forget(ev.router_id)
        return []

    def _neighbours_changed(self, now: float) -> list[Action]:
        peers = {
            rid: n.cost
            for rid, n in self.hello.neighbours(self._links_of("inter-router")).items()
        }
        lsu = self.lsdb.set_neighbours(peers, now)
        return self._flood(lsu) if lsu is not None else []

    def _database_to(self, link_id: int) -> list[Action]:
        """Everything we hold, to a neighbour that just became two-way."""
        actions: list[Action] = [self._send(link_id, self.lsdb.own_lsu())]
        for rid in sorted(self.lsdb.routers):
            lsu = self.lsdb.lsu_for(rid)
            if lsu is not None:
                actions.append(self._send(link_id, lsu))
        actions.append(self._send(link_id, self.advertised.full()))
        for rid in sorted(self.remote.routers):
            full = self.remote.full_for(rid)
            if full is not None:
                actions.append(self._send(link_id, full))
        actions.append(self._send(link_id, self.lsdb.ra(self.advertised.seq)))
        return actions

    # ------------------------------------------------------------------
    # addresses

    def set_local_addresses(self, counts: Mapping[str, int], now: float) -> list[Action]:
        """Our tcpConnectors' addresses and how many of each."""
        self.local_counts = {a: n for a, n in counts.items() if n > 0}
        self._routes_dirty = True
        return self._readvertise()

    def _readvertise(self) -> list[Action]:
        if self.mode == "edge":
            mau = self.advertised.set(self.local_counts)
            if mau is None:
                return []
            return [self._send(lid, mau) for lid in sorted(self.edge_neighbours().values())]
        edge_sets = [self.edges.routers[e].counts for e in self.edge_neighbours()
                     if e in self.edges.routers]
        mau = self.advertised.set(sum_counts([self.local_counts, *edge_sets]))
        return self._flood(mau) if mau is not None else []

    def _edge_view(self, edge_id: str) -> dict[str, int]:
        """What the network offers an attached edge: every address with
        targets here, at other edges or at reachable routers, not its own."""
        reachable = self.lsdb.paths.cost
        tables: list[Mapping[str, int]] = [self.local_counts]
        tables += [e.counts for rid, e in self.edges.routers.items() if rid != edge_id]
        tables += [t for rid, t in self.remote.counts().items() if rid in reachable]
        return sum_counts(tables)

    # ------------------------------------------------------------------
    # time

    def tick(self, now: float) -> list[Action]:
        sends, events = self.hello.tick(now)
        actions: list[Action] = [self._send(lid, msg) for lid, msg in sends]
        actions += self._hello_events(events, now)
        if self.mode == "edge":
            return actions
        dropped = self.lsdb.expire(now)
        for rid in dropped:
            actions.append(Log("info", f"router {rid!r} dropped: not heard of for "
                                       f"{self.lsdb.remote_ls_max_age:g} s"))
        if dropped:
            for rid in list(self.remote.routers):
                if rid not in self.lsdb.routers:
                    self.remote.forget(rid)
                    self._ra_forwarded.pop(rid, None)
        if self.lsdb.recompute_due(now):
            self.lsdb.compute()
            self._routes_dirty = True
        if self.lsdb.ra_due(now):
            self.lsdb.ra_sent(now)
            actions += self._ra_down_tree(self.lsdb.ra(self.advertised.seq))
        for lid, view in self.edge_views.items():
            peer = self.hello.peer_of(lid)
            if peer is not None:
                mau = view.set(self._edge_view(peer))
                if mau is not None:
                    actions.append(self._send(lid, mau))
        return actions

    def next_due(self, now: float) -> float:
        """When ``tick`` must run next at the latest."""
        due = self.hello.next_due()
        times = [due] if due is not None else []
        if self.mode == "interior":
            times.append(self.lsdb.next_due(now))
        return min(times) if times else now + self.config.hello_interval

    # ------------------------------------------------------------------
    # results

    def routes(self) -> RouteTable:
        """The route table snapshot for the engine (rebuilt when changed)."""
        if self._routes is not None and not self._routes_dirty:
            return self._routes
        self._routes_dirty = False
        direct: dict[str, tuple[int, Mapping[str, int]]] = {}
        for rid, lid in self.edge_neighbours().items():
            if self.mode == "edge" and rid != self.uplink():
                continue
            entry = self.edges.routers.get(rid)
            if entry is not None:
                direct[rid] = (self._links[lid].cost, entry.counts)
        remote = self.remote.counts() if self.mode == "interior" else {}
        table = build_routes(
            self.router_id, self._routes_version, self.local_counts, remote, self.lsdb.paths,
            direct,
        )
        if self._routes is None or (table.routes, table.next_hops, table.costs) != (
            self._routes.routes, self._routes.next_hops, self._routes.costs
        ):
            self._routes_version += 1
            table = build_routes(
                self.router_id, self._routes_version, self.local_counts, remote,
                self.lsdb.paths, direct,
            )
            self._routes = table
        return self._routes

    def metrics(self) -> dict[str, float | int | None]:
        """Counters and gauges for the metrics page."""
        return {
            "linksUp": len(self.hello.two_way_links()),
            "neighbours": len(self.interior_neighbours()),
            "edges": len(self.edge_neighbours()) if self.mode == "interior" else 0,
            "lsdbRouters": len(self.lsdb.routers),
            "routeRecomputations": self.lsdb.recomputations,
            "lastTopoChange": self.lsdb.last_topology_change,
            "lsdbRefusals": self.lsdb.refused_full,
            "protocolErrors": self.protocol_errors,
            "linksRefused": self.links_refused,
            "helloMaxLatenessSeconds": self.hello.max_lateness,
            "helloStalls": self.hello.stalls,
        }

    def refresh(self, now: float) -> None:
        """Recomputes the paths now if a change is waiting for the next tick,
        so that what is read (readiness, views) is not a tick behind."""
        if self.mode == "interior" and self.lsdb.recompute_due(now):
            self.lsdb.compute()
            self._routes_dirty = True

    def sync_status(self, now: float) -> SyncStatus:
        # judged on current paths: between a change and the tick that
        # recomputes them, a lost neighbour would still look reachable and
        # its "resynchronising" entry would be cleared for good
        self.refresh(now)
        if self.mode == "edge":
            return self.sync.evaluate_edge(now, self.uplink(), self.edges)
        return self.sync.evaluate_interior(
            now, self.lsdb, self.remote, set(self.interior_neighbours()), self.edges,
            set(self.edge_neighbours()),
        )

    # ------------------------------------------------------------------

    def _send(self, link_id: int, msg: Message) -> Send:
        opcode, body = encode(msg)
        return Send(link_id, opcode, body)

    def _ra_down_tree(self, msg: RA, exclude: int | None = None) -> list[Action]:
        """RAs go only to the neighbours that reach their origin through us
        (N-1 deliveries per RA once paths agree, rather than two per link)."""
        return [
            self._send(lid, msg)
            for rid, lid in sorted(self.interior_neighbours().items(), key=lambda kv: kv[1])
            if lid != exclude and self.lsdb.on_tree(rid, msg.id)
        ]

    def _flood(self, msg: Message, exclude: int | None = None) -> list[Action]:
        return [
            self._send(lid, msg)
            for lid in sorted(self.interior_neighbours().values())
            if lid != exclude
        ]
