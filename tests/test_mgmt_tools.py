"""skiff-manage and skiff-stat end to end against a running skiffd,
anonymously on a local listener and with SASL PLAIN on an authenticated one."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Skiffd, free_port, skiffd_conf, wait_listening
from servers import ThreadedServer, echo, recv_exact

from router.management.sasl import hash_password


def tool(name: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"router.tools.{name}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


class Env:
    def __init__(self, tmp: Path) -> None:
        self.users = tmp / "users"
        self.users.write_text(f"ops:write:{hash_password('s3cret-ops', n=1024)}\n")
        self.pwfile = tmp / "pw"
        self.pwfile.write_text("s3cret-ops\n")
        self.anon, self.secure = free_port(), free_port()
        conf = skiffd_conf(
            f"listener {{\n    host: 127.0.0.1\n    port: {self.anon}\n"
            "    allowAnonymousWrites: true\n}\n",
            f"listener {{\n    name: secure\n    host: 127.0.0.1\n    port: {self.secure}\n"
            "    authenticatePeer: yes\n    saslMechanisms: PLAIN\n"
            f"    usersFile: {self.users}\n}}\n",
        )
        self.d = Skiffd(tmp, conf)

    def manage(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return tool("manage", "-b", f"127.0.0.1:{self.anon}", *args, stdin=stdin)

    def plain(self, *args: str) -> subprocess.CompletedProcess[str]:
        return tool(
            "manage",
            "-b",
            f"127.0.0.1:{self.secure}",
            "--sasl-mechanisms",
            "PLAIN",
            "--sasl-username",
            "ops",
            "--sasl-password-file",
            str(self.pwfile),
            *args,
        )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("tools"))
    yield e
    assert e.d.stop() == 0


def test_skiff_manage_operations(env: Env) -> None:
    srv = ThreadedServer(echo)
    port = free_port()
    try:
        out = env.manage(
            "create", "--type", "tcpConnector", "--name", "web-c",
            "host=127.0.0.1", f"port={srv.port}", "address=web",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["port"] == str(srv.port)
        out = env.manage(
            "create", "--stdin", stdin=json.dumps(
                {"type": "tcpListener", "name": "web", "host": "127.0.0.1", "port": str(port),
                 "address": "web"}
            ),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        wait_listening(port)
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"hi")
        assert recv_exact(s, 2) == b"hi"
        s.close()
        rows = json.loads(env.manage("query", "--type", "tcpListener", "name", "port").stdout)
        assert rows == [{"name": "web", "port": str(port)}]
        read = json.loads(env.manage("read", "--type", "tcpListener", "--name", "web").stdout)
        assert read["address"] == "web" and read["connectionsOpened"] >= 1
        types = json.loads(env.manage("get-types").stdout)
        assert "io.skupper.router.tcpConnection" in types
        ops = json.loads(env.manage("get-operations", "--type", "log").stdout)
        assert ops == {"io.skupper.router.log": ["QUERY", "READ", "UPDATE"]}
        for op in ("get-attributes", "get-mgmt-nodes", "get-schema"):
            assert env.manage(op).returncode == 0
        upd = env.manage("update", "--type", "log", "--name", "log/TCP_ADAPTOR", "enable=debug+")
        assert json.loads(upd.stdout)["enable"] == "debug+"
        assert env.manage("delete", "--type", "tcpListener", "--name", "web").returncode == 0
        assert env.manage("delete", "--type", "tcpConnector", "--name", "web-c").returncode == 0
        wait_listening(port, up=False)
        bad = env.manage("delete", "--type", "tcpConnector", "--name", "web-c")
        assert bad.returncode == 1 and "404" in bad.stderr and "'web-c' not found" in bad.stderr
        bad = env.manage("create", "--type", "tcpConnector", "port=x")
        assert bad.returncode == 1 and "400" in bad.stderr
    finally:
        srv.close()


def test_skiff_manage_sasl_plain(env: Env) -> None:
    out = env.plain("create", "--type", "tcpConnector", "--name", "p", "host=127.0.0.1",
                    "port=1", "address=p")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert env.plain("delete", "--type", "tcpConnector", "--name", "p").returncode == 0
    denied = tool("manage", "-b", f"127.0.0.1:{env.secure}", "query")  # no credentials
    assert denied.returncode == 1 and "skiff-manage:" in denied.stderr
    wrong = tool("manage", "-b", f"ops:nope@127.0.0.1:{env.secure}", "--sasl-mechanisms",
                 "PLAIN", "query")  # fmt: skip
    assert wrong.returncode == 1
    assert "s3cret-ops" not in env.d.stderr()


def test_skiff_stat_views(env: Env) -> None:
    bus = ["-b", f"127.0.0.1:{env.anon}"]
    g = tool("stat", *bus, "-g")
    assert g.returncode == 0, g.stderr
    assert "Router Statistics" in g.stdout and "Worker Threads" in g.stdout
    c = tool("stat", *bus, "-c", "--csv")
    assert c.returncode == 0 and c.stdout.startswith("id,host,container,")
    assert len(c.stdout.strip().splitlines()) >= 2  # the tool's own connection
    env.manage("create", "--type", "tcpConnector", "--name", "s1", "host=127.0.0.1", "port=1",
               "address=a1")  # fmt: skip
    env.manage("create", "--type", "tcpConnector", "--name", "s2", "host=127.0.0.1", "port=2",
               "address=a2")  # fmt: skip
    links = tool("stat", *bus, "--services")
    assert links.returncode == 0 and "s1" in links.stdout and "s2" in links.stdout
    limited = tool("stat", *bus, "--services", "--csv", "--limit", "1")
    assert len(limited.stdout.strip().splitlines()) == 2
    addresses = tool("stat", *bus, "-a")
    assert "a1" in addresses.stdout and "a2" in addresses.stdout
    assert tool("stat", *bus, "--tcp").returncode == 0
    secure = tool("stat", "-b", f"127.0.0.1:{env.secure}", "--sasl-mechanisms", "PLAIN",
                  "--sasl-username", "ops", "--sasl-password-file", str(env.pwfile),
                  "-g")  # fmt: skip
    assert secure.returncode == 0, secure.stderr
