"""Fixtures of the engine micro-benchmarks: one engine for the whole session.

Why one: starting an engine spawns its worker threads; the calls measured
here are the control plane's per-operation costs, which must not include
that. Run with ``python -m pytest bench/micro --benchmark-only`` (the test
suite under tests/ never collects these).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import pytest

from router.engine import Engine, EngineOptions, Target

T = TypeVar("T")

MICRO_WORKERS = 2


class Benchmark(Protocol):
    """The part of pytest-benchmark's fixture these benchmarks use (it ships
    no type information)."""

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    def pedantic(
        self,
        target: Callable[..., T],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        setup: Callable[[], Any] | None = None,
        rounds: int = 1,
        warmup_rounds: int = 0,
        iterations: int = 1,
    ) -> T: ...


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    eng = Engine(EngineOptions(worker_threads=MICRO_WORKERS))
    try:
        yield eng
    finally:
        eng.stop()


@pytest.fixture(scope="session")
def targets(engine: Engine) -> list[Target]:
    return [engine.target() for _ in range(4)]
