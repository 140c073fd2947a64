"""Link-state database and least-cost paths."""

from __future__ import annotations

from router.network.linkstate import LinkStateDB, LsuResult, shortest_paths
from router.network.messages import LSU, RA


def test_own_link_state_bumps_on_change_only() -> None:
    db = LinkStateDB("A", 1)
    assert db.ls_seq == 1
    lsu = db.set_neighbours({"B": 1}, 0.0)
    assert lsu == LSU("A", 1, 2, {"B": 1})
    assert db.set_neighbours({"B": 1}, 1.0) is None
    assert db.set_neighbours({"B": 5}, 2.0) is not None and db.ls_seq == 3


def test_lsu_accepted_only_when_newer() -> None:
    db = LinkStateDB("A", 1)
    assert db.receive_lsu(LSU("B", 5, 3, {"A": 1}), 0.0) is LsuResult.ACCEPTED
    assert db.receive_lsu(LSU("B", 5, 3, {"A": 1}), 0.1) is LsuResult.STALE
    assert db.receive_lsu(LSU("B", 5, 2, {}), 0.2) is LsuResult.STALE
    assert db.receive_lsu(LSU("B", 4, 99, {}), 0.3) is LsuResult.STALE  # an older instance
    assert db.receive_lsu(LSU("B", 6, 1, {}), 0.4) is LsuResult.ACCEPTED  # restarted
    assert db.routers["B"].peers == {} and db.routers["B"].instance == 6
    assert db.receive_lsu(LSU("A", 1, 50, {}), 0.5) is LsuResult.OWN


def test_ra_asks_for_link_state_when_behind() -> None:
    db = LinkStateDB("A", 1)
    assert db.receive_ra(RA("B", 5, 3, 0), 0.0) is True
    db.receive_lsu(LSU("B", 5, 3, {"A": 1}), 0.1)
    assert db.receive_ra(RA("B", 5, 3, 0), 0.2) is False
    assert db.receive_ra(RA("B", 5, 4, 0), 0.3) is True
    # a restart forgets the old link state
    assert db.receive_ra(RA("B", 9, 1, 0), 0.4) is True
    assert db.routers["B"].peers == {}


def test_database_bounded_refusals_counted_state_kept() -> None:
    db = LinkStateDB("A", 1, max_routers=3)
    assert db.receive_lsu(LSU("B", 1, 1, {"A": 1, "C": 1}), 0.0) is LsuResult.ACCEPTED
    assert set(db.routers) == {"B", "C"}
    # D would be a fourth router
    assert db.receive_lsu(LSU("C", 1, 1, {"B": 1, "D": 1}), 0.1) is LsuResult.REFUSED_FULL
    assert db.receive_lsu(LSU("D", 1, 1, {}), 0.2) is LsuResult.REFUSED_FULL
    assert db.receive_ra(RA("E", 1, 1, 0), 0.3) is None
    assert db.refused_full == 3
    assert set(db.routers) == {"B", "C"} and db.routers["B"].peers == {"A": 1, "C": 1}
    # updates from routers already known still go in
    assert db.receive_lsu(LSU("C", 1, 2, {"B": 1}), 0.4) is LsuResult.ACCEPTED


def test_entries_expire_after_remote_ls_max_age() -> None:
    db = LinkStateDB("A", 1, remote_ls_max_age=60.0)
    db.receive_lsu(LSU("B", 1, 1, {"C": 1}), 0.0)
    db.receive_ra(RA("B", 1, 1, 0), 30.0)
    assert db.expire(61.0) == []  # B refreshed at 30; C named by B
    assert db.expire(90.5) == ["B"]
    assert db.expire(200.0) == ["C"]  # no longer named by anyone
    assert db.routers == {}


def test_paths_use_links_both_ends_report() -> None:
    db = LinkStateDB("A", 1)
    db.set_neighbours({"B": 1}, 0.0)
    db.receive_lsu(LSU("B", 1, 1, {"A": 1, "C": 1}), 0.0)
    db.receive_lsu(LSU("C", 1, 1, {}), 0.0)  # C does not (yet) report B
    assert db.compute().cost == {"B": 1}
    db.receive_lsu(LSU("C", 1, 2, {"B": 4}), 0.1)
    paths = db.compute()
    assert paths.cost == {"B": 1, "C": 2} and paths.next_hop == {"B": "B", "C": "B"}


def test_dijkstra_least_cost_and_deterministic_tie_break() -> None:
    # A - B - D and A - C - D, equal cost: the lower next-hop id wins
    graph = {
        "A": {"B": 1, "C": 1},
        "B": {"A": 1, "D": 1},
        "C": {"A": 1, "D": 1},
        "D": {"B": 1, "C": 1},
    }
    paths = shortest_paths("A", graph)
    assert paths.next_hop["D"] == "B" and paths.cost["D"] == 2
    # same answer whatever the insertion order
    graph2 = {k: dict(reversed(list(v.items()))) for k, v in reversed(list(graph.items()))}
    assert shortest_paths("A", graph2) == paths
    # a cheaper long way beats an expensive short one
    graph["A"]["B"] = 10
    graph["B"]["A"] = 10
    paths = shortest_paths("A", graph)
    assert paths.next_hop["B"] == "C" and paths.cost["B"] == 3


def test_recompute_batched_and_ra_schedule_follows_flux() -> None:
    db = LinkStateDB("A", 1, ra_interval=30.0, ra_interval_flux=4.0, recompute_hold=0.5)
    assert db.ra_due(0.0)
    db.ra_sent(0.0)
    assert not db.recompute_due(0.0)
    db.set_neighbours({"B": 1}, 1.0)
    db.receive_lsu(LSU("B", 1, 1, {"A": 1}), 1.2)
    assert not db.recompute_due(1.3)
    assert db.recompute_due(1.5)  # both changes in one recomputation
    db.compute()
    assert db.recomputations == 1 and not db.recompute_due(2.0)
    # in flux: RAs every 4 s; out of flux (2 x 4 s after the last change): every 30 s
    assert db.ra_due(4.0) and not db.ra_due(3.9)
    db.ra_sent(4.0)
    assert not db.in_flux(9.3)
    assert not db.ra_due(33.9) and db.ra_due(34.0)
    assert db.next_due(10.0) == 34.0
