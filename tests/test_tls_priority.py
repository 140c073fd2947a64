"""Loads never steal: a TLS load runs at the lowest priority, and only the
load does.

A multi-second parse (a 4,000-CA bundle) must never take CPU from an I/O
worker or the control loop. The engine runs each load on a thread of its own
at SCHED_IDLE (or nice 19). The Python loader threads that wait for it keep
the ordinary policy: a low-priority thread preempted while holding the GIL
made the control loop wait for it (measured with `bench rotate`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.pki import CertAuthority, write
from router.engine import TlsMaterial, tls_load

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


def lowest(policy: int, nice: int) -> bool:
    return policy == SCHED_IDLE or nice == 19


def test_a_load_runs_on_its_own_lowest_priority_thread(tmp_path: Path) -> None:
    """The certificate is a FIFO: the load blocks in read() until this test
    writes it, which leaves time to look at every thread of the process."""
    ca = CertAuthority()
    issued = ca.issue("fifo")
    fifo = tmp_path / "cert.pem"
    os.mkfifo(fifo)
    write(tmp_path / "key.pem", issued.key_pem)
    before = {t: task_priority(t) for t in tasks()}
    caller: dict[str, object] = {}

    def load() -> None:
        caller["tid"] = threading.get_native_id()
        caller["result"] = tls_load(TlsMaterial(str(fifo), str(tmp_path / "key.pem"), None))
        caller["after"] = task_priority(threading.get_native_id())

    t = threading.Thread(target=load)
    t.start()
    deadline = time.monotonic() + 10
    loaders: dict[int, tuple[int, int]] = {}
    while not loaders and time.monotonic() < deadline:
        new = tasks() - set(before) - {caller.get("tid")}
        loaders = {tid: task_priority(tid) for tid in new if lowest(*task_priority(tid))}
        time.sleep(0.01)
    # the Python thread that called in keeps its priority while it waits
    assert "tid" in caller and not lowest(*task_priority(int(str(caller["tid"]))))
    with open(fifo, "wb") as f:  # unblocks the load
        f.write(issued.cert_pem)
    t.join(10)
    assert loaders, "no thread of the load ran at the lowest priority"
    assert not lowest(*caller["after"])  # type: ignore[misc]
    result = caller["result"]
    assert getattr(result, "ok", False), getattr(result, "error", result)
    for tid, prio in before.items():  # nothing else was touched
        if tid in tasks():
            assert task_priority(tid) == prio
