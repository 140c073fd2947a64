"""TLS 1.3 server connections leave OpenSSL after the handshake for the
engine's own record layer (native/src/tls_rl.c): many concurrent Python
`ssl` clients echo random bytes of varied sizes through a TLS listener,
byte-exact, with a close_notify at the end, and every one of them detached."""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop
from servers import tls_echo_engine, wait_for

from router.engine import Engine

CLIENTS = 200


@pytest.fixture
def tls_echo(tmp_path: Path) -> Iterator[tuple[Engine, int, ssl.SSLContext]]:
    with tls_echo_engine(tmp_path, workers=2, connect_timeout_ms=5000) as (eng, slot, ca):
        listener = eng.listen("127.0.0.1", 0, address_id=0, tls_slot=slot)
        yield eng, listener.port, ssl.create_default_context(cafile=str(ca))


async def _client(port: int, ctx: ssl.SSLContext, seed: int, version: str = "TLSv1.3") -> None:
    rnd = random.Random(seed)
    payload = rnd.randbytes(rnd.randrange(1, 150_000))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    assert writer.get_extra_info("ssl_object").version() == version

    async def send() -> None:
        at = 0
        while at < len(payload):  # writes of varied sizes: records of varied sizes
            n = rnd.randrange(1, 40_000)
            writer.write(payload[at : at + n])
            await writer.drain()
            at += n

    sender = asyncio.create_task(send())
    back = await reader.readexactly(len(payload))
    await sender
    assert back == payload, f"client {seed}: echo corrupted"
    writer.close()  # close_notify
    await writer.wait_closed()


def test_concurrent_tls_echo_is_byte_exact_and_detached(
    tls_echo: tuple[Engine, int, ssl.SSLContext],
) -> None:
    eng, port, ctx = tls_echo
    before = eng.counters()

    async def main() -> None:
        results = await asyncio.gather(
            *(_client(port, ctx, seed) for seed in range(CLIENTS)), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, f"{len(failures)} of {CLIENTS} failed, first: {failures[0]!r}"

    uvloop.run(main())
    wait_for(lambda: eng.counters()["conns_live"] == 0, what="all flows closed")
    after = eng.counters()
    assert after["tls_handshakes"] - before["tls_handshakes"] == CLIENTS
    assert after["tls_detached"] - before["tls_detached"] == CLIENTS
    assert after["tls_failures"] == before["tls_failures"]


def test_tls12_clients_keep_openssl(tls_echo: tuple[Engine, int, ssl.SSLContext]) -> None:
    eng, port, ctx = tls_echo
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    before = eng.counters()
    uvloop.run(_client(port, ctx, 7, "TLSv1.2"))
    wait_for(lambda: eng.counters()["conns_live"] == 0, what="flow closed")
    after = eng.counters()
    assert after["tls_handshakes"] - before["tls_handshakes"] == 1
    assert after["tls_detached"] == before["tls_detached"]
