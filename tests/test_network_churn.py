"""Random churn on simulated networks: after every storm of link cuts,
re-dials, kills and restarts, once quiet, every router's routes are exactly
those of the real topology."""

from __future__ import annotations

import os
import random

import pytest

from router.network.linkstate import Paths
from router.network.simulation import SimNet

SEEDS = int(os.environ.get("SKIFF_CHURN_SEEDS", "12"))  # more for a longer hunt


def _truth(net: SimNet) -> dict[str, dict[str, int]]:
    graph: dict[str, dict[str, int]] = {r: {} for r in net.routers}
    for link in net.conns.values():
        if link.a in graph and link.b in graph:
            for u, v in ((link.a, link.b), (link.b, link.a)):
                graph[u][v] = min(graph[u].get(v, link.cost), link.cost)
    return graph


def _reference_paths(source: str, graph: dict[str, dict[str, int]]) -> Paths:
    """Independent of the code under test: Floyd-Warshall distances; the next
    hop is the lowest-id neighbour on some least-cost path."""
    inf = float("inf")
    nodes = sorted(graph)
    d = {(u, v): (0 if u == v else graph[u].get(v, inf)) for u in nodes for v in nodes}
    for k in nodes:
        for u in nodes:
            for v in nodes:
                if d[u, k] + d[k, v] < d[u, v]:
                    d[u, v] = d[u, k] + d[k, v]
    cost: dict[str, int] = {}
    hop: dict[str, str] = {}
    for t in nodes:
        if t == source or d[source, t] == inf:
            continue
        cost[t] = int(d[source, t])
        hop[t] = min(n for n, c in graph[source].items() if c + d[n, t] == d[source, t])
    return Paths(hop, cost)


def _check(net: SimNet, owned: dict[str, dict[str, int]]) -> None:
    graph = _truth(net)
    for rid, core in net.routers.items():
        want = _reference_paths(rid, graph)
        assert dict(core.lsdb.paths.cost) == dict(want.cost), rid
        assert dict(core.lsdb.paths.next_hop) == dict(want.next_hop), rid
        expected: dict[str, set[tuple[str, int]]] = {}
        for other, counts in owned.items():
            if other != rid and other in want.cost:
                for address, n in counts.items():
                    expected.setdefault(address, set()).add((other, n))
        got = {
            address: {(d.router_id, d.targets) for d in route.remote}
            for address, route in core.routes().routes.items()
            if route.remote
        }
        assert got == expected, rid


@pytest.mark.parametrize("seed", range(SEEDS))
def test_random_churn_converges_to_the_truth(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randrange(3, 9)
    ids = [f"R{i}" for i in range(n)]
    net = SimNet(remote_ls_max_age=20.0)
    instance = dict.fromkeys(ids, 1)
    owned: dict[str, dict[str, int]] = {}
    for rid in ids:
        net.add(rid)
    pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]
    for a, b in rng.sample(pairs, k=min(len(pairs), n + rng.randrange(n))):
        net.connect(a, b, cost=rng.randrange(1, 4))
    checked: list[int] = []
    for _ in range(4):
        for _ in range(rng.randrange(1, 6)):
            action = rng.random()
            live = sorted(net.routers)
            if action < 0.3 and net.conns:
                net.cut(rng.choice(sorted(net.conns)))
            elif action < 0.55 and len(live) >= 2:
                a, b = rng.sample(live, 2)
                net.connect(a, b, cost=rng.randrange(1, 4))
            elif action < 0.65 and len(live) > 2:
                victim = rng.choice(live)
                net.kill(victim)
                owned.pop(victim, None)
                net.run(rng.choice([0.0, 0.5, 25.0]))
                instance[victim] += 1
                net.add(victim, instance=instance[victim])
                for peer in rng.sample(sorted(set(live) - {victim}), k=2):
                    net.connect(victim, peer, cost=rng.randrange(1, 4))
            else:
                rid = rng.choice(live)
                counts = {f"svc{rng.randrange(4)}": rng.randrange(1, 3)
                          for _ in range(rng.randrange(3))}
                owned[rid] = counts
                net.set_addresses(rid, counts)
            net.run(rng.choice([0.0, 0.1, 1.0]))
        # quiet: one hello max age for losses, then the periodic machinery
        net.run(5.0)
        _check(net, owned)
        checked.append(sum(len(r.lsdb.paths.cost) for r in net.routers.values()))
    assert any(checked)  # not vacuous: some paths were compared
