"""The route table snapshot: the contract between this control plane and the
engine's data plane (issue 11).

For every address with a target anywhere in the network: how many targets
are local (this router's tcpConnectors), and which other routers hold
targets, with their target count, the cost of the path to them and the
neighbour (next hop) a flow for them is handed to.  The snapshot is
immutable and versioned; a new one replaces the old whole.

* A remote interior router's targets include those of the edges attached to
  it: it advertises them as its own and relays to them itself.
* On an interior, an edge attached to it appears as a destination router
  whose next hop is the edge itself and whose cost is the edge link's cost.
* On an edge, everything not local is reached through its interior: one
  destination, the interior, as next hop, carrying the network's count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from router.network.linkstate import Paths


@dataclass(frozen=True, order=True)
class RemoteDestination:
    """One router holding targets for an address, as seen from here."""

    cost: int  # path cost to ``router_id`` (sum of link costs)
    router_id: str  # the router whose targets these are
    next_hop: str  # the neighbour a flow for it goes to first
    targets: int  # how many targets it advertises


@dataclass(frozen=True)
class AddressRoute:
    address: str
    local_targets: int
    remote: tuple[RemoteDestination, ...]  # least cost first, then router id

    @property
    def reachable(self) -> bool:
        """Has a target anywhere: a tcpListener for it is up (Skupper)."""
        return self.local_targets > 0 or bool(self.remote)

    @property
    def remote_targets(self) -> int:
        return sum(d.targets for d in self.remote)


@dataclass(frozen=True)
class RouteTable:
    """One router's routes, as handed to the engine."""

    router_id: str
    version: int
    routes: Mapping[str, AddressRoute]
    next_hops: Mapping[str, str]  # every reachable router -> next hop
    costs: Mapping[str, int]  # every reachable router -> path cost

    def route(self, address: str) -> AddressRoute | None:
        return self.routes.get(address)


def build_routes(
    router_id: str,
    version: int,
    local: Mapping[str, int],
    remote: Mapping[str, Mapping[str, int]],
    paths: Paths,
    direct: Mapping[str, tuple[int, Mapping[str, int]]] | None = None,
) -> RouteTable:
    """``local``: our addresses and counts.  ``remote``: per interior router
    its advertised set (only routers with a path are used).  ``direct``: per
    directly attached router reached without link state (our edges, or an
    edge's interior), its link cost and address set."""
    dests: dict[str, list[RemoteDestination]] = {}
    for rid, table in remote.items():
        if rid == router_id or rid not in paths.cost:
            continue
        cost, hop = paths.cost[rid], paths.next_hop[rid]
        for address, n in table.items():
            if n > 0:
                dests.setdefault(address, []).append(RemoteDestination(cost, rid, hop, n))
    next_hops = dict(paths.next_hop)
    costs = dict(paths.cost)
    for rid, (cost, table) in (direct or {}).items():
        next_hops[rid] = rid
        costs[rid] = cost
        for address, n in table.items():
            if n > 0:
                dests.setdefault(address, []).append(RemoteDestination(cost, rid, rid, n))
    routes: dict[str, AddressRoute] = {}
    for address in sorted({*dests, *(a for a, n in local.items() if n > 0)}):
        routes[address] = AddressRoute(
            address, max(local.get(address, 0), 0), tuple(sorted(dests.get(address, ())))
        )
    return RouteTable(router_id, version, routes, next_hops, costs)
