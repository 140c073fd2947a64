"""compare's minrelay subjects: built at run time, relaying exactly, or skipped.

Why: minrelay is the yardstick every ratio is read against; a yardstick
that loses bytes, or a run that silently drops it, makes those ratios
meaningless. Its source is outside the repository (../shared/minrelay/), so
these tests skip, saying why, where the source or gcc is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest
from servers import ThreadedServer, echo

from bench import minrelay
from bench.__main__ import main
from bench.bulk import SinkServer, run_streams
from bench.compare import CompareConfig, run_compare

SOURCE = minrelay.default_source()
needs_build = pytest.mark.skipif(
    not SOURCE.is_file() or shutil.which("gcc") is None,
    reason=f"minrelay needs its source at {SOURCE} and gcc",
)


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return minrelay.build(tmp_path_factory.mktemp("minrelay"))


def _echo_through(port: int, payload: bytes) -> bytes:
    """Sends payload, half-closes, reads the echo to EOF (a thread writes so
    that a payload larger than the socket buffers cannot deadlock)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:

        def send() -> None:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=send)
        t.start()
        chunks = []
        while data := s.recv(1 << 16):
            chunks.append(data)
        t.join()
    return b"".join(chunks)


@needs_build
@pytest.mark.parametrize("splice", [False, True], ids=["copy", "splice"])
def test_minrelay_pair_relays_bytes_exactly(binary: Path, splice: bool) -> None:
    server = ThreadedServer(echo)
    try:
        with SinkServer.start() as sink:
            pair = minrelay.start(
                binary, 2, ("127.0.0.1", server.port), ("127.0.0.1", sink.port), splice
            )
            try:
                assert pair.name == ("minrelay-splice" if splice else "minrelay")
                payload = os.urandom(3 << 20)
                got = _echo_through(pair.echo_port, payload)
                assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
                for i in range(50):  # short connections, each its own bytes
                    small = f"short {i}".encode()
                    assert _echo_through(pair.echo_port, small) == small
                res = run_streams("127.0.0.1", pair.sink_port, 1, 0.3, 7, 0.3, None)
                assert all(r.ok for r in res), [r.failure() for r in res]
                assert sum(r.received_by_sink for r in res) > 0
                assert pair.cpu_s() > 0 and pair.rss_kib() > 0
            finally:
                pair.stop()
            assert all(p.poll() is not None for p in pair.procs)
            assert not pair.workdir.exists()
    finally:
        server.close()


def test_missing_source_is_a_stated_reason(tmp_path: Path) -> None:
    with pytest.raises(minrelay.MinrelayUnavailable, match="source not found"):
        minrelay.build(tmp_path, tmp_path / "nope.c")


def test_compare_skips_minrelay_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(minrelay.SOURCE_ENV, str(tmp_path / "absent" / "minrelay.c"))
    cfg = CompareConfig(
        subjects=("minrelay", "direct"),
        workloads=("storm",),
        rounds=1,
        clients=4,
        procs=1,
        storm_duration_s=0.2,
        pause_s=0.0,
    )
    report = run_compare(cfg)
    assert "source not found" in report.skipped["minrelay"]
    assert report.config.subjects == ("direct",)
    assert all(s.ok for s in report.samples)


@needs_build
def test_compare_minrelay_both_storms_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "cmp.json"
    rc = main(
        [
            "compare",
            "--subjects",
            "minrelay,engine",
            "--workloads",
            "storm,storm_fresh,bulk1",
            "--rounds",
            "1",
            "--clients",
            "8",
            "--procs",
            "1",
            "--storm-duration",
            "0.3",
            "--fresh-conns",
            "300",
            "--bulk-duration",
            "0.3",
            "--pause",
            "0",
            "--quiet",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["skipped"] == {}
    for wl in ("storm", "storm_fresh"):
        cells = data["summary"][wl]["cpu_us_per_conn"]
        assert cells["minrelay"]["median"] > 0 and cells["engine"]["median"] > 0
        assert data["ratios"][wl]["cpu_us_per_conn_engine_over_minrelay"] is not None
    fresh = [s for s in data["samples"] if s["workload"] == "storm_fresh"]
    assert {s["subject"] for s in fresh} == {"minrelay", "engine"}
    assert all(s["figures"]["ok"] == 300 for s in fresh)
