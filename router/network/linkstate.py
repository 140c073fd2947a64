"""Link state: ours, everyone else's, and the least-cost paths through them.

Each interior router's *link state* is its two-way neighbours and the cost of
the link to each, with a sequence number (``ls_seq``) bumped on every change.
The database holds the newest link state heard from every other interior
router: an LSU is accepted only when it is newer (a later instance of the
router, or the same instance with a higher sequence), and only then is it
flooded on.  An RA announces a router's current sequences; a receiver that is
behind asks for the link state (LSR).

Entries not refreshed by an RA or LSU for ``remoteLsMaxAgeSeconds`` are
dropped.  The database holds at most ``max_routers`` routers (ourselves
included, 128 as Skupper): an LSU or RA that would add more is refused and
counted, and the routers already known keep their state.

Paths: Dijkstra over the links both of whose ends list each other (a link
named by one end only is stale or half-up and is not used), least cost first
and, among equal costs, the lowest next-hop router id, so that every run on
the same database gives the same answer.  Changes are batched: they mark the
database dirty, ``recompute_due`` says when a recomputation is due and
``compute`` does it.  While the topology is in flux (within twice
``raIntervalFluxSeconds`` of a change, as Skupper) RAs go out every
``raIntervalFluxSeconds`` instead of every ``raIntervalSeconds``.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field

from router.network.messages import LSU, RA

MAX_ROUTERS = 128
REMOTE_LS_MAX_AGE = 60.0
RA_INTERVAL = 30.0
RA_INTERVAL_FLUX = 4.0


class LsuResult(enum.Enum):
    ACCEPTED = "accepted"  # newer: stored, flood it on
    STALE = "stale"  # not newer than what we hold: drop it
    OWN = "own"  # about ourselves: ignored
    REFUSED_FULL = "refused: database full"


@dataclass
class RouterEntry:
    """What we know of one other interior router."""

    router_id: str
    instance: int | None = None
    ls_seq: int = 0  # sequence of the link state held; 0: none yet
    peers: dict[str, int] = field(default_factory=dict)
    advertised_ls_seq: int = 0  # the newest sequence announced (RA or LSU)
    last_seen: float | None = None  # last RA or LSU from it; None: only named by others
    learned: float = 0.0

    @property
    def has_link_state(self) -> bool:
        return self.ls_seq > 0 and self.ls_seq >= self.advertised_ls_seq


@dataclass(frozen=True)
class Paths:
    """Least-cost paths from us: per reachable router, its next hop and cost."""

    next_hop: Mapping[str, str]
    cost: Mapping[str, int]

    def reachable(self) -> frozenset[str]:
        return frozenset(self.cost)


class LinkStateDB:
    def __init__(
        self,
        router_id: str,
        instance: int,
        *,
        max_routers: int = MAX_ROUTERS,
        remote_ls_max_age: float = REMOTE_LS_MAX_AGE,
        ra_interval: float = RA_INTERVAL,
        ra_interval_flux: float = RA_INTERVAL_FLUX,
        recompute_hold: float = 0.0,
    ) -> None:
        self.router_id = router_id
        self.instance = instance
        self.max_routers = max_routers
        self.remote_ls_max_age = remote_ls_max_age
        self.ra_interval = ra_interval
        self.ra_interval_flux = ra_interval_flux
        self.recompute_hold = recompute_hold
        self.ls_seq = 1
        self.peers: dict[str, int] = {}
        self.routers: dict[str, RouterEntry] = {}
        self.paths = Paths({}, {})
        self.refused_full = 0
        self.last_refused: float | None = None
        self.recomputations = 0
        self.last_topology_change: float | None = None
        self._dirty_since: float | None = None
        self._last_ra: float | None = None
        self._next_expiry: float | None = None  # no entry can expire before
        self._neighbour_hops: dict[str, Mapping[str, str]] = {}

    # -- our own link state

    def set_neighbours(self, peers: Mapping[str, int], now: float) -> LSU | None:
        """Our two-way neighbours and link costs; the LSU to flood when changed."""
        if dict(peers) == self.peers:
            return None
        self.peers = dict(peers)
        self.ls_seq += 1
        for peer in self.peers:
            self.note_router(peer, now)  # a neighbour beyond the bound stays unknown
        self._changed(now)
        return self.own_lsu()

    def own_lsu(self) -> LSU:
        return LSU(self.router_id, self.instance, self.ls_seq, dict(self.peers))

    def ra(self, mobile_seq: int) -> RA:
        return RA(self.router_id, self.instance, self.ls_seq, mobile_seq)

    # -- input from others

    def receive_lsu(self, msg: LSU, now: float) -> LsuResult:
        if msg.id == self.router_id:
            return LsuResult.OWN
        entry = self.routers.get(msg.id)
        if entry is not None and not _newer(msg.instance, msg.ls_seq, entry):
            if entry.instance == msg.instance and entry.ls_seq == msg.ls_seq:
                entry.last_seen = now  # a repeat still says the router is alive
            return LsuResult.STALE
        new_ids = {msg.id, *msg.peers} - self.routers.keys() - {self.router_id}
        if len(self.routers) + 1 + len(new_ids) > self.max_routers:
            self._refuse(now)
            return LsuResult.REFUSED_FULL
        entry = self._learn(msg.id, now)
        entry.instance = msg.instance
        entry.ls_seq = msg.ls_seq
        entry.advertised_ls_seq = max(msg.ls_seq, entry.advertised_ls_seq)
        entry.peers = dict(msg.peers)
        entry.last_seen = now
        for peer in msg.peers:
            if peer != self.router_id:
                self._learn(peer, now)
        self._changed(now)
        return LsuResult.ACCEPTED

    def receive_ra(self, msg: RA, now: float) -> bool | None:
        """Note an RA.  True: our copy of its link state is behind (send an
        LSR); False: up to date; None: refused, the database is full."""
        if msg.id == self.router_id:
            return False
        entry = self.routers.get(msg.id)
        if entry is None:
            if len(self.routers) + 1 >= self.max_routers:
                self._refuse(now)
                return None
            entry = self._learn(msg.id, now)
        if entry.instance is not None and msg.instance < entry.instance:
            return False  # an old instance's RA still travelling
        if entry.instance != msg.instance:
            # a restart: everything we held of it is from the previous life
            entry.instance = msg.instance
            entry.ls_seq = 0
            entry.advertised_ls_seq = 0
            if entry.peers:
                entry.peers = {}
                self._changed(now)
        entry.advertised_ls_seq = max(entry.advertised_ls_seq, msg.ls_seq)
        entry.last_seen = now
        return entry.ls_seq < entry.advertised_ls_seq

    def lsu_for(self, router_id: str) -> LSU | None:
        """Our copy of a router's link state (ours included), to answer an LSR."""
        if router_id == self.router_id:
            return self.own_lsu()
        entry = self.routers.get(router_id)
        if entry is None or entry.instance is None or entry.ls_seq == 0:
            return None
        return LSU(entry.router_id, entry.instance, entry.ls_seq, dict(entry.peers))

    def forget(self, router_id: str, now: float) -> None:
        """Drop a router (e.g. its id was refused as a duplicate)."""
        if self.routers.pop(router_id, None) is not None:
            self._changed(now)

    def note_router(self, router_id: str, now: float) -> bool:
        """Learn of a router by other means (its MAU); False when the
        database is full and it would be a new entry."""
        if router_id == self.router_id or router_id in self.routers:
            return True
        if len(self.routers) + 1 >= self.max_routers:
            self._refuse(now)
            return False
        self._learn(router_id, now)
        return True

    def _refuse(self, now: float) -> None:
        self.refused_full += 1
        self.last_refused = now

    def full_recently(self, now: float) -> bool:
        """A router was refused for want of room within remoteLsMaxAgeSeconds:
        the network is larger than the database may hold."""
        return self.last_refused is not None and now - self.last_refused < self.remote_ls_max_age

    def _learn(self, router_id: str, now: float) -> RouterEntry:
        entry = self.routers.get(router_id)
        if entry is None:
            entry = self.routers[router_id] = RouterEntry(router_id, learned=now)
        return entry

    def _changed(self, now: float) -> None:
        self.last_topology_change = now
        if self._dirty_since is None:
            self._dirty_since = now

    # -- time

    def expire(self, now: float) -> list[str]:
        """Drop entries older than remoteLsMaxAgeSeconds; the ids dropped.
        A router only named by others (no RA or LSU of its own yet) is kept
        while someone names it, and as long as an entry would be otherwise."""
        if self._next_expiry is not None and now < self._next_expiry:
            return []  # entries only ever get fresher, new ones expire later
        named = set(self.peers)
        for entry in self.routers.values():
            named.update(entry.peers)
        dropped = []
        for rid, entry in list(self.routers.items()):
            seen = entry.last_seen if entry.last_seen is not None else entry.learned
            if now >= seen + self.remote_ls_max_age and (
                entry.last_seen is not None or rid not in named
            ):
                dropped.append(rid)
                del self.routers[rid]
        if dropped:
            self._changed(now)
        self._next_expiry = min(
            (
                (e.last_seen if e.last_seen is not None else e.learned) + self.remote_ls_max_age
                for e in self.routers.values()
            ),
            default=None,
        )
        return dropped

    def in_flux(self, now: float) -> bool:
        last = self.last_topology_change
        return last is not None and now - last <= 2 * self.ra_interval_flux

    def ra_due(self, now: float) -> bool:
        if self._last_ra is None:
            return True
        interval = self.ra_interval_flux if self.in_flux(now) else self.ra_interval
        return now >= self._last_ra + interval

    def ra_sent(self, now: float) -> None:
        self._last_ra = now

    def next_due(self, now: float) -> float:
        """The earliest time something here needs a tick (RA, recompute, expiry)."""
        times = []
        if self._dirty_since is not None:
            times.append(self._dirty_since + self.recompute_hold)
        if self._last_ra is None:
            times.append(now)
        else:
            times.append(
                self._last_ra
                + (self.ra_interval_flux if self.in_flux(now) else self.ra_interval)
            )
        for entry in self.routers.values():
            seen = entry.last_seen if entry.last_seen is not None else entry.learned
            times.append(seen + self.remote_ls_max_age)
        return min(times)

    # -- paths

    def recompute_due(self, now: float) -> bool:
        return self._dirty_since is not None and now >= self._dirty_since + self.recompute_hold

    def compute(self) -> Paths:
        """Recompute least-cost paths from the database as it is now."""
        self._dirty_since = None
        self.recomputations += 1
        graph = self.graph()
        self.paths = shortest_paths(self.router_id, graph)
        # each neighbour's own next hops: who receives an origin's RA from us
        self._neighbour_hops = {
            n: shortest_paths(n, graph).next_hop for n in self.peers if n in self.routers
        }
        return self.paths

    def on_tree(self, neighbour: str, origin: str) -> bool:
        """Whether ``neighbour`` reaches ``origin`` through us, i.e. whether
        we are on the shortest-path tree that carries origin's RAs to it.
        Unknown (no path computed yet) counts as yes: a duplicate RA is
        harmless, a missing one only delays a refresh."""
        hops = self._neighbour_hops.get(neighbour)
        if hops is None or origin not in hops:
            return True
        return hops[origin] == self.router_id

    def graph(self) -> dict[str, dict[str, int]]:
        """Usable links: those both of whose ends list each other."""
        states = {rid: e.peers for rid, e in self.routers.items()}
        states[self.router_id] = self.peers
        return {
            u: {v: c for v, c in peers.items() if u in states.get(v, {})}
            for u, peers in states.items()
        }


def _newer(instance: int, ls_seq: int, entry: RouterEntry) -> bool:
    if entry.instance is None or instance > entry.instance:
        return True
    return instance == entry.instance and ls_seq > entry.ls_seq


def shortest_paths(source: str, graph: Mapping[str, Mapping[str, int]]) -> Paths:
    """Dijkstra from ``source``.  Labels are (cost, next hop): among paths of
    equal cost the one through the lowest next-hop id wins, deterministically."""
    best: dict[str, tuple[int, str]] = {}
    heap: list[tuple[int, str, str]] = []
    for v, c in graph.get(source, {}).items():
        if v != source:
            heapq.heappush(heap, (c, v, v))
    done: set[str] = {source}
    while heap:
        cost, hop, node = heapq.heappop(heap)
        if node in done:
            continue
        done.add(node)
        best[node] = (cost, hop)
        for v, c in graph.get(node, {}).items():
            if v not in done:
                heapq.heappush(heap, (cost + c, hop, v))
    return Paths({n: h for n, (_, h) in best.items()}, {n: c for n, (c, _) in best.items()})
