"""Mobile addresses: which router has targets for which address, by sequence.

Each router advertises the addresses of its local tcpConnectors with a
target count, under a mobile sequence (``mobile_seq``) bumped on every
change.  A change goes out as an incremental MAU (``add``: new addresses and
changed counts, ``del``: addresses gone) carrying the new sequence; a
receiver applies it only on top of the sequence just before, and otherwise
asks for the full set with a MAR.  RAs carry the current sequence, so a
receiver that missed an update notices within one RA interval.

An edge router does not run link state: it sends its addresses to its
interior router over the edge link, and the interior advertises them as its
own (the interior reaches them through that link).  The interior in turn
tells each edge, with the same MAU machinery, which addresses have targets
elsewhere in the network (leaving out the edge's own).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from router.network.messages import MAR, MAU, MAX_ADDRESSES


def sum_counts(tables: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for table in tables:
        for address, n in table.items():
            total[address] = total.get(address, 0) + n
    return total


class AddressSet:
    """One advertised set (ours, or the view an interior gives one edge),
    turning each new desired state into an incremental MAU."""

    def __init__(self, router_id: str, instance: int) -> None:
        self.router_id = router_id
        self.instance = instance
        self.seq = 0
        self.counts: dict[str, int] = {}

    def set(self, counts: Mapping[str, int]) -> MAU | None:
        """The whole desired set (zero counts mean absent); the MAU to send
        when it changed."""
        new = {a: n for a, n in counts.items() if n > 0}
        if new == self.counts:
            return None
        add = {a: n for a, n in new.items() if self.counts.get(a) != n}
        gone = tuple(sorted(a for a in self.counts if a not in new))
        self.counts = new
        self.seq += 1
        return MAU(self.router_id, self.instance, self.seq, add=add or None, deleted=gone or None)

    def full(self) -> MAU:
        return MAU(self.router_id, self.instance, self.seq, exist=dict(self.counts))


class MauResult(enum.Enum):
    APPLIED = "applied"  # our copy moved forward: flood it on
    STALE = "stale"  # not newer: drop it
    GAP = "gap"  # an increment on top of a sequence we do not hold: send a MAR
    REFUSED = "refused"  # would exceed the bound on addresses per router


@dataclass
class RouterAddresses:
    """Our copy of one other router's address set."""

    router_id: str
    instance: int | None = None
    seq: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    delivered: bool = False  # a full set (or increments on it) has been applied
    advertised_seq: int = 0  # the newest sequence announced by an RA

    @property
    def synchronised(self) -> bool:
        return self.delivered and self.seq >= self.advertised_seq


class AddressTables:
    """Address sets of other routers (remote interiors, or attached edges)."""

    def __init__(self, max_addresses: int = MAX_ADDRESSES) -> None:
        self.max_addresses = max_addresses
        self.routers: dict[str, RouterAddresses] = {}
        self.refused = 0

    def receive(self, msg: MAU) -> MauResult:
        entry = self.routers.get(msg.id)
        if entry is None:
            entry = self.routers[msg.id] = RouterAddresses(msg.id)
        if entry.instance is not None and msg.instance < entry.instance:
            return MauResult.STALE
        if entry.instance != msg.instance:
            self._reset(entry, msg.instance)
        if msg.exist is not None:
            if entry.delivered and msg.mobile_seq <= entry.seq:
                return MauResult.STALE
            if len(msg.exist) > self.max_addresses:
                self.refused += 1
                return MauResult.REFUSED
            entry.counts = dict(msg.exist)
        else:
            if msg.mobile_seq <= entry.seq and entry.delivered:
                return MauResult.STALE
            if msg.mobile_seq != entry.seq + 1 or not (entry.delivered or entry.seq == 0):
                return MauResult.GAP
            counts = dict(entry.counts)
            for address in msg.deleted or ():
                counts.pop(address, None)
            counts.update(msg.add or {})
            if len(counts) > self.max_addresses:
                self.refused += 1
                return MauResult.REFUSED
            entry.counts = counts
        entry.seq = msg.mobile_seq
        entry.delivered = True
        entry.advertised_seq = max(entry.advertised_seq, entry.seq)
        return MauResult.APPLIED

    def note_advertised(self, router_id: str, instance: int, mobile_seq: int) -> bool:
        """An RA announced a router's mobile sequence; True when our copy is
        behind (send a MAR)."""
        entry = self.routers.get(router_id)
        if entry is None:
            entry = self.routers[router_id] = RouterAddresses(router_id)
        if entry.instance is not None and instance < entry.instance:
            return False
        if entry.instance != instance:
            self._reset(entry, instance)
        entry.advertised_seq = max(entry.advertised_seq, mobile_seq)
        return not entry.synchronised

    def mar_for(self, router_id: str, requester: str) -> MAR:
        entry = self.routers.get(router_id)
        have = entry.seq if entry is not None and entry.delivered else 0
        return MAR(requester, router_id, have)

    def full_for(self, router_id: str) -> MAU | None:
        """Our copy of a router's full set, to answer a MAR or a new neighbour."""
        entry = self.routers.get(router_id)
        if entry is None or entry.instance is None or not entry.delivered:
            return None
        return MAU(entry.router_id, entry.instance, entry.seq, exist=dict(entry.counts))

    def forget(self, router_id: str) -> bool:
        return self.routers.pop(router_id, None) is not None

    def counts(self) -> dict[str, dict[str, int]]:
        return {rid: e.counts for rid, e in self.routers.items() if e.counts}

    @staticmethod
    def _reset(entry: RouterAddresses, instance: int) -> None:
        entry.instance = instance
        entry.seq = 0
        entry.counts = {}
        entry.delivered = False
        entry.advertised_seq = 0
