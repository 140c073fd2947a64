"""CPU affinity (issue 13): ``workerCpus`` pins the engine's workers (the C
engine sets it when each starts), ``controlCpus`` the control loop's thread;
bad lists and CPUs the process may not use are refused naming the attribute."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from daemon import Skiffd, skiffd_conf

from router import schema
from router.config import ConfigError, parse_config_text
from router.configs import RouterConfig
from router.engine import Engine, EngineError, EngineOptions
from router.node import Node

ALLOWED = sorted(os.sched_getaffinity(0))
TWO = tuple(ALLOWED[:2])  # one CPU on a one-CPU machine
OUTSIDE = next(c for c in range(schema.MAX_CPU + 1) if c not in ALLOWED)


def _cpus_allowed(pid: str | int, tid: str | int) -> tuple[int, ...]:
    for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return schema.parse_cpu_list(line.split(":", 1)[1].strip())
    raise AssertionError("no Cpus_allowed_list")


def worker_sets(pid: str | int = "self", count: int = 1) -> dict[str, tuple[int, ...]]:
    """The CPU sets of the threads named skiff-wN, as the kernel reports them;
    waits until ``count`` of them have named themselves."""
    deadline = time.monotonic() + 10
    while True:
        out: dict[str, tuple[int, ...]] = {}
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                comm = (task / "comm").read_text().strip()
                if comm.startswith("skiff-w"):
                    out[comm] = _cpus_allowed(pid, task.name)
            except OSError:  # the thread ended meanwhile
                continue
        if len(out) >= count or time.monotonic() > deadline:
            return out
        time.sleep(0.01)


def test_engine_pins_each_worker_round_robin() -> None:
    eng = Engine(EngineOptions(worker_threads=3, worker_cpus=TWO))
    try:
        want = {f"skiff-w{i}": (TWO[i % len(TWO)],) for i in range(3)}
        assert worker_sets(count=3) == want
        assert [eng.worker_cpu(i) for i in range(3)] == [TWO[i % len(TWO)] for i in range(3)]
        assert [eng.worker_affinity(i) for i in range(3)] == list(want.values())
    finally:
        eng.stop()


def test_engine_without_pinning_keeps_the_process_set() -> None:
    eng = Engine(EngineOptions(worker_threads=1))
    try:
        assert eng.worker_cpu(0) is None
        assert eng.worker_affinity(0) == tuple(ALLOWED)
        assert worker_sets(count=1) == {"skiff-w0": tuple(ALLOWED)}
    finally:
        eng.stop()


def test_engine_refuses_a_cpu_outside_the_allowed_set() -> None:
    with pytest.raises(EngineError, match=f"worker_cpus: CPU {OUTSIDE} is not in"):
        Engine(EngineOptions(worker_threads=1, worker_cpus=(ALLOWED[0], OUTSIDE)))


def test_router_config_pins_workers_and_the_control_loop() -> None:
    cpus = schema.format_cpu_list(TWO)
    rc = RouterConfig.from_attributes(
        "r", {"workerThreads": 2, "workerCpus": cpus, "controlCpus": str(ALLOWED[-1])}
    )
    assert rc.worker_cpu_list == TWO and rc.control_cpu_list == (ALLOWED[-1],)
    seen: dict[str, object] = {}

    async def run() -> None:
        node = Node(rc)
        before = os.sched_getaffinity(0)
        node.start(asyncio.get_running_loop())
        try:
            seen["control"] = _cpus_allowed("self", threading.get_native_id())
            seen["workers"] = worker_sets(count=2)
        finally:
            node.stop()
        seen["after"] = os.sched_getaffinity(0) == before

    asyncio.run(run())
    assert seen["control"] == (ALLOWED[-1],)
    assert seen["workers"] == {"skiff-w0": (TWO[0],), "skiff-w1": (TWO[-1],)}
    assert seen["after"] is True  # stop gives the loop's thread its set back


@pytest.mark.parametrize("attr", ["workerCpus", "controlCpus"])
def test_node_refuses_cpus_the_process_may_not_use(attr: str) -> None:
    rc = RouterConfig.from_attributes("r", {"workerThreads": 1, attr: str(OUTSIDE)})
    with pytest.raises(EngineError, match=f"router attribute '{attr}': CPU {OUTSIDE} is not"):
        Node(rc)


@pytest.mark.parametrize(
    ("value", "canonical"),
    [("", ""), ("0", "0"), ("0-1", "0-1"), ("0,2", "0,2"), (" 3, 1-2 ,0", "0-3"), (5, "5")],
)
def test_cpu_lists_are_parsed_and_made_canonical(value: object, canonical: str) -> None:
    spec = schema.entity_type("router")
    for attr in ("workerCpus", "controlCpus"):
        assert schema.convert(spec, attr, value) == canonical


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("0-a", "'0-a' is not a CPU number"),
        ("1,,2", "an empty item"),
        ("3-1", "runs backwards"),
        ("0-1024", "CPU 1024 is past 1023"),
        ("-1", "'-1' is not a CPU number"),
        (True, ""),
    ],
)
def test_bad_cpu_lists_are_refused_naming_the_attribute(value: object, why: str) -> None:
    spec = schema.entity_type("router")
    for attr in ("workerCpus", "controlCpus"):
        with pytest.raises(schema.InvalidValue, match=f"attribute '{attr}'") as info:
            schema.convert(spec, attr, value)
        assert why in info.value.message and "a CPU list such as" in info.value.message
        assert info.value.attribute == attr and info.value.status == 400
    with pytest.raises(ConfigError, match=r"f\.conf:2: router attribute 'workerCpus'"):
        parse_config_text(f"router {{\n    workerCpus: {value}\n}}\n", "f.conf")


@pytest.mark.parametrize("attr", ["workerCpus", "controlCpus"])
def test_skiffd_refuses_a_cpu_outside_the_allowed_set(tmp_path: Path, attr: str) -> None:
    path = tmp_path / "cpus.conf"
    path.write_text(f"router {{\n    workerThreads: 1\n    {attr}: {OUTSIDE}\n}}\n")
    for args in (["--check", "-c", str(path)], ["-c", str(path)]):
        out = subprocess.run(
            [sys.executable, "-m", "router", *args], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 1, out
        assert f"router attribute '{attr}': CPU {OUTSIDE} is not in" in out.stderr


def test_skiffd_pins_its_workers(tmp_path: Path) -> None:
    cpus = schema.format_cpu_list(TWO)
    d = Skiffd(tmp_path, skiffd_conf(extra_router=f"    workerCpus: {cpus}\n"))
    try:
        assert f"2 worker threads on CPUs {cpus}" in d.stdout()
        assert worker_sets(d.proc.pid, count=2) == {
            "skiff-w0": (TWO[0],),
            "skiff-w1": (TWO[-1],),
        }
    finally:
        assert d.stop() == 0
