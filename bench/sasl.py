"""SASL PLAIN under a password-guessing attack: ``python -m bench sasl``.

Starts skiffd (a subprocess) with a listener that requires SASL PLAIN
against a users file hashed with the router's default scrypt cost, then
runs, for ``--seconds``:

* attackers (their own process): ``--rate`` new connections a second,
  spread over ``--sources`` source addresses (127.0.0.2, 127.0.0.3, ...),
  each connect, SASL header, PLAIN with a wrong password, read the outcome,
  close; with ``--rate 0`` they hammer instead: ``--attackers`` connections
  per source, each retrying as soon as it has its answer;
* one legitimate client from 127.0.0.1 logging in with the right password
  every ``--interval`` seconds, timing connect to ``sasl-outcome``.

It prints the legitimate logins' latency (p50, p99, max, failures), what
the attackers got (outcome codes: 1 auth, 4 sys-temp, or closed), and
skiffd's resident memory before and after. A baseline of the legitimate
client alone runs first.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from proton import Data, symbol

from bench.host import raise_nofile_limit
from bench.proxies import free_port, read_rss_kib
from router.management.sasl import SASL_HEADER, SASL_INIT, SCRYPT_N, encode_frame, hash_password

USER = "alice"
PASSWORD = "correct horse battery staple"
STARTUP_S = 30.0
IO_TIMEOUT_S = 30.0
ATTACK_LEAD_S = 1.0
MAX_OUTSTANDING = 2000


@dataclass(slots=True)
class SaslBenchConfig:
    seconds: float = 10.0
    sources: int = 8  # attacker source addresses 127.0.0.2 ...
    attackers: int = 8  # concurrent attacking connections per source
    interval: float = 0.2  # seconds between legitimate logins
    rate: float = 300.0  # attempts per second (0: each attacker connection loops at once)
    workers: int = 2


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)
    legit_failed: Counter[str] = field(default_factory=Counter)
    attacks: Counter[str] = field(default_factory=Counter)


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(4)
    (size,) = struct.unpack("!I", head)
    return head + await reader.readexactly(size - 4)


def _outcome_code(frame: bytes) -> int:
    doff = frame[4]
    data = Data()
    data.decode(frame[doff * 4 :])
    data.rewind()
    data.next()
    value: Any = data.get_object()
    return int(value.value[0])


async def login(port: int, source: str, password: str) -> str:
    """One SASL PLAIN login; its outcome: 'ok', 'auth', 'sys-temp', ... or 'closed'."""
    init = encode_frame(SASL_INIT, [symbol("PLAIN"), f"\0{USER}\0{password}".encode(), None])
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), IO_TIMEOUT_S
        )
    except (OSError, TimeoutError):
        return "connect failed"
    try:
        writer.write(SASL_HEADER + init)
        header = await asyncio.wait_for(reader.readexactly(8), IO_TIMEOUT_S)
        if header != SASL_HEADER:
            return "bad header"
        await asyncio.wait_for(_read_frame(reader), IO_TIMEOUT_S)  # mechanisms
        code = _outcome_code(await asyncio.wait_for(_read_frame(reader), IO_TIMEOUT_S))
        return {0: "ok", 1: "auth", 2: "sys", 3: "sys-perm", 4: "sys-temp"}.get(code, str(code))
    except (asyncio.IncompleteReadError, ConnectionError):
        return "closed"
    except TimeoutError:
        return "timed out"
    finally:
        writer.close()


async def _attacker(port: int, source: str, stop: asyncio.Event, phase: Phase) -> None:
    while not stop.is_set():
        phase.attacks[await login(port, source, "wrong password")] += 1


async def _legit(port: int, cfg: SaslBenchConfig, stop: asyncio.Event, phase: Phase) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        outcome = await login(port, "127.0.0.1", PASSWORD)
        if outcome == "ok":
            phase.latencies.append(time.perf_counter() - t0)
        else:
            phase.legit_failed[outcome] += 1
        await asyncio.sleep(cfg.interval)


async def _phase(port: int, cfg: SaslBenchConfig) -> Phase:
    """The legitimate client alone, for ``cfg.seconds``."""
    phase = Phase()
    stop = asyncio.Event()
    task = asyncio.create_task(_legit(port, cfg, stop, phase))
    await asyncio.sleep(cfg.seconds)
    stop.set()
    await task
    return phase


async def _attack(port: int, cfg: SaslBenchConfig, seconds: float) -> Counter[str]:
    phase = Phase()
    stop = asyncio.Event()
    if cfg.rate <= 0:  # hammering: every attacker connection loops at once
        tasks = [
            asyncio.create_task(_attacker(port, f"127.0.0.{2 + s}", stop, phase))
            for s in range(cfg.sources)
            for _ in range(cfg.attackers)
        ]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
        return phase.attacks

    async def one(source: str) -> None:
        phase.attacks[await login(port, source, "wrong password")] += 1

    # a fixed rate of new attempts, however long the router takes to answer
    pending: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    n = 0
    while (now := time.monotonic()) < start + seconds:
        due = int((now - start) * cfg.rate) + 1
        while n < due:
            if len(pending) < MAX_OUTSTANDING:
                task = asyncio.create_task(one(f"127.0.0.{2 + n % cfg.sources}"))
                pending.add(task)
                task.add_done_callback(pending.discard)
            else:
                phase.attacks["not sent (too many outstanding)"] += 1
            n += 1
        await asyncio.sleep(0.005)
    await asyncio.gather(*pending)
    return phase.attacks


def _attack_process(port: int, cfg: SaslBenchConfig, seconds: float, out: Any) -> None:
    """The attackers' own process, so that the measuring loop only measures;
    niced, as real attackers spend their own machines' CPU, not the router's."""
    os.nice(10)
    out.put(dict(uvloop.run(_attack(port, cfg, seconds))))


def _summary(name: str, phase: Phase) -> str:
    ms = sorted(s * 1000 for s in phase.latencies)
    if not ms:
        return f"{name:>8}: no successful login; failures {dict(phase.legit_failed)}"
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    failed = sum(phase.legit_failed.values())
    text = (
        f"{name:>8}: {len(ms)} logins, p50 {statistics.median(ms):.1f} ms, "
        f"p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"
    )
    if failed:
        text += f", {failed} failed {dict(phase.legit_failed)}"
    return text


def run_sasl(cfg: SaslBenchConfig) -> int:
    """Runs the baseline and the attack; 1 if a legitimate login failed."""
    raise_nofile_limit()
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="skiff-sasl-bench-"))
    users = tmp / "users"
    users.write_text(f"{USER}:write:{hash_password(PASSWORD)}\n")
    conf = tmp / "bench.conf"
    conf.write_text(
        f"router {{\n    id: bench\n    workerThreads: {cfg.workers}\n}}\n"
        f"listener {{\n    host: 127.0.0.1\n    port: {port}\n    authenticatePeer: true\n"
        f"    saslMechanisms: PLAIN\n    usersFile: {users}\n}}\n"
        "log {\n    module: DEFAULT\n    enable: warning+\n}\n"
    )
    log = (tmp / "skiffd.log").open("wb")
    router = subprocess.Popen(
        [sys.executable, "-m", "router", "-c", str(conf)],
        stdout=log,
        stderr=log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + STARTUP_S
        while "Stop with Ctrl-C" not in (tmp / "skiffd.log").read_text(errors="replace"):
            if time.monotonic() > deadline or router.poll() is not None:
                print(f"skiffd did not start; see {tmp / 'skiffd.log'}", file=sys.stderr)
                return 1
            time.sleep(0.1)
        rss_start = read_rss_kib(router.pid)
        baseline = uvloop.run(_phase(port, cfg))
        rss_base = read_rss_kib(router.pid)
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        attackers = ctx.Process(
            target=_attack_process, args=(port, cfg, cfg.seconds + ATTACK_LEAD_S, results)
        )
        attackers.start()
        time.sleep(ATTACK_LEAD_S)  # the attack is under way before measuring
        attacked = uvloop.run(_phase(port, cfg))
        attacked.attacks.update(results.get(timeout=cfg.seconds + 60))
        attackers.join(30)
        rss_attack = read_rss_kib(router.pid)
    finally:
        router.terminate()
        router.wait(30)
        log.close()
    print(
        f"sasl bench: skiffd {cfg.workers} workers, {os.cpu_count()} CPUs, {cfg.seconds:g} s "
        f"per phase, scrypt N={SCRYPT_N}; attack: wrong passwords from {cfg.sources} sources, "
        + (f"{cfg.rate:g} attempts/s" if cfg.rate > 0 else f"{cfg.attackers} connections each")
    )
    print(_summary("baseline", baseline))
    print(_summary("attacked", attacked))
    total = sum(attacked.attacks.values())
    print(
        f"attackers: {total} attempts ({total / cfg.seconds:.0f}/s), outcomes "
        + ", ".join(f"{k} {v}" for k, v in attacked.attacks.most_common())
    )
    print(
        f"skiffd RSS: {rss_start / 1024:.0f} MiB at start, {rss_base / 1024:.0f} MiB after "
        f"the baseline, {rss_attack / 1024:.0f} MiB after the attack"
    )
    return 1 if baseline.legit_failed or attacked.legit_failed else 0


def add_parser(sub: Any) -> None:
    d = SaslBenchConfig()
    p = sub.add_parser(
        "sasl",
        help="SASL PLAIN login latency during a wrong-password attack",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--seconds", type=float, default=d.seconds, help="length of each phase")
    p.add_argument("--sources", type=int, default=d.sources, help="attacker source addresses")
    p.add_argument(
        "--attackers", type=int, default=d.attackers, help="connections per source address"
    )
    p.add_argument(
        "--interval", type=float, default=d.interval, help="seconds between legitimate logins"
    )
    p.add_argument(
        "--rate",
        type=float,
        default=d.rate,
        help="wrong-password attempts per second, spread over the sources (0: hammer, "
        "--attackers connections per source retrying at once)",
    )
    p.add_argument("--workers", type=int, default=d.workers, help="router workerThreads")


def run_args(args: argparse.Namespace) -> int:
    return run_sasl(
        SaslBenchConfig(
            args.seconds, args.sources, args.attackers, args.interval, args.rate, args.workers
        )
    )
