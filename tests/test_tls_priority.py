"""Loads never steal: the TLS loader pool runs at the lowest priority.

A multi-second parse (a 4,000-CA bundle) on a loader thread must never take
CPU from an I/O worker or the control loop, so each loader thread sets
SCHED_IDLE (or nice 19) for itself, and only for itself: the policy is
per-task on Linux, and the workers and the loop thread must be unchanged.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest
from tlsharness import Router, run

from bench.pki import CertAuthority, write
from router.tls import lower_loader_priority

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread policy is Linux's")

SCHED_OTHER, SCHED_IDLE = 0, 5  # the values of /proc/<pid>/task/<tid>/stat field 41


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


def test_initializer_changes_only_the_calling_thread() -> None:
    main_before = task_priority(threading.get_native_id())
    seen: dict[str, object] = {}

    def body() -> None:
        seen["applied"] = lower_loader_priority()
        seen["tid"] = threading.get_native_id()
        seen["policy"] = os.sched_getscheduler(0)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen["applied"] in ("SCHED_IDLE", "nice 19")
    if seen["applied"] == "SCHED_IDLE":
        assert seen["policy"] == os.SCHED_IDLE
    assert task_priority(threading.get_native_id()) == main_before


def test_loader_pool_is_idle_priority_workers_and_loop_unchanged(tmp_path: Path) -> None:
    ca = CertAuthority()
    issued = ca.issue("loader")
    write(tmp_path / "cert.pem", issued.cert_pem)
    write(tmp_path / "key.pem", issued.key_pem)
    write(tmp_path / "ca.pem", ca.pem)
    before = tasks()
    loop_tid = threading.get_native_id()
    loop_before = task_priority(loop_tid)

    async def body(
        r: Router,
    ) -> tuple[list[tuple[int, int, int]], dict[int, tuple[int, int]]]:
        r.profile(
            "p",
            certFile=str(tmp_path / "cert.pem"),
            privateKeyFile=str(tmp_path / "key.pem"),
            caCertFile=str(tmp_path / "ca.pem"),
        )
        await r.settle()
        assert r.tls.ready("p"), r.tls.error("p")
        # both loader threads at once: each waits for the other at the barrier
        barrier = threading.Barrier(2, timeout=10)

        def probe() -> tuple[int, int, int]:
            barrier.wait()
            tid = threading.get_native_id()
            return tid, os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, tid)

        pool = r.tls._pool  # the pool under test: no public handle on purpose
        got = [f.result(10) for f in [pool.submit(probe), pool.submit(probe)]]
        # while the router runs: every other thread it started (the engine's
        # I/O workers among them) keeps the ordinary policy
        loader_tids = {tid for tid, _, _ in got}
        others = {t: task_priority(t) for t in tasks() - before - loader_tids}
        return got, others

    loaders, others = run(body, workers=2)
    assert len({tid for tid, _, _ in loaders}) == 2
    for tid, policy, nice in loaders:
        assert policy == os.SCHED_IDLE or nice == 19, (tid, policy, nice)
    assert len(others) >= 2, others  # at least the two I/O workers
    for tid, (policy, nice) in others.items():
        assert not lowest(policy, nice), (tid, policy, nice)
    assert task_priority(loop_tid) == loop_before
    assert not lowest(*loop_before)
