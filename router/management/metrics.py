"""Prometheus text exposition (format 0.0.4) of the router's counters.

Built by hand from the engine's counters and the registry's status
attributes: the exposition is small, and the router then needs no
monitoring library at run time. Every value is read on the control loop
from atomics the workers keep, so scraping never stops a worker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from router.engine import PRIO_HIGH, PRIO_NORMAL, Engine, Histogram
from router.registry import Registry
from router.tls import ProfileState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_GAUGE_COUNTERS = frozenset({"conns_live", "bufs_live", "buf_bytes_live", "routes_version"})

_COUNTER_HELP = {
    "tls_handshakes": "TLS handshakes completed (accepted and originated connections).",
    "tls_failures": "TLS handshakes that failed (bad or missing certificates, plaintext on a "
    "TLS-only port, no TLS configuration), and TLS set-up failures.",
    "tls_unexpected_eof": "TLS peers that closed without close_notify.",
    "tls_closed_old": "Connections closed because their TLS ordinal fell below an "
    "sslProfile's oldestValidOrdinal.",
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


@dataclass
class Exposition:
    lines: list[str] = field(default_factory=list)

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, metric: str, value: float, /, **labels: str) -> None:
        if labels:
            inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            self.lines.append(f"{metric}{{{inner}}} {_number(value)}")
        else:
            self.lines.append(f"{metric} {_number(value)}")

    def histogram(self, metric: str, hist: Histogram, /, **labels: str) -> None:
        for bound, cumulative in zip(hist.bounds_ns, hist.cumulative, strict=True):
            le = "+Inf" if math.isinf(bound) else repr(bound / 1e9)
            self.sample(f"{metric}_bucket", cumulative, **labels, le=le)
        self.sample(f"{metric}_sum", hist.sum_ns / 1e9, **labels)
        self.sample(f"{metric}_count", hist.count, **labels)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def render(
    engine: Engine,
    registry: Registry,
    *,
    started: float,
    amqp_open: Iterable[tuple[str, int]],
    listeners_up: Iterable[tuple[str, bool]],
    management_requests: int,
    tls_profiles: Mapping[str, ProfileState] | None = None,
    now: float | None = None,
) -> str:
    """The whole exposition; ``amqp_open`` is (listener, open connections);
    ``tls_profiles`` the TlsManager's per-profile state; ``now`` the Unix
    time certificate expiry is counted from (default: the clock)."""
    out = Exposition()
    out.family("skiff_up", "gauge", "1 while the router runs.")
    out.sample("skiff_up", 1)
    out.family("skiff_uptime_seconds", "gauge", "Seconds since the router started.")
    out.sample("skiff_uptime_seconds", round(time.monotonic() - started, 3))

    rows = [(kind, r) for kind in ("tcpListener", "tcpConnector") for r in registry.query(kind)]
    series = (
        ("skiff_tcp_connections_opened_total", "counter", "connectionsOpened",
         "Connections opened per tcpListener / tcpConnector."),
        ("skiff_tcp_connections_closed_total", "counter", "connectionsClosed",
         "Connections closed per tcpListener / tcpConnector."),
        ("skiff_tcp_bytes_in_total", "counter", "bytesIn",
         "Bytes received (from clients for a listener, from the service for a connector)."),
        ("skiff_tcp_bytes_out_total", "counter", "bytesOut",
         "Bytes sent (to clients for a listener, to the service for a connector)."),
    )  # fmt: skip
    for metric, kind, attr, help_text in series:
        out.family(metric, kind, help_text)
        for entity_kind, row in rows:
            out.sample(metric, _int(row.get(attr)), kind=entity_kind, name=str(row["name"]))
    out.family(
        "skiff_tcp_connections_open", "gauge", "Open connections per tcpListener / tcpConnector."
    )
    for entity_kind, row in rows:
        opened, closed = _int(row.get("connectionsOpened")), _int(row.get("connectionsClosed"))
        out.sample(
            "skiff_tcp_connections_open",
            max(0, opened - closed),
            kind=entity_kind,
            name=str(row["name"]),
        )
    out.family("skiff_entity_up", "gauge", "1 when a listener or connector is operational.")
    for entity_kind, row in rows:
        out.sample(
            "skiff_entity_up",
            1 if row.get("operStatus") == "up" else 0,
            kind=entity_kind,
            name=str(row["name"]),
        )
    for name, up in listeners_up:
        out.sample("skiff_entity_up", 1 if up else 0, kind="listener", name=name)

    out.family("skiff_amqp_connections_open", "gauge", "Open AMQP connections per listener.")
    for name, count in amqp_open:
        out.sample("skiff_amqp_connections_open", count, listener=name)
    out.family("skiff_management_requests_total", "counter", "Management requests answered.")
    out.sample("skiff_management_requests_total", management_requests)

    _tls(out, tls_profiles or {}, time.time() if now is None else now)

    out.family(
        "skiff_timer_lateness_seconds",
        "histogram",
        "How late engine timers fired (actual minus scheduled), per priority class.",
    )
    for prio, label in ((PRIO_HIGH, "high"), (PRIO_NORMAL, "normal")):
        out.histogram("skiff_timer_lateness_seconds", engine.lateness(prio), priority=label)

    stats = [engine.worker_stats(i) for i in range(engine.workers)]
    out.family(
        "skiff_worker_busy_seconds_total", "counter", "Time each I/O worker spent outside epoll."
    )
    for i, s in enumerate(stats):
        out.sample("skiff_worker_busy_seconds_total", s.busy_ns / 1e9, worker=str(i))
    out.family("skiff_worker_cpu_seconds_total", "counter", "CPU time of each I/O worker thread.")
    for i, s in enumerate(stats):
        out.sample("skiff_worker_cpu_seconds_total", s.cpu_ns / 1e9, worker=str(i))
    out.family("skiff_worker_connections", "gauge", "Connections owned by each I/O worker.")
    for i, s in enumerate(stats):
        out.sample("skiff_worker_connections", s.connections, worker=str(i))

    for name, value in sorted(engine.counters().items()):
        if name in _GAUGE_COUNTERS:
            metric = f"skiff_engine_{name}"
            out.family(metric, "gauge", f"Engine gauge {name}.")
        else:
            metric = f"skiff_engine_{name}_total"
            out.family(metric, "counter", _COUNTER_HELP.get(name, f"Engine counter {name}."))
        out.sample(metric, value)
    return out.text()


def _tls(out: Exposition, profiles: Mapping[str, ProfileState], now: float) -> None:
    """Per-sslProfile series (handshake counts are the engine's, below)."""
    items = sorted(profiles.items())
    out.family(
        "skiff_tls_profile_version",
        "gauge",
        "Published TLS configuration version per sslProfile (0: never loaded).",
    )
    for name, st in items:
        out.sample("skiff_tls_profile_version", st.version, profile=name)
    out.family(
        "skiff_tls_profile_ordinal", "gauge", "Ordinal of the published material per sslProfile."
    )
    for name, st in items:
        if st.version:
            out.sample("skiff_tls_profile_ordinal", st.published_ordinal, profile=name)
    out.family(
        "skiff_tls_certificate_expiry_seconds",
        "gauge",
        "Seconds until the published certificate of an sslProfile expires (negative: expired).",
    )
    for name, st in items:
        if st.version and st.not_after_unix:
            out.sample(
                "skiff_tls_certificate_expiry_seconds",
                round(st.not_after_unix - now),
                profile=name,
            )
    out.family(
        "skiff_tls_certificate_not_after_timestamp_seconds",
        "gauge",
        "Expiry (Unix time) of the published certificate of an sslProfile.",
    )
    for name, st in items:
        if st.version and st.not_after_unix:
            out.sample(
                "skiff_tls_certificate_not_after_timestamp_seconds",
                st.not_after_unix,
                profile=name,
            )
    out.family("skiff_tls_reloads_total", "counter", "Successful loads per sslProfile.")
    for name, st in items:
        out.sample("skiff_tls_reloads_total", st.reloads, profile=name)
    out.family("skiff_tls_reload_failures_total", "counter", "Failed loads per sslProfile.")
    for name, st in items:
        out.sample("skiff_tls_reload_failures_total", st.reload_failures, profile=name)
    out.family(
        "skiff_tls_profile_error",
        "gauge",
        "1 while the last load of an sslProfile failed (the previous version stays).",
    )
    for name, st in items:
        out.sample("skiff_tls_profile_error", 1 if st.last_error else 0, profile=name)
