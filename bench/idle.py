"""Idle connections: open N relayed connections, prove each works, hold them.

Why each connection exchanges one byte before it counts as held: a proxy
may accept a client before it has connected the other side; only an echoed
byte proves the whole relayed pair exists, which is what costs memory.
Why a process of its own: the holder's own sockets and buffers must not be
counted in the memory of the in-process engine.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import cast

from bench.client import source_addresses
from bench.host import raise_nofile_limit

OPEN_CONCURRENCY = 256
STEP_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0
MAX_ERROR_SAMPLES = 8


@dataclass(slots=True)
class HoldResult:
    held: int = 0
    failed: int = 0
    error_samples: list[str] = field(default_factory=list)
    open_s: float = 0.0


class _Holder(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[bool]) -> None:
        self.done = done
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(b"i")

    def data_received(self, data: bytes) -> None:
        if not self.done.done():
            self.done.set_result(data == b"i")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(False)


async def _hold(
    host: str,
    port: int,
    n: int,
    source_addrs: int,
    offset: int,
    ctl: Connection,
    tls_ca: str | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    ctx = None
    if tls_ca is not None:
        from bench.pki import client_context

        ctx = client_context(tls_ca)
    sources = source_addresses(source_addrs)
    res = HoldResult()
    holders: list[_Holder] = []
    sem = asyncio.Semaphore(OPEN_CONCURRENCY)
    t0 = time.monotonic()

    async def one(i: int) -> None:
        local = (sources[(offset + i) % len(sources)], 0) if sources else None
        done: asyncio.Future[bool] = loop.create_future()
        async with sem:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    _t, proto = await loop.create_connection(
                        lambda: _Holder(done),
                        host,
                        port,
                        local_addr=local,
                        ssl=ctx,
                        server_hostname="localhost" if ctx is not None else None,
                    )
                    holders.append(proto)
                    good = await done
            except (OSError, TimeoutError) as exc:
                good = False
                if len(res.error_samples) < MAX_ERROR_SAMPLES:
                    res.error_samples.append(f"{type(exc).__name__}: {exc}")
        if good:
            res.held += 1
        else:
            res.failed += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    res.open_s = time.monotonic() - t0
    ctl.send(res)
    await loop.run_in_executor(None, ctl.poll, STEP_TIMEOUT_S * 10)
    for h in holders:
        if h.transport is not None:
            h.transport.close()
    await asyncio.sleep(0.05)


def holder_main(
    host: str,
    port: int,
    n: int,
    source_addrs: int,
    offset: int,
    ctl: Connection,
    tls_ca: str | None = None,
) -> None:
    import uvloop

    raise_nofile_limit()
    uvloop.run(_hold(host, port, n, source_addrs, offset, ctl, tls_ca))
    ctl.send("released")


class IdleHold:
    """N connections over procs holder processes, held until release()."""

    def __init__(
        self,
        host: str,
        port: int,
        n: int,
        procs: int = 1,
        source_addrs: int = 253,
        tls_ca: str | None = None,
    ) -> None:
        ctx = mp.get_context("spawn")
        self.parts: list[tuple[mp.process.BaseProcess, Connection]] = []
        per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        for i, k in enumerate(per):
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(
                target=holder_main,
                args=(host, port, k, source_addrs, i * 50, child_end, tls_ca),
                name=f"skiff-bench-idle-{i}",
                daemon=True,
            )
            p.start()
            child_end.close()
            self.parts.append((p, parent_end))

    def wait_held(self) -> HoldResult:
        """Blocks until every holder opened its share (or failed to)."""
        total = HoldResult()
        for _p, c in self.parts:
            if not c.poll(STEP_TIMEOUT_S):
                total.error_samples.append("a holder process did not report in time")
                continue
            r = c.recv()
            assert isinstance(r, HoldResult)
            total.held += r.held
            total.failed += r.failed
            total.open_s = max(total.open_s, r.open_s)
            total.error_samples.extend(r.error_samples[:MAX_ERROR_SAMPLES])
        return total

    def release(self) -> None:
        for p, c in self.parts:
            try:
                c.send("release")
                if c.poll(STEP_TIMEOUT_S):
                    c.recv()
            except (BrokenPipeError, OSError, EOFError):
                pass  # holder gone: its sockets are closed with it
            p.join(5.0)
            if p.is_alive():
                p.terminate()
                p.join(5.0)
            c.close()
        self.parts.clear()
