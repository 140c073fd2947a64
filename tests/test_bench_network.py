"""``python -m bench network``: the independent route computation, and a
small real run whose report must hold every figure.

No wall-clock thresholds here: the bench reports its goals, it does not
assert them (the machine is shared).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import build_parser, main
from bench.network import (
    NetworkBenchConfig,
    cut_candidates,
    expected_routes,
    far_pair,
    format_report,
    graph_of,
    kill_candidates,
    quantile,
    route_problems,
    router_names,
    run_network,
    summary,
    to_json,
    topology_links,
)
from bench.results import validate

# ---------------------------------------------------------------- routes


def test_line_routes_go_through_each_neighbour() -> None:
    names = ["A", "B", "C", "D"]
    routes = expected_routes(graph_of(names, topology_links("line", names)))
    assert routes["A"] == {"B": (None, 1), "C": ("B", 2), "D": ("B", 3)}
    assert routes["C"] == {"A": ("B", 2), "B": (None, 1), "D": (None, 1)}


def test_even_ring_breaks_ties_by_the_lowest_next_hop() -> None:
    names = ["A", "B", "C", "D"]
    routes = expected_routes(graph_of(names, topology_links("ring", names)))
    # C is 2 hops from A both ways (via B and via D): B is the lower id
    assert routes["A"]["C"] == ("B", 2)
    # B is 2 hops from D both ways (via A and via C): A is the lower id
    assert routes["D"]["B"] == ("A", 2)


def test_costs_choose_the_cheaper_longer_path() -> None:
    # the ring of four of tests/test_network_system.py: D-A costs 5
    links = [("A", "B", 1), ("B", "C", 1), ("C", "D", 1), ("D", "A", 5)]
    routes = expected_routes(graph_of("ABCD", links))
    assert routes["A"]["D"] == ("B", 3)
    cut = expected_routes(graph_of("ABCD", links[1:]))  # A-B cut
    assert cut["A"]["B"] == ("D", 7)


def test_a_direct_link_loses_to_a_cheaper_path_and_ties_go_to_the_lower_id() -> None:
    links = [("A", "C", 2), ("A", "B", 1), ("B", "C", 1)]
    # A-C directly costs 2, A-B-C also 2: next hops C and B tie, B is lower
    assert expected_routes(graph_of("ABC", links))["A"]["C"] == ("B", 2)
    links = [("A", "B", 2), ("A", "C", 1), ("C", "B", 1)]
    # A-B directly 2, A-C-B 2: B itself is the lower next hop: shown as None
    assert expected_routes(graph_of("ABC", links))["A"]["B"] == (None, 2)


def test_parallel_links_count_the_cheapest() -> None:
    links = [("A", "B", 4), ("B", "A", 2)]
    assert expected_routes(graph_of("AB", links))["A"] == {"B": (None, 2)}


def test_mesh_routes_are_all_direct() -> None:
    names = router_names(5)
    routes = expected_routes(graph_of(names, topology_links("mesh", names)))
    for src in names:
        assert routes[src] == {dst: (None, 1) for dst in names if dst != src}


def test_a_router_down_is_unreachable_and_routes_go_around_it() -> None:
    names = router_names(5)
    links = topology_links("ring", names)
    routes = expected_routes(graph_of(names, links, down=["R3"]))
    assert "R3" not in routes and all("R3" not in r for r in routes.values())
    assert routes["R2"]["R4"] == ("R1", 3)  # R2-R1-R5-R4


def test_a_split_network_routes_within_each_part() -> None:
    names = ["A", "B", "C", "D"]
    links = [("A", "B", 1), ("C", "D", 1)]
    routes = expected_routes(graph_of(names, links))
    assert routes["A"] == {"B": (None, 1)} and routes["D"] == {"C": (None, 1)}


def test_route_problems_name_what_differs() -> None:
    want = {"B": (None, 1), "C": ("B", 2)}
    assert route_problems(want, {"B": (None, 1), "C": ("B", 2)}) == ""
    # a lingering dead router is fine while unreachable
    assert route_problems(want, {"B": (None, 1), "C": ("B", 2), "X": (None, None)}) == ""
    assert "C missing" in route_problems(want, {"B": (None, 1)})
    assert "C via D cost 3" in route_problems(want, {"B": (None, 1), "C": ("D", 3)})
    assert "X reachable" in route_problems(want, {**want, "X": ("B", 3)})


def test_topologies_and_candidates() -> None:
    names = router_names(9)
    assert names[0] == "R1" and names[-1] == "R9"
    assert router_names(10)[0] == "R01"
    line, ring = topology_links("line", names), topology_links("ring", names)
    assert len(line) == 8 and len(ring) == 9 and len(topology_links("mesh", names)) == 36
    assert cut_candidates(names, line) == []  # every cut splits a line
    assert cut_candidates(names, ring) == list(range(9))
    assert kill_candidates(names, line) == ["R1", "R9"]  # only the ends
    assert kill_candidates(names, ring)[0] == "R5"  # the middle one first
    assert far_pair(graph_of(names, line)) == ("R1", "R9")
    assert far_pair(graph_of(names, ring)) == ("R1", "R5")


def test_quantiles_and_summary() -> None:
    values = [float(v) for v in range(1, 101)]
    assert quantile(values, 0.5) == 50.0 and quantile(values, 0.99) == 99.0
    assert quantile([3.0], 0.99) == 3.0
    s = summary([0.2, None, 0.1])
    assert s["count"] == 2 and s["failed"] == 1 and s["max"] == 0.2 and s["p50"] == 0.1
    assert summary([None]) == {"count": 0, "failed": 1}


def test_bad_options_are_refused() -> None:
    assert main(["network", "--routers", "1"]) == 2
    args = build_parser().parse_args(["network"])
    assert args.topology == "auto" and args.routers == 9
    with pytest.raises(ValueError):
        NetworkBenchConfig(topology="star").validate()


# ---------------------------------------------------------------- a real run


def test_small_ring_reports_every_figure(tmp_path: Path) -> None:
    cfg = NetworkBenchConfig(
        topology="ring",
        routers=3,
        rounds=1,
        address_rounds=2,
        idle_s=1.0,
        quiet_s=0.2,
        settle_s=0.2,
        workdir=tmp_path,
    )
    cfg.validate()
    report = run_network(cfg)
    data = to_json(report, ["bench", "network", "--routers", "3"])
    assert validate(data) == []
    assert data["schema"] == "skiff-bench/network/1"
    assert data["command"] == "python -m bench network --routers 3"
    assert len(data["environment"]["loadavg_start"]) == 3
    assert len(data["environment"]["loadavg_end"]) == 3
    json.dumps(data)  # serialisable as it is

    for phase, key in (("link_cut", "cut"), ("router_kill", "kill"), ("router_freeze", "stop")):
        p = data["phases"][phase]
        assert p["summary"]["count"] == 1 and p["summary"]["failed"] == 0, (phase, p)
        conv = p["rounds"][0][key]
        assert conv["seconds"] > 0 and conv["sweep_s"] > 0 and conv["sweeps"] >= 1
        assert conv["last"] in {"R1", "R2", "R3"}
        assert p["rounds"][0]["routers_cpu"]["cpu_s"] > 0
    addr = data["phases"]["address"]
    assert addr["summary"]["count"] == 2 and addr["summary"]["p99"] > 0
    assert addr["withdraw"]["count"] == 2
    assert addr["hops"] == 1 and addr["origin"] != addr["far"]
    idle = data["idle_cpu"]
    assert set(idle["per_router_pct"]) == {"R1", "R2", "R3"}
    assert idle["max_pct"] > 0 and idle["window_s"] >= 1.0
    assert set(data["goals"]) == {
        "link_cut", "router_kill", "router_freeze", "address", "idle_cpu"
    }  # fmt: skip
    for goal in data["goals"].values():
        assert goal["met"] in (True, False)  # measured; whether met is the machine's
    assert report.startup["ring"] > 0
    assert set(data["routers"]) == {"ring/R1", "ring/R2", "ring/R3"}

    table = format_report(report, ["bench", "network"])
    for text in ("link cut", "router kill -9", "new address", "idle CPU", "goals:", "load"):
        assert text in table
    # every router was stopped
    assert not any(p.name.startswith("R") and _running(p) for p in (tmp_path / "ring").iterdir())


def _running(router_dir: Path) -> bool:
    """A router's skiffd still alive (its config file's path in a live command line)."""
    conf = str(router_dir / "skiffd.conf")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if conf in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    return True
            except OSError:
                continue
    return False


def test_harness_gives_every_router_its_own_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """free_port closes its socket, so two draws may repeat a port: the
    network draws again (a repeated inter-router port made a system test
    flaky)."""
    from bench import netharness

    draws = iter([7001, 7005, 7003, 7006, 7007])
    monkeypatch.setattr(netharness, "free_port", lambda: next(draws))
    net = netharness.Network(tmp_path)
    net.specs["A"] = netharness.RouterSpec("A", "interior", 7001, 7002, 7003, 7004)
    twin = netharness.RouterSpec("B", "interior", 7001, 7002, 7008, 7003)
    net._unique_ports(twin)
    net.specs["B"] = twin
    ports = [p for s in net.specs.values() for p in netharness._ports(s)]
    assert len(ports) == len(set(ports)) == 8
    assert netharness._ports(twin) == (7005, 7006, 7008, 7007)
    net.router("C")  # through the public path too
    ports = [p for s in net.specs.values() for p in netharness._ports(s)]
    assert len(ports) == len(set(ports)) == 12
