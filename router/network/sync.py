"""Readiness means fully synchronised.

A router answers network-wide reads from its replica, and says ``/readyz``
ready, only when the replica is complete: every router it knows of (reachable
through the link-state database, or named by a reachable router's link state)
has delivered its link state and its address set at the latest sequence
announced.  Until then the reason says what is missing, e.g.
``link state: 3 of 9 routers synchronised``.

* A router whose inter-router connectors have not yet brought up a first
  neighbour is not synchronised (it may be starting into a running network).
* Losing a neighbour re-enters "not synchronised" until that router is
  reachable again with its state at the latest sequence (over the same link
  when it comes back, or over another path), or has left the database
  (``remoteLsMaxAgeSeconds`` after it was last heard of).
* An interior also waits for the address set of each attached edge; an edge
  waits for its uplink and for the network's address set from its interior.

``SyncTracker.evaluate`` is cheap (linear in the database) and side-effect
free apart from clearing resolved losses and noting when the replica was
last complete, which gives a stale read its age.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from router.network.addresses import AddressTables
from router.network.linkstate import LinkStateDB


@dataclass(frozen=True)
class SyncStatus:
    ready: bool
    reason: str  # empty when ready
    routers: int = 1  # routers counted, ourselves included
    link_state_synced: int = 1
    addresses_synced: int = 1
    last_ready: float | None = None  # when the replica was last complete

    def age(self, now: float) -> float | None:
        """How old the replica is: 0 when synchronised, None if it never was."""
        return None if self.last_ready is None else max(0.0, now - self.last_ready)


class SyncTracker:
    def __init__(self) -> None:
        self.expected_links = 0  # inter-router/edge connectors configured (the wiring sets it)
        self.lost: dict[str, float] = {}
        self.last_ready: float | None = None
        self.had_neighbour = False

    def neighbour_up(self, router_id: str) -> None:
        self.had_neighbour = True

    def neighbour_lost(self, router_id: str, now: float) -> None:
        self.lost.setdefault(router_id, now)

    def _finish(self, now: float, problems: list[str], routers: int, ls: int,
                addr: int) -> SyncStatus:
        ready = not problems
        if ready:
            self.last_ready = now
        return SyncStatus(ready, "; ".join(problems), routers, ls, addr, self.last_ready)

    def evaluate_interior(
        self,
        now: float,
        lsdb: LinkStateDB,
        addresses: AddressTables,
        neighbours: Collection[str],
        edges: AddressTables,
        edge_neighbours: Collection[str],
    ) -> SyncStatus:
        problems: list[str] = []
        if self.expected_links and not neighbours and not self.had_neighbour:
            problems.append(
                f"no neighbour yet ({self.expected_links} inter-router connector"
                f"{'s' if self.expected_links != 1 else ''} configured)"
            )
        if lsdb.full_recently(now):
            problems.append(
                f"link-state database full: routers beyond {lsdb.max_routers} refused "
                f"({lsdb.refused_full} refusals)"
            )
        reachable = set(lsdb.paths.cost)
        named = set(lsdb.peers)
        for rid in reachable:
            entry = lsdb.routers.get(rid)
            if entry is not None:
                named.update(entry.peers)
        counted = {
            rid
            for rid, e in lsdb.routers.items()
            if rid in reachable or (rid in named and not e.has_link_state)
        }
        ls_ok = {rid for rid in counted if lsdb.routers[rid].has_link_state}
        addr_ok = {
            rid
            for rid in counted
            if (a := addresses.routers.get(rid)) is not None
            and a.synchronised
            and a.instance == lsdb.routers[rid].instance
        }
        total = len(counted) + 1
        if len(ls_ok) < len(counted):
            problems.append(f"link state: {len(ls_ok) + 1} of {total} routers synchronised")
        if len(addr_ok) < len(counted):
            problems.append(f"addresses: {len(addr_ok) + 1} of {total} routers synchronised")
        for rid, since in list(self.lost.items()):
            if rid not in lsdb.routers or (rid in reachable and rid in ls_ok and rid in addr_ok):
                del self.lost[rid]
            elif rid not in reachable:
                problems.append(
                    f"resynchronising: neighbour {rid} lost {now - since:.1f} s ago "
                    "and not reachable"
                )
        missing_edges = sorted(
            e for e in edge_neighbours
            if (a := edges.routers.get(e)) is None or not a.synchronised
        )
        if missing_edges:
            problems.append(f"addresses: waiting for edge {', '.join(missing_edges)}")
        return self._finish(now, problems, total, len(ls_ok) + 1, len(addr_ok) + 1)

    def evaluate_edge(
        self, now: float, uplink: str | None, views: AddressTables
    ) -> SyncStatus:
        problems: list[str] = []
        if uplink is None:
            problems.append(
                "no uplink to an interior router yet" if not self.had_neighbour
                else "resynchronising: uplink to the interior router lost"
            )
        else:
            view = views.routers.get(uplink)
            if view is None or not view.synchronised:
                problems.append(f"addresses: waiting for the network's addresses from {uplink}")
        return self._finish(now, problems, 2, 2, 1 if problems else 2)


def describe(status: SyncStatus, now: float) -> Mapping[str, object]:
    """What a stale read or /readyz shows."""
    return {
        "ready": status.ready,
        "reason": status.reason,
        "routers": status.routers,
        "linkStateSynchronised": status.link_state_synced,
        "addressesSynchronised": status.addresses_synced,
        "replicaAgeSeconds": status.age(now),
    }
