"""The bench's TLS workloads: generated configurations and a verified run.

Why: a TLS figure is only worth something if the proxy really terminated TLS
with the generated profile and every byte still went through the bench's
correctness check; both are cheap to show on a spawned skiffd.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.bulk import BulkFigures, SinkServer, run_streams
from bench.compare import CompareConfig, CompareReport, format_compare, run_compare, unit_label
from bench.echo import EchoServer
from bench.pki import write_tls_files
from bench.progress import Progress
from bench.proxies import haproxy_binary, haproxy_config, skiffd_config, start_skiffd
from bench.workloads import TargetConfig, run_target

ECHO = ("127.0.0.1", 40001)
SINK = ("127.0.0.1", 40002)


@pytest.mark.parametrize("resumption", [None, "cache"])
def test_skiffd_config_with_tls_is_accepted_by_the_router(
    tmp_path: Path, resumption: str | None
) -> None:
    tls = write_tls_files(tmp_path / "tls")
    text = skiffd_config(2, ECHO, SINK, 40011, 40012, tls, resumption)
    assert "sslProfile {" in text
    assert text.count("sslProfile: bench-tls") == 2  # both listeners terminate TLS
    assert text.count("tlsResumption: cache") == (2 if resumption else 0)
    conf = tmp_path / "skiffd.conf"
    conf.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "router", "--check", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_skiffd_config_without_tls_has_no_profile() -> None:
    assert "sslProfile" not in skiffd_config(2, ECHO, SINK, 40011, 40012)


def test_skiffd_config_gives_the_workers_nice_value_only_when_asked() -> None:
    """storm --tls --worker-nice: the baseline skiffd's workers run at the
    same nice value as the engine's (its router's workerNice)."""
    from router.config import parse_config_text

    def router_attrs(text: str) -> dict[str, object]:
        (router,) = [
            e for e in parse_config_text(text, "bench.conf").entities if e.type == "router"
        ]
        return dict(router.attributes)

    assert router_attrs(skiffd_config(2, ECHO, SINK, 40011, 40012)).get("workerNice") is None
    text = skiffd_config(2, ECHO, SINK, 40011, 40012, worker_nice=-5)
    assert router_attrs(text)["workerNice"] == -5


def test_haproxy_config_with_tls_uses_the_same_certificate(tmp_path: Path) -> None:
    tls = write_tls_files(tmp_path / "tls")
    text = haproxy_config(2, ECHO, SINK, 40011, 40012, tls)
    assert text.count(f"ssl crt {tls.combined} no-tls-tickets") == 2
    assert tls.combined.read_bytes() == tls.cert.read_bytes() + tls.key.read_bytes()
    binary = haproxy_binary()
    if binary is None:
        pytest.skip("haproxy not installed")
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(text)
    done = subprocess.run(
        [binary, "-c", "-f", str(conf)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_tls_target_needs_a_ca() -> None:
    with pytest.raises(ValueError, match="--tls-ca"):
        TargetConfig(workload="bulk", target="127.0.0.1:1", tls=True).validate()
    with pytest.raises(ValueError, match="--tls-ca needs --tls"):
        TargetConfig(workload="bulk", target="127.0.0.1:1", tls_ca="ca.pem").validate()
    TargetConfig(workload="bulk", target="127.0.0.1:1", tls=True, tls_ca="ca.pem").validate()


def test_spawned_skiffd_bulk_over_tls_verifies_every_byte() -> None:
    cfg = TargetConfig(workload="bulk", spawn=True, tls=True, duration_s=1.0, streams=1)
    res = run_target(cfg, Progress.auto(quiet=True))
    assert res.ok, res.failures
    assert "TLS" in res.endpoint
    bulk = res.figures["bulk"]
    assert bulk["bytes"] > 1_000_000
    assert bulk["router_cpu_s_per_gb"] is not None


def test_spawned_skiffd_idle_over_tls_holds_connections() -> None:
    cfg = TargetConfig(workload="idle", spawn=True, tls=True, idle_conns=50, hold_s=0.1, procs=1)
    res = run_target(cfg, Progress.auto(quiet=True))
    assert res.ok, res.failures
    assert res.figures["idle"]["held"] == 50


def test_corruption_behind_a_tls_listener_fails_the_stream(tmp_path: Path) -> None:
    tls = write_tls_files(tmp_path / "tls")
    with EchoServer.start(1) as echo, SinkServer.start(corrupt=True) as sink:
        proxy = start_skiffd(1, ("127.0.0.1", echo.port), ("127.0.0.1", sink.port), tls)
        try:
            res = run_streams("127.0.0.1", proxy.sink_port, 1, 0.3, 5, 0.0, tls.ca_file)
        finally:
            proxy.stop()
    figures = BulkFigures.of(res)
    assert not figures.ok
    assert "corrupted: first wrong byte at offset 0" in figures.failures[0]


def test_compare_tls_accepts_only_tls_proxies() -> None:
    with pytest.raises(ValueError, match="with --tls"):
        CompareConfig(subjects=("skiffd", "direct"), tls=True).validate()
    CompareConfig(subjects=("skiffd", "haproxy"), tls=True).validate()
    CompareConfig(subjects=("skiffd", "skiffd-cache", "haproxy"), tls=True).validate()
    with pytest.raises(ValueError, match="skiffd-cache is a TLS subject"):
        CompareConfig(subjects=("skiffd", "skiffd-cache")).validate()
    with pytest.raises(ValueError, match="add --tls"):
        CompareConfig(subjects=("skiffd",), no_tickets=True).validate()
    with pytest.raises(ValueError, match="skiffd-cache sends tickets"):
        CompareConfig(subjects=("skiffd", "skiffd-cache"), tls=True, no_tickets=True).validate()
    assert unit_label("µs CPU/conn", True) == "µs CPU/handshake"
    assert unit_label("conn/s", False) == "conn/s"


def _tls_compare(
    workload: str = "bulk1",
    subjects: tuple[str, ...] = ("skiffd", "haproxy"),
    no_tickets: bool = False,
) -> CompareReport:
    """One short round of workload over TLS against subjects (by default a
    bulk1 round against skiffd and HAProxy)."""
    cfg = CompareConfig(
        subjects=subjects,
        workloads=(workload,),
        rounds=1,
        workers=1,
        procs=1,
        bulk_duration_s=0.4,
        storm_duration_s=0.5,
        pause_s=0.0,
        tls=True,
        no_tickets=no_tickets,
    )
    return run_compare(cfg, Progress.auto(quiet=True))


def test_compare_tls_bulk_round_against_both_proxies() -> None:
    report = _tls_compare()
    assert report.samples, report.skipped
    assert all(s.ok for s in report.samples), [s.failures for s in report.samples]
    assert all((s.figures["bytes"] or 0) > 0 for s in report.samples)
    assert "compare --tls" in format_compare(report)
    # by default each proxy sends its tickets after a full handshake: skiffd
    # one stateless, HAProxy's no-tls-tickets stateful ones
    assert report.tickets["skiffd"] == 1
    if "haproxy" not in report.skipped:
        assert report.tickets["haproxy"] > 0
        assert f"haproxy {report.tickets['haproxy']}" in format_compare(report)


def test_compare_tls_no_tickets_means_no_ticket_from_either_proxy() -> None:
    """--no-tickets: skiffd with tlsResumption: off and HAProxy with OpenSSL's
    NumTickets = 0 send no NewSessionTicket (the probe counts them; it would
    stop the run if one came)."""
    if haproxy_binary() is None:
        pytest.skip("haproxy not installed: the HAProxy half of --no-tickets needs it")
    report = _tls_compare(no_tickets=True)
    assert report.tickets == {"skiffd": 0, "haproxy": 0}
    assert all(s.ok for s in report.samples), [s.failures for s in report.samples]
    assert "--no-tickets: tickets sent skiffd 0, haproxy 0" in format_compare(report)


def test_compare_serial_reports_one_clients_handshake_latency() -> None:
    """compare's serial workload over TLS: one client's connections back to
    back through skiffd, each a full handshake and a checked echo; the
    latency quantiles and the proxy's CPU per connection come out. Not a
    default workload."""
    report = _tls_compare("serial", subjects=("skiffd",), no_tickets=True)
    (s,) = report.samples
    assert s.ok, s.failures
    assert (s.figures["connections"] or 0) >= 5
    p50, p90 = s.figures["serial_p50_us"], s.figures["serial_p90_us"]
    assert p50 is not None and p90 is not None and 0 < p50 <= p90
    assert (s.figures["cpu_us_per_conn"] or 0) > 0
    assert "p90 µs" in format_compare(report)
    assert "serial" not in CompareConfig().workloads
