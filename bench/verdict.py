"""Plain-language verdicts on what limited a run: the clients or the kernel.

Why: a load generator that saturates its own cores measures itself, not the
router, and a run that ran out of ephemeral ports measures the kernel. Both
must be said in the output, not left for the reader to infer. The rules are
pure functions of the measured figures so that tests can pin them down.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

SATURATED = 0.85  # a process using >= 85 % of a core is treated as saturated
TCP_TIME_WAIT = "06"


def client_bottleneck(
    proc_utilisation: list[float],
    client_cpu_s: float,
    elapsed_s: float,
    cpu_count: int | None = None,
) -> dict[str, Any]:
    """Was the client side the bottleneck?

    A client process is single-threaded (uvloop): at >= SATURATED of one
    core it cannot go faster. The client processes together are the
    bottleneck when any one of them is saturated, or when together they used
    >= SATURATED of every core of the machine (then the router was starved
    of CPU by its own load generator)."""
    cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    total_util = client_cpu_s / elapsed_s if elapsed_s > 0 else 0.0
    busiest = max(proc_utilisation, default=0.0)
    per_proc_bound = busiest >= SATURATED
    machine_bound = total_util >= SATURATED * cpus
    bound = per_proc_bound or machine_bound
    if per_proc_bound:
        verdict = (
            f"client-bound: a client process used {busiest:.0%} of a core; add --procs "
            "(the figure measures the load generator, not the router)"
        )
    elif machine_bound:
        verdict = (
            f"client-bound: the clients used {total_util:.2f} of {cpus} cores; the router "
            "shared the machine with its own load (compare CPU per connection, not rates)"
        )
    else:
        verdict = f"clients not saturated (busiest process {busiest:.0%} of a core)"
    return {
        "bound": bound,
        "busiest_process_utilisation": busiest,
        "total_client_cores": total_util,
        "cpu_count": cpus,
        "verdict": verdict,
    }


def local_port_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            lo, hi = f.read().split()
            return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def time_wait_by_tuple(
    paths: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6"),
    remote_port: int | None = None,
) -> dict[str, int]:
    """TIME_WAIT sockets now: total and the largest count sharing one
    (local address, remote address:port) — the set an ephemeral port is
    picked from. With remote_port, only pairs towards that port count
    towards the largest (a fresh echo port's own history)."""
    want = f"{remote_port:04X}" if remote_port is not None else None
    per: Counter[tuple[str, str]] = Counter()
    total = 0
    for path in paths:
        try:
            with open(path, encoding="ascii") as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) > 3 and parts[3] == TCP_TIME_WAIT:
                        total += 1
                        if want is None or parts[2].endswith(":" + want):
                            per[(parts[1].split(":")[0], parts[2])] += 1
        except OSError:
            continue
    return {"time_wait": total, "max_per_tuple": max(per.values(), default=0)}


def port_pressure(
    ephemeral_port_errors: int, time_wait: dict[str, int], port_range: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Did ephemeral ports or TIME_WAIT limit the run?

    Limited when a connect failed with EADDRNOTAVAIL, or when one
    (source, destination) pair holds >= 50 % of the port range in TIME_WAIT:
    from there the kernel's port search slows every connect (a latency tail)
    before it fails outright."""
    lo, hi = port_range if port_range is not None else local_port_range()
    size = max(1, hi - lo + 1)
    worst = int(time_wait.get("max_per_tuple", 0))
    share = worst / size
    limited = ephemeral_port_errors > 0 or share >= 0.5
    if ephemeral_port_errors:
        verdict = (
            f"ephemeral ports exhausted: {ephemeral_port_errors} connects failed with "
            "EADDRNOTAVAIL (use --source-addrs, or wait for TIME_WAIT to drain)"
        )
    elif limited:
        verdict = (
            f"TIME_WAIT pressure: {worst} sockets in TIME_WAIT on one address pair "
            f"({share:.0%} of the {size} ephemeral ports); connects slow down"
        )
    else:
        verdict = f"ports fine (worst address pair {share:.0%} of the ephemeral range in TIME_WAIT)"
    return {
        "limited": limited,
        "ephemeral_port_errors": ephemeral_port_errors,
        "time_wait": int(time_wait.get("time_wait", 0)),
        "time_wait_max_per_tuple": worst,
        "port_range": [lo, hi],
        "verdict": verdict,
    }
