"""Router links under load: ``python -m bench network-storm``.

The seed failure Skiff exists to prevent: a burst of short TLS connections,
while certificates are reloaded, made heartbeats run late and inter-router
links drop. This bench starts two routers linked by an inter-router
connector (B dials A), puts a TLS ``tcpListener`` on A in front of the
bench's echo server, and runs the bench's TLS storm (``--clients`` clients
for ``--duration`` seconds) against it while A's certificate and key are
rewritten every ``--rotate-every`` seconds (the profile's file watch
reloads them).

It reports, for the storm's window:

* **links lost**: neighbour losses and link closes in both routers' logs,
  and the connector's dial count before and after (a re-dial means the link
  dropped). The goal is zero;
* **HELLO lateness**: ``skiff_network_hello_max_lateness_seconds`` of each
  router (the latest a HELLO went out after it was due);
* **rotations**: how many times the files were rewritten;
* the storm's own figures (connections, failures, latency), as printed by
  ``python -m bench storm``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.echo import EchoServer
from bench.netharness import Network, Router
from bench.pki import CertAuthority, write
from bench.proxies import free_port


@dataclasses.dataclass(frozen=True)
class NetStormConfig:
    clients: int = 2000
    duration: float = 20.0
    rotate_every: float = 1.0
    workers: int = 2
    procs: int = 2


@dataclasses.dataclass
class NetStormReport:
    config: NetStormConfig
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotations: int = 0
    link_events: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    dials_before: int = 0
    dials_after: int = 0
    hello_lateness_s: dict[str, float | None] = dataclasses.field(default_factory=dict)
    storm_output: str = ""
    storm_rc: int = 0

    @property
    def links_lost(self) -> int:
        return sum(len(v) for v in self.link_events.values()) + (
            self.dials_after - self.dials_before
        )


_LINK_WORDS = (" lost on link", "router link")


def _link_events(router: Router, since: int) -> list[str]:
    """Log lines after byte offset ``since`` that say a link or neighbour went."""
    text = router.log()[since:]
    return [ln for ln in text.splitlines() if any(w in ln for w in _LINK_WORDS)]


def _dials(router: Router) -> int:
    rows = router.query("connector", ["dials"], allow_stale=True)
    return int(sum(int(r.get("dials") or 0) for r in rows))


def run_netstorm(cfg: NetStormConfig, log: Callable[[str], None] | None = None) -> NetStormReport:
    say = log or (lambda _msg: None)
    report = NetStormReport(cfg, os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="skiff-netstorm-"))
    ca = CertAuthority("netstorm CA")
    leaf = ca.issue("A")
    cert, key = work / "a.pem", work / "a.key"
    write(cert, leaf.cert_pem)
    write(key, leaf.key_pem)
    ca_file = write(work / "ca.pem", ca.pem)
    echo = EchoServer.start(procs=1)
    port = free_port()
    net = Network(work / "net")
    a = net.router("A", workerThreads=cfg.workers)
    net.router("B")
    a.extra += [
        f"sslProfile {{\n    name: svc\n    certFile: {cert}\n    privateKeyFile: {key}\n"
        f"    caCertFile: {ca_file}\n    checkIntervalSeconds: 1\n}}",
        f"tcpListener {{\n    host: 127.0.0.1\n    port: {port}\n    address: echo\n"
        "    sslProfile: svc\n}",
        f"tcpConnector {{\n    host: 127.0.0.1\n    port: {echo.port}\n    address: echo\n}}",
    ]
    net.link("B", "A")
    stop = threading.Event()

    def rotate() -> None:
        while not stop.wait(cfg.rotate_every):
            fresh = ca.issue("A")
            for path, data in ((key, fresh.key_pem), (cert, fresh.cert_pem)):
                tmp = path.with_suffix(".new")
                tmp.write_bytes(data)
                tmp.rename(path)
            report.rotations += 1

    try:
        net.start()
        net.wait_converged()
        say("routers A and B linked; storm starting")
        offsets = {name: len(net[name].log()) for name in ("A", "B")}
        report.dials_before = _dials(net["B"])
        rotator = threading.Thread(target=rotate, name="netstorm-rotate")
        rotator.start()
        try:
            storm = subprocess.run(
                [sys.executable, "-m", "bench", "storm", "--target", f"127.0.0.1:{port}",
                 "--tls", "--tls-ca", str(ca_file), "--clients", str(cfg.clients),
                 "--duration", str(cfg.duration), "--rounds", "1", "--procs", str(cfg.procs),
                 "--quiet"],
                capture_output=True, text=True, timeout=cfg.duration * 6 + 120,
            )  # fmt: skip
        finally:
            stop.set()
            rotator.join()
        report.storm_output = storm.stdout.strip()
        report.storm_rc = storm.returncode
        report.dials_after = _dials(net["B"])
        for name in ("A", "B"):
            report.link_events[name] = _link_events(net[name], offsets[name])
            report.hello_lateness_s[name] = net[name].metric(
                "skiff_network_hello_max_lateness_seconds"
            )
    finally:
        stop.set()
        net.close()
        echo.stop()
        report.load_end = os.getloadavg()
    return report


def format_report(report: NetStormReport) -> str:
    cfg = report.config
    lines = [
        f"skiff network-storm: routers A-B linked; {cfg.clients} TLS clients on A for "
        f"{cfg.duration:g} s, A's certificate rewritten every {cfg.rotate_every:g} s",
        f"load average: start {' '.join(f'{v:.2f}' for v in report.load_start)}, "
        f"end {' '.join(f'{v:.2f}' for v in report.load_end)}",
        report.storm_output,
        f"rotations: {report.rotations}",
        f"connector dials: {report.dials_before} before, {report.dials_after} after",
        "HELLO max lateness: "
        + ", ".join(
            f"{n} {v * 1000:.1f} ms" if v is not None else f"{n} -"
            for n, v in report.hello_lateness_s.items()
        ),
        f"links lost: {report.links_lost} (goal: 0)",
    ]
    for name, events in report.link_events.items():
        lines += [f"  {name}: {e}" for e in events[:10]]
    return "\n".join(lines)


def to_json(report: NetStormReport) -> dict[str, Any]:
    out = dataclasses.asdict(report)
    out["links_lost"] = report.links_lost
    out["goal_met"] = report.links_lost == 0 and report.storm_rc == 0
    return out


def write_json(report: NetStormReport, path: str) -> None:
    Path(path).write_text(json.dumps(to_json(report), indent=1, default=str))


def main_log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
