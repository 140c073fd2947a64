"""SASL credential checks are bounded (issue 14, finding 7): a bounded queue,
back-off per source address, checks of clean sources first, and an
immediate ``sys-temp`` outcome when a check is refused."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import uvloop
from test_limits_app import InProcess, run

from bench.sasl import PASSWORD, USER, login
from router.log import get_logger
from router.management import auth_gate
from router.management.auth_gate import AuthGate, source_of
from router.management.limits import LimitStats
from router.management.sasl import AuthResult, hash_password

_log = get_logger("AUTHSERVICE")


class Blocking:
    """Checks that finish when the test says so; records the order they ran in."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.release: dict[str, threading.Event] = {}

    def check(self, name: str, ok: bool) -> Callable[[], AuthResult]:
        event = self.release[name] = threading.Event()

        def run() -> AuthResult:
            self.ran.append(name)
            assert event.wait(20), f"{name} never released"
            return AuthResult(ok, user=name if ok else None, reason="" if ok else "wrong")

        return run


def gate_run(body: Callable[[AuthGate, Blocking, LimitStats], object]) -> None:
    async def main() -> None:
        stats = LimitStats(100, 10)
        pool = ThreadPoolExecutor(2)
        gate = AuthGate(asyncio.get_running_loop(), _log, stats, threads=2, pool=pool)
        try:
            result = body(gate, Blocking(), stats)
            if asyncio.iscoroutine(result):
                await result
        finally:
            gate.close()
            pool.shutdown(wait=False, cancel_futures=True)

    uvloop.run(main())


async def settle(cond: Callable[[], bool]) -> None:
    for _ in range(2000):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


def test_source_of_peers() -> None:
    assert source_of("127.0.0.2:4567") == "127.0.0.2"
    assert source_of("[2001:db8:1:2:3:4:5:6]:443") == "2001:db8:1:2::/64"
    assert source_of("[::ffff:10.1.2.3]:80") == "10.1.2.3"


def test_failure_backs_the_source_off_and_success_clears_it() -> None:
    async def body(gate: AuthGate, checks: Blocking, stats: LimitStats) -> None:
        results: list[AuthResult] = []
        job = gate.submit("10.0.0.1:1000", checks.check("bad", False), results.append)
        assert not isinstance(job, str)
        checks.release["bad"].set()
        await settle(lambda: len(results) == 1)
        # refused without a check, answered when the back-off is over (tarpit)
        held = gate.submit("10.0.0.1:1001", checks.check("again", True), results.append)
        assert not isinstance(held, str)
        await settle(lambda: len(results) == 2)
        assert "again" not in checks.ran
        assert results[1].temporary and not results[1].ok
        assert "1 failed logins in a row from 10.0.0.1; it may try again in" in results[1].reason
        # another source is not affected
        other = gate.submit("10.0.0.2:1000", checks.check("other", True), results.append)
        assert not isinstance(other, str)
        checks.release["other"].set()
        await settle(lambda: len(results) == 3)
        assert results[2].ok
        assert stats.sasl == {"auth": 1, "throttled": 1, "ok": 1}


def test_tarpit_holds_a_bounded_number_then_answers_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth_gate, "MAX_TARPITTED", 2)
    monkeypatch.setattr(auth_gate, "BACKOFF_BASE_S", 30.0)

    async def body(gate: AuthGate, checks: Blocking, stats: LimitStats) -> None:
        results: list[AuthResult] = []
        gate.submit("10.0.0.1:1", checks.check("bad", False), results.append)
        checks.release["bad"].set()
        await settle(lambda: len(results) == 1)
        held = [
            gate.submit("10.0.0.1:2", checks.check(f"h{i}", True), results.append) for i in range(2)
        ]
        assert not any(isinstance(h, str) for h in held)
        now = gate.submit("10.0.0.1:3", checks.check("now", True), results.append)
        assert isinstance(now, str) and "may try again in 30.0 s" in now
        for h in held:
            assert not isinstance(h, str)
            h.cancel()  # their connections went away: nothing is answered
        assert stats.sasl["throttled"] == 3

    gate_run(body)

    gate_run(body)


def test_bounded_queue_fails_fast_and_per_source_limit_is_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth_gate, "MAX_PENDING", 4)
    monkeypatch.setattr(auth_gate, "BACKOFF_BASE_S", 0.05)

    async def body(gate: AuthGate, checks: Blocking, stats: LimitStats) -> None:
        done: list[AuthResult] = []
        for i in range(2):
            assert not isinstance(
                gate.submit("10.0.0.1:1", checks.check(f"a{i}", True), done.append), str
            )
        # the source's share is taken: refused without a check, answered a bit later
        per_source = gate.submit("10.0.0.1:2", checks.check("a2", True), done.append)
        assert not isinstance(per_source, str)
        await settle(lambda: len(done) == 1)
        assert done[0].temporary and "limit per source address" in done[0].reason
        assert "a2" not in checks.ran
        del done[0]
        for i in range(2):
            assert not isinstance(
                gate.submit(f"10.0.1.{i}:1", checks.check(f"b{i}", True), done.append), str
            )
        full = gate.submit("10.0.2.1:1", checks.check("c", True), done.append)
        assert isinstance(full, str) and "4 credential checks are waiting already" in full
        assert stats.sasl["saturated"] == 2
        for event in checks.release.values():
            event.set()
        await settle(lambda: len(done) == 4)
        # room again
        assert not isinstance(gate.submit("10.0.2.1:1", checks.check("d", True), done.append), str)
        checks.release["d"].set()
        await settle(lambda: len(done) == 5)

    gate_run(body)


def test_clean_sources_run_first_and_suspects_keep_a_thread_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth_gate, "BACKOFF_BASE_S", 0.0)  # failures mark, never block

    async def body(gate: AuthGate, checks: Blocking, stats: LimitStats) -> None:
        done: list[AuthResult] = []
        # three attacker sources fail once: they are suspects from then on
        for i in range(3):
            gate.submit(f"10.9.0.{i}:1", checks.check(f"first{i}", False), done.append)
            checks.release[f"first{i}"].set()
        await settle(lambda: len(done) == 3)
        for i in range(3):
            gate.submit(f"10.9.0.{i}:2", checks.check(f"bad{i}", False), done.append)
        await settle(lambda: len(checks.ran) == 4)
        assert checks.ran[3:] == ["bad0"]  # one thread for suspects; one stays free
        gate.submit("10.1.1.1:5", checks.check("legit", True), done.append)
        await settle(lambda: "legit" in checks.ran)
        assert checks.ran[3:] == ["bad0", "legit"]  # ahead of bad1 and bad2
        for event in checks.release.values():
            event.set()
        await settle(lambda: len(done) == 7)
        assert [r.user for r in done if r.ok] == ["legit"]

    gate_run(body)


def test_cancelled_and_raising_checks_free_their_slot() -> None:
    async def body(gate: AuthGate, checks: Blocking, stats: LimitStats) -> None:
        done: list[AuthResult] = []
        gate.submit("10.0.0.1:1", checks.check("x", True), done.append)
        gate.submit("10.0.0.2:1", checks.check("y", True), done.append)
        queued = gate.submit("10.0.0.3:1", checks.check("z", True), done.append)
        assert not isinstance(queued, str)
        queued.cancel()

        def broken() -> AuthResult:
            raise ValueError("n must be a power of 2")

        gate.submit("10.0.0.4:1", broken, done.append)
        checks.release["x"].set()
        checks.release["y"].set()
        await settle(lambda: len(done) == 3)
        assert "z" not in checks.ran
        # the broken check may finish before or after the released ones
        failed = [r for r in done if not r.ok]
        assert len(failed) == 1 and "n must be a power of 2" in failed[0].reason
        assert sorted(r.user for r in done if r.ok) == ["x", "y"]

    gate_run(body)


def test_wrong_password_storm_gets_sys_temp_and_a_real_login_succeeds(tmp_path: Path) -> None:
    """Thirty concurrent wrong-password logins from one address: a couple
    are checked, the rest fail at once with sys-temp; the legitimate
    client from another address logs in meanwhile."""
    users = tmp_path / "users"
    users.write_text(f"{USER}:write:{hash_password(PASSWORD, n=1024)}\n")

    async def body(node: InProcess) -> None:
        port = node.listener(
            "s", authenticatePeer=True, saslMechanisms="PLAIN", usersFile=str(users)
        )
        attack = [login(port, "127.0.0.2", "wrong") for _ in range(30)]
        outcomes = await asyncio.gather(*attack, login(port, "127.0.0.1", PASSWORD))
        assert outcomes[-1] == "ok"
        wrong = outcomes[:-1]
        assert set(wrong) <= {"auth", "sys-temp"}, wrong
        assert wrong.count("auth") <= auth_gate.MAX_PENDING_PER_SOURCE
        # the address backs off now: even one attempt is refused at once
        assert await login(port, "127.0.0.2", PASSWORD) == "sys-temp"
        stats = node.adaptor.limits.sasl
        assert stats["ok"] == 1 and stats["auth"] == wrong.count("auth")
        assert stats["saturated"] + stats["throttled"] == 31 - wrong.count("auth")

    run(body)


def test_full_queue_of_failing_sources_makes_room_for_a_known_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attackers cannot fill the queue against a legitimate client: a full
    queue drops its worst-ranked check (answered sys-temp) for a better one."""
    monkeypatch.setattr(auth_gate, "MAX_PENDING", 3)
    monkeypatch.setattr(auth_gate, "BACKOFF_BASE_S", 0.0)

    async def body(gate: AuthGate, checks: Blocking, stats: LimitStats) -> None:
        done: list[AuthResult] = []
        gate.submit("10.1.1.1:1", checks.check("known", True), done.append)  # logs in once
        checks.release["known"].set()
        await settle(lambda: len(done) == 1)
        for i in range(3):
            gate.submit(f"10.9.0.{i}:1", checks.check(f"first{i}", False), done.append)
            checks.release[f"first{i}"].set()
            await settle(lambda i=i: len(done) == 2 + i)
        # three failing sources fill the queue (one runs, two wait)
        for i in range(3):
            gate.submit(f"10.9.0.{i}:2", checks.check(f"bad{i}", False), done.append)
        await settle(lambda: "bad0" in checks.ran)
        again = gate.submit("10.1.1.1:2", checks.check("known2", True), done.append)
        assert not isinstance(again, str)
        await settle(lambda: "known2" in checks.ran)
        displaced = [r for r in done[4:] if r.temporary]
        assert len(displaced) == 1 and "took its place" in displaced[0].reason
        assert "bad2" not in checks.ran  # the latest of the worst rank went
        for event in checks.release.values():
            event.set()
        await settle(lambda: sum(r.ok for r in done) == 2)

    gate_run(body)


def test_failing_sources_wait_for_other_checks_and_their_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth_gate, "BACKOFF_BASE_S", 0.0)
    monkeypatch.setattr(auth_gate, "SUSPECT_CHECKS_PER_S", 1.0)

    async def body(gate: AuthGate, checks: Blocking, stats: LimitStats) -> None:
        done: list[AuthResult] = []
        for i in range(2):
            gate.submit(f"10.9.0.{i}:1", checks.check(f"first{i}", False), done.append)
            checks.release[f"first{i}"].set()
        await settle(lambda: len(done) == 2)
        gate.submit("10.1.1.1:1", checks.check("legit", True), done.append)
        gate.submit("10.9.0.0:2", checks.check("bad0", False), done.append)
        gate.submit("10.9.0.1:2", checks.check("bad1", False), done.append)
        await settle(lambda: "legit" in checks.ran)
        await asyncio.sleep(0.1)
        assert "bad0" not in checks.ran  # a free thread, but a check of another class runs
        checks.release["legit"].set()
        await settle(lambda: "bad0" in checks.ran)
        checks.release["bad0"].set()
        started = time.monotonic()
        await settle(lambda: "bad1" in checks.ran)
        assert time.monotonic() - started > 0.5  # one token a second (about)
        checks.release["bad1"].set()
        await settle(lambda: len(done) == 5)

    gate_run(body)
