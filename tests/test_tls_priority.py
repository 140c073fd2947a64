"""Loads never steal: a TLS load runs at the lowest priority, and only the
load does.

A long parse (4,000 new CAs) must never take CPU from an I/O worker or the
control loop. The engine runs each load on a thread of its own: a full load
that parses a CA bundle at SCHED_IDLE (or nice 19); a certificate and key
load that does not (a given trust store, or no caCertFile) is a millisecond
of CPU and runs at nice 10, so that busy cores do not starve it (issue 13);
a trust store load starts at nice 10 too (a rewrite finds its certificates
in the engine's cache) and drops to SCHED_IDLE once it has parsed 32
certificates (native/tests/test_tls_store.c checks the drop).
The Python loader threads that wait for it keep the ordinary policy: a
low-priority thread preempted while holding the GIL made the control loop
wait for it (measured with `bench rotate`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.pki import CertAuthority, write
from router.engine import TlsMaterial, tls_load, tls_load_store

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread policy is Linux's")

SCHED_IDLE = 5  # /proc/<pid>/task/<tid>/stat field 41


def task_priority(tid: int) -> tuple[int, int]:
    """(scheduling policy, nice) of one thread of this process, from /proc."""
    with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as f:
        stat = f.read()
    fields = stat[stat.rfind(")") + 2 :].split()  # field 3 (state) is fields[0]
    return int(fields[38]), int(fields[16])


def tasks() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def priorities(tids: set[int]) -> dict[int, tuple[int, int]]:
    """task_priority of each thread still there: a thread may end between
    the listing and the read (earlier tests leave short-lived threads, such
    as the engine's heap trim, which must not fail this one)."""
    out = {}
    for tid in tids:
        try:
            out[tid] = task_priority(tid)
        except FileNotFoundError:
            pass
    return out


def lowest(policy: int, nice: int) -> bool:
    return policy == SCHED_IDLE or nice == 19


def nice10(policy: int, nice: int) -> bool:
    return policy == 0 and nice == 10


@pytest.mark.parametrize("kind", ["full", "store", "cert-key"])
def test_a_load_runs_on_its_own_low_priority_thread(tmp_path: Path, kind: str) -> None:
    """One file is a FIFO: the load blocks in read() until this test writes
    it, which leaves time to look at every thread of the process. A full
    load reading a CA bundle runs at the lowest priority; a certificate and
    key load without one, and a trust store load while it reads, at nice 10."""
    ca = CertAuthority()
    issued = ca.issue("fifo")
    write(tmp_path / "cert.pem", issued.cert_pem)
    write(tmp_path / "key.pem", issued.key_pem)
    fifo = tmp_path / ("cert.pem" if kind == "cert-key" else "ca.pem")
    if fifo.exists():
        fifo.unlink()
    os.mkfifo(fifo)
    data = issued.cert_pem if kind == "cert-key" else ca.pem
    cert, key, cafile = (str(tmp_path / n) for n in ("cert.pem", "key.pem", "ca.pem"))
    expected = lowest if kind == "full" else nice10
    before = priorities(tasks())
    caller: dict[str, object] = {}

    def load() -> None:
        caller["tid"] = threading.get_native_id()
        if kind == "store":
            caller["result"] = tls_load_store(cafile)
        else:
            ca_file = None if kind == "cert-key" else cafile
            caller["result"] = tls_load(TlsMaterial(cert, key, ca_file))
        caller["after"] = task_priority(threading.get_native_id())

    t = threading.Thread(target=load)
    t.start()
    deadline = time.monotonic() + 10
    loaders: dict[int, tuple[int, int]] = {}
    while not loaders and time.monotonic() < deadline:
        new = tasks() - set(before) - {caller.get("tid")}
        loaders = {tid: prio for tid, prio in priorities(new).items() if expected(*prio)}
        time.sleep(0.01)
    # the Python thread that called in keeps its priority while it waits
    assert "tid" in caller and not lowest(*task_priority(int(str(caller["tid"]))))
    with open(fifo, "wb") as f:  # unblocks the load
        f.write(data)
    t.join(10)
    assert loaders, f"no thread of the load ran at the expected priority ({kind})"
    assert not lowest(*caller["after"])  # type: ignore[misc]
    result = caller["result"]
    assert getattr(result, "ok", False), getattr(result, "error", result)
    now = priorities(set(before))  # the threads still there
    for tid, prio in now.items():  # nothing else was touched
        assert prio == before[tid]
