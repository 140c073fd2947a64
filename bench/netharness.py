"""A router network on loopback: N skiffd processes with generated configs.

Used by the system tests (tests/test_network_system.py) and by
``python -m bench network``.

    net = Network(tmp_path)
    net.router("A")                      # interior by default
    net.router("E", mode="edge")
    net.link("A", "B", cost=2)           # A dials B's inter-router listener
    net.link("E", "A")                   # edge E dials interior A's edge listener
    net.start()
    net.wait_converged()
    ...
    net.close()                          # every process stopped, killed if it must be

Each router gets a management listener (AMQP, loopback), an HTTP listener
(``/readyz``, ``/metrics``), an inter-router listener (interior) and an edge
listener (interior). Ports are chosen free when the network is built and
kept across restarts, so a restarted router is found where it was.
Every wait is bounded; a failure names the router and includes the tail of
its log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.proxies import free_port
from router.tools.client import CONNECT_ERRORS, ManagementClient, ManagementFailure

FAST_TIMERS = {
    "helloIntervalSeconds": 1,
    "helloMaxAgeSeconds": 3,
    "raIntervalSeconds": 30,
    "raIntervalFluxSeconds": 4,
    "remoteLsMaxAgeSeconds": 60,
}


@dataclass
class RouterSpec:
    name: str
    mode: str = "interior"
    mgmt_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    ir_port: int = field(default_factory=free_port)
    edge_port: int = field(default_factory=free_port)
    connectors: list[str] = field(default_factory=list)  # entity text
    extra: list[str] = field(default_factory=list)  # other entities (tcpConnector, ...)
    router_attrs: dict[str, object] = field(default_factory=dict)
    listener_attrs: dict[str, object] = field(default_factory=dict)  # inter-router listener
    listen: bool = True  # False: no inter-router or edge listener (a site that only dials out)


class Router:
    """One running skiffd of the network."""

    def __init__(self, spec: RouterSpec, tmp: Path) -> None:
        self.spec = spec
        self.name = spec.name
        self.dir = tmp / spec.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "skiffd.conf"
        self.err_path = self.dir / "skiffd.err"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def config(self) -> str:
        spec = self.spec
        attrs = {"id": spec.name, "mode": spec.mode, "workerThreads": 1, **FAST_TIMERS}
        attrs.update(spec.router_attrs)
        out = ["router {", *(f"    {k}: {v}" for k, v in attrs.items()), "}"]
        out += [
            "listener {",
            "    name: mgmt",
            "    host: 127.0.0.1",
            f"    port: {spec.mgmt_port}",
            "}",
            "listener {",
            "    name: http",
            "    host: 127.0.0.1",
            f"    port: {spec.http_port}",
            "    http: true",
            "}",
        ]
        if spec.mode == "interior" and spec.listen:
            ir = {"name": "inter-router", "host": "127.0.0.1", "port": spec.ir_port,
                  "role": "inter-router", **spec.listener_attrs}  # fmt: skip
            out += ["listener {", *(f"    {k}: {v}" for k, v in ir.items()), "}"]
            out += [
                "listener {",
                "    name: edge",
                "    host: 127.0.0.1",
                f"    port: {spec.edge_port}",
                "    role: edge",
                "}",
            ]
        out += spec.connectors
        out += spec.extra
        return "\n".join(out) + "\n"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        self.config_path.write_text(self.config())
        self.starts += 1
        err = self.err_path.open("ab")
        err.write(f"---- start {self.starts}\n".encode())
        err.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        err.close()

    def wait_started(self, timeout: float = 30) -> None:
        wait_for(
            lambda: self.readyz_code() is not None or not self.running,
            timeout=timeout,
            what=f"router {self.name} to serve HTTP",
        )
        if not self.running:
            raise RuntimeError(f"router {self.name} exited: {self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """kill -9: no goodbye on any link."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def reload(self, expect: str = "configuration reloaded") -> None:
        """Rewrites the file from the spec, sends SIGHUP and waits for ``expect``."""
        self.config_path.write_text(self.config())
        before = self.log().count(expect)
        self.signal(signal.SIGHUP)
        wait_for(lambda: self.log().count(expect) > before, what=f"{self.name}: {expect!r}")

    # ------------------------------------------------------------ HTTP

    def http(self, path: str) -> tuple[int | None, str]:
        url = f"http://127.0.0.1:{self.spec.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return int(reply.status), reply.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode(errors="replace")
        except (OSError, urllib.error.URLError):
            return None, ""

    def metric(self, series: str) -> float | None:
        """One series of /metrics (name with its labels, e.g.
        ``skiff_dataplane_peer_flows_total{peer="B"}``), or None if absent."""
        _, text = self.http("/metrics")
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def readyz_code(self) -> int | None:
        return self.http("/readyz")[0]

    def ready(self) -> bool:
        return self.readyz_code() == 200

    # ------------------------------------------------------------ management

    def client(self, address: str = "$management") -> ManagementClient:
        return ManagementClient(f"amqp://127.0.0.1:{self.spec.mgmt_port}", address=address)

    def call(self, props: dict[str, object], *, address: str = "$management") -> Any:
        client = self.client(address)
        try:
            return client.call(props)
        finally:
            client.close()

    def query(
        self, entity_type: str, names: Sequence[str] = (), *, allow_stale: bool = False,
        address: str = "$management",
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Rows as dicts; raises ManagementFailure (e.g. 503) on an error status."""
        props: dict[str, object] = {
            "operation": "QUERY",
            "type": "org.amqp.management",
            "name": "self",
            "entityType": f"io.skupper.router.{entity_type}",
        }
        if allow_stale:
            props["allowStale"] = True
        client = self.client(address)
        try:
            reply = client.call(props, {"attributeNames": list(names)})
            if not 200 <= reply.status < 300:
                raise ManagementFailure(reply.status, reply.description)
            body = reply.body
            return [dict(zip(body["attributeNames"], r, strict=True)) for r in body["results"]]
        finally:
            client.close()

    def routers_known(self) -> dict[str, dict[str, Any]]:
        """router.node rows by id (a stale read: never raises 503)."""
        return {str(r["id"]): r for r in self.query("router.node", allow_stale=True)}

    def addresses(self) -> dict[str, dict[str, Any]]:
        return {str(r["key"]): r for r in self.query("router.address", allow_stale=True)}


class Network:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.specs: dict[str, RouterSpec] = {}
        self.routers: dict[str, Router] = {}
        self.links: list[tuple[str, str, int]] = []

    def router(self, name: str, mode: str = "interior", **router_attrs: object) -> RouterSpec:
        spec = RouterSpec(name, mode, router_attrs=dict(router_attrs))
        self._unique_ports(spec)
        self.specs[name] = spec
        self.routers[name] = Router(spec, self.tmp)
        return spec

    def _unique_ports(self, spec: RouterSpec) -> None:
        """Draws again any port another router of this network already has:
        ``free_port`` closes its socket, so two draws can return the same
        port (seen: two routers given one inter-router port)."""
        used = {p for s in self.specs.values() for p in _ports(s)}
        for attr in ("mgmt_port", "http_port", "ir_port", "edge_port"):
            while getattr(spec, attr) in used:
                setattr(spec, attr, free_port())
            used.add(getattr(spec, attr))

    def link(self, dialler: str, target: str, cost: int = 1, **attrs: object) -> None:
        """``dialler`` gets a connector to ``target`` (an edge dials the edge port)."""
        a, b = self.specs[dialler], self.specs[target]
        edge = a.mode == "edge"
        values: dict[str, object] = {
            "name": f"to-{target}",
            "host": "127.0.0.1",
            "port": b.edge_port if edge else b.ir_port,
            "role": "edge" if edge else "inter-router",
            "cost": cost,
            **attrs,
        }
        a.connectors.append(
            "connector {\n" + "".join(f"    {k}: {v}\n" for k, v in values.items()) + "}"
        )
        self.links.append((dialler, target, cost))

    def unlink(self, dialler: str, target: str) -> None:
        """Removes the connector (from the spec; ``reload`` applies it)."""
        spec = self.specs[dialler]
        spec.connectors = [c for c in spec.connectors if f"name: to-{target}\n" not in c]
        self.links = [lk for lk in self.links if (lk[0], lk[1]) != (dialler, target)]

    def start(self, names: Iterable[str] | None = None) -> None:
        chosen = list(self.routers) if names is None else list(names)
        for name in chosen:
            self.routers[name].start()
        for name in chosen:
            self.routers[name].wait_started()

    def __getitem__(self, name: str) -> Router:
        return self.routers[name]

    def interiors(self) -> list[str]:
        return [n for n, s in self.specs.items() if s.mode == "interior"]

    # ------------------------------------------------------------ waiting

    def wait(self, cond: Callable[[], bool], what: str, timeout: float = 30.0) -> float:
        """Waits for cond; returns the seconds it took. On time-out, raises
        with every router's log tail."""
        start = time.monotonic()
        try:
            wait_for(cond, timeout=timeout, what=what)
        except AssertionError as e:
            tails = "\n".join(f"--- {name}:\n{r.log_tail(15)}" for name, r in self.routers.items())
            raise AssertionError(f"{e}\n{tails}") from None
        return time.monotonic() - start

    def wait_converged(self, timeout: float = 30.0, names: Iterable[str] | None = None) -> float:
        """Every running interior router knows every other running interior
        router, and every running router is ready."""
        chosen = [n for n in (names or self.routers) if self.routers[n].running]
        interiors = sorted(n for n in chosen if self.specs[n].mode == "interior")

        def converged() -> bool:
            for name in chosen:
                router = self.routers[name]
                if not router.ready():
                    return False
                if self.specs[name].mode == "interior":
                    if sorted(self._known(router)) != interiors:
                        return False
            return True

        return self.wait(converged, f"routers {chosen} to converge", timeout)

    @staticmethod
    def _known(router: Router) -> list[str]:
        try:
            return list(router.routers_known())
        except (ManagementFailure, *CONNECT_ERRORS):
            return []  # not up yet: the wait asks again

    def close(self) -> None:
        for router in self.routers.values():
            router.stop()


def _ports(spec: RouterSpec) -> tuple[int, int, int, int]:
    return (spec.mgmt_port, spec.http_port, spec.ir_port, spec.edge_port)


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Polls cond every 10 ms; raises AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
