"""The engine's remote routes carry loop-free alternate next hops
(router/network/service.py, ``_alternates``), which depend on links between
other routers. A recomputation of the paths that leaves this router's own
route table as it was (same version: the best next hops did not move) must
still republish them: before, an alternate learnt after the last change of
the table never reached the engine, and a client that arrived between a
neighbour's death and the new table found no path
(test_the_middle_router_killed_while_another_path_exists failed about one
run in fifteen)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from router.network.service import NetworkService


def _service(table: Any, lsdb: Any, published: list[Any]) -> Any:
    """What _publish_routes reads and calls, and nothing else."""
    return SimpleNamespace(
        core=SimpleNamespace(routes=lambda: table, lsdb=lsdb),
        _routes=None,
        _peers_changed=False,
        _lsdb_computed=-1,
        _publish_remote=published.append,
        _change_started=None,
        _notify=lambda *args: None,
        _route_listeners=[],
        convergence_s=None,
    )


def test_remote_routes_follow_a_recomputation_that_keeps_the_table() -> None:
    table = SimpleNamespace(version=3)
    lsdb = SimpleNamespace(recomputations=1)
    published: list[Any] = []
    svc = _service(table, lsdb, published)
    NetworkService._publish_routes(svc, 0.0)
    assert published == [table]
    NetworkService._publish_routes(svc, 0.0)  # nothing changed: nothing sent
    assert published == [table]
    lsdb.recomputations = 2  # e.g. a link between two other routers came up
    NetworkService._publish_routes(svc, 0.0)
    assert published == [table, table]
    svc._peers_changed = True  # a data path to a neighbour came or went
    NetworkService._publish_routes(svc, 0.0)
    assert len(published) == 3 and not svc._peers_changed
