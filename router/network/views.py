"""The network's management rows, with Skupper's attribute names.

``router.node`` (one row per interior router known, this one first) and
``router.address`` (one row per address with a target anywhere), as the
management agent will serve them to ``skstat -n`` / ``skstat -a``.  Pure
functions of a ``RouterCore``; the agent adds ``identity``/``name``/``type``
and answers 503 with ``sync_status`` unless synchronised (or a stale read
was asked for).
"""

from __future__ import annotations

import time
from typing import Any

from router.network.core import RouterCore
from router.network.messages import PROTOCOL_VERSION


def _topo_address(router_id: str) -> str:
    return f"amqp:/_topo/0/{router_id}"


def node_rows(core: RouterCore) -> list[dict[str, Any]]:
    db = core.lsdb
    paths = db.paths
    neighbours = core.interior_neighbours()
    # Skupper reports the time of the last change in Unix seconds; the core
    # keeps it on the monotonic clock it is driven by
    last_change = (
        None
        if db.last_topology_change is None
        else int(time.time() - (time.monotonic() - db.last_topology_change))
    )
    rows: list[dict[str, Any]] = [
        {
            "id": core.router_id,
            "protocolVersion": PROTOCOL_VERSION,
            "instance": core.instance,
            "linkState": sorted(db.peers),
            "nextHop": "(self)",
            "validOrigins": [],
            "address": _topo_address(core.router_id),
            "routerLink": None,
            "cost": None,
            "lastTopoChange": last_change,
            "index": 0,
        }
    ]
    reachable = [rid for rid in sorted(db.routers) if rid in paths.cost]
    for index, rid in enumerate(reachable, start=1):
        # a router without a path (gone, its entry not yet expired) is not
        # listed: Skupper's router.node shows the routers that can be reached
        entry = db.routers[rid]
        hop = paths.next_hop.get(rid)
        rows.append(
            {
                "id": rid,
                "protocolVersion": PROTOCOL_VERSION,
                "instance": entry.instance,
                "linkState": sorted(entry.peers),
                # a neighbour is reached over its link; others through a next hop
                "nextHop": None if hop is None or hop == rid else hop,
                "validOrigins": [],
                "address": _topo_address(rid),
                "routerLink": neighbours.get(rid),
                "cost": paths.cost.get(rid),
                "lastTopoChange": last_change,
                "index": index,
            }
        )
    return rows


def address_rows(core: RouterCore) -> list[dict[str, Any]]:
    rows = []
    for address, route in core.routes().routes.items():
        hosts = sorted({d.router_id for d in route.remote})
        rows.append(
            {
                # Skupper's hash key of a mobile address (what
                # skstat -a reads to show its class and text)
                "name": f"M{address}",
                "identity": f"M{address}",
                "key": address,
                "priority": -1,
                "watch": False,
                "distribution": "balanced",
                "inProcess": 0,
                "subscriberCount": route.local_targets,
                "remoteCount": len(hosts),
                "remoteHostRouters": hosts,
                "containerCount": 0,
            }
        )
    return rows
