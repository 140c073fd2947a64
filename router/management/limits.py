"""Limits of the app listeners (AMQP management, HTTP metrics): time-outs,
connection caps and the share of file descriptors they may take.

Every connection of an app listener holds a descriptor and some control
loop state, so a client that opens many and sends nothing must not be able
to starve the relay (which needs descriptors for both its sides) or the
other listeners. Three rules bound them:

* **time-outs**: an HTTP client must send its whole request head within
  the listener's ``requestTimeoutSeconds`` of connecting (it is answered
  ``408`` and closed otherwise); an AMQP client must finish the protocol
  header, SASL and its ``open`` frame within ``initialHandshakeTimeoutSeconds``
  (Skupper's name), or it is closed;
* **a per-listener cap**: the listener's ``maxConnections``, or when that is
  0 ``listener_cap`` connections at once; the engine itself refuses the next
  ones at ``accept`` (closed at once, counted in ``limit_rejected``), so a
  flood costs no Python and holds no descriptor;
* **a budget for all of them**: the app listeners together hold at most a
  quarter of ``RLIMIT_NOFILE`` (``APP_FD_SHARE``); the rest stays for the
  relay. The default cap of one listener is at most half the budget, so a
  flood on the metrics port leaves room on the management port.

The listener's values are ``listener`` attributes (defaults in
``router/schema.py``; see docs/operations.md); the budget's share is a
constant here.
"""

from __future__ import annotations

import resource
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from logging import Logger

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from router import schema

_LISTENER = schema.entity_type("listener").attributes
# The schema's defaults, for connections built without a listener entity
# (the listeners themselves take their entity's values).
HANDSHAKE_TIMEOUT_S = float(_LISTENER["initialHandshakeTimeoutSeconds"].default)  # type: ignore[arg-type]
HTTP_REQUEST_TIMEOUT_S = float(_LISTENER["requestTimeoutSeconds"].default)  # type: ignore[arg-type]
LISTENER_MAX_CONNECTIONS = 128  # ceiling of the default cap (maxConnections: 0)
APP_FD_SHARE = 4  # app connections together use at most 1/APP_FD_SHARE of the fd limit
MIN_APP_BUDGET = 4
REFUSAL_LOG_INTERVAL_S = 10.0

# reasons and phases, as they appear in the metrics' labels
REFUSED_BUDGET = "fd_budget"
REFUSED_CAP = "listener_cap"
TIMEOUT_HTTP = "http_request"
TIMEOUT_AMQP = "amqp_handshake"


def fd_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


def app_budget(nofile: int | None = None) -> int:
    """How many app connections all listeners together may hold."""
    limit = fd_limit() if nofile is None else nofile
    return max(MIN_APP_BUDGET, limit // APP_FD_SHARE)


def listener_cap(budget: int, configured: int = 0) -> int:
    """How many connections one listener may hold (the engine enforces it):
    its ``maxConnections`` when set, else the default cap."""
    if configured > 0:
        return configured
    return max(1, min(LISTENER_MAX_CONNECTIONS, budget // 2))


class RateLimitedLog:
    """At most one line per key and interval; the lines it held back are
    counted in the next one it lets through."""

    def __init__(self, log: Logger, interval_s: float = REFUSAL_LOG_INTERVAL_S) -> None:
        self._log = log
        self._interval = interval_s
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def warning(self, key: str, message: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] += 1
            return False
        held = self._held.pop(key, 0)
        if held:
            message += f" ({held} more like this in the last {now - last:.0f} s)"  # type: ignore[operator]
        self._last[key] = now
        self._log.warning(message)
        return True


@dataclass
class LimitStats:
    """What the limits refused or closed, for ``/metrics``."""

    budget: int
    cap: int  # the default cap (maxConnections: 0)
    caps: dict[str, int] = field(default_factory=dict)  # listener -> its cap
    refused: Counter[tuple[str, str]] = field(default_factory=Counter)  # (listener, reason)
    timeouts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (listener, phase)
    sasl: Counter[str] = field(default_factory=Counter)  # outcome

    def families(self, listeners: list[str]) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "skiff_app_connection_budget",
            "App (management and metrics) connections all listeners together may hold "
            "(a share of the file descriptor limit).",
            value=self.budget,
        )
        cap = GaugeMetricFamily(
            "skiff_listener_connection_limit",
            "Connections one listener may hold; the engine refuses more at accept "
            "(counted in skiff_engine_limit_rejected_total).",
            labels=["listener"],
        )
        for name in listeners:
            cap.add_metric([name], self.caps.get(name, self.cap))
        yield cap
        refused = CounterMetricFamily(
            "skiff_listener_connections_refused_total",
            "Connections an app listener closed at once because of a limit "
            f"({REFUSED_BUDGET}: all app listeners hold their share of descriptors; "
            f"{REFUSED_CAP}: the listener holds its cap).",
            labels=["listener", "reason"],
        )
        for (name, reason), n in sorted(self.refused.items()):
            refused.add_metric([name, reason], n)
        yield refused
        timeouts = CounterMetricFamily(
            "skiff_listener_timeouts_total",
            f"Connections closed by a time-out ({TIMEOUT_HTTP}: no complete HTTP request "
            f"head in time; {TIMEOUT_AMQP}: no AMQP open in time).",
            labels=["listener", "phase"],
        )
        for (name, phase), n in sorted(self.timeouts.items()):
            timeouts.add_metric([name, phase], n)
        yield timeouts
        sasl = CounterMetricFamily(
            "skiff_sasl_outcomes_total",
            "SASL authentications by outcome (ok, auth: wrong credentials, throttled: the "
            "source address is backing off, saturated: too many checks waiting).",
            labels=["outcome"],
        )
        for outcome, n in sorted(self.sasl.items()):
            sasl.add_metric([outcome], n)
        yield sasl

    def render(self, listeners: list[str]) -> str:
        return generate_latest(_Families(self, listeners)).decode()


class _Families:
    def __init__(self, stats: LimitStats, listeners: list[str]) -> None:
        self._stats = stats
        self._listeners = listeners

    def collect(self) -> Iterator[Metric]:
        return self._stats.families(self._listeners)
