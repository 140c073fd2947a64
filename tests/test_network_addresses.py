"""Mobile addresses by sequence; the route table shape built from them."""

from __future__ import annotations

import dataclasses

import pytest

from router.network.addresses import AddressSet, AddressTables, MauResult
from router.network.linkstate import Paths
from router.network.messages import MAR, MAU
from router.network.routes import AddressRoute, RemoteDestination, build_routes


def test_local_set_emits_increments_with_counts() -> None:
    s = AddressSet("A", 7)
    assert s.set({"db": 1}) == MAU("A", 7, 1, add={"db": 1})
    assert s.set({"db": 1}) is None
    assert s.set({"db": 3, "web": 1}) == MAU("A", 7, 2, add={"db": 3, "web": 1})
    assert s.set({"web": 1, "x": 0}) == MAU("A", 7, 3, deleted=("db",))
    assert s.full() == MAU("A", 7, 3, exist={"web": 1})


def test_tables_apply_in_sequence_and_ask_on_gap() -> None:
    t = AddressTables()
    assert t.receive(MAU("A", 7, 1, add={"db": 1})) is MauResult.APPLIED
    assert t.receive(MAU("A", 7, 1, add={"db": 1})) is MauResult.STALE
    assert t.receive(MAU("A", 7, 3, add={"x": 1})) is MauResult.GAP
    assert t.mar_for("A", "B") == MAR("B", "A", 1)
    assert t.receive(MAU("A", 7, 3, exist={"db": 2, "x": 1})) is MauResult.APPLIED
    assert t.receive(MAU("A", 7, 4, deleted=("db",))) is MauResult.APPLIED
    assert t.counts() == {"A": {"x": 1}}
    assert t.full_for("A") == MAU("A", 7, 4, exist={"x": 1})


def test_ra_sequence_drives_requests_and_sync() -> None:
    t = AddressTables()
    assert t.note_advertised("A", 7, 0) is True  # nothing delivered yet
    t.receive(MAU("A", 7, 0, exist={}))
    assert t.note_advertised("A", 7, 0) is False
    assert t.routers["A"].synchronised
    assert t.note_advertised("A", 7, 2) is True
    assert not t.routers["A"].synchronised


def test_restart_resets_the_table() -> None:
    t = AddressTables()
    t.receive(MAU("A", 7, 5, exist={"db": 1}))
    assert t.receive(MAU("A", 6, 9, exist={"old": 1})) is MauResult.STALE
    assert t.receive(MAU("A", 8, 1, add={"new": 1})) is MauResult.APPLIED
    assert t.counts() == {"A": {"new": 1}}


def test_table_bounded() -> None:
    t = AddressTables(max_addresses=2)
    t.receive(MAU("A", 1, 1, add={"a": 1, "b": 1}))
    assert t.receive(MAU("A", 1, 2, add={"c": 1})) is MauResult.REFUSED
    assert t.receive(MAU("A", 1, 2, exist={"a": 1, "b": 1, "c": 1})) is MauResult.REFUSED
    assert t.refused == 2 and t.counts() == {"A": {"a": 1, "b": 1}}


def test_route_table_shape() -> None:
    paths = Paths({"B": "B", "C": "B", "Z": "B"}, {"B": 1, "C": 2, "Z": 5})
    table = build_routes(
        "A", 4,
        local={"db": 1, "gone": 0},
        remote={"B": {"db": 2}, "C": {"db": 1, "web": 3}, "U": {"db": 9}},  # U: no path
        paths=paths,
        direct={"E1": (1, {"web": 1})},
    )
    assert table.version == 4
    assert set(table.routes) == {"db", "web"}
    db = table.routes["db"]
    assert db == AddressRoute(
        "db", 1, (RemoteDestination(1, "B", "B", 2), RemoteDestination(2, "C", "B", 1))
    )
    assert db.reachable and db.remote_targets == 3
    web = table.routes["web"]
    assert web.local_targets == 0
    assert [(d.router_id, d.cost, d.next_hop) for d in web.remote] == [
        ("E1", 1, "E1"), ("C", 2, "B")
    ]
    assert table.next_hops["E1"] == "E1" and table.costs["C"] == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        db.local_targets = 5  # type: ignore[misc]
