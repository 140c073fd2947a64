"""Worker priority (issue 13): ``workerNice`` runs the engine's workers at a
nice value of their own (nginx's ``worker_priority``), set by each worker on
itself before it serves anything; values out of range, and values the
process may not take, are refused naming the option or the attribute."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from daemon import Skiffd, skiffd_conf

from router import schema
from router.config import ConfigError, parse_config_text
from router.configs import RouterConfig
from router.engine import Engine, EngineError, EngineOptions
from router.node import Node

# a value this process may always take: not below its own
OWN = os.getpriority(os.PRIO_PROCESS, 0)
HIGHER = min(OWN + 5, 19)


def worker_nices(
    pid: str | int = "self", count: int = 1, skip: frozenset[int] = frozenset()
) -> dict[str, int]:
    """The nice values of the threads named skiff-wN (but those in skip), as
    the kernel reports them; waits until ``count`` of them have named
    themselves."""
    deadline = time.monotonic() + 10
    while True:
        out: dict[str, int] = {}
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                comm = (task / "comm").read_text().strip()
                if comm.startswith("skiff-w") and int(task.name) not in skip:
                    out[comm] = os.getpriority(os.PRIO_PROCESS, int(task.name))
            except OSError:  # the thread ended meanwhile
                continue
        if len(out) >= count or time.monotonic() > deadline:
            return out
        time.sleep(0.01)


def _worker_tids() -> frozenset[int]:
    return frozenset(
        int(t.name)
        for t in Path("/proc/self/task").iterdir()
        if (t / "comm").exists() and (t / "comm").read_text().startswith("skiff-w")
    )


def test_engine_workers_run_at_the_nice_value_given() -> None:
    others = _worker_tids()  # engines other tests of this process left running
    eng = Engine(EngineOptions(worker_threads=2, worker_nice=HIGHER))
    try:
        assert worker_nices(count=2, skip=others) == {"skiff-w0": HIGHER, "skiff-w1": HIGHER}
        assert os.getpriority(os.PRIO_PROCESS, 0) == OWN  # the creating thread keeps its own
    finally:
        eng.stop()


def test_engine_without_a_nice_value_inherits_the_process_one() -> None:
    others = _worker_tids()
    eng = Engine(EngineOptions(worker_threads=1))
    try:
        assert worker_nices(count=1, skip=others) == {"skiff-w0": OWN}
    finally:
        eng.stop()


@pytest.mark.parametrize("value", [20, -21])
def test_engine_refuses_a_value_that_is_no_nice_value(value: int) -> None:
    with pytest.raises(EngineError, match=rf"worker_nice {value}: not a nice value \(-20 to 19\)"):
        Engine(EngineOptions(worker_threads=1, worker_nice=value))


SETPRIV = shutil.which("setpriv")


@pytest.mark.skipif(
    SETPRIV is None, reason="setpriv (util-linux) is needed to run without CAP_SYS_NICE"
)
def test_a_value_below_the_process_one_needs_the_privilege() -> None:
    """Without CAP_SYS_NICE (dropped from the bounding set, so even root has
    none) and with RLIMIT_NICE 0, a lower value than the process's is refused
    with the reason, and the engine does not start; through a Node the error
    names the router attribute."""
    code = textwrap.dedent(
        f"""
        import asyncio, resource
        resource.setrlimit(resource.RLIMIT_NICE, (0, 0))
        from router.configs import RouterConfig
        from router.engine import Engine, EngineError, EngineOptions
        from router.node import Node
        try:
            Engine(EngineOptions(worker_threads=1, worker_nice={OWN - 1}))
        except EngineError as e:
            print("engine:", e)
        rc = RouterConfig.from_attributes("r", {{"workerThreads": 1, "workerNice": {OWN - 1}}})
        try:
            Node(rc)
        except EngineError as e:
            print("node:", e)
        """
    )
    assert SETPRIV is not None
    out = subprocess.run(
        [SETPRIV, "--bounding-set=-sys_nice", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    why = "setpriority: Permission denied (a value below the process's own needs CAP_SYS_NICE"
    assert lines[0].startswith(f"engine: cannot start the engine: worker_nice {OWN - 1}: ")
    assert why in lines[0]
    assert lines[1].startswith("node: router attribute 'workerNice': cannot start the engine")
    assert why in lines[1]


def test_router_config_sets_the_workers_nice_value() -> None:
    rc = RouterConfig.from_attributes("r", {"workerThreads": 2, "workerNice": HIGHER})
    assert rc.worker_nice == HIGHER
    assert RouterConfig.from_attributes("r", {"workerThreads": 1}).worker_nice is None
    seen: dict[str, object] = {}

    async def run() -> None:
        others = _worker_tids()
        node = Node(rc)
        node.start(asyncio.get_running_loop())
        try:
            seen["workers"] = worker_nices(count=2, skip=others)
        finally:
            node.stop()

    asyncio.run(run())
    assert seen["workers"] == {"skiff-w0": HIGHER, "skiff-w1": HIGHER}


@pytest.mark.parametrize("value", ["20", "-21", "low", "1.5"])
def test_bad_values_are_refused_naming_the_attribute(value: str) -> None:
    spec = schema.entity_type("router")
    with pytest.raises(schema.InvalidValue, match="attribute 'workerNice'"):
        schema.convert(spec, "workerNice", value)
    with pytest.raises(ConfigError, match=r"f\.conf:2: router attribute 'workerNice'"):
        parse_config_text(f"router {{\n    workerNice: {value}\n}}\n", "f.conf")


def test_skiffd_runs_its_workers_at_the_nice_value(tmp_path: Path) -> None:
    d = Skiffd(tmp_path, skiffd_conf(extra_router=f"    workerNice: {HIGHER}\n"))
    try:
        assert f"2 worker threads at nice {HIGHER}" in d.stdout()
        assert worker_nices(d.proc.pid, count=2) == {"skiff-w0": HIGHER, "skiff-w1": HIGHER}
    finally:
        assert d.stop() == 0
