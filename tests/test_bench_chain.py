"""``python -m bench network --chain``: a tiny real run (chain1 and chain2)
whose report must hold every figure, and the command line's wiring.

No wall-clock thresholds: the bench reports its goals, it does not assert
them (the machine is shared). The idle flows (200) are more than the
inter-router listener's default connection cap (128), so a chain that did
not lift it would fail here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import build_parser, main
from bench.chain import (
    METRICS,
    ChainConfig,
    ChainReport,
    Sample,
    engine_gauges,
    format_report,
    routers_of,
    run_chain,
    to_json,
)
from bench.results import validate


def test_routers_of_each_subject() -> None:
    assert [routers_of(s) for s in ("direct", "chain1", "chain3", "haproxy2")] == [0, 1, 3, 2]


def test_engine_gauges_are_read_from_the_exposition() -> None:
    text = (
        "# HELP skiff_engine_conns_live Engine gauge conns_live.\n"
        "# TYPE skiff_engine_conns_live gauge\n"
        "skiff_engine_conns_live 12.0\n"
        "skiff_engine_buf_bytes_live 4096.0\n"
        "skiff_engine_conns_accepted_total 7.0\n"
    )
    assert engine_gauges(text) == {"conns_live": 12.0, "buf_bytes_live": 4096.0}


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        ChainConfig(subjects=("chain4",)).validate()
    with pytest.raises(ValueError):
        ChainConfig(workloads=("mixed",)).validate()
    with pytest.raises(ValueError):
        ChainConfig(idle_conns=0).validate()


def test_parser_takes_the_chain_options() -> None:
    args = build_parser().parse_args(
        [
            "network",
            "--chain",
            "--subjects",
            "chain1,chain2",
            "--storm-count",
            "100",
            "--idle-conns",
            "50",
            "--rounds",
            "2",
        ]
    )
    assert args.chain and args.subjects == "chain1,chain2" and args.storm_count == 100
    assert main(["network", "--chain", "--subjects", "chain9"]) == 2


@pytest.mark.slow
def test_a_tiny_run_reports_every_figure(tmp_path: Path) -> None:
    cfg = ChainConfig(
        subjects=("chain1", "chain2"),
        rounds=1,
        clients=10,
        storm_count=300,
        bulk_duration_s=0.5,
        latency_duration_s=0.5,
        idle_conns=200,
        pause_s=0.1,
        idle_settle_s=0.2,
        workdir=tmp_path,
    )
    report = run_chain(cfg)
    assert [s.failures for s in report.samples if not s.ok] == []
    assert len(report.samples) == 2 * 4
    data = to_json(report, ["bench", "network", "--chain"])
    assert validate(data) == []
    assert data["schema"] == "skiff-bench/network-chain/1"
    assert data["ok"] is True
    assert data["failed_flows"] == {"chain1": 0.0, "chain2": 0.0}
    assert data["routers"] == {"chain1": 1, "chain2": 2}
    assert len(data["environment"]["loadavg_start"]) == 3
    summ = data["summary"]
    for subj in ("chain1", "chain2"):
        storm = summ["storm"]
        assert storm["cpu_us_per_flow_router"][subj]["median"] > 0
        assert storm["connections_per_s"][subj]["median"] > 0
        assert storm["latency_p50_ms"][subj]["median"] > 0
        assert summ["latency"]["latency_p50_ms"][subj]["median"] > 0
        assert summ["bulk"]["gbit_s"][subj]["median"] > 0
        assert summ["bulk"]["cpu_s_per_gb_router"][subj]["median"] > 0
        assert summ["idle"]["kib_per_flow_router"][subj] is not None
    held = [s.figures["held"] for s in report.samples if s.workload == "idle"]
    assert held == [200.0, 200.0]
    flows = [s.figures["flows"] for s in report.samples if s.workload == "storm"]
    assert flows == [300.0, 300.0]
    for metric, _unit, _low in METRICS["storm"]:
        assert "chain2/chain1" in data["ratios"][f"storm.{metric}"]
    goals = data["goals"]
    assert goals["zero_failed_flows"]["met"] is True
    assert goals["cpu_per_flow_router_chain2"]["value"] > 0
    assert "idle_kib_per_flow_router_chain2" in goals
    assert len(data["storm_cpu_us_per_flow_by_router"]["chain2"]) == 2
    json.dumps(data)  # serialisable
    text = format_report(report, ["bench", "network", "--chain"])
    assert "CPU per flow per router, chain2/chain1" in text
    assert "load average at start" in text
    from bench.plots import draw

    result = tmp_path / "chain.json"
    result.write_text(json.dumps(data))
    assert tmp_path / "plots" / "chain-chain.png" in draw([result], tmp_path / "plots")
    # each router left its log in the work directory
    assert (tmp_path / "chain2" / "B" / "skiffd.err").is_file()


def _sample(wl: str, subject: str, rnd: int, **figures: float) -> Sample:
    return Sample(wl, subject, rnd, dict(figures))


def test_goals_and_ratios_from_medians() -> None:
    cfg = ChainConfig(subjects=("chain1", "chain3", "haproxy3"), rounds=3)
    samples = []
    for rnd, (c1, c3, h3) in enumerate(
        [(50.0, 55.0, 60.0), (40.0, 70.0, 50.0), (60.0, 65.0, 70.0)]
    ):
        samples += [
            _sample("storm", "chain1", rnd, cpu_us_per_flow_router=c1, failed_flows=0),
            _sample("storm", "chain3", rnd, cpu_us_per_flow_router=c3, failed_flows=0),
            _sample("storm", "haproxy3", rnd, cpu_us_per_flow_router=h3, failed_flows=0),
            _sample("latency", "chain1", rnd, latency_p50_ms=0.3),
            _sample("latency", "chain3", rnd, latency_p50_ms=0.9),
            _sample("bulk", "chain1", rnd, gbit_s=5.0),
            _sample("bulk", "chain3", rnd, gbit_s=4.5),
            _sample("idle", "chain1", rnd, kib_per_flow_router=0.5 * rnd, failed_flows=0),
            _sample("idle", "chain3", rnd, kib_per_flow_router=1.5 - 0.5 * rnd, failed_flows=0),
        ]
    failed = Sample("storm", "haproxy3", 3, {"failed_flows": 2}, ["connect_errors: 2"])
    report = ChainReport(cfg, {}, [*samples, failed], {}, {}, (0.0, 0.0, 0.0))
    assert report.ratio("storm", "cpu_us_per_flow_router", "chain3", "chain1") == 65 / 50
    # the failed sample is out of the figures, but counted
    assert report.ratios()["storm.cpu_us_per_flow_router"]["chain3/haproxy3"] == 65 / 60
    goals = report.goals()
    assert goals["cpu_per_flow_router_chain3"]["met"] is False
    assert goals["latency_p50_chain3"]["value"] == pytest.approx(3.0)
    assert goals["bulk_gbit_chain3"]["met"] is True
    # idle: the max over rounds (first touch)
    assert goals["idle_kib_per_flow_router_chain1"]["value"] == 1.0
    assert goals["idle_kib_per_flow_router_chain3"]["met"] is False
    assert report.failed_flows()["haproxy3"] == 2
    assert goals["zero_failed_flows"]["met"] is False
