"""Liveness of the control loop and of every engine worker.

Each worker runs a periodic high-priority engine timer; its TIMER event
reaching the loop proves both that the worker turns and that the loop
drains events. A loop callback proves the loop itself turns. ``/healthz``
is healthy while every one of them was seen recently: a router whose
services have no connector is still alive, so readiness is separate.
"""

from __future__ import annotations

import asyncio
import time

from router.engine import PRIO_HIGH, Engine, EngineError, Event, EventType

TICK_S = 1.0
STALE_S = 5.0


class HealthMonitor:
    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self._engine = engine
        self._loop = loop
        now = time.monotonic()
        self._timers: dict[int, int] = {}  # timer id -> worker
        self.worker_seen: list[float] = [now] * engine.workers
        self.loop_seen = now
        self._handle: asyncio.TimerHandle | None = None
        for worker in range(engine.workers):
            try:
                tid = engine.timer_start(TICK_S, TICK_S, prio=PRIO_HIGH, worker=worker)
            except EngineError:
                continue  # reported as stale by check(), which is the truth
            self._timers[tid] = worker
        engine.on_event(self._on_event)
        self._tick()

    def _tick(self) -> None:
        self.loop_seen = time.monotonic()
        self._handle = self._loop.call_later(TICK_S, self._tick)

    def _on_event(self, ev: Event) -> None:
        if ev.type == EventType.TIMER:
            worker = self._timers.get(ev.id)
            if worker is not None:
                self.worker_seen[worker] = time.monotonic()

    def check(self) -> list[str]:
        """Reasons the router is not live; empty when it is."""
        now = time.monotonic()
        reasons = []
        if now - self.loop_seen > STALE_S:
            reasons.append(f"control loop made no progress for {now - self.loop_seen:.1f} s")
        for worker, seen in enumerate(self.worker_seen):
            if now - seen > STALE_S:
                reasons.append(f"I/O worker {worker} made no progress for {now - seen:.1f} s")
        return reasons

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
