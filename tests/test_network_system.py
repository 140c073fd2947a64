"""The router network with real skiffd processes on loopback (tests/network.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import recv_exact, wait_for

from bench.netharness import Network
from bench.pki import CertAuthority, write
from router.tools.client import CONNECT_ERRORS, ManagementFailure


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    network = Network(tmp_path)
    try:
        yield network
    finally:
        network.close()


def tcp_connector(address: str, port: int = 1) -> str:
    """A tcpConnector (its target need not answer: it only advertises)."""
    return (
        f"tcpConnector {{\n    name: c-{address}\n    host: 127.0.0.1\n    port: {port}\n"
        f"    address: {address}\n}}"
    )


def tcp_listener(address: str, port: int) -> str:
    """A tcpListener for address on a loopback port."""
    return (
        f"tcpListener {{\n    name: l-{address}\n    host: 127.0.0.1\n    port: {port}\n"
        f"    address: {address}\n}}"
    )


def next_hops(net: Network, name: str) -> dict[str, str | None]:
    return {rid: row["nextHop"] for rid, row in net[name].routers_known().items()}


def test_two_routers_link_and_see_each_other(net: Network) -> None:
    net.router("A")
    net.router("B")
    net.link("A", "B")
    net.start()
    net.wait_converged()
    nodes = net["A"].routers_known()
    assert set(nodes) == {"A", "B"}
    assert nodes["B"]["cost"] == 1 and nodes["B"]["nextHop"] is None
    assert nodes["A"]["nextHop"] == "(self)"
    # the link is an inter-router connection at both ends
    out = [r for r in net["A"].query("connection") if r["role"] == "inter-router"]
    into = [r for r in net["B"].query("connection") if r["role"] == "inter-router"]
    assert [r["dir"] for r in out] == ["out"] and [r["dir"] for r in into] == ["in"]
    assert out[0]["container"] == "B" and into[0]["container"] == "A"
    connector = net["A"].query("connector", ["name", "connectionStatus"])
    assert connector == [{"name": "to-B", "connectionStatus": "SUCCESS"}]
    _, metrics = net["A"].http("/metrics")
    assert "skiff_network_links_up 1.0" in metrics
    assert "skiff_network_synchronised 1.0" in metrics


def test_address_added_and_removed_at_one_end_is_seen_at_the_other(net: Network) -> None:
    net.router("A")
    net.router("B")
    net.router("C")
    net.link("A", "B")
    net.link("B", "C")
    net.start()
    net.wait_converged()
    net.specs["C"].extra.append(tcp_connector("svc"))
    net["C"].reload()
    net.wait(lambda: "svc" in net["A"].addresses(), "A to learn address svc")
    row = net["A"].addresses()["svc"]
    assert row["remoteHostRouters"] == ["C"] and row["subscriberCount"] == 0
    assert row["remoteCount"] == 1
    assert net["C"].addresses()["svc"]["subscriberCount"] == 1
    net.specs["C"].extra.clear()
    net["C"].reload()
    net.wait(lambda: "svc" not in net["A"].addresses(), "A to forget address svc")


def test_a_tcp_listener_opens_while_its_address_has_a_remote_target(net: Network) -> None:
    net.router("A")
    net.router("B")
    net.link("A", "B")
    listen_port = _free_port()
    net.specs["A"].extra.append(tcp_listener("svc", listen_port))
    net.start()
    net.wait_converged()
    assert not _listening(listen_port)  # no target anywhere yet
    net.specs["B"].extra.append(tcp_connector("svc"))
    net["B"].reload()
    net.wait(lambda: _listening(listen_port), "A's tcpListener to open for B's target")
    net.specs["B"].extra.clear()
    net["B"].reload()
    net.wait(lambda: not _listening(listen_port), "A's tcpListener to close again")


def test_ring_of_four_moves_routes_to_the_other_path_when_a_link_is_cut(net: Network) -> None:
    for name in "ABCD":
        net.router(name)
    net.link("A", "B")
    net.link("B", "C")
    net.link("C", "D")
    net.link("D", "A", cost=5)
    net.start()
    net.wait_converged()
    assert next_hops(net, "A")["C"] == "B"
    assert net["A"].routers_known()["D"]["cost"] == 3  # A-B-C-D beats the cost-5 link
    net.unlink("A", "B")
    net["A"].reload()
    took = net.wait(lambda: next_hops(net, "A").get("B") == "D", "A to reach B through D")
    assert net["A"].routers_known()["B"]["cost"] == 5 + 1 + 1
    assert took < 10


def test_router_killed_and_restarted(net: Network) -> None:
    for name in "ABC":
        net.router(name)
    net.link("A", "B")
    net.link("B", "C")
    net.link("A", "C", cost=10)
    net.start()
    net.wait_converged()  # every router known: the cheaper path may be a moment behind
    net.wait(lambda: next_hops(net, "A").get("C") == "B", "A to route to C through B")
    net["B"].kill()
    # lost within helloMaxAgeSeconds (3): C is then reached over the cost-10 link
    net.wait(lambda: next_hops(net, "A").get("C") is None
             and net["A"].routers_known()["C"]["cost"] == 10,
             "A to route to C directly", timeout=15)  # fmt: skip
    net["B"].start()
    net["B"].wait_started()
    net.wait_converged()
    net.wait(lambda: next_hops(net, "A").get("C") == "B", "A to route to C through B again")


def test_duplicate_router_id_is_refused_naming_both_ends(net: Network) -> None:
    net.router("A")
    net.router("B")
    net.router("B2", id="B")  # a second router calling itself B
    net.link("B", "A")
    net.start(["A", "B"])
    net.wait_converged(names=["A", "B"])
    net.link("B2", "A")
    net["B2"].start()
    net["B2"].wait_started()
    net.wait(lambda: "duplicate router id 'B'" in net["A"].log(), "A to refuse the twin")
    line = next(ln for ln in net["A"].log().splitlines() if "duplicate router id 'B'" in ln)
    assert "router 'A'" in line  # this end is named as well as the twin
    # the first B keeps its link
    assert set(net["A"].routers_known()) == {"A", "B"}
    assert net["A"].ready()


def test_garbage_on_an_inter_router_port_costs_only_that_connection(net: Network) -> None:
    net.router("A")
    net.router("B")
    net.link("A", "B")
    net.start()
    net.wait_converged()
    for junk in (b"GET / HTTP/1.0\r\n\r\n", b"AMQP\x03\x01\x00\x00" + b"\xff" * 64, b"\x00" * 9):
        with socket.create_connection(("127.0.0.1", net.specs["B"].ir_port), timeout=5) as s:
            s.sendall(junk)
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except (ConnectionResetError, TimeoutError):
                pass
    assert set(net["B"].routers_known()) == {"A", "B"}
    assert net["B"].ready() and net["A"].ready()


def test_readiness_and_503_until_synchronised(net: Network) -> None:
    net.router("A")
    net.router("B")
    net.link("A", "B")
    # B starts alone: it expects a link (A's connector is A's), A expects one
    net.start(["A"])
    code, text = net["A"].http("/readyz")
    assert code == 503 and "router network" in text
    with pytest.raises(ManagementFailure) as refused:
        net["A"].query("router.node")
    assert refused.value.status == 503 and "not synchronised" in refused.value.description
    stale = net["A"].call(
        {"operation": "QUERY", "type": "org.amqp.management", "name": "self",
         "entityType": "io.skupper.router.router.node", "allowStale": True}
    )  # fmt: skip
    assert stale.status == 200
    net.start(["B"])
    net.wait_converged()
    assert {r["id"] for r in net["A"].query("router.node")} == {"A", "B"}
    # losing the only neighbour: not ready again until it is back
    net["B"].kill()
    net.wait(lambda: not net["A"].ready(), "A to become not ready", timeout=15)
    net["B"].start()
    net["B"].wait_started()
    net.wait_converged()


def test_edge_routers_reach_the_network_through_their_interior(net: Network) -> None:
    net.router("A")
    net.router("B")
    net.router("E1", mode="edge")
    net.router("E2", mode="edge")
    net.link("A", "B")
    net.link("E1", "A")
    net.link("E2", "B")
    net.specs["E1"].extra.append(tcp_connector("on-e1"))
    net.start()
    net.wait_converged()
    net.wait(lambda: "on-e1" in net["E2"].addresses(), "E2 to see E1's address")
    assert net["B"].addresses()["on-e1"]["remoteHostRouters"] == ["A"]
    assert set(net["A"].routers_known()) == {"A", "B"}  # edges are not in the LSDB


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def test_harness_waits_are_bounded() -> None:
    with pytest.raises(AssertionError):
        wait_for(lambda: False, timeout=0.1, what="nothing")


def test_management_routed_to_a_remote_router(net: Network) -> None:
    for name in "ABC":
        net.router(name)
    net.link("A", "B")
    net.link("B", "C")
    net.specs["C"].extra.append(tcp_connector("only-at-c"))
    net.start()
    net.wait_converged()
    # asked at A, answered by C two hops away (skstat -r C / skmanage -r C)
    rows = net["A"].query("tcpConnector", address="_topo/0/C/$management")
    assert [r["address"] for r in rows] == ["only-at-c"]
    router = net["A"].query("router", address="_topo/0/C/$management")
    assert router[0]["id"] == "C"
    with pytest.raises(ManagementFailure) as unknown:
        net["A"].query("router", address="_topo/0/nobody/$management")
    assert unknown.value.status == 404 and "'nobody' is unknown" in unknown.value.description


def _ssl_profile(directory: Path, ca: CertAuthority, cn: str, trusted: CertAuthority) -> str:
    """An sslProfile entity: a certificate of ``ca`` named cn, trusting ``trusted``."""
    issued = ca.issue(cn)
    directory.mkdir(parents=True, exist_ok=True)
    cert = write(directory / f"{cn}.pem", issued.cert_pem)
    key = write(directory / f"{cn}.key", issued.key_pem)
    cas = write(directory / f"{cn}-ca.pem", trusted.pem)
    return (
        f"sslProfile {{\n    name: link-tls\n    certFile: {cert}\n    privateKeyFile: {key}\n"
        f"    caCertFile: {cas}\n}}"
    )


def test_mutual_tls_link_and_an_untrusted_certificate_refused(net: Network, tmp_path: Path) -> None:
    good, rogue = CertAuthority("network CA"), CertAuthority("rogue CA")
    a, b, c = net.router("A"), net.router("B"), net.router("C")
    mtls = {"sslProfile": "link-tls", "authenticatePeer": "true", "requireSsl": "true"}
    b.listener_attrs.update(mtls)
    a.extra.append(_ssl_profile(tmp_path / "pki", good, "A", good))
    b.extra.append(_ssl_profile(tmp_path / "pki", good, "B", good))
    c.extra.append(_ssl_profile(tmp_path / "pki", rogue, "C", good))  # B does not trust it
    net.link("A", "B", sslProfile="link-tls")
    net.link("C", "B", sslProfile="link-tls")
    net.start()
    net.wait_converged(names=["A", "B"])
    links = [r for r in net["B"].query("connection") if r["role"] == "inter-router"]
    assert len(links) == 1
    assert links[0]["isEncrypted"] and links[0]["sasl"] == "EXTERNAL"
    assert "CN=A" in str(links[0]["user"])
    out = [r for r in net["A"].query("connection") if r["role"] == "inter-router"]
    assert out[0]["isEncrypted"] and "CN=B" in str(out[0]["user"])
    # C's certificate is not trusted by B: C never joins, and says why
    net.wait(
        lambda: (
            net["C"].query("connector", ["connectionStatus"])[0]["connectionStatus"] == "FAILED"
        ),
        "C's connector to fail",
    )
    assert "C" not in net["B"].routers_known()
    assert not net["C"].ready()


def test_sighup_adds_and_removes_a_connector(net: Network) -> None:
    net.router("A")
    net.router("B")
    net.start()
    code, _ = net["A"].http("/readyz")
    assert code == 200  # no connector: nothing to wait for
    net.link("A", "B")
    net["A"].reload()
    net.wait_converged()
    assert set(net["B"].routers_known()) == {"A", "B"}
    net.unlink("A", "B")
    net["A"].reload()
    net.wait(lambda: set(net["B"].routers_known()) == {"B"}, "B to drop A", timeout=15)


def test_line_of_three_routes_through_the_middle(net: Network) -> None:
    for name in "ABC":
        net.router(name)
    net.link("A", "B", cost=2)
    net.link("C", "B", cost=3)
    net.start()
    net.wait_converged()
    nodes = net["A"].routers_known()
    assert nodes["C"]["nextHop"] == "B" and nodes["C"]["cost"] == 5
    assert net["C"].routers_known()["A"]["cost"] == 5


@pytest.mark.slow
def test_full_mesh_of_nine(net: Network) -> None:
    names = [f"R{i}" for i in range(9)]
    for name in names:
        net.router(name)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            net.link(a, b)
    net.start()
    net.wait_converged(timeout=60)
    for name in names:
        nodes = net[name].routers_known()
        assert set(nodes) == set(names)
        assert all(row["cost"] == 1 for rid, row in nodes.items() if rid != name)


def test_skiff_stat_shows_the_network(net: Network) -> None:

    net.router("A")
    net.router("B")
    net.link("A", "B")
    net.specs["B"].extra.append(tcp_connector("svc"))
    net.start()
    net.wait_converged()
    net.wait(lambda: "svc" in net["A"].addresses(), "A to learn svc")
    bus = ["-b", f"127.0.0.1:{net.specs['A'].mgmt_port}"]
    for view, expected in (("-n", "B"), ("-a", "svc"), ("-c", "inter-router")):
        out = subprocess.run(
            [sys.executable, "-m", "router.tools.stat", view, *bus],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert expected in out.stdout, (view, out.stdout)


def test_a_router_joining_never_serves_a_partial_address_table(net: Network) -> None:
    for name in "ABC":
        net.router(name)
    net.router("D")
    net.link("A", "B")
    net.link("B", "C")
    net.link("D", "C")
    for name in "ABC":
        for i in range(3):
            net.specs[name].extra.append(tcp_connector(f"{name.lower()}{i}"))
    expected = {f"{n}{i}" for n in "abc" for i in range(3)}
    net.start(["A", "B", "C"])
    net.wait_converged(names=["A", "B", "C"])
    net.wait(lambda: set(net["A"].addresses()) == expected, "A to know every address")
    net["D"].start()
    answers: list[str] = []
    deadline = time.monotonic() + 30
    while True:  # ask D as fast as it answers, from its first moment
        assert time.monotonic() < deadline, f"D never answered complete: {answers[-5:]}"
        try:
            rows = net["D"].query("router.address")
        except ManagementFailure as e:
            assert e.status == 503, e
            answers.append("503")
            continue
        except CONNECT_ERRORS:
            continue  # not listening yet
        answers.append("200")
        # the first answer D gives as complete is complete
        assert {r["key"] for r in rows} == expected, answers
        break
    assert net["D"].ready()


def test_connector_created_and_deleted_over_management(net: Network) -> None:
    net.router("A")
    net.router("B")
    net.start()
    client = net["A"].client()
    try:
        client.request(
            "CREATE", type="io.skupper.router.connector", name="dyn",
            body={"host": "127.0.0.1", "port": net.specs["B"].ir_port, "role": "inter-router"},
        )  # fmt: skip
        net.wait(lambda: set(net["B"].routers_known()) == {"A", "B"}, "B to see A")
        with pytest.raises(ManagementFailure) as refused:
            client.request(
                "CREATE", type="io.skupper.router.connector", name="bad",
                body={"host": "127.0.0.1", "port": 1, "role": "edge"},
            )  # fmt: skip
        assert refused.value.status == 400 and "router mode edge" in refused.value.description
        client.request("DELETE", type="io.skupper.router.connector", name="dyn")
    finally:
        client.close()
    net.wait(lambda: set(net["B"].routers_known()) == {"B"}, "B to drop A", timeout=15)


# ------------------------------------------------------------ data plane (issue 11)


def _echo_server() -> tuple[socket.socket, int, threading.Thread]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    port = int(srv.getsockname()[1])

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return srv, port, thread


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def test_a_flow_crosses_two_hops_byte_exact(net: Network) -> None:
    srv, echo_port, _ = _echo_server()
    try:
        for name in "ABC":
            net.router(name)
        net.link("A", "B")
        net.link("B", "C")
        listen_port = _free_port()
        net.specs["A"].extra.append(tcp_listener("svc", listen_port))
        net.specs["C"].extra.append(tcp_connector("svc", echo_port))
        net.start()
        net.wait_converged()
        net.wait(lambda: _listening(listen_port), "A's tcpListener to open for C's target")
        payload = os.urandom(3 * 1024 * 1024 + 17)
        with socket.create_connection(("127.0.0.1", listen_port), timeout=30) as s:
            sender = threading.Thread(target=s.sendall, args=(payload,))
            sender.start()
            got = bytearray()
            while len(got) < len(payload):
                chunk = s.recv(1 << 20)
                assert chunk, f"closed after {len(got)} bytes"
                got += chunk
            sender.join()
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        # later flows take warm pooled data connections (no dial per flow)
        for i in range(3):
            assert _round_trip(listen_port, 100, i)
        assert (net["A"].metric('skiff_dataplane_peer_pool_hits_total{peer="B"}') or 0) >= 1
        # every flow A sent (the listening probe's too) crossed B to C's target
        sent = net["A"].metric("skiff_dataplane_flows_originated_total")
        assert sent is not None and sent >= 1
        assert net["A"].metric('skiff_dataplane_peer_flows_total{peer="B"}') == sent
        assert net["B"].metric("skiff_dataplane_flows_transited_total") == sent
        assert net["C"].metric("skiff_dataplane_flows_terminated_total") == sent
        flows = {r["address"] for r in net["C"].query("tcpConnection", ["address"])}
        assert flows <= {"svc"}
    finally:
        srv.close()


def _line(net: Network, address: str, target_port: int, target_at: str = "C") -> int:
    """A line A-B-C (links dialled A -> B -> C), a tcpListener for address
    on A and its tcpConnector to target_port on target_at; started and
    converged, with A knowing the address. Returns the listener's port."""
    for name in "ABC":
        net.router(name)
    net.link("A", "B")
    net.link("B", "C")
    listen_port = _free_port()
    net.specs["A"].extra.append(tcp_listener(address, listen_port))
    net.specs[target_at].extra.append(tcp_connector(address, target_port))
    net.start()
    net.wait_converged()
    net.wait(lambda: address in net["A"].addresses(), f"A to learn {address}")
    return listen_port


def _line_with_service(net: Network, target_at: str = "C") -> tuple[int, socket.socket, int]:
    srv, echo_port, _ = _echo_server()
    listen_port = _line(net, "svc", echo_port, target_at)
    net.wait(lambda: _listening(listen_port), "A's tcpListener to open")
    return listen_port, srv, echo_port


def _round_trip(port: int, size: int, seed: int) -> bool:
    data = random.Random(seed).randbytes(size)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        sender = threading.Thread(target=s.sendall, args=(data,))
        sender.start()
        got = bytearray()
        while len(got) < size:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            got += chunk
        sender.join()
    return bytes(got) == data


def test_many_concurrent_flows_of_random_sizes_across_two_hops(net: Network) -> None:
    port, srv, _ = _line_with_service(net)
    try:
        rng = random.Random(7)
        sizes = [rng.choice((1, 100, 4096, 65536, 300_000)) for _ in range(200)]
        results: list[bool] = []
        lock = threading.Lock()

        def run(i: int) -> None:
            ok = _round_trip(port, sizes[i], i)
            with lock:
                results.append(ok)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sizes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(results) == len(sizes) and all(results), results.count(False)
    finally:
        srv.close()


def test_half_close_across_two_hops(net: Network) -> None:
    port, srv, _ = _line_with_service(net)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"ping")
            assert recv_exact(s, 4) == b"ping"

            # while it runs, each router's tcpConnection row names the far end
            def remote(name: str) -> set[tuple[object, object]]:
                rows = net[name].query("tcpConnection", ["remoteRouter", "remoteDirection"])
                return {(r["remoteRouter"], r["remoteDirection"]) for r in rows}

            assert ("C", "to") in remote("A")
            assert ("A", "from") in remote("B")
            assert ("A", "from") in remote("C")
            s.sendall(b"last words")
            s.shutdown(socket.SHUT_WR)  # EOF travels A -> B -> C -> echo
            got = b""
            while chunk := s.recv(4096):
                got += chunk
        assert got == b"last words"  # the echo's answer, then its EOF back
    finally:
        srv.close()


def test_a_target_going_away_moves_new_flows_to_another(net: Network) -> None:
    port, srv, _ = _line_with_service(net)
    srv_b, echo_b, _ = _echo_server()
    try:
        assert _round_trip(port, 1000, 1)
        net.specs["B"].extra.append(tcp_connector("svc", echo_b))
        net["B"].reload()
        net.wait(lambda: net["A"].addresses()["svc"]["remoteCount"] == 2, "A to see B's target")
        srv.close()  # C's target refuses from now on; C still advertises it
        for i in range(10):
            assert _round_trip(port, 5000, i), f"flow {i} failed"
    finally:
        srv_b.close()


def test_a_garbage_data_header_closes_only_that_connection(net: Network) -> None:
    port, srv, _ = _line_with_service(net)
    try:
        for junk in (b"SK\x09" + b"\x00" * 30, b"SK\x01F\x00\x16" + b"\x00" * 16,
                     b"SK\x01F\x08\x00" + b"\x01" * 8 + b"\x05\x00\xff\xff"):  # fmt: skip
            with socket.create_connection(("127.0.0.1", net.specs["B"].ir_port), timeout=5) as s:
                s.sendall(junk)
                s.settimeout(5)
                try:
                    while s.recv(4096):
                        pass
                except (ConnectionResetError, TimeoutError):
                    pass
        assert _round_trip(port, 10_000, 3)
        assert net["B"].ready()
    finally:
        srv.close()


def test_real_skstat_and_skmanage_show_the_network(net: Network, tmp_path: Path) -> None:
    """Skupper's own tools (SKUPPER_ROUTER_SRC, as tests/test_compat_tools.py)."""
    src = os.environ.get("SKUPPER_ROUTER_SRC")
    if not src:
        pytest.skip("the real skstat/skmanage are not available: set SKUPPER_ROUTER_SRC to a "
                    "skupper-router source checkout")  # fmt: skip
    from test_compat_tools import _from_source

    tools = tmp_path / "tools"
    tools.mkdir()
    if _from_source(Path(src), tools) is None:
        pytest.skip(f"SKUPPER_ROUTER_SRC={src} has no python/skupper_router or tools/")
    env = {**os.environ, "PYTHONPATH": str(tools / "python")}
    for name in "ABC":
        net.router(name)
    net.link("A", "B")
    net.link("B", "C")
    net.specs["C"].extra.append(tcp_connector("svc-c"))
    net.start()
    net.wait_converged()
    net.wait(lambda: "svc-c" in net["A"].addresses(), "A to learn svc-c")
    bus = ["-b", f"127.0.0.1:{net.specs['A'].mgmt_port}"]

    def run(tool: str, *args: str) -> str:
        out = subprocess.run([sys.executable, str(tools / tool), *bus, *args],
                             capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
        assert out.returncode == 0, (tool, args, out.stderr)
        return out.stdout

    nodes = run("skstat", "-n")
    assert all(name in nodes for name in "ABC") and "(self)" in nodes
    assert "mobile  svc-c" in run("skstat", "-a")
    assert "inter-router" in run("skstat", "-c")
    assert "(self)" in run("skstat", "-n", "-r", "C")
    general = {
        m.group(1): m.group(2)
        for ln in run("skstat", "-g").splitlines()
        if (m := re.match(r"\s*(\S.*?)\s{2,}(\S+)\s*$", ln))
    }
    assert general.get("Nodes") == "2" and general.get("Addresses") == "1", general
    assert '"svc-c"' in run("skmanage", "-r", "C", "query", "--type", "tcpConnector")


def test_the_middle_router_killed_while_another_path_exists(net: Network) -> None:
    srv, echo_port, _ = _echo_server()
    try:
        for name in "ABCD":
            net.router(name)
        net.link("A", "B")
        net.link("B", "C")
        net.link("A", "D", cost=5)
        net.link("D", "C", cost=5)
        listen_port = _free_port()
        net.specs["A"].extra.append(tcp_listener("svc", listen_port))
        net.specs["C"].extra.append(tcp_connector("svc", echo_port))
        net.start()
        net.wait_converged()
        net.wait(lambda: _listening(listen_port), "A's tcpListener to open")
        assert _round_trip(listen_port, 20_000, 1)
        net["B"].kill()
        # clients keep working while routing converges (retry on another path)
        # and after it has (A reaches C through D)
        for i in range(20):
            try:
                ok = _round_trip(listen_port, 20_000, 100 + i)
            except OSError as e:  # say what A's data plane saw (seen once, under load)
                ok = False
                print(f"flow {i}: {e!r}")
            if not ok:
                text = net["A"].http("/metrics")[1]
                seen = [ln for ln in text.splitlines() if ln.startswith("skiff_dataplane")]
                pytest.fail(f"flow {i} failed\n" + "\n".join(seen) + "\n" + net["A"].log_tail(40))
        net.wait(lambda: next_hops(net, "A").get("C") == "D", "A to route to C through D")
        assert _round_trip(listen_port, 20_000, 200)
    finally:
        srv.close()


def _mutual_tls_pair(net: Network, tmp_path: Path, echo_port: int) -> tuple[CertAuthority, int]:
    """A dials B over a mutual-TLS link (certificates of one CA in
    tmp_path/pki); a tcpListener on A for B's tcpConnector to echo_port.
    Started and converged; returns the CA and the listener's port."""
    ca = CertAuthority("network CA")
    a, b = net.router("A"), net.router("B")
    b.listener_attrs.update(
        {"sslProfile": "link-tls", "authenticatePeer": "true", "requireSsl": "true"}
    )
    a.extra.append(_ssl_profile(tmp_path / "pki", ca, "A", ca))
    b.extra.append(_ssl_profile(tmp_path / "pki", ca, "B", ca))
    net.link("A", "B", sslProfile="link-tls")
    listen_port = _free_port()
    a.extra.append(tcp_listener("svc", listen_port))
    b.extra.append(tcp_connector("svc", echo_port))
    net.start()
    net.wait_converged()
    net.wait(lambda: _listening(listen_port), "A's tcpListener to open")
    return ca, listen_port


def test_data_connections_use_the_links_mutual_tls(net: Network, tmp_path: Path) -> None:
    srv, echo_port, _ = _echo_server()
    try:
        _, listen_port = _mutual_tls_pair(net, tmp_path, echo_port)
        with socket.create_connection(("127.0.0.1", listen_port), timeout=30) as s:
            s.sendall(b"over tls")
            assert recv_exact(s, 8) == b"over tls"
            rows = net["B"].query("tcpConnection", ["remoteRouter", "tlsConfigVersion"])
            # B's side of the flow arrived over TLS from A
            assert any(r["remoteRouter"] == "A" and r["tlsConfigVersion"] for r in rows), rows
    finally:
        srv.close()


def test_more_flows_across_a_link_than_a_listener_cap_held_at_once(net: Network) -> None:
    port, srv, _ = _line_with_service(net)
    socks: list[socket.socket] = []
    try:
        for i in range(200):  # more than the default listener cap (128), all open
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            socks.append(s)
            s.sendall(b"%05d" % i)
        for i, s in enumerate(socks):
            assert recv_exact(s, 5) == b"%05d" % i
    finally:
        for s in socks:
            s.close()
        srv.close()


def test_a_slow_reader_keeps_every_routers_memory_bounded_and_loses_nothing(
    net: Network,
) -> None:
    resume = threading.Event()
    received: list[bytes] = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    sink_port = int(srv.getsockname()[1])

    def slow_sink() -> None:
        conn, _ = srv.accept()
        with conn:
            resume.wait(60)  # reads nothing until told
            digest = hashlib.sha256()
            while chunk := conn.recv(1 << 20):
                digest.update(chunk)
            received.append(digest.digest())

    sink = threading.Thread(target=slow_sink, daemon=True)
    sink.start()
    try:
        listen_port = _line(net, "sink", sink_port)
        payload = random.Random(11).randbytes(160 * 1024 * 1024)  # beyond the kernel buffers
        client = socket.create_connection(("127.0.0.1", listen_port), timeout=60)
        sender = threading.Thread(target=client.sendall, args=(payload,), daemon=True)
        sender.start()
        time.sleep(2)  # the sink reads nothing: every buffer on the way fills
        assert sender.is_alive(), "the whole payload fit in buffers: nothing was held back"
        for name in "ABC":
            held = net[name].metric("skiff_engine_buf_bytes_live")
            assert held is not None and held <= 1024 * 1024, (name, held)
        resume.set()
        sender.join(60)
        assert not sender.is_alive()
        client.shutdown(socket.SHUT_WR)
        sink.join(60)
        client.close()
        assert received == [hashlib.sha256(payload).digest()]
    finally:
        resume.set()
        srv.close()


def _flow_header(address: bytes, hops: int, flow_id: int = 7, origin: bytes = b"X") -> bytes:
    """A FLOW message written by hand (docs/dataplane.md, "FLOW")."""
    body = (
        flow_id.to_bytes(8, "big")
        + bytes([hops, 0])
        + len(address).to_bytes(2, "big")
        + address
        + bytes([len(origin)])
        + origin
        + b"\x00"
    )
    return b"SK\x01F" + (6 + len(body)).to_bytes(2, "big") + body


def _verdict_then_eof(port: int, message: bytes) -> tuple[int, int, int]:
    """Sends one message to a data port; the verdict's (code, detail, flow
    id), after which the router must close the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(message)
        v = recv_exact(s, 16)
        assert v[:4] == b"SK\x01V" and int.from_bytes(v[4:6], "big") == 16, v
        rest = b""
        try:
            while chunk := s.recv(4096):
                rest += chunk
        except ConnectionResetError:
            pass
        assert rest == b""  # nothing after a refusal's verdict, then EOF
        return v[6], v[7], int.from_bytes(v[8:16], "big")


def test_bad_flow_headers_get_their_verdict_and_close_only_their_connection(net: Network) -> None:
    port, srv, _ = _line_with_service(net)
    try:
        ir = net.specs["B"].ir_port
        with socket.create_connection(("127.0.0.1", port), timeout=30) as held:
            held.sendall(b"before")
            assert recv_exact(held, 6) == b"before"
            # a hop count of zero: HOP_LIMIT (3), detail hop_limit (7), naming the flow
            assert _verdict_then_eof(ir, _flow_header(b"svc", 0, flow_id=41)) == (3, 7, 41)
            # an address over 1024 bytes: BAD_HEADER (4), detail address_too_long (14)
            code, detail, _ = _verdict_then_eof(ir, _flow_header(b"a" * 1025, 5))
            assert (code, detail) == (4, 14)
            # an unknown version: BAD_HEADER, detail unknown_version (2)
            code, detail, _ = _verdict_then_eof(ir, b"SK\x07F\x00\x18" + bytes(18))
            assert (code, detail) == (4, 2)
            # an address nobody serves: NO_ROUTE (1), and the flow id is kept
            assert _verdict_then_eof(ir, _flow_header(b"nowhere", 5, flow_id=9))[::2] == (1, 9)
            held.sendall(b"after")  # the flow that was running is untouched
            assert recv_exact(held, 5) == b"after"
        errors = {
            reason: net["B"].metric(f'skiff_dataplane_header_errors_total{{reason="{reason}"}}')
            for reason in ("hop_limit", "address_too_long", "unknown_version")
        }
        assert errors == {"hop_limit": 1, "address_too_long": 1, "unknown_version": 1}
        assert _round_trip(port, 10_000, 5)
    finally:
        srv.close()


def _reset(conn: socket.socket) -> None:
    """Closes with a TCP reset instead of a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()


def test_a_reset_travels_end_to_end_both_ways_across_two_hops(net: Network) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    target_port = int(srv.getsockname()[1])
    seen_by_target: list[str] = []

    def target() -> None:
        for mode in ("target resets", "client resets"):
            conn, _ = srv.accept()
            recv_exact(conn, 5)
            conn.sendall(b"ready")
            if mode == "target resets":
                _reset(conn)
                continue
            conn.settimeout(30)
            try:
                while conn.recv(4096):
                    pass
                seen_by_target.append("eof")
            except ConnectionResetError:
                seen_by_target.append("reset")
            conn.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        listen_port = _line(net, "rst", target_port)
        # the target resets: the client sees a reset, not an orderly EOF
        with socket.create_connection(("127.0.0.1", listen_port), timeout=30) as s:
            s.sendall(b"hello")
            assert recv_exact(s, 5) == b"ready"
            with pytest.raises(ConnectionResetError):
                while s.recv(4096):
                    pass
        # the client resets: the target sees a reset
        s = socket.create_connection(("127.0.0.1", listen_port), timeout=30)
        s.sendall(b"hello")
        assert recv_exact(s, 5) == b"ready"
        _reset(s)
        thread.join(30)
        assert seen_by_target == ["reset"]
        # both resets crossed A's link to B and were counted there
        net.wait(
            lambda: (net["A"].metric('skiff_dataplane_peer_resets_total{peer="B"}') or 0) >= 2,
            "A to count both resets on its link to B",
        )
    finally:
        srv.close()


def test_tls_link_profile_rotated_while_flows_run(net: Network, tmp_path: Path) -> None:
    """Old flows keep the TLS configuration they started with; idle pooled
    data connections of the old version are replaced by new ones."""
    srv, echo_port, _ = _echo_server()
    try:
        ca, listen_port = _mutual_tls_pair(net, tmp_path, echo_port)

        def versions(name: str) -> int:
            rows = net[name].query("sslProfile", ["name", "version"])
            return int(next(r["version"] for r in rows if r["name"] == "link-tls"))

        def flow_versions() -> list[int]:
            rows = net["B"].query("tcpConnection", ["remoteRouter", "tlsConfigVersion"])
            return sorted(int(r["tlsConfigVersion"]) for r in rows if r["remoteRouter"] == "A")

        for i in range(3):  # warm A's pool to B
            assert _round_trip(listen_port, 1000, i)
        old = socket.create_connection(("127.0.0.1", listen_port), timeout=30)
        old.sendall(b"old flow")
        assert recv_exact(old, 8) == b"old flow"
        b_before, a_before = versions("B"), versions("A")
        assert flow_versions() == [b_before]

        # both ends get new certificates from the same CA, written in place
        for name in "AB":
            issued = ca.issue(name)
            write(tmp_path / "pki" / f"{name}.key", issued.key_pem)
            write(tmp_path / "pki" / f"{name}.pem", issued.cert_pem)
        net.wait(lambda: versions("A") > a_before and versions("B") > b_before, "both rotations")

        new = socket.create_connection(("127.0.0.1", listen_port), timeout=30)
        new.sendall(b"new flow")
        assert recv_exact(new, 8) == b"new flow"
        old.sendall(b"still here")  # the running flow keeps its connection
        assert recv_exact(old, 10) == b"still here"
        assert flow_versions() == [b_before, versions("B")]
        # the pooled connections made before A's rotation were not claimed
        stale = net["A"].metric('skiff_dataplane_peer_pool_stale_total{peer="B"}')
        assert stale is not None and stale >= 1
        old.close()
        new.close()
        for i in range(5):
            assert _round_trip(listen_port, 5000, 10 + i)
    finally:
        srv.close()


async def _echo_flows(port: int, sizes: list[int], seed: int) -> list[bool]:
    """One flow per size, all at once: random bytes sent while the echo is
    read back, compared by sha256."""

    async def one(i: int, size: int) -> bool:
        data = random.Random(seed * 100_003 + i).randbytes(size)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:

            async def send() -> None:
                for off in range(0, size, 65536):
                    writer.write(data[off : off + 65536])
                    await writer.drain()

            sender = asyncio.ensure_future(send())
            got = hashlib.sha256()
            left = size
            while left:
                chunk = await reader.read(min(left, 1 << 16))
                if not chunk:
                    break
                got.update(chunk)
                left -= len(chunk)
            await sender
            return left == 0 and got.digest() == hashlib.sha256(data).digest()
        finally:
            writer.close()

    async def bounded(i: int, size: int) -> bool:
        try:
            return await asyncio.wait_for(one(i, size), 120)
        except (TimeoutError, OSError):
            return False

    return list(await asyncio.gather(*(bounded(i, s) for i, s in enumerate(sizes))))


def test_a_thousand_concurrent_flows_both_ways_on_a_line_of_three(net: Network) -> None:
    """Links are dialled A -> B -> C only, so the flows from C to A travel
    on data connections their receiving side dialled (INBOUND pools)."""
    from bench.echo import EchoServer

    east, west = EchoServer.start(), EchoServer.start()
    try:
        for name in "ABC":
            net.router(name, workerThreads=2)
        net.link("A", "B")
        net.link("B", "C")
        at_a, at_c = _free_port(), _free_port()
        net.specs["A"].extra += [tcp_listener("east", at_a), tcp_connector("west", west.port)]
        net.specs["C"].extra += [tcp_listener("west", at_c), tcp_connector("east", east.port)]
        net.start()
        net.wait_converged()
        net.wait(lambda: _listening(at_a) and _listening(at_c), "both tcpListeners to open")

        def counts() -> tuple[float, float, float]:
            return (
                net["C"].metric('skiff_dataplane_peer_flows_total{peer="B"}') or 0,
                net["B"].metric('skiff_dataplane_peer_flows_total{peer="A"}') or 0,
                net["A"].metric("skiff_dataplane_flows_terminated_total") or 0,
            )

        before = counts()
        rng = random.Random(1000)
        sizes = [rng.choice((1, 100, 4096, 65536, 200_000)) for _ in range(1000)]

        async def both() -> tuple[list[bool], list[bool]]:
            a_to_c, c_to_a = await asyncio.gather(
                _echo_flows(at_a, sizes[:500], 1), _echo_flows(at_c, sizes[500:], 2)
            )
            return a_to_c, c_to_a

        a_to_c, c_to_a = asyncio.run(both())
        assert a_to_c.count(False) == 0 and c_to_a.count(False) == 0, (
            a_to_c.count(False),
            c_to_a.count(False),
        )
        # C's flows went to B, and B's to A, on connections B and A dialled
        # (plus, at most, the flow of each listening probe, which may be
        # counted after the first reading)
        after = counts()
        grown = [a - b for a, b in zip(after, before, strict=True)]
        assert all(500 <= g <= 502 for g in grown), grown
    finally:
        east.stop()
        west.stop()


def test_a_router_that_only_dials_out_receives_flows(net: Network) -> None:
    """D has no listener at all (behind NAT): it dials A, and A's clients
    reach D's service; an edge router likewise."""
    srv, echo_port, _ = _echo_server()
    try:
        net.router("A", workerThreads=2)
        d = net.router("D", workerThreads=2)
        d.listen = False
        net.router("E", mode="edge")
        net.link("D", "A")
        net.link("E", "A")
        to_d, to_e = _free_port(), _free_port()
        net.specs["A"].extra += [tcp_listener("at-d", to_d), tcp_listener("at-e", to_e)]
        d.extra.append(tcp_connector("at-d", echo_port))
        net.specs["E"].extra.append(tcp_connector("at-e", echo_port))
        net.start()
        net.wait_converged()
        net.wait(lambda: _listening(to_d) and _listening(to_e), "A's tcpListeners to open")

        def counts() -> tuple[float, float, float]:
            return (
                net["D"].metric("skiff_dataplane_flows_terminated_total") or 0,
                net["A"].metric('skiff_dataplane_peer_flows_total{peer="D"}') or 0,
                net["A"].metric('skiff_dataplane_peer_flows_total{peer="E"}') or 0,
            )

        before = counts()
        for i in range(40):  # more than D's warm connections: claims are refilled
            assert _round_trip(to_d, 20_000, i), f"flow {i} to D failed"
            assert _round_trip(to_e, 20_000, 100 + i), f"flow {i} to E failed"
        after = counts()
        grown = [a - b for a, b in zip(after, before, strict=True)]
        assert all(40 <= g <= 41 for g in grown), grown  # + a listening probe's flow
    finally:
        srv.close()
