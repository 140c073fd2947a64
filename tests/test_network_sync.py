"""Readiness: the sync tracker's rules on their own, and for edge routers."""

from __future__ import annotations

import pytest

from router.network.addresses import AddressTables
from router.network.linkstate import LinkStateDB
from router.network.messages import LSU, MAU, RA
from router.network.simulation import SimNet
from router.network.sync import SyncTracker, describe


def test_interior_counts_link_state_and_addresses_separately() -> None:
    db = LinkStateDB("A", 1)
    db.set_neighbours({"B": 1}, 0.0)
    tables = AddressTables()
    sync = SyncTracker()
    db.compute()
    status = sync.evaluate_interior(0.0, db, tables, {"B"}, AddressTables(), ())
    assert status.reason == (
        "link state: 1 of 2 routers synchronised; addresses: 1 of 2 routers synchronised"
    )
    db.receive_lsu(LSU("B", 3, 1, {"A": 1}), 0.1)
    db.compute()
    status = sync.evaluate_interior(0.1, db, tables, {"B"}, AddressTables(), ())
    assert status.reason == "addresses: 1 of 2 routers synchronised"
    tables.receive(MAU("B", 3, 2, exist={"db": 1}))
    status = sync.evaluate_interior(0.2, db, tables, {"B"}, AddressTables(), ())
    assert status.ready and status.routers == 2 and status.age(5.0) == pytest.approx(4.8)
    # an RA announcing a later sequence: behind again until it arrives
    assert db.receive_ra(RA("B", 3, 2, 2), 0.3)
    status = sync.evaluate_interior(0.3, db, tables, {"B"}, AddressTables(), ())
    assert not status.ready and "link state: 1 of 2" in status.reason
    assert describe(status, 1.3)["replicaAgeSeconds"] == pytest.approx(1.1)


def test_address_set_of_a_previous_instance_does_not_count() -> None:
    db = LinkStateDB("A", 1)
    db.set_neighbours({"B": 1}, 0.0)
    db.receive_lsu(LSU("B", 4, 1, {"A": 1}), 0.0)
    db.compute()
    tables = AddressTables()
    tables.receive(MAU("B", 3, 2, exist={"db": 1}))  # from B's previous life
    status = SyncTracker().evaluate_interior(0.0, db, tables, {"B"}, AddressTables(), ())
    assert status.reason == "addresses: 1 of 2 routers synchronised"


def test_edge_ready_with_its_uplink_and_the_network_view() -> None:
    net = SimNet()
    net.add("I1")
    edge = net.add("E1", mode="edge")
    net.set_addresses("I1", {"db": 1})
    assert edge.sync_status(net.now).reason == "no uplink to an interior router yet"
    conn = net.connect("E1", "I1", role="edge")
    net.run(0.2)
    assert edge.sync_status(net.now).ready
    assert net.routes_to("E1", "db") == [("I1", 1, "I1")]
    net.cut(conn)
    status = edge.sync_status(net.now)
    assert not status.ready and "uplink to the interior router lost" in status.reason
    assert net.routes_to("E1", "db") == []
    net.connect("E1", "I1", role="edge")
    net.until(net.all_ready, limit=1.0)


def test_interior_waits_for_its_edges_addresses() -> None:
    net = SimNet()
    interior = net.add("I1")
    net.add("E1", mode="edge")
    net.drop = lambda a, b, op, body: op == "MAU" and a == "E1"
    net.connect("E1", "I1", role="edge")
    net.run(0.5)
    assert interior.sync_status(net.now).reason == "addresses: waiting for edge E1"
    net.drop = None
    net.set_addresses("E1", {"svc": 1})  # an increment on a set I1 never had: I1 asks (MAR)
    net.until(net.all_ready, limit=1.0)
    assert net.routes_to("I1", "svc") == [("E1", 1, "E1")]


def test_readiness_asked_before_the_recompute_still_sees_the_lost_neighbour() -> None:
    from router.network.simulation import SimNet

    net = SimNet()
    net.add("A")
    net.add("B")
    net.connect("A", "B")
    net.run(5)
    a = net.routers["A"]
    assert a.sync_status(net.now).ready
    # the link goes; readiness is asked before A's next tick recomputes paths
    for link_id in list(a.interior_neighbours().values()):
        a.link_closed(link_id, net.now)
    status = a.sync_status(net.now)
    assert not status.ready and "neighbour B lost" in status.reason
    assert not a.sync_status(net.now + 1).ready  # and it stays so
