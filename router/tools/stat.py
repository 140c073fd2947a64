"""skiff-stat: Skupper's ``skstat`` views, for Skiff.

``-g`` general router statistics, ``-c`` connections (AMQP and relayed
TCP), ``-l`` router links and ``-n`` router nodes (none on a standalone
router), ``-e`` edge connections, ``-a`` service addresses, ``-m`` memory,
``-p`` policy, ``--log`` recent log records; Skiff's own views:
``--services`` tcpListeners and tcpConnectors, ``--tcp`` relayed flows,
``--tls`` each sslProfile's published material (version, ordinal,
fingerprint, certificate expiry, last error).
``--csv`` prints comma separated values, ``--limit`` caps the rows;
``-r ROUTER-ID`` asks that router's management node.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from proton import ConnectionException, Timeout

from router.tools.client import (
    CONNECT_ERRORS,
    ManagementClient,
    ManagementFailure,
    add_connection_options,
    fail,
)

TOOL = "skiff-stat"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=TOOL, description="Show Skiff router statistics (like skstat)."
    )
    views = p.add_mutually_exclusive_group()
    views.add_argument("-g", "--general", action="store_true", help="router statistics (default)")
    views.add_argument(
        "-c", "--connections", action="store_true", help="connections (AMQP and TCP)"
    )
    views.add_argument("-l", "--links", action="store_true", help="router links")
    views.add_argument("-n", "--nodes", action="store_true", help="routers of the network")
    views.add_argument("-e", "--edge", action="store_true", help="edge router connections")
    views.add_argument("-a", "--address", action="store_true", help="service addresses")
    views.add_argument("-m", "--memory", action="store_true", help="memory use")
    views.add_argument("-p", "--policy", action="store_true", help="policy")
    views.add_argument("--log", action="store_true", help="recent log records")
    views.add_argument(
        "--services", action="store_true", help="tcpListeners and tcpConnectors (Skiff)"
    )
    views.add_argument("--tcp", action="store_true", help="relayed TCP connections")
    views.add_argument(
        "--tls",
        action="store_true",
        help="sslProfiles: version, ordinal, fingerprint, certificate expiry, last error",
    )
    p.add_argument("--csv", action="store_true", help="comma separated output")
    p.add_argument("--limit", type=int, default=None, help="show at most this many rows")
    add_connection_options(p)
    return p


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render(title: str, heads: Sequence[str], rows: list[list[Any]], as_csv: bool) -> str:
    cells = [[_text(v) for v in r] for r in rows]
    if as_csv:
        out: list[str] = []

        class _Sink:
            def write(self, s: str) -> int:
                out.append(s)
                return len(s)

        writer = csv.writer(_Sink(), lineterminator="\n")
        writer.writerow(heads)
        writer.writerows(cells)
        return "".join(out)
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(heads)]
    lines = [title, "=" * len(title)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip())
    lines.append("  ".join("=" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines) + "\n"


def _rows(
    client: ManagementClient, etype: str, names: list[str], limit: int | None
) -> list[list[Any]]:
    _, rows = client.query(etype, names, 0, limit)
    return rows


def general(client: ManagementClient, as_csv: bool) -> str:
    router = client.request("READ", type="io.skupper.router.router", name="router")
    metrics = client.request("READ", type="io.skupper.router.routerMetrics", name="routerMetrics")
    pairs: list[list[Any]] = [
        ["Version", router.get("version")],
        ["Mode", router.get("mode")],
        ["Router Id", router.get("id")],
        ["Worker Threads", router.get("workerThreads")],
        ["Uptime (s)", metrics.get("uptimeSeconds")],
        ["tcpListeners", router.get("tcpListenerCount")],
        ["tcpConnectors", router.get("tcpConnectorCount")],
        ["AMQP Connections", metrics.get("amqpConnections")],
        ["TCP Connections Open", metrics.get("tcpConnectionsActive")],
        ["TCP Connections Opened", metrics.get("tcpConnectionsOpened")],
        ["TCP Bytes In", metrics.get("tcpBytesIn")],
        ["TCP Bytes Out", metrics.get("tcpBytesOut")],
        ["Failed Connects", metrics.get("connectsFailed")],
        ["Management Requests", metrics.get("managementRequests")],
    ]
    return render("Router Statistics", ["attr", "value"], pairs, as_csv)


TLS_ATTRIBUTES = [
    "name", "version", "ordinal", "oldestValidOrdinal", "fingerprint",
    "certSubject", "certNotAfter", "reloads", "reloadFailures", "lastError",
]  # fmt: skip


def expires_in(not_after: object, now: datetime | None = None) -> str:
    """'29d 23h' until an ISO 8601 expiry, 'EXPIRED 2h ago' after it."""
    if not isinstance(not_after, str) or not not_after:
        return ""
    try:
        when = datetime.fromisoformat(not_after)
    except ValueError:
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    left = int((when - (now or datetime.now(UTC))).total_seconds())
    span = abs(left)
    text = (
        f"{span // 86400}d {span % 86400 // 3600}h"
        if span >= 86400
        else (f"{span // 3600}h {span % 3600 // 60}m")
    )
    return text if left >= 0 else f"EXPIRED {text} ago"


def tls_view(client: ManagementClient, as_csv: bool, limit: int | None) -> str:
    rows = _rows(client, "sslProfile", TLS_ATTRIBUTES, limit)
    out: list[list[Any]] = []
    for r in rows:
        v = dict(zip(TLS_ATTRIBUTES, r, strict=True))
        fingerprint = str(v["fingerprint"] or "")
        out.append(
            [
                v["name"],
                v["version"],
                v["ordinal"],
                v["oldestValidOrdinal"],
                fingerprint if as_csv else fingerprint[:16],
                v["certSubject"],
                v["certNotAfter"],
                expires_in(v["certNotAfter"]),
                v["reloads"],
                v["reloadFailures"],
                v["lastError"],
            ]
        )
    heads = ["name", "version", "ordinal", "oldest valid", "fingerprint", "subject",
             "not after", "expires in", "reloads", "failures", "last error"]  # fmt: skip
    return render("TLS Profiles", heads, out, as_csv)


LINK_ATTRIBUTES = ["linkType", "linkDir", "connectionId", "identity", "owningAddr",
                   "capacity", "undeliveredCount", "unsettledCount", "deliveryCount"]  # fmt: skip
NODE_ATTRIBUTES = ["id", "protocolVersion", "nextHop", "routerLink", "cost", "validOrigins"]


def links_view(client: ManagementClient, as_csv: bool, limit: int | None) -> str:
    rows = _rows(client, "router.link", LINK_ATTRIBUTES, limit)
    heads = ["type", "dir", "conn id", "id", "addr", "cap", "undel", "unsett", "deliv"]
    return render("Router Links", heads, rows, as_csv)


def nodes_view(client: ManagementClient, as_csv: bool, limit: int | None) -> str:
    rows = _rows(client, "router.node", NODE_ATTRIBUTES, limit)
    if not rows:
        router = client.request("READ", type="io.skupper.router.router", name="router")
        if router.get("mode") == "standalone":
            return "Router is Standalone - No Router List\n"
    heads = ["router id", "version", "next hop", "link", "cost", "neighbors"]
    return render("Routers in the Network", heads, rows, as_csv)


CONNECTION_ATTRIBUTES = ["id", "host", "container", "role", "dir", "isEncrypted",
                         "isAuthenticated", "user", "sasl", "uptimeSeconds",
                         "protocol"]  # fmt: skip
CONNECTION_HEADS = ["id", "host", "container", "role", "dir", "security", "authenticated",
                    "user", "sasl", "uptime", "proto"]  # fmt: skip


def edge_view(client: ManagementClient, as_csv: bool, limit: int | None) -> str:
    rows = [r for r in _rows(client, "connection", CONNECTION_ATTRIBUTES, None) if r[3] == "edge"]
    if not rows:
        return "No Edge Router Connections\n"
    return render("Connections", CONNECTION_HEADS, rows[:limit], as_csv)


def _size(value: object) -> str:
    if not isinstance(value, int):
        return ""
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.1f} {unit}" if unit != "B" else f"{value} B"
        amount /= 1024
    return str(value)


def memory_view(client: ManagementClient, as_csv: bool) -> str:
    metrics = client.request("READ", type="io.skupper.router.routerMetrics", name="routerMetrics")
    rows: list[list[Any]] = [
        ["VmSize", _size(metrics.get("memoryUsage"))],
        ["RSS", _size(metrics.get("residentMemoryUsage"))],
    ]
    note = "" if as_csv else "(Skiff has no memory pools; these are the process's sizes)\n"
    return render("Memory Summary", ["attr", "value"], rows, as_csv) + note


POLICY_ATTRIBUTES = ["maxConnections", "maxMessageSize", "enableVhostPolicy",
                     "enableVhostNamePatterns", "policyDir", "defaultVhost"]  # fmt: skip


def policy_view(client: ManagementClient, as_csv: bool) -> str:
    rows = _rows(client, "policy", POLICY_ATTRIBUTES, 1)
    values = rows[0] if rows else [None] * len(POLICY_ATTRIBUTES)
    heads = ["Maximum Concurrent Connections", "Maximum Message Size", "Enable Vhost Policy",
             "Enable Vhost Name Patterns", "Policy Directory", "Default Vhost"]  # fmt: skip
    pairs = [[h, v] for h, v in zip(heads, values, strict=True)]
    note = "" if as_csv else "(Skiff enforces no policy; Skupper's defaults are shown)\n"
    return render("Policy Configuration", ["attr", "value"], pairs, as_csv) + note


def log_view(client: ManagementClient, limit: int | None) -> str:
    records = client.node("GET-LOG", limit=limit)
    lines = [
        f"{time.ctime(float(r[5]))} {r[0]} ({r[1]}) {r[2]}"
        for r in records
        if isinstance(r, list) and len(r) >= 6
    ]
    return "".join(line + "\n" for line in lines)


def address_view(client: ManagementClient, as_csv: bool, limit: int | None) -> str:
    """Every service address: local listeners and connectors, and (in a
    router network) the other routers with targets for it."""
    listeners = _rows(client, "tcpListener", ["address"], None)
    connectors = _rows(client, "tcpConnector", ["address", "connectionsOpened"], None)
    # empty on a standalone router; a 503 while not synchronised is reported
    network = {
        str(r[0]): r[1] or []
        for r in _rows(client, "router.address", ["key", "remoteHostRouters"], None)
    }
    addresses = sorted(
        {str(r[0]) for r in listeners} | {str(r[0]) for r in connectors} | set(network)
    )
    rows = [
        [
            a,
            sum(1 for r in listeners if r[0] == a),
            sum(1 for r in connectors if r[0] == a),
            " ".join(str(h) for h in network.get(a, [])),
            sum(int(r[1] or 0) for r in connectors if r[0] == a),
        ]
        for a in addresses
    ]
    heads = ["address", "listeners", "connectors", "remote routers", "connections"]
    return render("Service Addresses", heads, rows[:limit], as_csv)


def services_view(client: ManagementClient, as_csv: bool, limit: int | None) -> str:
    names = ["type", "name", "host", "port", "address", "operStatus", "connectionsOpened",
             "connectionsClosed", "bytesIn", "bytesOut"]  # fmt: skip
    rows = _rows(client, "tcpListener", names, limit) + _rows(client, "tcpConnector", names, limit)
    for r in rows:
        r[0] = str(r[0]).rsplit(".", 1)[-1]
    heads = ["type", "name", "host", "port", "address", "status", "opened", "closed",
             "bytes in", "bytes out"]  # fmt: skip
    return render("TCP Listeners and Connectors", heads, rows[:limit], as_csv)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        client = ManagementClient.from_args(args)
    except CONNECT_ERRORS as e:
        return fail(TOOL, f"cannot connect to {args.bus}: {e}")
    try:
        if args.connections:
            text = render(
                "Connections",
                CONNECTION_HEADS,
                _rows(client, "connection", CONNECTION_ATTRIBUTES, args.limit),
                args.csv,
            )
        elif args.links:
            text = links_view(client, args.csv, args.limit)
        elif args.nodes:
            text = nodes_view(client, args.csv, args.limit)
        elif args.edge:
            text = edge_view(client, args.csv, args.limit)
        elif args.memory:
            text = memory_view(client, args.csv)
        elif args.policy:
            text = policy_view(client, args.csv)
        elif args.log:
            text = log_view(client, args.limit)
        elif args.services:
            text = services_view(client, args.csv, args.limit)
        elif args.address:
            text = address_view(client, args.csv, args.limit)
        elif args.tls:
            text = tls_view(client, args.csv, args.limit)
        elif args.tcp:
            names = ["connectionId", "listener", "connector", "address", "host", "target",
                     "bytesIn", "bytesOut", "uptimeSeconds"]  # fmt: skip
            text = render(
                "TCP Connections",
                names,
                _rows(client, "tcpConnection", names, args.limit),
                args.csv,
            )
        else:
            text = general(client, args.csv)
    except ManagementFailure as e:
        return fail(TOOL, f"{e.status} {e.description}")
    except (ConnectionException, Timeout) as e:
        return fail(TOOL, f"connection to {args.bus} failed: {e}")
    finally:
        try:
            client.close()
        except (ConnectionException, Timeout):
            pass  # the output is what matters; the router may already have closed
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
