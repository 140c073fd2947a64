"""Load time of a 4,000-CA bundle into a trust store (``tls_load_store``).

Why: a CA bundle rewritten every second must be in force within one parse
time of its write, and that parse must not cost all 4,000 certificates each
time. Three cases: cold (no store holds any of the certificates: every one
is parsed), a rewrite with one changed CA while the previous store is alive
(that one is parsed, the others come from the engine's certificate cache),
and the same bytes again (the content hash says unchanged: nothing parsed).
Each load reads the file twice (until two reads agree), as the router does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.micro.conftest import Benchmark
from bench.pki import ca_bundle
from router.engine import TlsStore, TlsStoreResult, tls_load_store

BUNDLE_CAS = 4000
ROUNDS = 5


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two bundles of BUNDLE_CAS distinct CAs that differ in the last one."""
    cas = ca_bundle(BUNDLE_CAS + 1, tag="micro")
    d = tmp_path_factory.mktemp("castore")
    a, b = d / "a.pem", d / "b.pem"
    a.write_bytes(b"".join(cas[:BUNDLE_CAS]))
    b.write_bytes(b"".join(cas[: BUNDLE_CAS - 1]) + cas[BUNDLE_CAS])
    return a, b


class _Kept:
    """The store the last round made, freed before the next round starts."""

    def __init__(self) -> None:
        self.store: TlsStore | None = None

    def keep(self, r: TlsStoreResult) -> TlsStoreResult:
        assert r.ok, r.error
        self.drop()
        self.store = r.store
        return r

    def drop(self) -> None:
        if self.store is not None:
            self.store.free()
            self.store = None


def test_bundle_4000_cold(benchmark: Benchmark, bundles: tuple[Path, Path]) -> None:
    a, _ = bundles
    kept = _Kept()
    r = benchmark.pedantic(
        lambda: kept.keep(tls_load_store(str(a))), setup=kept.drop, rounds=ROUNDS
    )
    kept.drop()
    assert r.certs == BUNDLE_CAS and r.parsed == BUNDLE_CAS


def test_bundle_4000_one_changed(benchmark: Benchmark, bundles: tuple[Path, Path]) -> None:
    a, b = bundles
    in_force = tls_load_store(str(a))  # the store a rewrite replaces
    assert in_force.ok and in_force.store is not None
    kept = _Kept()
    r = benchmark.pedantic(
        lambda: kept.keep(tls_load_store(str(b))), setup=kept.drop, rounds=ROUNDS
    )
    kept.drop()
    in_force.store.free()
    assert r.certs == BUNDLE_CAS and r.parsed == 1


def test_bundle_4000_unchanged(benchmark: Benchmark, bundles: tuple[Path, Path]) -> None:
    a, _ = bundles
    in_force = tls_load_store(str(a))
    assert in_force.ok and in_force.store is not None
    r = benchmark(tls_load_store, str(a), unchanged_if=in_force.fingerprint)
    in_force.store.free()
    assert r.unchanged and r.parsed == 0
