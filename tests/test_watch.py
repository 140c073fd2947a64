"""router/watch.py: inotify on directories, debounced, following a path
through deletion and replacement (and the Kubernetes ..data swap).

Every wait is bounded by a deadline; no test asserts how long anything took.
Negative checks ("no report for A") are ordered behind a positive one (a
report for B, caused later) instead of behind a sleep.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop
from tlsharness import wait_until

from router.watch import DirectoryWatcher, InotifyUnavailable

LONG = 3600.0  # a debounce that never ends by itself within a test


def run(
    body: Callable[[DirectoryWatcher, list[str]], Awaitable[None]],
    quiet: float = 0.05,
    cap: float = 0.2,
) -> None:
    async def main() -> None:
        changes: list[str] = []
        try:
            w = DirectoryWatcher(asyncio.get_running_loop(), changes.append, quiet, cap)
        except InotifyUnavailable as e:
            pytest.skip(f"no inotify here: {e}")
        try:
            await body(w, changes)
        finally:
            w.close()

    uvloop.run(main())


def test_a_burst_of_writes_is_one_report(tmp_path: Path) -> None:
    d, other = tmp_path / "d", tmp_path / "other"
    d.mkdir()
    other.mkdir()

    async def body(w: DirectoryWatcher, changes: list[str]) -> None:
        w.watch(str(d))
        w.watch(str(d))  # twice is once
        w.watch(str(other))
        assert w.watched() == {str(d), str(other)}
        # written without yielding to the loop: the events are read together
        for i in range(20):
            (d / f"f{i}").write_bytes(b"x")
        (d / "f0").chmod(0o600)  # IN_ATTRIB
        (d / "f1").unlink()
        os.rename(d / "f2", d / "f3")
        await wait_until(lambda: changes == [str(d)], what="one report")
        (other / "x").write_bytes(b"x")  # a later change elsewhere, reported after…
        await wait_until(lambda: str(other) in changes, what="the other directory")
        assert changes == [str(d), str(other)]  # …and no second report for the burst

    run(body, quiet=0.5, cap=LONG)


def test_cap_reports_a_directory_that_is_never_quiet(tmp_path: Path) -> None:
    async def body(w: DirectoryWatcher, changes: list[str]) -> None:
        w.watch(str(tmp_path))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        writes = 0
        # a write every 10 ms never leaves the directory quiet for 1 s; only
        # the cap can report it while the writes go on
        while len(changes) < 2:
            assert loop.time() < deadline, "no report while the writes went on"
            (tmp_path / "cert.pem").write_bytes(b"%d" % writes)
            writes += 1
            await asyncio.sleep(0.01)
        assert set(changes) == {str(tmp_path)}

    run(body, quiet=1.0, cap=0.1)


def test_unwatched_directory_is_not_reported(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()

    async def body(w: DirectoryWatcher, changes: list[str]) -> None:
        w.watch(str(a))
        w.watch(str(b))
        w.unwatch(str(a))
        w.unwatch(str(tmp_path / "never-watched"))
        assert w.watched() == {str(b)}
        (a / "x").write_bytes(b"x")  # first, so it would be reported first
        (b / "x").write_bytes(b"x")
        await wait_until(lambda: bool(changes), what="a report")
        assert changes == [str(b)]

    run(body)


def test_missing_directory_is_watched_once_it_exists(tmp_path: Path) -> None:
    d = tmp_path / "later"

    async def body(w: DirectoryWatcher, changes: list[str]) -> None:
        w.watch(str(d))  # ENOENT: kept for rearm, not an error
        assert w.watched() == {str(d)}
        w.rearm()  # still absent: nothing happens
        d.mkdir()
        w.rearm()  # now present: watched, and reported as changed
        await wait_until(lambda: changes == [str(d)], what="the report of the new directory")
        (d / "cert.pem").write_bytes(b"x")
        await wait_until(lambda: changes == [str(d)] * 2, what="a write in it")

    run(body)


def test_replaced_directory_is_followed(tmp_path: Path) -> None:
    d = tmp_path / "tls"
    d.mkdir()
    (d / "cert.pem").write_bytes(b"old")

    async def body(w: DirectoryWatcher, changes: list[str]) -> None:
        w.watch(str(d))
        # build the new directory apart, then move it over the old one
        new = tmp_path / "tls.new"
        new.mkdir()
        (new / "cert.pem").write_bytes(b"new")
        os.rename(d, tmp_path / "tls.old")
        os.rename(new, d)
        await wait_until(lambda: len(changes) >= 1, what="the replacement")
        await wait_until(lambda: w.watched() == {str(d)}, what="the path watched again")
        seen = len(changes)
        (d / "key.pem").write_bytes(b"x")  # in the new directory
        await wait_until(lambda: len(changes) > seen, what="a write in the new directory")
        assert set(changes) == {str(d)}

    run(body)


def test_deleted_then_recreated_directory(tmp_path: Path) -> None:
    d = tmp_path / "tls"
    d.mkdir()

    async def body(w: DirectoryWatcher, changes: list[str]) -> None:
        w.watch(str(d))
        d.rmdir()
        await wait_until(lambda: changes == [str(d)], what="the deletion")
        assert w.watched() == {str(d)}  # still wanted
        d.mkdir()
        w.rearm()  # what the TLS manager's periodic check does
        await wait_until(lambda: changes == [str(d)] * 2, what="the new directory")
        (d / "cert.pem").write_bytes(b"x")
        await wait_until(lambda: changes == [str(d)] * 3, what="a write in it")

    run(body)


def test_kubernetes_data_symlink_swap(tmp_path: Path) -> None:
    """A secret volume: files are links through ..data, which is swapped
    atomically (rename of a new symlink over it) to a new timestamped dir."""
    (tmp_path / "..2026_01").mkdir()
    (tmp_path / "..2026_01" / "tls.crt").write_bytes(b"one")
    (tmp_path / "..data").symlink_to("..2026_01")
    (tmp_path / "tls.crt").symlink_to("..data/tls.crt")

    async def body(w: DirectoryWatcher, changes: list[str]) -> None:
        w.watch(str(tmp_path))
        (tmp_path / "..2026_02").mkdir()
        (tmp_path / "..2026_02" / "tls.crt").write_bytes(b"two")
        (tmp_path / "..data_tmp").symlink_to("..2026_02")
        os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
        await wait_until(lambda: changes == [str(tmp_path)], what="the swap")
        assert (tmp_path / "tls.crt").read_bytes() == b"two"

    run(body, quiet=0.2, cap=LONG)


def test_close_stops_reports(tmp_path: Path) -> None:
    async def body(w: DirectoryWatcher, changes: list[str]) -> None:
        w.watch(str(tmp_path))
        (tmp_path / "x").write_bytes(b"x")
        await asyncio.sleep(0)  # the event may be read and debounced…
        w.close()  # …but close cancels the pending report
        for _ in range(5):
            await asyncio.sleep(0.05)
        assert changes == []

    async def main() -> None:
        changes: list[str] = []
        try:
            w = DirectoryWatcher(asyncio.get_running_loop(), changes.append, 0.01, 0.02)
        except InotifyUnavailable as e:
            pytest.skip(f"no inotify here: {e}")
        await body(w, changes)

    uvloop.run(main())


def _kernel_watches(w: DirectoryWatcher) -> int:
    """Watches the kernel holds for the watcher's inotify fd."""
    info = Path(f"/proc/self/fdinfo/{w._fd}").read_text()
    return sum(1 for line in info.splitlines() if line.startswith("inotify wd:"))


def test_a_moved_away_directory_leaves_no_watch_behind(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()

    async def body(w: DirectoryWatcher, changes: list[str]) -> None:
        w.watch(str(d))
        assert _kernel_watches(w) == 1
        os.rename(d, tmp_path / "elsewhere")
        await wait_until(lambda: str(d) in changes, what="the move to be reported")
        assert _kernel_watches(w) == 0  # the moved directory is not watched any more
        d.mkdir()
        w.rearm()
        await wait_until(lambda: _kernel_watches(w) == 1, what="the new directory's watch")

    run(body)
