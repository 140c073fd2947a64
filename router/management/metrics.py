"""Prometheus text exposition (format 0.0.4) of the router's counters.

A ``prometheus_client`` custom collector: each scrape builds the metric
families from the engine's counters, the registry's status attributes and
the adaptors' views, and the library writes the exposition, so escaping
and the histogram shape (cumulative buckets ending in ``+Inf``, ``_count``
equal to that bucket) are its, not ours. Nothing is kept between scrapes;
every value is read on the control loop from atomics the workers keep, so
scraping never stops a worker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from router.engine import PRIO_HIGH, PRIO_NORMAL, Engine, Histogram
from router.registry import Registry
from router.tls import ProfileState

# what generate_latest writes (spelt here: older clients have no constant for it)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_GAUGE_COUNTERS = frozenset(
    {
        "conns_live",
        "bufs_live",
        "buf_bytes_live",
        "routes_version",
        "app_live",
        "app_outbound_live",
        "pool_idle_in",
        "pool_idle_out",
    }
)

_COUNTER_HELP = {
    "tls_handshakes": "TLS handshakes completed (accepted and originated connections).",
    "tls_resumed": "Of the TLS handshakes, those that resumed a session (data connections "
    "between routers resume the last session their peer gave).",
    "tls_detached": "Of the TLS handshakes, server connections whose records the engine's "
    "own TLS 1.3 record layer carries afterwards (the OpenSSL connection freed).",
    "tls_yields": "Times a TLS handshake paused between two of its steps inside OpenSSL so "
    "that a due high-priority timer (heartbeat) ran first; the handshake resumed right after.",
    "accept_deferred": "Times a listener stopped accepting within one event because its "
    "time budget (0.5 ms) was spent; the connections still queued are accepted on the "
    "worker's next round, after its other events.",
    "bulk_turns": "Turns of a splicing (bulk) direction that went past the 256 KiB of a "
    "short turn: a worker that served only splicing flows for 10 ms lets each move up to "
    "4 MiB per turn (due heartbeats still run every 256 KiB).",
    "served_between": "Events that were not a bulk flow's (accepts, short flows, handshakes, "
    "app and control requests) served between two bulk turns, instead of after the "
    "worker's round of bulk turns.",
    "tls_failures": "TLS handshakes that failed (bad or missing certificates, plaintext on a "
    "TLS-only port, no TLS configuration), and TLS set-up failures.",
    "tls_unexpected_eof": "TLS peers that closed without close_notify.",
    "tls_closed_old": "Connections closed because their TLS ordinal fell below an "
    "sslProfile's oldestValidOrdinal.",
    "app_direct_writes": "Management replies (app connection writes) the control thread sent "
    "itself, without waiting for the connection's worker (plain connections with nothing "
    "unsent).",
    "app_direct_reads": "Reads of management and router-link input the control thread made "
    "itself (direct reads of plain app connections), without waiting for the connection's "
    "worker.",
}

_TCP_COUNTERS = (
    ("skiff_tcp_connections_opened_total", "connectionsOpened",
     "Connections opened per tcpListener / tcpConnector."),
    ("skiff_tcp_connections_closed_total", "connectionsClosed",
     "Connections closed per tcpListener / tcpConnector."),
    ("skiff_tcp_bytes_in_total", "bytesIn",
     "Bytes received (from clients for a listener, from the service for a connector)."),
    ("skiff_tcp_bytes_out_total", "bytesOut",
     "Bytes sent (to clients for a listener, to the service for a connector)."),
)  # fmt: skip


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _buckets(hist: Histogram) -> list[tuple[str, float]]:
    """Cumulative buckets in seconds; the engine's last bound is +Inf."""
    return [
        ("+Inf" if math.isinf(bound) else repr(bound / 1e9), cumulative)
        for bound, cumulative in zip(hist.bounds_ns, hist.cumulative, strict=True)
    ]


class RouterCollector:
    """The metric families of one scrape (a ``prometheus_client`` collector).

    ``amqp_open`` is (listener, open AMQP connections); ``listeners_up``
    (listener, bound); ``tls_profiles`` the TlsManager's per-profile state;
    ``now`` the Unix time certificate expiry is counted from.
    """

    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        *,
        started: float,
        amqp_open: Iterable[tuple[str, int]],
        listeners_up: Iterable[tuple[str, bool]],
        management_requests: int,
        tls_profiles: Mapping[str, ProfileState] | None = None,
        now: float | None = None,
    ) -> None:
        self._engine = engine
        self._registry = registry
        self._started = started
        self._amqp_open = list(amqp_open)
        self._listeners_up = list(listeners_up)
        self._management_requests = management_requests
        self._tls_profiles = tls_profiles or {}
        self._now = time.time() if now is None else now

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("skiff_up", "1 while the router runs.", value=1)
        yield GaugeMetricFamily(
            "skiff_uptime_seconds",
            "Seconds since the router started.",
            value=round(time.monotonic() - self._started, 3),
        )
        yield from self._entities()
        amqp = GaugeMetricFamily(
            "skiff_amqp_connections_open",
            "Open AMQP connections per listener.",
            labels=["listener"],
        )
        for name, count in self._amqp_open:
            amqp.add_metric([name], count)
        yield amqp
        yield CounterMetricFamily(
            "skiff_management_requests_total",
            "Management requests answered.",
            value=self._management_requests,
        )
        yield from self._tls()
        yield self._lateness()
        yield self._app_wait()
        yield from self._workers()
        yield from self._engine_counters()

    def _entities(self) -> Iterator[Metric]:
        rows = [
            (kind, row)
            for kind in ("tcpListener", "tcpConnector")
            for row in self._registry.query(kind)
        ]
        for metric, attr, help_text in _TCP_COUNTERS:
            counter = CounterMetricFamily(metric, help_text, labels=["kind", "name"])
            for kind, row in rows:
                counter.add_metric([kind, str(row["name"])], _int(row.get(attr)))
            yield counter
        open_ = GaugeMetricFamily(
            "skiff_tcp_connections_open",
            "Open connections per tcpListener / tcpConnector.",
            labels=["kind", "name"],
        )
        for kind, row in rows:
            opened, closed = _int(row.get("connectionsOpened")), _int(row.get("connectionsClosed"))
            open_.add_metric([kind, str(row["name"])], max(0, opened - closed))
        yield open_
        up = GaugeMetricFamily(
            "skiff_entity_up",
            "1 when a listener or connector is operational.",
            labels=["kind", "name"],
        )
        for kind, row in rows:
            up.add_metric([kind, str(row["name"])], 1 if row.get("operStatus") == "up" else 0)
        for name, bound in self._listeners_up:
            up.add_metric(["listener", name], 1 if bound else 0)
        yield up

    def _tls(self) -> Iterator[Metric]:
        """Per-sslProfile series (handshake counts are the engine's)."""
        items = sorted(self._tls_profiles.items())
        loaded = [(name, st) for name, st in items if st.version]
        expiring = [(name, st) for name, st in loaded if st.not_after_unix]

        def gauge(name: str, help_text: str, values: Iterable[tuple[str, float]]) -> Metric:
            family = GaugeMetricFamily(name, help_text, labels=["profile"])
            for profile, value in values:
                family.add_metric([profile], value)
            return family

        def counter(name: str, help_text: str, values: Iterable[tuple[str, float]]) -> Metric:
            family = CounterMetricFamily(name, help_text, labels=["profile"])
            for profile, value in values:
                family.add_metric([profile], value)
            return family

        yield gauge(
            "skiff_tls_profile_version",
            "Published TLS configuration version per sslProfile (0: never loaded).",
            ((n, st.version) for n, st in items),
        )
        yield gauge(
            "skiff_tls_profile_ordinal",
            "Ordinal of the published material per sslProfile.",
            ((n, st.published_ordinal) for n, st in loaded),
        )
        yield gauge(
            "skiff_tls_certificate_expiry_seconds",
            "Seconds until the published certificate of an sslProfile expires (negative: expired).",
            ((n, round(st.not_after_unix - self._now)) for n, st in expiring),
        )
        yield gauge(
            "skiff_tls_certificate_not_after_timestamp_seconds",
            "Expiry (Unix time) of the published certificate of an sslProfile.",
            ((n, st.not_after_unix) for n, st in expiring),
        )
        yield counter(
            "skiff_tls_reloads_total",
            "Successful loads per sslProfile.",
            ((n, st.reloads) for n, st in items),
        )
        yield counter(
            "skiff_tls_reload_failures_total",
            "Failed loads per sslProfile.",
            ((n, st.reload_failures) for n, st in items),
        )
        yield gauge(
            "skiff_tls_profile_error",
            "1 while the last load of an sslProfile failed (the previous version stays).",
            ((n, 1 if st.last_error else 0) for n, st in items),
        )

    def _lateness(self) -> Metric:
        family = HistogramMetricFamily(
            "skiff_timer_lateness_seconds",
            "How late engine timers fired (actual minus scheduled), per priority class.",
            labels=["priority"],
        )
        for prio, label in ((PRIO_HIGH, "high"), (PRIO_NORMAL, "normal")):
            hist = self._engine.lateness(prio)
            family.add_metric([label], _buckets(hist), hist.sum_ns / 1e9)
        return family

    def _app_wait(self) -> Metric:
        family = HistogramMetricFamily(
            "skiff_app_wait_seconds",
            "How long management (app) connection bytes waited: receive from the "
            "kernel queueing them on a plain socket to their read (by the control loop "
            "itself, or by a worker), input from that read to the control loop taking "
            "them, output from the control loop queueing them to the worker taking them "
            "to send.",
            labels=["direction"],
        )
        for label, hist in (
            ("input", self._engine.app_input_wait()),
            ("output", self._engine.app_output_wait()),
            ("receive", self._engine.app_receive_wait()),
        ):
            family.add_metric([label], _buckets(hist), hist.sum_ns / 1e9)
        return family

    def _workers(self) -> Iterator[Metric]:
        stats = [self._engine.worker_stats(i) for i in range(self._engine.workers)]
        busy = CounterMetricFamily(
            "skiff_worker_busy_seconds_total",
            "Time each I/O worker spent outside epoll.",
            labels=["worker"],
        )
        cpu = CounterMetricFamily(
            "skiff_worker_cpu_seconds_total",
            "CPU time of each I/O worker thread.",
            labels=["worker"],
        )
        conns = GaugeMetricFamily(
            "skiff_worker_connections", "Connections owned by each I/O worker.", labels=["worker"]
        )
        for i, s in enumerate(stats):
            busy.add_metric([str(i)], s.busy_ns / 1e9)
            cpu.add_metric([str(i)], s.cpu_ns / 1e9)
            conns.add_metric([str(i)], s.connections)
        yield from (busy, cpu, conns)

    def _engine_counters(self) -> Iterator[Metric]:
        for name, value in sorted(self._engine.counters().items()):
            if name in _GAUGE_COUNTERS:
                yield GaugeMetricFamily(
                    f"skiff_engine_{name}", f"Engine gauge {name}.", value=value
                )
            else:
                yield CounterMetricFamily(
                    f"skiff_engine_{name}_total",
                    _COUNTER_HELP.get(name, f"Engine counter {name}."),
                    value=value,
                )


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
    """The whole exposition of one scrape (see ``RouterCollector``)."""
    collector = RouterCollector(
        engine,
        registry,
        started=started,
        amqp_open=amqp_open,
        listeners_up=listeners_up,
        management_requests=management_requests,
        tls_profiles=tls_profiles,
        now=now,
    )
    return generate_latest(collector).decode()
