"""Facts about, and settings of, the machine the bench runs on.

Why a module of its own: the storm needs the file-descriptor limit raised in
every process it starts (2,000 clients need 2,000 sockets per side), and the
JSON report must say what it ran on, since absolute figures only compare
within one machine.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from typing import Any


def raise_nofile_limit() -> tuple[int, int]:
    """Raises RLIMIT_NOFILE's soft limit to the hard one; returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # keep the soft limit; the report shows what we got
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def read_process_cpu_s(pid: int) -> float:
    """User+system CPU seconds of another process, from /proc (0.0 if unknown)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            stat = f.read()
    except OSError:
        return 0.0
    # the command name may hold spaces: fields start after the last ')'
    fields = stat[stat.rfind(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def read_threads_cpu_s(pid: int) -> float | None:
    """CPU seconds of a process's live threads, in nanoseconds' resolution.

    Why: /proc/<pid>/stat counts 10 ms ticks, too coarse for a 5,000-connection
    storm at 20 µs each (0.1 s); /proc/<pid>/task/*/schedstat counts
    nanoseconds. A thread that exited is no longer listed, so a window must
    not span thread exits: the relays measured keep their threads for the
    whole run. None when schedstat is unavailable (no CONFIG_SCHED_INFO)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            continue  # the thread exited between listdir and open
        except (OSError, ValueError, IndexError):
            return None
    return total / 1e9


def _read_sysctl(name: str) -> str | None:
    try:
        with open("/proc/sys/" + name.replace(".", "/"), encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def environment() -> dict[str, Any]:
    """What the run's figures depend on, for the JSON report."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "nofile_soft": soft,
        "nofile_hard": hard,
        "ip_local_port_range": _read_sysctl("net.ipv4.ip_local_port_range"),
        "tcp_tw_reuse": _read_sysctl("net.ipv4.tcp_tw_reuse"),
        "somaxconn": _read_sysctl("net.core.somaxconn"),
    }
