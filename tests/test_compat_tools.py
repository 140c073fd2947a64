"""The real skstat and skmanage of the Skupper router against skiffd.

These tests need a copy of Skupper's tools, which this repository does not
ship.  Point ``SKUPPER_ROUTER_SRC`` at a skupper-router source checkout (its
``python/`` and ``tools/`` are used as they are, with a stub for the file
its build generates), or put an installed ``skstat`` and ``skmanage`` on
PATH.  Without either, every test here is skipped, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Skiffd, free_port, wait_listening
from proton import ConnectionException, Timeout
from proton.utils import BlockingConnection
from servers import ThreadedServer, echo, recv_exact, wait_for

ROUTER_ID = "Compat.A"
SKIP_REASON = (
    "the real skstat/skmanage are not available: set SKUPPER_ROUTER_SRC to a skupper-router "
    "source checkout, or install skupper-router's tools on PATH"
)
SKSTAT_VIEWS = ["-g", "-c", "-l", "-n", "-e", "-a", "-m", "-p", "--autolinks", "--vhosts",
                "--vhostgroups", "--vhoststats", "--log", "--all-entities"]  # fmt: skip


def _from_source(src: Path, into: Path) -> list[str] | None:
    """Command prefixes for skstat/skmanage run from a source checkout."""
    python = src / "python"
    tools = src / "tools"
    if not (python / "skupper_router").is_dir() or not (tools / "skstat.in").is_file():
        return None
    tree = into / "python"
    shutil.copytree(python, tree)
    (tree / "skupper_router" / "_skupper_router_site.py").write_text(
        'VERSION = "source"\n\n\ndef populate_pythonpath() -> None:\n    pass\n'
    )
    for tool in ("skstat", "skmanage"):
        shutil.copy(tools / f"{tool}.in", into / tool)
    return [str(into)]


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    src = os.environ.get("SKUPPER_ROUTER_SRC")
    if src:
        where = tmp_path_factory.mktemp("skupper-tools")
        if _from_source(Path(src), where) is None:
            pytest.skip(f"SKUPPER_ROUTER_SRC={src} has no python/skupper_router or tools/")
        env_path = str(where / "python")
        return {
            t: ["env", f"PYTHONPATH={env_path}", sys.executable, str(where / t)]
            for t in ("skstat", "skmanage")
        }
    found = {t: shutil.which(t) for t in ("skstat", "skmanage")}
    if all(found.values()):
        return {t: [str(path)] for t, path in found.items()}
    pytest.skip(SKIP_REASON)


class Router:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        conf = (
            f"router {{\n    id: {ROUTER_ID}\n    worker-threads: 2\n}}\n"
            # a plain Skupper-style management listener: loopback, so writable
            f"listener {{\n    host: localhost\n    port: {self.port}\n}}\n"
            "log {\n    module: DEFAULT\n    enable: info+\n}\n"
        )
        self.d = Skiffd(tmp, conf)


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    r = Router(tmp_path_factory.mktemp("compat-router"))
    yield r
    assert r.d.stop() == 0


def run(
    tools: dict[str, list[str]], tool: str, router: Router, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tools[tool], "-b", f"127.0.0.1:{router.port}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(tools: dict[str, list[str]], tool: str, router: Router, *args: str) -> str:
    out = run(tools, tool, router, *args)
    assert out.returncode == 0, f"{tool} {' '.join(args)}: {out.stderr or out.stdout}"
    assert "Traceback" not in out.stderr
    return out.stdout


@pytest.mark.parametrize("view", SKSTAT_VIEWS)
def test_every_skstat_view(tools: dict[str, list[str]], router: Router, view: str) -> None:
    ok(tools, "skstat", router, view)
    ok(tools, "skstat", router, "-r", ROUTER_ID, view)


def test_skstat_general_shows_the_router(tools: dict[str, list[str]], router: Router) -> None:
    out = ok(tools, "skstat", router, "-g")
    assert ROUTER_ID in out and "Mode" in out and "standalone" in out


def test_a_full_skmanage_session(tools: dict[str, list[str]], router: Router) -> None:
    srv = ThreadedServer(echo)
    port = free_port()
    try:
        assert json.loads(ok(tools, "skmanage", router, "query", "--type", "tcpListener")) == []
        ok(tools, "skmanage", router, "create", "--type", "tcpConnector", "--name", "echo-c",
           f"port={srv.port}", "address=echo")  # fmt: skip
        ok(tools, "skmanage", router, "create", "--type", "tcpListener", "--name", "echo-l",
           "host=127.0.0.1", f"port={port}", "address=echo")  # fmt: skip
        wait_listening(port)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"relay")
            assert recv_exact(s, 5) == b"relay"
        read = json.loads(ok(tools, "skmanage", router, "read", "--name", "echo-c"))
        assert read["host"] == "127.0.0.1" and read["port"] == str(srv.port)
        ok(tools, "skmanage", router, "update", "--type", "tcpListener", "--name", "echo-l",
           "observer=none")  # fmt: skip
        rows = json.loads(ok(tools, "skmanage", router, "query", "--type", "connection"))
        assert any(r.get("protocol") == "amqp" for r in rows)
        # adminStatus: deleted closes another client's connection
        other = BlockingConnection(f"amqp://127.0.0.1:{router.port}", timeout=10)
        try:
            mine = other.container.container_id
            rows = json.loads(ok(tools, "skmanage", router, "query", "--type", "connection"))
            (row,) = [r for r in rows if r.get("container") == mine]
            ok(tools, "skmanage", router, "update", "--type", "connection",
               "--identity", row["identity"], "adminStatus=deleted")  # fmt: skip
            wait_for(
                lambda: all(
                    r.get("container") != mine
                    for r in json.loads(
                        ok(tools, "skmanage", router, "query", "--type", "connection")
                    )
                ),
                what="the connection to close",
            )
        finally:
            try:
                other.close()
            except (ConnectionException, Timeout):
                pass
        for op in ("get-types", "get-annotations", "get-attributes", "get-operations",
                   "get-mgmt-nodes", "get-schema", "get-json-schema", "get-log"):  # fmt: skip
            ok(tools, "skmanage", router, op)
        ok(tools, "skmanage", router, "delete", "--name", "echo-l")
        ok(tools, "skmanage", router, "delete", "--name", "echo-c")
        assert json.loads(ok(tools, "skmanage", router, "query", "--type", "tcpConnector")) == []
        vhost = run(tools, "skmanage", router, "create", "--type", "vhost", "hostname=x")
        assert vhost.returncode != 0 and "not implemented by Skiff" in vhost.stdout + vhost.stderr
    finally:
        srv.close()
