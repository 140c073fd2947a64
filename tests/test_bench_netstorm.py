"""``python -m bench network-storm`` on a small load: the report's shape."""

from __future__ import annotations

from bench.netstorm import NetStormConfig, format_report, run_netstorm, to_json


def test_a_small_network_storm_reports_links_and_lateness() -> None:
    report = run_netstorm(NetStormConfig(clients=20, duration=2.0, rotate_every=0.5, procs=1))
    assert report.storm_rc == 0, report.storm_output
    assert report.rotations >= 1
    assert report.dials_before >= 1 and report.dials_after >= report.dials_before
    assert set(report.hello_lateness_s) == {"A", "B"}
    assert all(v is not None and v >= 0 for v in report.hello_lateness_s.values())
    data = to_json(report)
    assert data["links_lost"] == report.links_lost
    text = format_report(report)
    assert "links lost:" in text and "HELLO max lateness" in text
