"""Admission and scheduling of SASL credential checks.

A PLAIN check is a deliberately slow scrypt hash (tens of milliseconds and
16 MiB), so whoever can open connections could queue them without bound
and delay every legitimate login behind them. ``AuthGate`` bounds that
work:

* **one attempt per connection**: a connection sends one ``sasl-init``;
  a failure ends it (``amqp_connection.py``);
* **a bounded queue**: at most ``MAX_PENDING`` checks wait or run at once
  (when it is full, a check of a better class, below, takes the place of
  the worst queued one, which is answered ``sys-temp``),
  at most ``MAX_PENDING_PER_SOURCE`` of them from one source address (an
  IPv6 source counts by its /64); beyond that the attempt fails with the
  SASL outcome ``sys-temp`` (temporary failure: retry later) and no hash
  is computed: at once when the whole queue is full, after
  ``BACKOFF_BASE_S`` (tarpit, below) when the source's share is;
* **back-off per source**: each failed check makes its source wait
  ``BACKOFF_BASE_S`` doubled per failure in a row (at most
  ``BACKOFF_MAX_S``) before its next check; attempts during the wait fail
  with ``sys-temp`` without a check, answered after the rest of the wait
  (at most ``TARPIT_MAX_S``, and for at most ``MAX_TARPITTED`` connections
  at once, then at once) so that a client retrying in a loop is slowed to
  its back-off. A success, or ``FORGET_S`` without failures, clears the
  source's record;
* **priorities**: checks run in three classes: sources that logged in
  before (within ``KNOWN_FOR_S``) first, then sources seen for the first
  time, then sources with failures (fewest failures first). Checks of the
  last class run only while no other check runs, on one thread, and at
  most ``SUSPECT_CHECKS_PER_S`` a second: scrypt is memory-hard, and two
  at once on a small machine slow each other down, so a legitimate login
  must not share the CPU with an attacker's.

The hash runs on the gate's thread pool, never on the control loop; the
gate itself runs on the loop. Outcomes are counted for ``/metrics`` and
refusals logged at most once per source and interval.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import heapq
import ipaddress
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from logging import Logger

from router.management.limits import LimitStats, RateLimitedLog
from router.management.sasl import AuthResult

AUTH_THREADS = 2
MAX_PENDING = 32
MAX_PENDING_PER_SOURCE = 2
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
FORGET_S = 2 * BACKOFF_MAX_S
MAX_SOURCES = 4096  # records kept; the oldest go first
TARPIT_MAX_S = 1.0
MAX_TARPITTED = 64  # half a listener's default connection cap
KNOWN_FOR_S = 24 * 3600.0  # a source that logged in is known for this long
SUSPECT_CHECKS_PER_S = 2.0  # checks of failing sources, all together

OUTCOME_OK = "ok"
OUTCOME_AUTH = "auth"
OUTCOME_THROTTLED = "throttled"
OUTCOME_SATURATED = "saturated"

Check = Callable[[], AuthResult]
Done = Callable[[AuthResult], None]


def source_of(peer: str) -> str:
    """The source a peer's attempts are counted under: its address without
    the port; an IPv6 address by its /64 (one host usually has a /64)."""
    if peer.startswith("["):
        host = peer[1 : peer.find("]")] if "]" in peer else peer[1:]
        try:
            net = ipaddress.IPv6Network(f"{host}/64", strict=False)
        except ValueError:
            return host
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
        return str(mapped) if mapped is not None else str(net)
    return peer.rsplit(":", 1)[0]


@dataclass
class _Source:
    failures: int = 0
    blocked_until: float = 0.0
    last_failure: float = 0.0
    last_success: float | None = None
    pending: int = 0

    def rank(self, now: float) -> int:
        """0: logged in before; 1: new; 2 and up: 1 + failures in a row."""
        if self.failures:
            return 1 + self.failures
        known = self.last_success is not None and now - self.last_success < KNOWN_FOR_S
        return 0 if known else 1


@dataclass
class AuthJob:
    source: str
    check: Check
    done: Done
    cancelled: bool = False
    rank: int = 1

    def cancel(self) -> None:
        self.cancelled = True


def _fixed_mmap_threshold() -> None:
    """scrypt allocates 16 MiB per check; glibc's dynamic mmap threshold
    would then keep that much in each thread's arena for good. A fixed
    threshold returns it to the system after each check."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(ctypes.c_int(-3), ctypes.c_int(1 << 20))  # M_MMAP_THRESHOLD: 1 MiB
    except (OSError, AttributeError):
        pass  # not glibc: its allocator decides


class AuthGate:
    """Runs credential checks on a small pool, fairly and within bounds."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        log: Logger,
        stats: LimitStats | None = None,
        threads: int = AUTH_THREADS,
        pool: Executor | None = None,
    ) -> None:
        self._loop = loop
        self._stats = stats
        self._threads = max(1, threads)
        self._pool = pool or ThreadPoolExecutor(self._threads, thread_name_prefix="skiff-sasl")
        self._owns_pool = pool is None
        self._log = RateLimitedLog(log)
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._queue: list[tuple[int, int, AuthJob]] = []  # heap: (rank, arrival, job)
        self._arrivals = itertools.count()
        self._running = 0
        self._running_suspect = 0
        self._tokens = SUSPECT_CHECKS_PER_S  # a bucket of suspect checks, refilled per second
        self._refilled = time.monotonic()
        self._wakeup: asyncio.TimerHandle | None = None
        self._pending = 0
        self._tarpitted = 0
        _fixed_mmap_threshold()

    # ------------------------------------------------------------ admission

    def submit(self, peer: str, check: Check, done: Done) -> AuthJob | str:
        """Queues ``check`` for ``peer``; ``done(result)`` runs on the loop
        later. Returns the job (to cancel if the connection goes), or why
        the attempt is refused now (fail fast: no hash is computed)."""
        now = time.monotonic()
        source = source_of(peer)
        record = self._record(source, now)
        if now < record.blocked_until:
            self._count(OUTCOME_THROTTLED)
            wait = record.blocked_until - now
            why = self._refused(
                source,
                f"{record.failures} failed logins in a row from {source}; it may try again "
                f"in {wait:.1f} s",
            )
            return self._tarpit(source, check, done, min(wait, TARPIT_MAX_S), why)
        if self._pending >= MAX_PENDING and not self._displace(record.rank(now)):
            self._count(OUTCOME_SATURATED)
            return self._refused(
                "*", f"{self._pending} credential checks are waiting already (the limit)"
            )
        if record.pending >= MAX_PENDING_PER_SOURCE:
            self._count(OUTCOME_SATURATED)
            why = self._refused(
                source,
                f"{record.pending} credential checks from {source} are waiting already "
                "(the limit per source address)",
            )
            return self._tarpit(source, check, done, BACKOFF_BASE_S, why)
        job = AuthJob(source, check, done, rank=record.rank(now))
        record.pending += 1
        self._pending += 1
        heapq.heappush(self._queue, (job.rank, next(self._arrivals), job))
        self._dispatch()
        return job

    def _displace(self, rank: int) -> bool:
        """Makes room in a full queue for a check of ``rank`` by dropping the
        worst queued one (a cancelled one, or one of a worse rank): that one
        is answered sys-temp. False if there is none."""
        if not self._queue:
            return False
        worst = max(self._queue, key=lambda e: (not e[2].cancelled, e[0], e[1]))
        if not worst[2].cancelled and worst[0] <= rank:
            return False
        self._queue.remove(worst)
        heapq.heapify(self._queue)
        job = worst[2]
        if job.cancelled:
            self._finished(job, None)
            return True
        self._count(OUTCOME_SATURATED)
        why = self._refused(
            job.source,
            "the queue of credential checks is full and a check of a source with a better "
            "record took its place",
        )
        self._finished(job, AuthResult(False, reason=why, temporary=True))
        return True

    def _record(self, source: str, now: float) -> _Source:
        record = self._sources.get(source)
        if record is not None and record.failures and not record.pending:
            if now - record.last_failure > FORGET_S:
                record.failures = 0
                record.blocked_until = 0.0
        if record is None:
            record = self._sources[source] = _Source()
            while len(self._sources) > MAX_SOURCES:
                oldest = next(iter(self._sources))
                if self._sources[oldest].pending:
                    break  # never forget a source with work in flight
                del self._sources[oldest]
        else:
            self._sources.move_to_end(source)
        return record

    def _refused(self, key: str, why: str) -> str:
        self._log.warning(f"sasl:{key}", f"SASL attempt refused (sys-temp): {why}")
        return why

    def _tarpit(
        self, source: str, check: Check, done: Done, delay: float, why: str
    ) -> AuthJob | str:
        """Answers a refusal after ``delay`` (the connection is held, no check
        runs), or at once when too many are held already."""
        if self._tarpitted >= MAX_TARPITTED or delay <= 0:
            return why
        self._tarpitted += 1
        job = AuthJob(source, check, done)
        result = AuthResult(False, reason=why, temporary=True)
        self._loop.call_later(delay, self._tarpit_over, job, result)
        return job

    def _tarpit_over(self, job: AuthJob, result: AuthResult) -> None:
        self._tarpitted -= 1
        if not job.cancelled:
            job.done(result)

    def _count(self, outcome: str) -> None:
        if self._stats is not None:
            self._stats.sasl[outcome] += 1

    # ------------------------------------------------------------ scheduling

    def _dispatch(self) -> None:
        while self._running < self._threads and self._queue:
            rank, _, job = self._queue[0]
            if job.cancelled:
                heapq.heappop(self._queue)
                self._finished(job, None)
                continue
            suspect = rank >= 2
            if suspect and not self._suspect_may_run():
                return
            heapq.heappop(self._queue)
            self._running += 1
            self._running_suspect += suspect
            future = self._loop.run_in_executor(self._pool, job.check)
            future.add_done_callback(functools.partial(self._ran, job, suspect))

    def _suspect_may_run(self) -> bool:
        """Alone, and within the rate; else a wake-up is set for the rate."""
        if self._running:
            return False  # after the others (they run, or the pool is busy)
        now = time.monotonic()
        self._tokens = min(
            SUSPECT_CHECKS_PER_S, self._tokens + (now - self._refilled) * SUSPECT_CHECKS_PER_S
        )
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        if self._wakeup is None:
            delay = (1 - self._tokens) / SUSPECT_CHECKS_PER_S
            self._wakeup = self._loop.call_later(delay, self._woken)
        return False

    def _woken(self) -> None:
        self._wakeup = None
        self._dispatch()

    def _ran(self, job: AuthJob, suspect: bool, future: asyncio.Future[AuthResult]) -> None:
        self._running -= 1
        self._running_suspect -= suspect
        try:
            result = future.result()
        except Exception as e:  # noqa: BLE001 - a broken users file line, a bug
            self._log.warning("error", f"credential check failed: {type(e).__name__}: {e}")
            result = AuthResult(False, reason=f"credential check failed: {e}")
        self._finished(job, result)
        self._dispatch()

    def _finished(self, job: AuthJob, result: AuthResult | None) -> None:
        self._pending -= 1
        record = self._sources.get(job.source)
        if record is not None:
            record.pending -= 1
        if result is None:
            return
        now = time.monotonic()
        if result.temporary:
            if not job.cancelled:
                job.done(result)
            return
        if record is not None:
            if result.ok:
                record.failures = 0
                record.blocked_until = 0.0
                record.last_success = now
            else:
                record.failures += 1
                record.last_failure = now
                delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(record.failures - 1, 16))
                record.blocked_until = now + delay
        self._count(OUTCOME_OK if result.ok else OUTCOME_AUTH)
        if not job.cancelled:
            job.done(result)

    def close(self) -> None:
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None
        if self._owns_pool:
            self._pool.shutdown(wait=False, cancel_futures=True)
