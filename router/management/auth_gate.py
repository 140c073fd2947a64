"""Admission and scheduling of SASL credential checks.

A PLAIN check is a deliberately slow scrypt hash (tens of milliseconds and
16 MiB), so whoever can open connections could queue them without bound
and delay every legitimate login behind them. ``AuthGate`` bounds that
work:

* **one attempt per connection**: a connection sends one ``sasl-init``;
  a failure ends it (``amqp_connection.py``);
* **a bounded queue**: at most ``MAX_PENDING`` checks wait or run at once,
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
* **fair scheduling**: checks of sources without recent failures run
  first, and sources with failures may use at most all threads but one,
  so a legitimate client never waits behind an attacker's queue.

The hash runs on the gate's thread pool, never on the control loop; the
gate itself runs on the loop. Outcomes are counted for ``/metrics`` and
refusals logged at most once per source and interval.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import ipaddress
import time
from collections import OrderedDict, deque
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
    pending: int = 0


@dataclass
class AuthJob:
    source: str
    check: Check
    done: Done
    cancelled: bool = False

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
        self._clean: deque[AuthJob] = deque()
        self._suspect: deque[AuthJob] = deque()
        self._running = 0
        self._running_suspect = 0
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
        if self._pending >= MAX_PENDING:
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
        job = AuthJob(source, check, done)
        record.pending += 1
        self._pending += 1
        (self._suspect if record.failures else self._clean).append(job)
        self._dispatch()
        return job

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
        suspect_slots = self._threads - 1 if self._threads > 1 else 1
        while self._running < self._threads:
            if self._clean:
                job = self._clean.popleft()
            elif self._suspect and self._running_suspect < suspect_slots:
                job = self._suspect.popleft()
            else:
                return
            if job.cancelled:
                self._finished(job, None)
                continue
            suspect = bool(self._sources.get(job.source, _Source()).failures)
            self._running += 1
            self._running_suspect += suspect
            future = self._loop.run_in_executor(self._pool, job.check)
            future.add_done_callback(functools.partial(self._ran, job, suspect))

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
        if record is not None:
            if result.ok:
                record.failures = 0
                record.blocked_until = 0.0
            else:
                record.failures += 1
                record.last_failure = now
                delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(record.failures - 1, 16))
                record.blocked_until = now + delay
        self._count(OUTCOME_OK if result.ok else OUTCOME_AUTH)
        if not job.cancelled:
            job.done(result)

    def close(self) -> None:
        if self._owns_pool:
            self._pool.shutdown(wait=False, cancel_futures=True)
