"""router/resolver.py: connector host names resolved on the control loop,
cached, kept fresh, and forgotten when the last user goes.

Most tests answer getaddrinfo themselves (a fake on a plain asyncio loop)
so that every answer, failure and ordering is chosen by the test; one asks
the system for "localhost". Waits are bounded by a deadline, never timed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from tlsharness import wait_until

from router.resolver import Resolver, numeric_host

AddrInfo = tuple[Any, Any, Any, Any, tuple[str, int]]


class FakeDns:
    """getaddrinfo answering from a table; a host with a gate waits for it."""

    def __init__(self) -> None:
        self.answers: dict[str, list[str] | Exception] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.calls: list[str] = []

    async def getaddrinfo(self, host: str, port: object, **_kw: object) -> list[AddrInfo]:
        self.calls.append(host)
        gate = self.gates.get(host)
        if gate is not None:
            await gate.wait()
        answer = self.answers[host]
        if isinstance(answer, Exception):
            raise answer
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in answer]


def run_fake(
    body: Callable[[Resolver, FakeDns, list[str]], Awaitable[None]], refresh: float = 3600
) -> None:
    """body(resolver, dns, changes) on a plain asyncio loop whose
    getaddrinfo is the fake; changes collects on_change's hosts."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        dns = FakeDns()
        loop.getaddrinfo = dns.getaddrinfo  # type: ignore[method-assign,assignment]
        changes: list[str] = []
        resolver = Resolver(loop, changes.append, refresh_seconds=refresh)
        try:
            await body(resolver, dns, changes)
        finally:
            resolver.close()

    asyncio.run(main())


def test_numeric_host() -> None:
    assert numeric_host("127.0.0.1") == "127.0.0.1"
    assert numeric_host("[::1]") == "::1"
    assert numeric_host("::ffff:127.0.0.1") == "::ffff:7f00:1"
    assert numeric_host("localhost") is None
    assert numeric_host("") is None


def test_numeric_hosts_need_no_look_up() -> None:
    async def body(r: Resolver, dns: FakeDns, changes: list[str]) -> None:
        r.watch("127.0.0.1")
        r.watch("[::1]")
        await r.settle()
        assert r.addresses("127.0.0.1") == ("127.0.0.1",)
        assert r.addresses("[::1]") == ("::1",)
        assert dns.calls == [] and changes == []
        r.unwatch("127.0.0.1")  # never watched as a name: nothing to forget

    run_fake(body)


def test_answer_is_cached_sorted_ipv4_first_and_reported_once() -> None:
    async def body(r: Resolver, dns: FakeDns, changes: list[str]) -> None:
        dns.answers["svc"] = ["::1", "127.0.0.2", "127.0.0.1", "127.0.0.2"]
        assert r.addresses("svc") == () and r.error("svc") is None
        r.watch("svc")
        r.watch("svc")  # a second user shares the look-up
        await r.settle()
        assert r.addresses("svc") == ("127.0.0.1", "127.0.0.2", "::1")
        assert r.error("svc") is None
        assert dns.calls == ["svc"] and changes == ["svc"]

    run_fake(body)


def test_periodic_refresh_reports_changes_only() -> None:
    async def body(r: Resolver, dns: FakeDns, changes: list[str]) -> None:
        dns.answers["svc"] = ["127.0.0.1"]
        r.watch("svc")
        await wait_until(lambda: len(dns.calls) >= 3, what="two refreshes")
        await r.settle()
        assert changes == ["svc"]  # the same answer is no change
        dns.answers["svc"] = ["127.0.0.3"]
        await wait_until(lambda: r.addresses("svc") == ("127.0.0.3",), what="the new answer")
        assert changes == ["svc", "svc"]

    run_fake(body, refresh=0.02)


def test_failure_keeps_last_good_answer_until_recovery() -> None:
    async def body(r: Resolver, dns: FakeDns, changes: list[str]) -> None:
        dns.answers["svc"] = ["127.0.0.1"]
        r.watch("svc")
        await r.settle()
        dns.answers["svc"] = socket.gaierror(socket.EAI_AGAIN, "temporary failure")
        await wait_until(lambda: r.error("svc") is not None, what="the failure")
        assert "temporary failure" in (r.error("svc") or "")
        assert r.addresses("svc") == ("127.0.0.1",)
        assert changes == ["svc"]
        dns.answers["svc"] = ["127.0.0.1"]
        await wait_until(lambda: r.error("svc") is None, what="recovery")
        assert r.addresses("svc") == ("127.0.0.1",) and changes == ["svc"]

    run_fake(body, refresh=0.02)


def test_first_failure_has_no_addresses_and_an_error() -> None:
    async def body(r: Resolver, dns: FakeDns, changes: list[str]) -> None:
        dns.answers["nowhere.invalid"] = socket.gaierror(socket.EAI_NONAME, "not known")
        dns.answers["bad"] = UnicodeError("label too long")
        r.watch("nowhere.invalid")
        r.watch("bad")
        await r.settle()
        assert r.addresses("nowhere.invalid") == () and r.addresses("bad") == ()
        assert "not known" in (r.error("nowhere.invalid") or "")
        assert "label too long" in (r.error("bad") or "")
        # the first answer, even a failure, is news for the adaptor
        assert sorted(changes) == ["bad", "nowhere.invalid"]

    run_fake(body)


def test_unwatch_forgets_after_the_last_user() -> None:
    async def body(r: Resolver, dns: FakeDns, changes: list[str]) -> None:
        dns.answers["svc"] = ["127.0.0.1"]
        r.watch("svc")
        r.watch("svc")
        await r.settle()
        r.unwatch("svc")
        assert r.addresses("svc") == ("127.0.0.1",)  # one user left
        r.unwatch("svc")
        assert r.addresses("svc") == ()
        r.unwatch("svc")  # one too many: ignored
        r.watch("svc")  # watched again: a new look-up
        await r.settle()
        assert dns.calls == ["svc", "svc"] and r.addresses("svc") == ("127.0.0.1",)

    run_fake(body)


def test_unwatch_cancels_a_look_up_in_flight() -> None:
    async def body(r: Resolver, dns: FakeDns, changes: list[str]) -> None:
        dns.answers["slow"] = ["127.0.0.1"]
        gate = dns.gates["slow"] = asyncio.Event()
        r.watch("slow")
        await wait_until(lambda: dns.calls == ["slow"], what="the look-up to start")
        r.unwatch("slow")  # cancels the look-up in flight
        gate.set()
        await r.settle()
        await asyncio.sleep(0)
        assert r.addresses("slow") == () and changes == []

    run_fake(body)


def test_no_refresh_once_nothing_is_watched() -> None:
    async def body(r: Resolver, dns: FakeDns, changes: list[str]) -> None:
        dns.answers["svc"] = ["127.0.0.1"]
        r.watch("svc")
        await wait_until(lambda: len(dns.calls) >= 2, what="a refresh")
        r.unwatch("svc")
        calls = len(dns.calls)
        for _ in range(10):  # ten refresh periods
            await asyncio.sleep(0.02)
        assert len(dns.calls) == calls

    run_fake(body, refresh=0.02)


def test_close_cancels_look_ups_in_flight() -> None:
    async def body(r: Resolver, dns: FakeDns, changes: list[str]) -> None:
        dns.answers["slow"] = ["127.0.0.1"]
        dns.gates["slow"] = asyncio.Event()
        r.watch("slow")
        await wait_until(lambda: dns.calls == ["slow"], what="the look-up to start")
        r.close()
        await r.settle()  # nothing left in flight
        assert changes == [] and r.addresses("slow") == ()

    run_fake(body)


def test_localhost_through_the_system_resolver() -> None:
    async def main() -> tuple[str, ...]:
        changes: list[str] = []
        r = Resolver(asyncio.get_running_loop(), changes.append)
        try:
            r.watch("localhost")
            await r.settle()
            assert changes == ["localhost"], r.error("localhost")
            return r.addresses("localhost")
        finally:
            r.close()

    addrs = uvloop.run(main())
    assert addrs and "127.0.0.1" in addrs, addrs
