"""The router network's control plane: ``python -m bench network``.

Starts K skiffd processes on loopback (bench/netharness.py) linked in a
line, a ring or a full mesh, and measures over ``--rounds``:

* **link cut**: an inter-router connector is deleted by management (DELETE
  of ``to-X`` on the dialling router); the time until EVERY router's
  ``router.node`` rows (next hop and cost of every other router) equal the
  least-cost routes computed here, independently (Floyd-Warshall), from the
  remaining topology. The connector is then created again (``restore``);
* **router kill**: kill -9 of a middle router; the time until every
  surviving router's routes are correct again. The router is then started
  again (``rejoin``);
* **router freeze** (SIGSTOP): the router's connections stay open, only its
  HELLOs stop, so the others can only notice by ``helloMaxAgeSeconds`` of
  silence (a kill -9 closes its sockets, and the peers see that at once);
  the time until every other router's routes are correct; then SIGCONT;
* **new address**: a tcpConnector with a fresh address is created at one end
  of the network; the time until the router at the other end lists it in
  ``router.address`` with ``remoteHostRouters == [origin]``; the connector is
  then deleted (``withdraw``: the time until the far end forgets it);
* **idle CPU**: every skiffd's CPU time over a window with the network
  converged and quiet, as % of one core.

Convergence is polled: every router's management is asked in turn over one
persistent connection each; a router counts as correct from the reply that
first showed the expected routes, so the figures are upper bounds with the
sweep period (reported) as their resolution. After convergence the poll goes
on for ``--settle`` seconds and counts any deviation (flapping).

``--topology auto`` (the default) runs the cut, the kill, the freeze and the
idle window on a ring of K and the address rounds on a line of K (the far end of
a line is K-1 hops away). A cut, kill or freeze that would split the
network (a line) is skipped, not measured.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.host import environment, read_process_cpu_s, read_threads_cpu_s
from bench.netharness import FAST_TIMERS, Network, Router
from bench.results import envelope
from router.tools.client import CONNECT_ERRORS, ManagementClient, ManagementFailure

TOPOLOGIES = ("auto", "line", "ring", "mesh")
SCHEMA = "network/1"
T = "io.skupper.router."
QUERY_TIMEOUT_S = 2.0

# (from, to) -> cost; both directions present
Graph = dict[str, dict[str, int]]
# router -> other router -> (nextHop as router.node shows it, cost)
Routes = dict[str, tuple[str | None, int]]


@dataclass(slots=True)
class NetworkBenchConfig:
    topology: str = "auto"
    routers: int = 9
    rounds: int = 3
    address_rounds: int = 20
    idle_s: float = 10.0  # CPU window
    # before the CPU window, nothing happening: 2 x raIntervalFluxSeconds, out of flux
    quiet_s: float = 8.0
    settle_s: float = 1.0  # polling on after convergence, counting deviations
    timeout_s: float = 20.0  # bound of every convergence wait
    poll_pause_s: float = 0.0  # between sweeps (0: poll back to back)
    workdir: Path | None = None  # routers' configs and logs (default: a new temp dir)

    def validate(self) -> None:
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"--topology must be one of {', '.join(TOPOLOGIES)}")
        if self.routers < 2:
            raise ValueError("--routers must be at least 2")
        if self.routers > 64:
            raise ValueError("--routers: at most 64 on one machine")
        if self.rounds < 1 or self.address_rounds < 0:
            raise ValueError("--rounds must be >= 1 and --address-rounds >= 0")
        if self.idle_s <= 0 or self.timeout_s <= 0:
            raise ValueError("--idle and --timeout must be > 0")
        if self.quiet_s < 0 or self.settle_s < 0 or self.poll_pause_s < 0:
            raise ValueError("--quiet-before, --settle and --poll-pause must be >= 0")


# ---------------------------------------------------------------- topology


def router_names(k: int) -> list[str]:
    width = len(str(k))
    return [f"R{i:0{width}d}" for i in range(1, k + 1)]


def topology_links(kind: str, names: Sequence[str]) -> list[tuple[str, str, int]]:
    """(dialler, target, cost) of each link; every cost 1."""
    n = len(names)
    if kind == "line":
        return [(names[i], names[i + 1], 1) for i in range(n - 1)]
    if kind == "ring":
        if n < 3:
            return topology_links("line", names)
        return [(names[i], names[(i + 1) % n], 1) for i in range(n)]
    if kind == "mesh":
        return [(names[i], names[j], 1) for i in range(n) for j in range(i + 1, n)]
    raise ValueError(f"unknown topology {kind!r}")


def graph_of(
    names: Iterable[str], links: Iterable[tuple[str, str, int]], down: Iterable[str] = ()
) -> Graph:
    """The undirected graph of the routers not ``down`` (parallel links: the cheapest)."""
    gone = set(down)
    graph: Graph = {n: {} for n in names if n not in gone}
    for a, b, cost in links:
        if a in gone or b in gone or a == b:
            continue
        for x, y in ((a, b), (b, a)):
            old = graph[x].get(y)
            graph[x][y] = cost if old is None else min(old, cost)
    return graph


def expected_routes(graph: Graph) -> dict[str, Routes]:
    """Every router's least-cost routes to every other router it can reach.

    Floyd-Warshall for the costs; the next hop is the lowest-id neighbour
    that starts a least-cost path (the control plane's tie-break). As
    ``router.node`` shows it: a next hop that is the destination itself (a
    neighbour reached over its own link) is None."""
    nodes = sorted(graph)
    inf = float("inf")
    dist: dict[str, dict[str, float]] = {a: {b: inf for b in nodes} for a in nodes}
    for a in nodes:
        dist[a][a] = 0
        for b, c in graph[a].items():
            dist[a][b] = min(dist[a][b], c)
    for k in nodes:
        dk = dist[k]
        for i in nodes:
            di = dist[i]
            via = di[k]
            if via == inf:
                continue
            for j in nodes:
                if via + dk[j] < di[j]:
                    di[j] = via + dk[j]
    out: dict[str, Routes] = {}
    for src in nodes:
        routes: Routes = {}
        for dst in nodes:
            if dst == src or dist[src][dst] == inf:
                continue
            total = dist[src][dst]
            hop = min(n for n, c in graph[src].items() if c + dist[n][dst] == total)
            routes[dst] = (None if hop == dst else hop, int(total))
        out[src] = routes
    return out


def route_problems(expected: Routes, rows: Mapping[str, tuple[str | None, int | None]]) -> str:
    """What differs between a router's ``router.node`` rows and its expected
    routes ('' when they agree). A row for a router not expected must be
    unreachable (cost None): a dead router's link state lingers until it
    expires."""
    problems = []
    for dst, (hop, cost) in sorted(expected.items()):
        got = rows.get(dst)
        if got is None:
            problems.append(f"{dst} missing")
        elif got != (hop, cost):
            problems.append(f"{dst} via {got[0]} cost {got[1]} (want via {hop} cost {cost})")
    for dst, (via, reach) in sorted(rows.items()):
        if dst not in expected and reach is not None:
            problems.append(f"{dst} reachable via {via} cost {reach} (want unreachable)")
    return "; ".join(problems)


def far_pair(graph: Graph) -> tuple[str, str]:
    """Two routers the most hops apart (the lowest ids among ties)."""
    best: tuple[int, str, str] | None = None
    for src in sorted(graph):
        hops = {src: 0}
        frontier = [src]
        while frontier:
            nxt = []
            for n in frontier:
                for m in sorted(graph[n]):
                    if m not in hops:
                        hops[m] = hops[n] + 1
                        nxt.append(m)
            frontier = nxt
        for dst, h in hops.items():
            if best is None or h > best[0]:
                best = (h, src, dst)
    assert best is not None
    return best[1], best[2]


def cut_candidates(names: Sequence[str], links: Sequence[tuple[str, str, int]]) -> list[int]:
    """Indexes of links whose removal leaves the network connected."""
    out = []
    for i in range(len(links)):
        rest = [lk for j, lk in enumerate(links) if j != i]
        if len(expected_routes(graph_of(names, rest))[names[0]]) == len(names) - 1:
            out.append(i)
    return out


def kill_candidates(names: Sequence[str], links: Sequence[tuple[str, str, int]]) -> list[str]:
    """Routers whose loss leaves the others connected, the middle ones first."""
    mid = len(names) // 2
    order = sorted(names, key=lambda n: (abs(names.index(n) - mid), n))
    out = []
    for victim in order:
        graph = graph_of(names, links, down=[victim])
        first = min(graph)
        if len(expected_routes(graph)[first]) == len(graph) - 1:
            out.append(victim)
    return out


# ---------------------------------------------------------------- statistics


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest rank (the smallest value with at least q of the values at or below it)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered) - 1e-9))
    return ordered[min(len(ordered), rank) - 1]


def summary(values: Sequence[float | None]) -> dict[str, Any]:
    done = [v for v in values if v is not None]
    if not done:
        return {"count": 0, "failed": len(values)}
    return {
        "count": len(done),
        "failed": len(values) - len(done),
        "min": min(done),
        "p50": quantile(done, 0.5),
        "p99": quantile(done, 0.99),
        "max": max(done),
        "mean": sum(done) / len(done),
    }


# ---------------------------------------------------------------- polling


class Poller:
    """One persistent management connection per router, reopened on failure."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self._clients: dict[str, ManagementClient] = {}
        self.queries = 0
        self.failures = 0

    def client(self, name: str) -> ManagementClient:
        client = self._clients.get(name)
        if client is None:
            port = self.net.specs[name].mgmt_port
            client = ManagementClient(f"amqp://127.0.0.1:{port}", timeout=QUERY_TIMEOUT_S)
            self._clients[name] = client
        return client

    def drop(self, name: str) -> None:
        client = self._clients.pop(name, None)
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a dead router's connection may fail to close
                pass

    def call(self, name: str, props: dict[str, object], body: object = None) -> Any:
        """One request; raises ManagementFailure on an error status."""
        try:
            reply = self.client(name).call(props, body)
        except CONNECT_ERRORS:
            self.drop(name)
            raise
        if not 200 <= reply.status < 300:
            raise ManagementFailure(reply.status, reply.description)
        return reply.body

    def rows(self, name: str, entity_type: str, attributes: list[str]) -> list[dict[str, Any]]:
        self.queries += 1
        props: dict[str, object] = {
            "operation": "QUERY",
            "type": "org.amqp.management",
            "name": "self",
            "entityType": T + entity_type,
            "allowStale": True,
        }
        body = self.call(name, props, {"attributeNames": attributes})
        return [dict(zip(body["attributeNames"], r, strict=True)) for r in body["results"]]

    def routes(self, name: str) -> dict[str, tuple[str | None, int | None]] | None:
        """A router's routes (None when it did not answer)."""
        try:
            rows = self.rows(name, "router.node", ["id", "nextHop", "cost"])
        except (ManagementFailure, *CONNECT_ERRORS):
            self.failures += 1
            return None
        return {
            str(r["id"]): (r["nextHop"], None if r["cost"] is None else int(r["cost"]))
            for r in rows
            if r["nextHop"] != "(self)"
        }

    def close(self) -> None:
        for name in list(self._clients):
            self.drop(name)


@dataclass(slots=True)
class Convergence:
    seconds: float | None  # None: not within the time-out
    sweeps: int
    sweep_s: float  # mean time to ask every router once (the resolution)
    last: str | None  # the router that became correct last
    deviations: int  # wrong answers seen during the settle period after convergence
    problem: str = ""  # on a time-out: what was still wrong, and where

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def wait_routes(
    poller: Poller,
    expected: Mapping[str, Routes],
    t0: float,
    timeout: float,
    settle: float,
    pause: float = 0.0,
) -> Convergence:
    """Polls every router in ``expected`` until all show their expected routes."""
    names = sorted(expected)
    since: dict[str, float] = {}
    problems: dict[str, str] = {}
    sweeps = 0
    first = time.monotonic()
    deadline = t0 + timeout
    converged: float | None = None
    last: str | None = None
    while True:
        for name in names:
            got = poller.routes(name)
            now = time.monotonic()
            problem = "no answer" if got is None else route_problems(expected[name], got)
            if problem:
                since.pop(name, None)
                problems[name] = problem
            else:
                since.setdefault(name, now)
                problems.pop(name, None)
        sweeps += 1
        if len(since) == len(names):
            last = max(since, key=lambda n: since[n])
            converged = since[last]
            break
        if time.monotonic() > deadline:
            break
        if pause:
            time.sleep(pause)
    sweep_s = (time.monotonic() - first) / sweeps
    if converged is None:
        problem = "; ".join(f"{n}: {p}" for n, p in sorted(problems.items()))
        return Convergence(None, sweeps, sweep_s, None, 0, problem)
    deviations = 0
    end = time.monotonic() + settle
    while time.monotonic() < end:
        for name in names:
            got = poller.routes(name)
            if got is None or route_problems(expected[name], got):
                deviations += 1
        if pause:
            time.sleep(pause)
    return Convergence(converged - t0, sweeps, sweep_s, last, deviations)


# ---------------------------------------------------------------- the bench


@dataclass
class NetworkReport:
    config: NetworkBenchConfig
    workdir: Path
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    idle: dict[str, Any] = field(default_factory=dict)
    startup: dict[str, float] = field(default_factory=dict)  # topology -> seconds
    routers: dict[str, dict[str, Any]] = field(default_factory=dict)  # metrics, log findings
    errors: list[str] = field(default_factory=list)  # what stopped a topology's phases
    wall_s: float = 0.0

    def goals(self) -> dict[str, dict[str, Any]]:
        hello_max_age = float(FAST_TIMERS["helloMaxAgeSeconds"])
        limit = hello_max_age + 1.0
        out: dict[str, dict[str, Any]] = {}
        for phase, what in (
            ("link_cut", "after a link cut"),
            ("router_kill", "after a kill -9"),
            ("router_freeze", "after a router freezes (SIGSTOP: no FIN, silence only)"),
        ):
            s = self.phases.get(phase, {}).get("summary", {})
            value = s.get("max") if s.get("count") else None
            failed = bool(s.get("failed"))
            out[phase] = {
                "goal": f"every router's routes correct {what} within helloMaxAgeSeconds "
                f"+ 1 s ({limit:g} s), every round",
                "limit_s": limit,
                "value_s": value,
                "measure": "max over rounds",
                "met": None
                if value is None and not failed
                else (value is not None and value <= limit and not failed),
            }
        s = self.phases.get("address", {}).get("summary", {})
        value = s.get("p99") if s.get("count") else None
        failed = bool(s.get("failed"))
        out["address"] = {
            "goal": "a new address routable at the far end within 1 s at p99",
            "limit_s": 1.0,
            "value_s": value,
            "measure": "p99 over rounds",
            "met": None
            if value is None and not failed
            else (value is not None and value <= 1.0 and not failed),
        }
        cpu = self.idle.get("max_pct")
        out["idle_cpu"] = {
            "goal": "idle control-plane CPU below 1 % of a core per router",
            "limit_pct": 1.0,
            "value_pct": cpu,
            "measure": "max over routers",
            "met": None if cpu is None else cpu < 1.0,
        }
        return out


def run_network(cfg: NetworkBenchConfig, log: Callable[[str], None] | None = None) -> NetworkReport:
    """Runs every phase; the routers are always stopped, also on Ctrl-C."""
    say = log or (lambda _text: None)
    workdir = cfg.workdir or Path(tempfile.mkdtemp(prefix="skiff-net-bench-"))
    report = NetworkReport(cfg, workdir, os.getloadavg())
    started = time.monotonic()
    names = router_names(cfg.routers)
    if cfg.topology == "auto":
        plan = [
            ("ring", ("link_cut", "router_kill", "router_freeze", "idle")),
            ("line", ("address",)),
        ]
    else:
        plan = [(cfg.topology, ("link_cut", "router_kill", "router_freeze", "idle", "address"))]
    try:
        for kind, phases in plan:
            _run_topology(cfg, report, kind, names, phases, workdir / kind, say)
    finally:
        report.load_end = os.getloadavg()
        report.wall_s = time.monotonic() - started
    return report


def _run_topology(
    cfg: NetworkBenchConfig,
    report: NetworkReport,
    kind: str,
    names: list[str],
    phases: Sequence[str],
    tmp: Path,
    say: Callable[[str], None],
) -> None:
    links = topology_links(kind, names)
    net = Network(tmp)
    poller = Poller(net)
    try:
        for name in names:
            net.router(name)
        for a, b, cost in links:
            net.link(a, b, cost)
        say(f"{kind} of {len(names)}: starting ({tmp})")
        t0 = time.monotonic()
        net.start()
        net.wait_converged(timeout=max(60.0, cfg.timeout_s))
        report.startup[kind] = time.monotonic() - t0
        full = expected_routes(graph_of(names, links))
        check = wait_routes(poller, full, time.monotonic(), cfg.timeout_s, 0)
        if check.seconds is None:
            raise RuntimeError(f"{kind}: routes never became correct: {check.problem}")
        runners: dict[str, Callable[..., dict[str, Any]]] = {
            "link_cut": _link_cut,
            "router_kill": functools.partial(_router_loss, _KILL),
            "router_freeze": functools.partial(_router_loss, _FREEZE),
            "address": _address,
        }
        for phase in phases:
            if phase == "idle":
                report.idle = _idle_cpu(cfg, net, poller, kind, names, say)
                continue
            result = runners[phase](cfg, net, poller, kind, names, links, say)
            report.phases[phase] = result
            if result.get("error"):
                # the network is not back as it was: later phases would measure that
                report.errors.append(f"{kind}: {phase}: {result['error']}")
                say(f"{kind}: {phase} failed; the phases after it are not run")
                break
    except (RuntimeError, AssertionError, ManagementFailure, *CONNECT_ERRORS) as e:
        report.errors.append(f"{kind}: {type(e).__name__}: {e}")
        say(f"{kind}: stopped: {e}")
    finally:
        poller.close()
        try:
            report.routers.update({f"{kind}/{n}": _router_findings(net, n) for n in names})
        finally:
            net.close()


def _connector_props(net: Network, dialler: str, target: str, cost: int) -> dict[str, object]:
    return {
        "name": f"to-{target}",
        "host": "127.0.0.1",
        "port": net.specs[target].ir_port,
        "role": "inter-router",
        "cost": cost,
    }


def _link_cut(
    cfg: NetworkBenchConfig,
    net: Network,
    poller: Poller,
    kind: str,
    names: list[str],
    links: list[tuple[str, str, int]],
    say: Callable[[str], None],
) -> dict[str, Any]:
    candidates = cut_candidates(names, links)
    if not candidates:
        return {"topology": kind, "skipped": f"every link of a {kind} splits the network"}
    full = expected_routes(graph_of(names, links))
    rounds: list[dict[str, Any]] = []
    error: str | None = None
    for i in range(cfg.rounds):
        index = candidates[(i * max(1, len(candidates) // cfg.rounds)) % len(candidates)]
        a, b, cost = links[index]
        rest = [lk for j, lk in enumerate(links) if j != index]
        want = expected_routes(graph_of(names, rest))
        snap = cpu_snapshot(net)
        t0 = time.monotonic()
        poller.call(a, {"operation": "DELETE", "type": T + "connector", "name": f"to-{b}"})
        cut = wait_routes(poller, want, t0, cfg.timeout_s, cfg.settle_s, cfg.poll_pause_s)
        t1 = time.monotonic()
        poller.call(
            a,
            {"operation": "CREATE", "type": T + "connector", "name": f"to-{b}"},
            _connector_props(net, a, b, cost),
        )
        restore = wait_routes(poller, full, t1, cfg.timeout_s, cfg.settle_s, cfg.poll_pause_s)
        say(f"link cut {a}-{b}: {_fmt_s(cut.seconds)}, restored {_fmt_s(restore.seconds)}")
        rounds.append({"link": [a, b], "cut": cut.to_dict(), "restore": restore.to_dict(),
                       "routers_cpu": cpu_since(net, snap)})  # fmt: skip
        if restore.seconds is None:
            error = f"link {a}-{b} did not come back: {restore.problem}"
            break
    return {
        "topology": kind,
        "error": error,
        "summary": summary([r["cut"]["seconds"] for r in rounds]),
        "restore": summary([r["restore"]["seconds"] for r in rounds]),
        "rounds": rounds,
    }


@dataclass(frozen=True)
class _Loss:
    """How a router is lost and brought back, and the names its figures go
    under in the JSON."""

    lose: Callable[[Router], None]
    restore: Callable[[Router], None]
    lost_key: str  # the round's key for the time to correct routes after the loss
    back_key: str  # ... after the restore (also the result's summary key)
    lose_text: str
    back_text: str
    # the loss may leave the router unable to restore itself if the wait
    # raises (SIGSTOP): restore it whatever happens
    restore_always: bool


def _kill(r: Router) -> None:
    r.kill()


def _restart(r: Router) -> None:
    r.start()
    r.wait_started()


_KILL = _Loss(_kill, _restart, "kill", "rejoin", "kill -9", "rejoined", False)
# SIGSTOP: the router's connections stay open, only its HELLOs stop, so its
# neighbours must notice by helloMaxAgeSeconds of silence
_FREEZE = _Loss(
    lambda r: r.signal(signal.SIGSTOP),
    lambda r: r.signal(signal.SIGCONT),
    "stop",
    "cont",
    "SIGSTOP",
    "back after SIGCONT",
    True,
)


def _router_loss(
    loss: _Loss,
    cfg: NetworkBenchConfig,
    net: Network,
    poller: Poller,
    kind: str,
    names: list[str],
    links: list[tuple[str, str, int]],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Rounds of losing a router (not one whose loss splits the network),
    timing until every router's routes are right without it, then after it
    is back."""
    candidates = kill_candidates(names, links) if len(names) > 2 else []
    if not candidates:
        return {"topology": kind, "skipped": f"losing any router of this {kind} splits it"}
    full = expected_routes(graph_of(names, links))
    rounds: list[dict[str, Any]] = []
    error: str | None = None
    for i in range(cfg.rounds):
        victim = candidates[i % min(len(candidates), 3)]
        want = expected_routes(graph_of(names, links, down=[victim]))
        poller.drop(victim)
        snap = cpu_snapshot(net)
        t0 = time.monotonic()
        loss.lose(net[victim])
        try:
            lost = wait_routes(poller, want, t0, cfg.timeout_s, cfg.settle_s, cfg.poll_pause_s)
        except BaseException:
            if loss.restore_always:
                loss.restore(net[victim])
            raise
        t1 = time.monotonic()
        loss.restore(net[victim])
        back = wait_routes(
            poller, full, t1, max(cfg.timeout_s, 30.0), cfg.settle_s, cfg.poll_pause_s
        )
        say(
            f"{loss.lose_text} {victim}: {_fmt_s(lost.seconds)}, "
            f"{loss.back_text} {_fmt_s(back.seconds)}"
        )
        rounds.append({"router": victim, loss.lost_key: lost.to_dict(),
                       loss.back_key: back.to_dict(),
                       "routers_cpu": cpu_since(net, snap)})  # fmt: skip
        if back.seconds is None:
            error = f"{victim} {loss.back_text}, routes not correct after the wait: {back.problem}"
            break
    return {
        "topology": kind,
        "error": error,
        "summary": summary([r[loss.lost_key]["seconds"] for r in rounds]),
        loss.back_key: summary([r[loss.back_key]["seconds"] for r in rounds]),
        "rounds": rounds,
    }


def _address_seen(poller: Poller, name: str, address: str) -> list[str] | None:
    """remoteHostRouters of ``address`` at ``name`` (None: not listed, or no answer)."""
    try:
        rows = poller.rows(name, "router.address", ["key", "remoteHostRouters"])
    except (ManagementFailure, *CONNECT_ERRORS):
        poller.failures += 1
        return None
    for row in rows:
        if row["key"] == address:
            return [str(h) for h in row["remoteHostRouters"] or []]
    return None


def _wait_address(
    poller: Poller,
    far: str,
    address: str,
    want: list[str] | None,
    t0: float,
    timeout: float,
    pause: float,
) -> tuple[float | None, int]:
    polls = 0
    while True:
        got = _address_seen(poller, far, address)
        now = time.monotonic()
        polls += 1
        if got == want:
            return now - t0, polls
        if now - t0 > timeout:
            return None, polls
        if pause:
            time.sleep(pause)


def _address(
    cfg: NetworkBenchConfig,
    net: Network,
    poller: Poller,
    kind: str,
    names: list[str],
    links: list[tuple[str, str, int]],
    say: Callable[[str], None],
) -> dict[str, Any]:
    graph = graph_of(names, links)
    origin, far = far_pair(graph)
    hops = len(_path(expected_routes(graph), origin, far))
    rounds: list[dict[str, Any]] = []
    tag = f"{os.getpid()}-{int(time.time())}"
    for i in range(cfg.address_rounds):
        address = f"bench-{tag}-{i}"
        name = f"bench-{i}"
        attrs = {"host": "127.0.0.1", "port": 9, "address": address}
        t0 = time.monotonic()
        poller.call(
            origin, {"operation": "CREATE", "type": T + "tcpConnector", "name": name}, attrs
        )
        added, polls = _wait_address(
            poller, far, address, [origin], t0, cfg.timeout_s, cfg.poll_pause_s
        )
        t1 = time.monotonic()
        poller.call(origin, {"operation": "DELETE", "type": T + "tcpConnector", "name": name})
        withdrawn, _ = _wait_address(
            poller, far, address, None, t1, cfg.timeout_s, cfg.poll_pause_s
        )
        rounds.append(
            {
                "address": address,
                "seconds": added,
                "polls": polls,
                "poll_s": (added or cfg.timeout_s) / polls,
                "withdraw_seconds": withdrawn,
            }
        )
    s = summary([r["seconds"] for r in rounds])
    say(f"address {origin} -> {far} ({hops} hop(s)): p50 {_fmt_s(s.get('p50'))}, "
        f"max {_fmt_s(s.get('max'))}")  # fmt: skip
    return {
        "topology": kind,
        "origin": origin,
        "far": far,
        "hops": hops,
        "summary": s,
        "withdraw": summary([r["withdraw_seconds"] for r in rounds]),
        "poll_s": summary([r["poll_s"] for r in rounds]),
        "rounds": rounds,
    }


def _path(routes: Mapping[str, Routes], src: str, dst: str) -> list[str]:
    """The hops from src to dst (dst included) along the expected next hops."""
    out: list[str] = []
    at = src
    while at != dst and len(out) <= len(routes):
        hop, _ = routes[at][dst]
        at = dst if hop is None else hop
        out.append(at)
    return out


def cpu_snapshot(net: Network) -> tuple[float, dict[int, float]]:
    """(now, CPU seconds by pid) of every running router."""
    out = {}
    for router in net.routers.values():
        if router.proc is not None and router.running:
            out[router.proc.pid] = _cpu_s(router.proc.pid)[0]
    return time.monotonic(), out


def cpu_since(net: Network, snap: tuple[float, dict[int, float]]) -> dict[str, float]:
    """The routers' CPU since ``snap``: seconds, and cores (seconds per second
    of wall clock). A router started since counts from zero (its start-up
    included); a router gone since is left out."""
    t0, before = snap
    now, after = cpu_snapshot(net)
    used = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
    wall = max(now - t0, 1e-9)
    return {"cpu_s": used, "wall_s": wall, "cores": used / wall}


def _cpu_s(pid: int) -> tuple[float, str]:
    fine = read_threads_cpu_s(pid)
    if fine is not None:
        return fine, "schedstat"
    return read_process_cpu_s(pid), "stat"


def _idle_cpu(
    cfg: NetworkBenchConfig,
    net: Network,
    poller: Poller,
    kind: str,
    names: list[str],
    say: Callable[[str], None],
) -> dict[str, Any]:
    poller.close()  # no management traffic in the window
    time.sleep(cfg.quiet_s)
    pids = {}
    for n in names:
        proc = net[n].proc
        assert proc is not None and proc.poll() is None, n
        pids[n] = proc.pid
    before = {n: _cpu_s(p) for n, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(cfg.idle_s)
    after = {n: _cpu_s(p) for n, p in pids.items()}
    window = time.monotonic() - t0
    pct = {n: max(0.0, after[n][0] - before[n][0]) / window * 100 for n in names}
    source = {before[n][1] for n in names} | {after[n][1] for n in names}
    out = {
        "topology": kind,
        "window_s": window,
        "quiet_before_s": cfg.quiet_s,
        "source": "schedstat" if source == {"schedstat"} else "stat (10 ms ticks)",
        "per_router_pct": pct,
        "mean_pct": sum(pct.values()) / len(pct),
        "max_pct": max(pct.values()),
    }
    say(f"idle CPU over {window:.1f} s: mean {out['mean_pct']:.2f} %, max {out['max_pct']:.2f} %")
    return out


LOG_MARKERS = ("(error)", "(warning)", "(critical)", "Traceback")


def _router_findings(net: Network, name: str) -> dict[str, Any]:
    """A router's network metrics and the notable lines of its log."""
    router = net[name]
    metrics: dict[str, float] = {}
    if router.running:
        _, text = router.http("/metrics")
        for line in text.splitlines():
            if line.startswith("skiff_network_") and " " in line:
                key, _, value = line.rpartition(" ")
                try:
                    metrics[key] = float(value)
                except ValueError:
                    continue
    notable = [ln for ln in router.log().splitlines() if any(m in ln for m in LOG_MARKERS)]
    return {"metrics": metrics, "notable_log_lines": len(notable), "log_samples": notable[:5]}


# ---------------------------------------------------------------- output


def _fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def to_json(report: NetworkReport, argv: Sequence[str]) -> dict[str, Any]:
    goals = report.goals()
    ok = not report.errors and all(g["met"] is not False for g in goals.values())
    params = dataclasses.asdict(report.config)
    params["workdir"] = str(report.workdir)
    env = environment()
    env["loadavg_start"] = list(report.load_start)
    env["loadavg_end"] = list(report.load_end)
    env["timers"] = dict(FAST_TIMERS)
    data = envelope(SCHEMA, argv, params, env, ok)
    data.update(
        {
            "goals": goals,
            "phases": report.phases,
            "idle_cpu": report.idle,
            "startup_s": report.startup,
            "errors": report.errors,
            "routers": report.routers,
            "wall_s": report.wall_s,
        }
    )
    return data


def _row(label: str, s: Mapping[str, Any], extra: str = "") -> str:
    if not s.get("count"):
        return f"{label:<28} {'-':>8} {'-':>8} {'-':>8} {s.get('failed', 0):>6}  {extra}"
    return (
        f"{label:<28} {_fmt_s(s['p50']):>8} {_fmt_s(s['p99']):>8} {_fmt_s(s['max']):>8} "
        f"{s['failed']:>6}  {extra}"
    )


def format_report(report: NetworkReport, argv: Sequence[str] = ()) -> str:
    cfg = report.config
    lines = [
        f"skiff network bench: {cfg.routers} routers, topology {cfg.topology}, "
        f"{cfg.rounds} round(s), {cfg.address_rounds} address round(s); "
        f"{os.cpu_count()} CPUs",
        "command: " + " ".join(["python -m bench", *argv[1:]]) if argv else "",
        "load average (1/5/15 min): start "
        + " ".join(f"{v:.2f}" for v in report.load_start)
        + ", end "
        + " ".join(f"{v:.2f}" for v in report.load_end),
        "timers: " + ", ".join(f"{k} {v}" for k, v in FAST_TIMERS.items()),
        "startup to converged: " + ", ".join(f"{k} {v:.1f} s" for k, v in report.startup.items()),
        "",
        f"{'measure':<28} {'p50':>8} {'p99':>8} {'max':>8} {'failed':>6}  notes",
        "-" * 78,
    ]
    for phase, label, key, after_key, after_label in (
        ("link_cut", "link cut", "cut", "restore", "  link restored"),
        ("router_kill", "router kill -9", "kill", "rejoin", "  router restarted, rejoined"),
        ("router_freeze", "router SIGSTOP", "stop", "cont", "  SIGCONT, back"),
    ):
        p = report.phases.get(phase, {})
        if "skipped" in p:
            lines.append(f"{label:<28} skipped: {p['skipped']}")
        elif p:
            rounds = p["rounds"]
            res = _resolution(r[key] for r in rounds)
            dev = sum(r[key]["deviations"] + r[after_key]["deviations"] for r in rounds)
            lines.append(_row(f"{label} ({p['topology']})", p["summary"],
                              f"poll sweep {res}; deviations after {dev}"))  # fmt: skip
            lines.append(_row(after_label, p[after_summary(phase)],
                              f"routers' CPU, busiest round: {_cores(rounds)} cores"))  # fmt: skip
    addr = report.phases.get("address", {})
    if addr:
        poll = addr["poll_s"].get("mean")
        lines.append(
            _row(
                f"new address, {addr['hops']} hops ({addr['topology']})",
                addr["summary"],
                f"{addr['origin']} -> {addr['far']}; poll {_fmt_s(poll)}",
            )
        )
        lines.append(_row("  address withdrawn", addr["withdraw"]))
    idle = report.idle
    if idle:
        lines.append(
            f"{'idle CPU per router':<28} mean {idle['mean_pct']:.2f} %, max "
            f"{idle['max_pct']:.2f} % of a core over {idle['window_s']:.1f} s "
            f"({idle['topology']}, {idle['source']})"
        )
    lines += ["", "goals:"]
    for name, g in report.goals().items():
        met = {True: "MET", False: "NOT MET", None: "not measured"}[g["met"]]
        if "value_s" in g:
            value = _fmt_s(g["value_s"])
        else:
            value = "-" if g["value_pct"] is None else f"{g['value_pct']:.2f} %"
        lines.append(f"  {name:<14} {met:<13} {g['measure']} {value}: {g['goal']}")
    bad = {k: v for k, v in report.routers.items() if v["notable_log_lines"]}
    if bad:
        lines += ["", "router log lines at warning or above:"]
        for name, v in sorted(bad.items()):
            lines.append(f"  {name}: {v['notable_log_lines']} e.g. {v['log_samples'][0][:120]}")
    for error in report.errors:
        lines.append(f"ERROR {error[:400]}")
    lines.append(f"router logs: {report.workdir}")
    return "\n".join(lines)


def after_summary(phase: str) -> str:
    """The key of a phase's second measure (putting the network back)."""
    return {"link_cut": "restore", "router_kill": "rejoin", "router_freeze": "cont"}[phase]


def _cores(rounds: Iterable[Mapping[str, Any]]) -> str:
    """The routers' CPU (cores, all routers together) in the busiest round."""
    cores = [r["routers_cpu"]["cores"] for r in rounds if "routers_cpu" in r]
    return f"{max(cores):.2f}" if cores else "-"


def _resolution(convs: Iterable[Mapping[str, Any]]) -> str:
    sweeps = [c["sweep_s"] for c in convs]
    return _fmt_s(sum(sweeps) / len(sweeps)) if sweeps else "-"


def main_log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
