"""Client-bottleneck and port-pressure verdicts, and live-tick merging.

Why: the bench must say plainly when it measured itself (saturated client
processes) or the kernel (ephemeral ports), not the router; these rules
decide it, so their thresholds are pinned here.
"""

from __future__ import annotations

from pathlib import Path

from bench.client import TICK_S, Tick
from bench.histogram import Histogram
from bench.storm import Timeline
from bench.verdict import SATURATED, client_bottleneck, port_pressure, time_wait_by_tuple


def test_one_saturated_process_makes_the_run_client_bound() -> None:
    v = client_bottleneck([0.2, 0.97], client_cpu_s=1.17, elapsed_s=1.0, cpu_count=8)
    assert v["bound"]
    assert "client-bound" in v["verdict"] and "--procs" in v["verdict"]


def test_clients_using_every_core_are_the_bottleneck() -> None:
    v = client_bottleneck(
        [0.5, 0.5, 0.5, 0.5], client_cpu_s=4 * 0.5 * 2, elapsed_s=2.0, cpu_count=2
    )
    assert v["bound"]
    assert "cores" in v["verdict"]


def test_lightly_loaded_clients_are_not_the_bottleneck() -> None:
    v = client_bottleneck([0.3, 0.4], client_cpu_s=0.7, elapsed_s=1.0, cpu_count=4)
    assert not v["bound"]
    assert v["busiest_process_utilisation"] == 0.4
    assert SATURATED > 0.4


def test_zero_elapsed_is_not_a_division_error() -> None:
    assert not client_bottleneck([], 0.0, 0.0, 2)["bound"]


def test_ephemeral_port_errors_limit_the_run() -> None:
    v = port_pressure(3, {"time_wait": 10, "max_per_tuple": 10}, (32768, 60999))
    assert v["limited"] and "EADDRNOTAVAIL" in v["verdict"]


def test_time_wait_on_one_pair_near_the_range_limits_the_run() -> None:
    size = 60999 - 32768 + 1
    v = port_pressure(0, {"time_wait": size, "max_per_tuple": int(size * 0.6)}, (32768, 60999))
    assert v["limited"] and "TIME_WAIT" in v["verdict"]
    ok = port_pressure(0, {"time_wait": 50_000, "max_per_tuple": 1000}, (32768, 60999))
    assert not ok["limited"]


def _hist(*values: int) -> Histogram:
    h = Histogram()
    h.record_many(values)
    return h


def test_timeline_reports_an_interval_once_every_process_sent_it() -> None:
    tl = Timeline(2)
    assert tl.add(0, Tick(0, 10, 0, _hist(1000, 2000))) is None
    p = tl.add(1, Tick(0, 5, 1, _hist(3000)))
    assert p is not None
    assert (p.ok, p.failed, p.total_ok) == (15, 1, 15)
    assert p.latency_ns.count == 3
    assert p.t_s == TICK_S
    tl.add(0, Tick(1, 4, 0, _hist(10)))  # the other process never sends interval 1
    points = tl.points()
    assert [x["ok"] for x in points] == [15, 4]
    assert points[0]["connections_per_s"] == 15 / TICK_S


def test_time_wait_by_tuple_can_count_one_remote_port(tmp_path: Path) -> None:
    head = "  sl  local_address rem_address   st\n"
    rows = [
        # two TIME_WAIT (06) towards port 0x1F90 (8080), three towards 0x0050 (80)
        "0: 0100007F:8000 0100007F:1F90 06\n",
        "1: 0100007F:8001 0100007F:1F90 06\n",
        "2: 0100007F:8002 0100007F:0050 06\n",
        "3: 0100007F:8003 0100007F:0050 06\n",
        "4: 0100007F:8004 0100007F:0050 06\n",
        "5: 0100007F:8005 0100007F:1F90 01\n",  # established: not counted
    ]
    table = tmp_path / "tcp"
    table.write_text(head + "".join(rows))
    assert time_wait_by_tuple((str(table),)) == {"time_wait": 5, "max_per_tuple": 3}
    only = time_wait_by_tuple((str(table),), remote_port=8080)
    assert only == {"time_wait": 5, "max_per_tuple": 2}
    assert time_wait_by_tuple((str(table),), remote_port=9)["max_per_tuple"] == 0
