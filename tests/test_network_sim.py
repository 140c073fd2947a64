"""Router networks simulated in-process on a fake clock: convergence, address
propagation, link cuts, restarts, duplicate ids, garbage, bounds, readiness."""

from __future__ import annotations

import collections
import itertools

import pytest

from router.network.messages import LSU
from router.network.simulation import SimNet
from router.network.views import address_rows, node_rows

HELLO_MAX_AGE = 3.0


def _line(n: int, **config: object) -> SimNet:
    net = SimNet(**config)
    for i in range(1, n + 1):
        net.add(f"R{i}")
    for i in range(1, n):
        net.connect(f"R{i}", f"R{i + 1}")
    return net


def _ring4() -> SimNet:
    net = SimNet()
    for r in ("R1", "R2", "R3", "R4"):
        net.add(r)
    for a, b in (("R1", "R2"), ("R2", "R3"), ("R3", "R4"), ("R4", "R1")):
        net.connect(a, b)
    return net


def test_two_routers_converge_and_see_each_others_addresses() -> None:
    net = _line(2)
    net.set_addresses("R2", {"db": 2})
    net.set_addresses("R1", {"web": 1})
    net.run(1.0)
    assert net.routes_to("R1", "db") == [("R2", 1, "R2")]
    assert net.routes_to("R2", "web") == [("R1", 1, "R1")]
    r1 = net.routers["R1"].routes()
    assert r1.route("db") is not None and r1.route("db").remote[0].targets == 2  # type: ignore[union-attr]
    assert r1.route("web").local_targets == 1  # type: ignore[union-attr]
    assert net.all_ready()


def test_line_of_three_address_added_and_removed_at_the_far_end() -> None:
    net = _line(3)
    net.run(1.0)
    net.set_addresses("R3", {"db": 1})
    took = net.until(lambda: net.routes_to("R1", "db") == [("R3", 2, "R2")], limit=1.0)
    assert took < 1.0
    net.set_addresses("R3", {"db": 4})
    assert net.routers["R1"].routes().route("db").remote_targets == 4  # type: ignore[union-attr]
    net.set_addresses("R3", {})
    net.until(lambda: net.routes_to("R1", "db") == [], limit=1.0)
    assert net.routers["R1"].routes().route("db") is None
    assert net.all_ready()


def test_ring_of_four_link_cut_moves_routes_to_the_other_path() -> None:
    net = _ring4()
    net.set_addresses("R3", {"db": 1})
    net.run(1.0)
    # two equal paths R1->R3; the lower next-hop id wins
    assert net.routes_to("R1", "db") == [("R3", 2, "R2")]
    net.cut(net.conn_between("R2", "R3"))
    took = net.until(lambda: net.routes_to("R1", "db") == [("R3", 2, "R4")], limit=2.0)
    assert took <= 0.1
    assert net.routes_to("R2", "db") == [("R3", 3, "R1")]
    net.until(net.all_ready, limit=2.0)


def test_ring_silent_link_detected_by_hello_max_age() -> None:
    net = _ring4()
    net.set_addresses("R3", {"db": 1})
    net.run(1.0)
    # the R1-R2 link goes silent both ways without closing
    net.drop = lambda a, b, op, body: {a, b} == {"R1", "R2"}
    took = net.until(lambda: net.routes_to("R1", "db") == [("R3", 2, "R4")], limit=10.0)
    assert took <= HELLO_MAX_AGE + 1.0
    net.drop = None


def test_interior_pair_with_two_edges() -> None:
    net = SimNet()
    net.add("I1")
    net.add("I2")
    net.add("E1", mode="edge")
    net.add("E2", mode="edge")
    net.connect("I1", "I2", cost=5)
    net.connect("E1", "I1", role="edge")
    net.connect("E2", "I2", role="edge", cost=2)
    net.set_addresses("E2", {"svc": 3})
    net.set_addresses("I1", {"db": 1})
    net.run(1.0)
    # I2 reaches the edge's targets directly, I1 through I2, E1 through I1
    assert net.routes_to("I2", "svc") == [("E2", 2, "E2")]
    assert net.routes_to("I1", "svc") == [("I2", 5, "I2")]
    assert net.routes_to("E1", "svc") == [("I1", 1, "I1")]
    assert net.routers["E1"].routes().route("svc").remote_targets == 3  # type: ignore[union-attr]
    assert net.routes_to("E2", "db") == [("I2", 2, "I2")]
    # an edge is told nothing of its own addresses (no route back out through the interior)
    assert net.routes_to("E2", "svc") == []
    assert net.all_ready()
    # edge routers are not in the link state
    assert set(net.routers["I1"].lsdb.routers) == {"I2"}
    # the edge goes away: its addresses disappear everywhere
    net.kill("E2")
    net.run(0.5)
    assert net.routes_to("E1", "svc") == [] and net.routes_to("I1", "svc") == []


def test_edge_may_not_send_link_state() -> None:
    net = SimNet()
    net.add("I1")
    net.add("E1", mode="edge")
    conn = net.connect("E1", "I1", role="edge")
    net.run(1.0)
    link = net.link_id(conn, "I1")
    net.inject("I1", link, "LSU", {"id": "E1", "instance": 1, "ls_seq": 9,
                                   "ls": {"id": "E1", "ls_seq": 9, "peers": {"I1": 1}}})
    assert any("LSU from 'E1'" in reason and "not allowed on an edge link" in reason
               for _, _, reason in net.closed)
    assert "E1" not in net.routers["I1"].lsdb.routers


def test_edge_router_refuses_inter_router_links() -> None:
    net = SimNet()
    net.add("I1")
    net.add("E1", mode="edge")
    net.connect("E1", "I1")
    assert any("is an edge router" in reason for _, _, reason in net.closed)


def test_full_mesh_of_nine() -> None:
    net = SimNet()
    ids = [f"R{i}" for i in range(1, 10)]
    for r in ids:
        net.add(r)
    net.set_addresses("R1", {"a1": 1})
    for a, b in itertools.combinations(ids, 2):
        net.connect(a, b)
    for r in ids:
        net.set_addresses(r, {f"a{r[1:]}": 1, "shared": 1})
    net.until(net.all_ready, limit=2.0)
    for r in ids:
        routes = net.routers[r].routes()
        assert set(routes.routes) == {f"a{i}" for i in range(1, 10)} | {"shared"}
        assert routes.route("shared").remote_targets == 8  # type: ignore[union-attr]
        assert all(c == 1 for c in routes.costs.values()) and len(routes.costs) == 8
    # a quiet network stays quiet: HELLOs, and RAs every 30 s down each
    # origin's shortest-path tree (8 deliveries per RA, not 2 per link)
    net.run(10.0)
    sent: collections.Counter[str] = collections.Counter()
    net.drop = lambda a, b, op, body: bool(sent.update([op]))
    net.run(60.0)
    net.drop = None
    assert set(sent) == {"HELLO", "RA"}
    assert sent["HELLO"] == 9 * 8 * 60
    assert sent["RA"] == 9 * 2 * 8


def test_readiness_while_joining_a_running_network() -> None:
    net = _line(3)
    for r in ("R1", "R2", "R3"):
        net.set_addresses(r, {f"svc-{r}": 1})
    net.run(2.0)
    assert net.all_ready()
    newcomer = net.add("R4")
    newcomer.sync.expected_links = 1
    status = newcomer.sync_status(net.now)
    assert not status.ready and "no neighbour yet" in status.reason and status.age(0) is None
    # the first exchange brings the database; partial state is never "ready"
    seen_partial: list[str] = []
    ready_tables: list[set[str]] = []

    def watch(a: str, b: str, op: str, body: object) -> bool:
        # R4's state before each message it receives during the join
        if b == "R4":
            st = net.routers["R4"].sync_status(net.now)
            if st.ready:
                ready_tables.append(set(net.routers["R4"].routes().routes))
            else:
                seen_partial.append(st.reason)
        return False

    net.drop = watch
    net.connect("R4", "R3")
    net.drop = None
    assert any("of" in reason and "routers synchronised" in reason for reason in seen_partial)
    net.until(net.all_ready, limit=1.0)
    everything = {"svc-R1", "svc-R2", "svc-R3"}
    assert set(newcomer.routes().routes) == everything
    # whenever it said ready, its address table was the whole network's
    assert all(table == everything for table in ready_tables)


def test_sync_reason_counts_routers() -> None:
    net = _line(3)
    net.run(1.0)
    # R1 hears of a router it has no link state for
    core = net.routers["R1"]
    core.lsdb.receive_lsu(LSU("R2", 1, 99, {"R1": 1, "R3": 1, "R9": 1}), net.now)
    core.lsdb.compute()
    status = core.sync_status(net.now)
    assert not status.ready
    assert "link state: 3 of 4 routers synchronised" in status.reason


def test_lost_neighbour_is_not_ready_until_resynchronised() -> None:
    net = _line(3)
    net.run(2.0)
    assert net.all_ready()
    conn = net.conn_between("R2", "R3")
    net.cut(conn)
    net.run(0.5)
    status = net.routers["R2"].sync_status(net.now)
    assert not status.ready and "neighbour R3 lost" in status.reason
    assert status.age(net.now) == pytest.approx(0.6, abs=0.11)
    net.connect("R2", "R3")
    net.until(net.all_ready, limit=1.0)
    # in a ring the lost neighbour is still reachable: ready again at once
    ring = _ring4()
    ring.run(1.0)
    ring.cut(ring.conn_between("R1", "R2"))
    ring.until(ring.all_ready, limit=0.5)


def test_partitioned_router_dropped_after_remote_ls_max_age() -> None:
    net = _line(3, remote_ls_max_age=10.0)
    net.set_addresses("R3", {"db": 1})
    net.run(1.0)
    net.cut(net.conn_between("R2", "R3"))
    net.run(0.2)
    assert net.routes_to("R1", "db") == []  # unreachable at once
    assert "R3" in net.routers["R1"].lsdb.routers
    net.run(11.0)
    assert "R3" not in net.routers["R1"].lsdb.routers
    assert "R3" not in net.routers["R1"].remote.routers
    assert net.routers["R2"].sync_status(net.now).ready  # the network is smaller now


def test_router_restart_with_new_instance() -> None:
    net = _line(3)
    net.set_addresses("R3", {"old": 1})
    net.run(1.0)
    net.kill("R3")
    net.run(0.2)
    assert net.routes_to("R1", "old") == []
    net.add("R3", instance=2)
    net.connect("R2", "R3")
    net.set_addresses("R3", {"new": 1})
    net.until(lambda: net.routes_to("R1", "new") == [("R3", 2, "R2")], limit=1.0)
    assert net.routes_to("R1", "old") == []
    assert net.routers["R1"].lsdb.routers["R3"].instance == 2
    net.until(net.all_ready, limit=1.0)


def test_duplicate_router_id_refused_naming_both_ends() -> None:
    net = _line(2)
    net.set_addresses("R1", {"db": 1})
    net.run(1.0)
    impostor = SimNet()  # a second router also called R1, joined to R2
    other = impostor.add("R1", instance=5)
    net.routers["R1bis"] = other
    conn = net.connect("R1bis", "R2")
    refused = [reason for rid, _, reason in net.closed if rid == "R2"]
    assert refused and "duplicate router id 'R1'" in refused[0]
    assert "instance 5" in refused[0] and "instance 1" in refused[0]
    assert conn not in net.conns
    # the network is intact
    del net.routers["R1bis"]
    net.run(1.0)
    assert net.routes_to("R2", "db") == [("R1", 1, "R1")] and net.all_ready()
    # a peer announcing our own id is refused too
    me_too = SimNet().add("R2", instance=9)
    net.routers["R2bis"] = me_too
    net.connect("R2bis", "R2")
    assert any("announces the id of this router" in reason for _, _, reason in net.closed)


@pytest.mark.parametrize(
    ("opcode", "body"),
    [
        ("LSU", {"id": "R1", "instance": 1, "ls_seq": -1, "ls": {}}),
        ("GARBAGE", {"x": 1}),
        ("MAU", "not a map"),
        ("HELLO", {"id": "R1" * 200, "instance": 1, "seen": []}),
        ("MAU", {"id": "R1", "instance": 1, "mobile_seq": 1, "add": {"x" * 5000: 1}}),
    ],
)
def test_garbage_loses_only_that_link(opcode: str, body: object) -> None:
    net = _line(3)
    net.set_addresses("R3", {"db": 1})
    net.set_addresses("R1", {"web": 1})
    net.run(1.0)
    conn = net.conn_between("R1", "R2")
    net.inject("R2", net.link_id(conn, "R2"), opcode, body)
    reasons = [reason for rid, _, reason in net.closed if rid == "R2"]
    assert len(reasons) == 1 and "protocol error from 'R1'" in reasons[0]
    assert conn not in net.conns
    # R2's other link and its state are intact
    assert net.routes_to("R2", "db") == [("R3", 1, "R3")]
    assert net.routers["R2"].protocol_errors == 1
    # the connector re-dials: everything comes back
    net.connect("R1", "R2")
    net.until(lambda: net.routes_to("R3", "web") == [("R1", 2, "R2")], limit=1.0)


def test_message_before_hello_closes_the_link() -> None:
    net = SimNet()
    net.add("R1")
    net.add("R2")
    net.drop = lambda a, b, op, body: op == "HELLO"
    conn = net.connect("R1", "R2")
    net.inject("R2", net.link_id(conn, "R2"), "RA",
               {"id": "R1", "instance": 1, "ls_seq": 1, "mobile_seq": 0})
    assert any("before its HELLO" in reason for _, _, reason in net.closed)


def test_lsdb_bound_refuses_extra_routers_and_keeps_state() -> None:
    net = _line(6, max_routers=4)
    net.set_addresses("R2", {"db": 1})
    net.run(2.0)
    cores = net.routers.values()
    assert all(len(c.lsdb.routers) + 1 <= 4 for c in cores)
    refusing = [c.router_id for c in cores if c.lsdb.refused_full > 0]
    assert refusing
    assert any("database full (4 routers)" in text for rid, _, text in net.logs
               if rid == refusing[0])
    # what was known stays: R1 still routes to R2; but a network larger than
    # the bound is never reported as fully synchronised (R1 learns by the next
    # RA that the link state it holds of R4 is not the latest)
    assert net.routes_to("R1", "db") == [("R2", 1, "R2")]
    net.run(4.0)
    assert not any(c.sync_status(net.now).ready for c in cores)
    assert "database full" in net.routers["R3"].sync_status(net.now).reason


def test_lost_update_recovered_through_ra() -> None:
    net = _line(3, ra_interval=30.0, ra_interval_flux=4.0)
    net.run(10.0)  # out of flux
    net.drop = lambda a, b, op, body: op == "MAU" and b == "R1"
    net.set_addresses("R3", {"db": 1})
    net.drop = None
    assert net.routes_to("R1", "db") == []
    took = net.until(lambda: net.routes_to("R1", "db") == [("R3", 2, "R2")], limit=31.0)
    assert took <= 30.5


def test_same_id_elsewhere_in_the_network_is_logged() -> None:
    net = _line(3)
    net.run(1.0)
    twin = SimNet().add("R1", instance=5)  # another router also called R1, beside R3
    net.routers["R1-twin"] = twin
    net.connect("R1-twin", "R3")
    net.run(0.5)
    assert any(
        rid == "R1" and "duplicate router id 'R1'" in text and "instance 5, ours 1" in text
        for rid, _, text in net.logs
    )


def test_management_rows() -> None:
    net = _line(3)
    net.set_addresses("R3", {"db": 2})
    net.set_addresses("R1", {"db": 1})
    net.run(1.0)
    rows = {row["id"]: row for row in node_rows(net.routers["R1"])}
    assert rows["R1"]["nextHop"] == "(self)" and rows["R1"]["linkState"] == ["R2"]
    assert rows["R2"]["nextHop"] is None and rows["R2"]["routerLink"] is not None
    assert rows["R3"]["nextHop"] == "R2" and rows["R3"]["cost"] == 2
    assert rows["R3"]["linkState"] == ["R2"]
    (addr,) = address_rows(net.routers["R1"])
    assert addr["key"] == "db" and addr["subscriberCount"] == 1
    assert addr["remoteCount"] == 1 and addr["remoteHostRouters"] == ["R3"]
    metrics = net.routers["R2"].metrics()
    assert metrics["neighbours"] == 2 and metrics["lsdbRouters"] == 2


def test_timers_at_next_due_are_enough() -> None:
    """Driven only at each router's next_due (no fixed tick), the network
    converges, detects a silent link in time, and idles cheaply."""
    net = _ring4()
    net.set_addresses("R3", {"db": 1})
    net.run_timers(2.0)
    assert net.routes_to("R1", "db") == [("R3", 2, "R2")] and net.all_ready()
    net.drop = lambda a, b, op, body: {a, b} == {"R1", "R2"}
    start = net.now
    while net.routes_to("R1", "db") != [("R3", 2, "R4")]:
        net.run_timers(0.25)
        assert net.now - start <= HELLO_MAX_AGE + 1.0
    net.drop = None
    ticks = net.run_timers(60.0)
    assert ticks / 4 / 60.0 < 3  # about one tick a second per router when idle


def test_parallel_links_cheapest_used_and_the_other_takes_over() -> None:
    net = _line(3)
    extra = net.connect("R1", "R2", cost=4)  # a second, dearer link R1-R2
    net.set_addresses("R3", {"db": 1})
    net.run(1.0)
    cheap = next(c for c, lk in net.conns.items() if {lk.a, lk.b} == {"R1", "R2"} and c != extra)
    r1 = net.routers["R1"]
    assert r1.interior_neighbours()["R2"] == net.link_id(cheap, "R1")
    assert net.routes_to("R1", "db") == [("R3", 2, "R2")]
    net.cut(cheap)
    net.run(0.1)
    assert r1.interior_neighbours()["R2"] == net.link_id(extra, "R1")
    assert net.routes_to("R1", "db") == [("R3", 5, "R2")]
    assert net.all_ready()


def test_edge_with_two_uplinks_fails_over() -> None:
    net = SimNet()
    net.add("I1")
    net.add("I2")
    net.add("E1", mode="edge")
    net.connect("I1", "I2")
    first = net.connect("E1", "I1", role="edge", cost=1)
    net.connect("E1", "I2", role="edge", cost=3)
    net.set_addresses("I1", {"db": 1})
    net.set_addresses("E1", {"svc": 1})
    net.run(1.0)
    edge = net.routers["E1"]
    assert edge.uplink() == "I1"
    assert net.routes_to("E1", "db") == [("I1", 1, "I1")]
    # both interiors advertise the edge's addresses: I2 sees two holders, the
    # edge itself over its own link (cost 3) and I1 (cost 1), which relays
    assert sorted(net.routes_to("I2", "svc")) == [("E1", 3, "E1"), ("I1", 1, "I1")]
    net.cut(first)
    net.run(0.1)
    assert edge.uplink() == "I2"
    assert net.routes_to("E1", "db") == [("I2", 3, "I2")]
    assert net.routes_to("I2", "svc") == [("E1", 3, "E1")]
    net.until(net.all_ready, limit=1.0)
