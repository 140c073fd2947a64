"""The router network in management: ``router.node`` and ``router.address``
rows, the links this router dialled as ``connection`` rows, and the rule that
network-wide reads are answered only when synchronised.

Until the router has received the complete network state (see
``router.network.sync``), a READ or QUERY of ``router.node`` or
``router.address`` is answered ``503 Service Unavailable`` with what is still
missing. A client may opt into this router's possibly stale replica with the
application property ``allowStale: true``; the answer then carries
``replicaStale``, ``replicaAgeSeconds`` (null when the replica was never
complete) and ``syncReason``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from router.management.agent import Agent, ManagementError
from router.network import views
from router.network.service import NetworkService

Row = dict[str, object]

ALLOW_STALE = "allowStale"
NETWORK_TYPES = ("router.node", "router.address")


def _truthy(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return False


class NetworkManagement:
    def __init__(self, network: NetworkService, agent: Agent) -> None:
        self._network = network
        self._agent = agent

    def provide(self) -> None:
        self._agent.provide("router.node", self.node_rows)
        self._agent.provide("router.address", self.address_rows)
        for type_name in NETWORK_TYPES:
            self._agent.guard(type_name, self.check_synchronised)

    def node_rows(self) -> list[Row]:
        core = self._network.core
        core.refresh(self._network.now())
        return [dict(r) for r in views.node_rows(core)]

    def address_rows(self) -> list[Row]:
        core = self._network.core
        core.refresh(self._network.now())
        return [dict(r) for r in views.address_rows(core)]

    def counts(self) -> Mapping[str, int]:
        """routerMetrics' network figures, as Skupper's skstat -g shows them:
        other routers reachable, addresses with a target anywhere, and AMQP
        links (two per router link: control in and out)."""
        core = self._network.core
        core.refresh(self._network.now())
        return {
            "nodeCount": len(core.lsdb.paths.cost),
            "addrCount": len(core.routes().routes),
            "linkCount": 2 * len(self._network.links()),
        }

    def check_synchronised(self, props: Mapping[object, object]) -> Mapping[str, object]:
        status = self._network.sync_status()
        if status.ready:
            return {}
        allow = next((v for k, v in props.items() if str(k) == ALLOW_STALE), None)
        if not _truthy(allow):
            raise ManagementError(
                503,
                f"router '{self._network.router_id}' is not synchronised with the network "
                f"({status.reason}); set the application property {ALLOW_STALE}: true to read "
                "its possibly stale replica",
            )
        age = status.age(self._network.now())
        return {
            "replicaStale": True,
            "replicaAgeSeconds": None if age is None else round(age, 3),
            "syncReason": status.reason,
        }

    def connections(self) -> list[Row]:
        """The links this router dialled (accepted ones are the listener's rows)."""
        now = time.monotonic()
        rows: list[Row] = []
        for link in self._network.links():
            channel = link.channel
            if not channel.dialled:
                continue
            info = self._network.engine.conn_info(link.conn_id)
            encrypted = bool(info and info.tls_protocol)
            rows.append(
                {
                    "name": f"connection/{link.conn_id}",
                    "identity": str(link.conn_id),
                    "id": link.conn_id,
                    "role": channel.role,
                    "dir": "out",
                    "protocol": "amqp",
                    "opened": True,
                    "adminStatus": "enabled",
                    "host": channel.label,
                    "container": channel.peer_container,
                    "isEncrypted": encrypted,
                    "ssl": encrypted,
                    "sslProto": (info.tls_protocol or None) if info else None,
                    "sslCipher": (info.tls_cipher or None) if info else None,
                    "tlsOrdinal": info.tls_ordinal if info and encrypted else None,
                    "isAuthenticated": encrypted and bool(info and info.peer_subject),
                    "user": (info.peer_subject or None) if info else None,
                    "sasl": None,
                    "operStatus": "up",
                    "listener": None,
                    "connector": link.connector,
                    "uptimeSeconds": int(now - link.opened),
                }
            )
        return rows


class _NetworkCollector:
    def __init__(self, network: NetworkService) -> None:
        self._network = network

    def collect(self) -> Iterator[Metric]:
        m = self._network.metrics()
        status = self._network.sync_status()

        def gauge(name: str, text: str, value: float | int | None) -> Metric:
            return GaugeMetricFamily(name, text, value=float(value or 0))

        def counter(name: str, text: str, value: float | int | None) -> Metric:
            return CounterMetricFamily(name, text, value=float(value or 0))

        yield gauge("skiff_network_links_up", "Router links with two-way HELLO.", m["linksUp"])
        yield gauge("skiff_network_neighbours", "Interior neighbours (two-way).", m["neighbours"])
        yield gauge("skiff_network_edges", "Edge routers attached here.", m["edges"])
        yield gauge(
            "skiff_network_lsdb_routers",
            "Interior routers in the link-state database.",
            m["lsdbRouters"],
        )
        yield counter(
            "skiff_network_route_recomputations",
            "Least-cost path computations.",
            m["routeRecomputations"],
        )
        yield gauge(
            "skiff_network_convergence_seconds",
            "From the last local change (link, address) to the route table it led to.",
            m["convergenceSeconds"],
        )
        yield gauge(
            "skiff_network_hello_max_lateness_seconds",
            "Latest a HELLO went out after it was due.",
            m["helloMaxLatenessSeconds"],
        )
        yield counter(
            "skiff_network_hello_stalls",
            "Ticks after this router had not run for over two HELLO intervals (stopped or "
            "starved); the silence of that time is not held against its neighbours.",
            m["helloStalls"],
        )
        yield counter(
            "skiff_network_protocol_errors", "Links closed for a protocol error.",
            m["protocolErrors"],
        )  # fmt: skip
        yield counter(
            "skiff_network_links_refused", "Links refused (duplicate id, wrong role).",
            m["linksRefused"],
        )  # fmt: skip
        yield counter(
            "skiff_network_lsdb_refusals", "Routers refused beyond maxRouters.",
            m["lsdbRefusals"],
        )  # fmt: skip
        yield gauge(
            "skiff_network_synchronised",
            "1 when every known router's link state and addresses have arrived.",
            1 if status.ready else 0,
        )
        yield from self._dataplane()

    def _dataplane(self) -> Iterator[Metric]:
        dp = self._network.engine.dataplane_counters()
        for name, text, value in (
            ("data_connections_accepted", "Data connections other routers opened here.",
             dp.data_accepted),
            ("flows_originated", "Local clients carried to another router.", dp.flows_originated),
            ("flows_transited", "Flows forwarded to a next hop.", dp.flows_transited),
            ("flows_terminated", "Flows from other routers delivered to a local target.",
             dp.flows_terminated),
            ("origin_retries", "Remote attempts that failed; the client was tried elsewhere.",
             dp.origin_retries),
        ):  # fmt: skip
            yield CounterMetricFamily(f"skiff_dataplane_{name}", text, value=float(value))
        for family, text, values in (
            ("verdicts_sent", "Verdicts answered to other routers, by code.", dp.verdicts_sent),
            ("verdicts_received", "Verdicts received from next hops, by code.",
             dp.verdicts_received),
        ):  # fmt: skip
            metric = CounterMetricFamily(f"skiff_dataplane_{family}", text, labels=["verdict"])
            for verdict, count in sorted(values.items()):
                metric.add_metric([verdict], float(count))
            yield metric
        refused = CounterMetricFamily(
            "skiff_dataplane_header_errors",
            "Data-connection messages refused, by reason (only that connection is closed).",
            labels=["reason"],
        )
        for reason, count in sorted(dp.header_errors.items()):
            refused.add_metric([reason], float(count))
        yield refused
        per_peer = {
            "flows": ("Data connections to the neighbour answered OK.", CounterMetricFamily),
            "active": ("Data connections to the neighbour open now.", GaugeMetricFamily),
            "bytes_in": ("Bytes received on data connections to the neighbour.",
                         CounterMetricFamily),
            "bytes_out": ("Bytes sent on data connections to the neighbour.",
                          CounterMetricFamily),
            "failures": ("Dials to the neighbour that failed before VERDICT OK.",
                         CounterMetricFamily),
            "resets": ("Data connections to the neighbour ended by a reset.", CounterMetricFamily),
            "pool_idle": ("Warm data connections to the neighbour waiting in the pool.",
                          GaugeMetricFamily),
            "pool_hits": ("Flows that took a warm data connection.", CounterMetricFamily),
            "pool_stale": (
                "Warm data connections closed unclaimed: made with an older TLS config.",
                CounterMetricFamily,
            ),
            "pool_misses": ("Flows that dialled because the pool was empty.",
                            CounterMetricFamily),
            "pool_target": ("Warm data connections kept per worker now (sized by demand).",
                            GaugeMetricFamily),
            "inbound_idle": ("INBOUND data connections this router keeps at the neighbour "
                             "for its flows towards us.", GaugeMetricFamily),
            "inbound_claims": ("INBOUND data connections the neighbour claimed for a flow.",
                               CounterMetricFamily),
            "pool_waits": ("Flows that waited for the neighbour's INBOUND connection.",
                           CounterMetricFamily),
            "pool_exhausted": ("Flows that found no INBOUND connection in time (retried "
                               "elsewhere, like OVERLOADED).", CounterMetricFamily),
            "pool_handoffs": ("Idle INBOUND connections moved between workers for a flow.",
                              CounterMetricFamily),
        }  # fmt: skip
        stats = {rid: peer.stats() for rid, peer in self._network.peers().items()}
        for field, (text, kind) in per_peer.items():
            metric = kind(f"skiff_dataplane_peer_{field}", text, labels=["peer"])
            for rid, st in sorted(stats.items()):
                metric.add_metric([rid], float(getattr(st, field)))
            yield metric


def network_metrics(network: NetworkService) -> str:
    """The network's metric families, in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_NetworkCollector(network))
    return generate_latest(registry).decode()
