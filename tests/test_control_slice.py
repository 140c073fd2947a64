"""The control loop's time slice (router.node.set_thread_slice, Node's
``control_slice_us``, skiffd ``--control-slice-us``)."""

from __future__ import annotations

import asyncio
import ctypes
import platform
import threading

import pytest
import uvloop

from router.configs import RouterConfig
from router.daemon import DEFAULT_CONTROL_SLICE_US, build_parser
from router.engine import EngineError
from router.node import _SCHED_SYSCALLS, Node, _sched_attr, set_thread_slice


def _slice_ns(tid: int) -> int:
    nrs = _SCHED_SYSCALLS[platform.machine()]
    attr = _sched_attr(tid, ctypes.CDLL(None, use_errno=True), nrs[1])
    assert attr is not None
    return attr[5]


def _needs_slices() -> None:
    if platform.machine() not in _SCHED_SYSCALLS:
        pytest.skip("no sched_setattr number for this machine")
    if _slice_ns(threading.get_native_id()) == 0:
        pytest.skip("this kernel has no per-thread time slice (Linux 6.12 and later)")


def _in_thread(fn: object) -> None:
    """Runs fn on a fresh thread (its slice changes die with it)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()  # type: ignore[operator]
        except BaseException as e:  # noqa: BLE001 - re-raised on the test's thread
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    if errors:
        raise errors[0]


def test_set_thread_slice_sets_and_restores_keeping_the_nice_value() -> None:
    _needs_slices()

    def body() -> None:
        tid = threading.get_native_id()
        default = _slice_ns(tid)
        assert set_thread_slice(tid, 250) is None
        assert _slice_ns(tid) == 250_000
        assert set_thread_slice(tid, 0) is None
        assert _slice_ns(tid) == default

    _in_thread(body)


def test_node_gives_the_control_loop_its_slice_until_stop() -> None:
    _needs_slices()
    seen: list[int] = []

    def body() -> None:
        tid = threading.get_native_id()
        default = _slice_ns(tid)

        async def main() -> None:
            node = Node(
                RouterConfig.from_attributes("router", {"workerThreads": 1}), control_slice_us=300
            )
            node.start(asyncio.get_running_loop())
            seen.append(_slice_ns(tid))
            node.stop()
            seen.append(_slice_ns(tid))

        uvloop.run(main())
        assert seen == [300_000, default]

    _in_thread(body)


def test_slice_out_of_the_kernels_range_is_refused() -> None:
    for bad in (50, 100_001, -1):
        with pytest.raises(EngineError, match="time slice"):
            Node(RouterConfig.from_attributes("router", {}), control_slice_us=bad)


def test_skiffd_option_and_default() -> None:
    assert build_parser().parse_args([]).control_slice_us == DEFAULT_CONTROL_SLICE_US
    assert build_parser().parse_args(["--control-slice-us", "0"]).control_slice_us == 0
