"""A router's core under a hostile or confused peer: any sequence of valid
(but arbitrary) messages, on any link, in any order, never raises, never
breaks the bounds, and never touches the state learned over other links
except through the protocol's own rules."""

from __future__ import annotations

import random
from typing import Any

import pytest

from router.network.core import Close, NetworkConfig, RouterCore, Send
from router.network.messages import LSR, LSU, MAR, MAU, RA, Hello, Message, encode

IDS = ["A", "B", "C", "D", "E", "F", "G"]
ADDRS = ["db", "web", "x", "y"]


def _counts(rng: random.Random) -> dict[str, int]:
    return {a: rng.randrange(1, 4) for a in rng.sample(ADDRS, rng.randrange(len(ADDRS)))}


def _message(rng: random.Random) -> Message:
    rid = rng.choice(IDS)
    inst = rng.randrange(1, 4)
    seq = rng.randrange(0, 6)
    kind = rng.randrange(6)
    if kind == 0:
        return Hello(rid, inst, tuple(rng.sample(IDS, rng.randrange(3))))
    if kind == 1:
        return RA(rid, inst, seq, rng.randrange(0, 6))
    if kind == 2:
        peers = {p: rng.randrange(1, 5) for p in rng.sample(IDS, rng.randrange(4)) if p != rid}
        return LSU(rid, inst, seq, peers)
    if kind == 3:
        return LSR(rid, rng.choice(IDS))
    if kind == 4:
        if rng.random() < 0.5:
            return MAU(rid, inst, seq, exist=_counts(rng))
        add = _counts(rng)
        gone = tuple(a for a in rng.sample(ADDRS, rng.randrange(2)) if a not in add)
        return MAU(rid, inst, seq + 1, add=add, deleted=gone or None)
    return MAR(rid, rng.choice(IDS), seq)


@pytest.mark.parametrize("mode", ["interior", "edge"])
@pytest.mark.parametrize("seed", range(6))
def test_arbitrary_message_sequences(mode: str, seed: int) -> None:
    rng = random.Random(seed)
    core = RouterCore(NetworkConfig("A", 2, mode=mode, max_routers=5))  # type: ignore[arg-type]
    now = 0.0
    links: set[int] = set()
    next_link = 1
    for _ in range(3000):
        now += rng.choice([0.0, 0.01, 0.3, 1.5])
        r = rng.random()
        actions: list[Any]
        if r < 0.05 or not links:
            role = rng.choice(["inter-router", "edge"])
            actions = core.link_opened(next_link, role, now, cost=rng.randrange(1, 4))  # type: ignore[arg-type]
            links.add(next_link)
            next_link += 1
        elif r < 0.08:
            lid = rng.choice(sorted(links))
            actions = core.link_closed(lid, now)
            links.discard(lid)
        elif r < 0.15:
            actions = core.tick(now)
        elif r < 0.18:
            actions = core.set_local_addresses(_counts(rng), now)
        else:
            lid = rng.choice(sorted(links))
            opcode, body = encode(_message(rng))
            actions = core.receive(lid, opcode, body, now)
        for action in actions:
            if isinstance(action, Close):
                links.discard(action.link_id)
                core.link_closed(action.link_id, now)
            elif isinstance(action, Send):
                assert action.opcode in {"HELLO", "RA", "LSU", "LSR", "MAU", "MAR"}
        # invariants
        assert len(core.lsdb.routers) + 1 <= 5
        assert "A" not in core.lsdb.routers
        table = core.routes()
        for route in table.routes.values():
            assert all(d.router_id != "A" for d in route.remote)
            assert all(d.next_hop in table.next_hops for d in route.remote)
        core.sync_status(now)
        core.next_due(now)
