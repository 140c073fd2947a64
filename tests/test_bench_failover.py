"""``python -m bench network-failover`` on a small load: every phase runs
flows, the reroutes are timed and the report has its shape."""

from __future__ import annotations

from bench.failover import PHASES, FailoverConfig, format_report, run_failover, to_json


def test_a_short_failover_run_reports_every_phase() -> None:
    report = run_failover(FailoverConfig(clients=4, size=512, phase_s=1.0))
    assert list(report.phases) == list(PHASES)
    for name, phase in report.phases.items():
        assert phase.started >= 1 and phase.ok >= 1, name
        assert phase.ok + phase.failed <= phase.started
        assert phase.killed_in_flight <= phase.failed
    assert set(report.reroute_s) == set(PHASES[1:])
    assert all(s >= 0 for s in report.reroute_s.values())
    data = to_json(report)
    assert data["failed"] == report.failed
    assert "reroute" in format_report(report)
