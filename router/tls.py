"""TLS material manager: sslProfile entities -> published, versioned configs.

Loading (read, hash, parse, verify, build SSL_CTX) is one native call made
on a loader pool thread with the GIL released; the control loop only
schedules loads and publishes their results. A profile's files are read as a
consistent set and only a set whose key matches its certificate is published;
otherwise the last good version stays and ``lastError`` says why. Publishing
swaps one config holding both server and client contexts, so every listener
and connector of the profile moves to the new material together. Connections
keep the version they started with.

Reloads are triggered by inotify on the files' directories (debounced), by a
periodic content-hash check, and by management or configuration updates of
the profile (raising ``ordinal`` forces one even when the files are the same).

The CA bundle (``caCertFile``) is loaded on its own: a first parse of a
bundle of thousands of CAs takes a second or more, and new certificate and
key material must not wait for it. A profile has two lanes, each with at
most one load running and one queued (a newer trigger supersedes the queued
one): the trust-store lane parses the bundle into a store (the engine keeps
every certificate it parsed while a store uses it, keyed by its content
hash, so a rewrite parses only the certificates it changed; the same bytes
are not parsed at all), the material lane reads the certificate and key and
builds the config with the last good store without reading the bundle.
When a new store is ready the material lane runs again and publishes it with
the current certificate and key. Until a profile's first store is loaded its
material lane waits (a config never goes out without the trust it names).
A trigger while a bundle load runs raises that load's ``TlsNewer``: the load
re-reads the file before its next certificate and, when the bytes changed,
goes on with the newest ones (what it parsed stays cached), so an older
bundle never delays a newer one; stores are published in the order their
loads started, so an older bundle is never published after a newer one.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from OpenSSL import crypto

from router.configs import SslProfileConfig
from router.engine import (
    Engine,
    TlsConfig,
    TlsLoadResult,
    TlsMaterial,
    TlsNewer,
    TlsStore,
    TlsStoreResult,
    tls_load,
    tls_load_store,
)
from router.log import get_logger
from router.registry import Entity, Registry
from router.watch import DirectoryWatcher, InotifyUnavailable

_log = get_logger("TLS")

FILE_ATTRIBUTES = ("certFile", "privateKeyFile", "caCertFile")


class PasswordError(ValueError):
    """The password attribute names a source that cannot be read."""


def resolve_password(spec: str | None) -> str | None:
    """The Skupper router's password forms: ``env:VAR``, ``file:PATH``,
    ``pass:TEXT`` / ``literal:TEXT``, or the text itself. Blocking (file:):
    called on the loader pool."""
    if spec is None or spec == "":
        return None
    if spec.startswith("env:"):
        var = spec[4:].strip()
        value = os.environ.get(var)
        if value is None:
            raise PasswordError(f"password: environment variable {var} is not set")
        return value
    if spec.startswith("file:"):
        path = spec[5:].strip()
        try:
            return Path(path).read_text().rstrip("\r\n")
        except OSError as e:
            raise PasswordError(f"password: cannot read {path}: {e.strerror}") from e
    for prefix in ("pass:", "literal:"):
        if spec.startswith(prefix):
            return spec[len(prefix) :]
    return spec


@dataclass
class _Display:
    subject: str | None
    not_after: str | None


def _display(der: bytes) -> _Display:
    """Certificate details for status (pyOpenSSL parses; never decides publication)."""
    if not der:
        return _Display(None, None)
    cert = crypto.load_certificate(crypto.FILETYPE_ASN1, der).to_cryptography()
    return _Display(cert.subject.rfc4514_string(), cert.not_valid_after_utc.isoformat())


@dataclass
class _LoadOutcome:
    result: TlsLoadResult | None
    display: _Display
    watch_dirs: set[str]
    error: str | None = None


@dataclass
class _StoreOutcome:
    result: TlsStoreResult | None
    watch_dirs: set[str]
    seconds: float
    error: str | None = None


@dataclass
class ProfileState:
    entity: Entity
    slot: int
    current: TlsConfig | None = None
    version: int = 0
    fingerprint: str | None = None
    cert_subject: str | None = None
    cert_not_after: str | None = None
    not_after_unix: int = 0
    expired: bool = False
    loaded_at: str | None = None
    last_error: str | None = None
    warnings: str = ""
    reloads: int = 0
    reload_failures: int = 0
    dates_refused: int = 0
    loading: bool = False
    dirty: bool = False
    force: bool = False
    published_ordinal: int = 0
    watch_dirs: set[str] = field(default_factory=set)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    check_handle: asyncio.TimerHandle | None = None
    last_change: float = 0.0
    # the trust-store lane: the last good store of caCertFile, its load state
    store: TlsStore | None = None
    store_fingerprint: str | None = None
    ca_in_force: str | None = None  # the bundle fingerprint of the published config
    ca_loading: bool = False
    ca_dirty: bool = False
    ca_error: str | None = None
    ca_loads: int = 0
    ca_newer: TlsNewer | None = None  # raised by a trigger while a bundle load runs
    ca_restarts: int = 0  # bundle loads that went on with newer bytes
    ca_parsed: int = 0  # certificates the last bundle load parsed (not cached)

    @property
    def busy(self) -> bool:
        return self.loading or self.dirty or self.ca_loading or self.ca_dirty


Listener = Callable[[str], None]


class TlsManager:
    """Registry observer of sslProfile; owns the loader pool and the watcher."""

    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        loop: asyncio.AbstractEventLoop,
        loader_threads: int = 2,
    ) -> None:
        self._engine = engine
        self._loop = loop
        self._pool = ThreadPoolExecutor(
            max_workers=loader_threads,
            thread_name_prefix="tls-load",
        )
        # CA bundle parses (seconds each) have threads of their own, so they
        # never take the threads certificate and key loads run on
        self._ca_pool = ThreadPoolExecutor(
            max_workers=max(1, loader_threads - 1),
            thread_name_prefix="tls-load-ca",
        )
        self._profiles: dict[str, ProfileState] = {}
        self._published: list[Listener] = []
        try:
            self._watcher: DirectoryWatcher | None = DirectoryWatcher(loop, self._dir_changed)
        except InotifyUnavailable as e:
            _log.warning(f"inotify unavailable ({e}); relying on the periodic check only")
            self._watcher = None
        self._closed = False
        registry.subscribe("sslProfile", self)

    # ------------------------------------------------------------ queries

    def on_published(self, callback: Listener) -> None:
        """callback(profile name) after each publication (adaptors open
        listeners that waited for a first config)."""
        self._published.append(callback)

    def slot(self, name: str) -> int | None:
        st = self._profiles.get(name)
        return st.slot if st else None

    def ready(self, name: str) -> bool:
        st = self._profiles.get(name)
        return bool(st and st.version > 0)

    def error(self, name: str) -> str | None:
        st = self._profiles.get(name)
        return (st.last_error or st.ca_error) if st else None

    def wait_reason(self, name: str) -> str | None:
        """Why a listener on this profile must stay down (its profile has
        never published a configuration), or None once it has."""
        if self.ready(name):
            return None
        error = self.error(name)
        return f"sslProfile '{name}' has not loaded" + (f": {error}" if error else " yet")

    def profiles(self) -> Mapping[str, ProfileState]:
        return self._profiles

    async def settle(self, name: str | None = None) -> None:
        """Waits until no load is running or queued (for one profile or all)."""
        names = [name] if name else list(self._profiles)
        for n in names:
            st = self._profiles.get(n)
            while st is not None and st.busy:
                fut: asyncio.Future[None] = self._loop.create_future()
                st.waiters.append(fut)
                await fut

    # ------------------------------------------------------------ observer

    def on_create(self, entity: Entity) -> None:
        self._check(entity)
        st = ProfileState(entity, self._engine.tls_slot())
        self._profiles[entity.name] = st
        self.reload(entity.name, force=True)
        self._arm_check(st)

    def on_update(self, old: Entity, new: Entity) -> None:
        self._check(new)
        st = self._profiles[old.name]
        st.entity = new
        oldest = new.config_as(SslProfileConfig).oldest_valid_ordinal
        if oldest > old.config_as(SslProfileConfig).oldest_valid_ordinal:
            self._engine.tls_close_older(st.slot, oldest)
            _log.info(f"sslProfile '{new.name}': closing connections older than ordinal {oldest}")
        self._arm_check(st)
        self.reload(new.name, force=True)

    def on_delete(self, entity: Entity) -> None:
        st = self._profiles.pop(entity.name, None)
        if st is None:
            return
        if st.check_handle:
            st.check_handle.cancel()
        self._set_watches(st, set())
        if not st.loading and st.current is not None:
            # a running load reads `current` (trust-store reuse): _loaded frees it then
            st.current.free()
            st.current = None
        # the slot keeps its last config for connections that pinned it; slots
        # are not reused (a profile name gets a new one if created again)

    def status(self, entity: Entity) -> Mapping[str, object]:
        st = self._profiles.get(entity.name)
        if st is None:
            return {}
        return {
            "version": st.version,
            "fingerprint": st.fingerprint,
            "certSubject": st.cert_subject,
            "certNotAfter": st.cert_not_after,
            "loadedAt": st.loaded_at,
            "lastError": st.last_error or st.ca_error,
            "reloads": st.reloads,
            "reloadFailures": st.reload_failures,
            "datesRefused": st.dates_refused,
            # not (yet) sslProfile attributes of the schema: the registry
            # drops them from reads; TlsManager.status() callers see them
            "caFingerprint": st.ca_in_force,
            "caLoading": st.ca_loading or st.ca_dirty,
        }

    @staticmethod
    def _check(entity: Entity) -> None:
        cfg = entity.config_as(SslProfileConfig)
        if cfg.ordinal < cfg.oldest_valid_ordinal:
            raise ValueError(
                f"sslProfile '{entity.name}': ordinal ({cfg.ordinal}) must be >= "
                f"oldestValidOrdinal ({cfg.oldest_valid_ordinal})"
            )
        if bool(cfg.cert_file) != bool(cfg.private_key_file):
            raise ValueError(
                f"sslProfile '{entity.name}': certFile and privateKeyFile must be given together"
            )

    # ------------------------------------------------------------ loading

    def reload(self, name: str, force: bool = False) -> None:
        """Schedules a load of each lane; a load already running in a lane is
        followed by one more (never two at once per lane of a profile)."""
        st = self._profiles.get(name)
        if st is None or self._closed:
            return
        if st.entity.config_as(SslProfileConfig).ca_cert_file:
            self._reload_store(name, st)
        else:
            st.store, st.store_fingerprint, st.ca_error = None, None, None
        self._reload_material(name, st, force)

    def _reload_material(self, name: str, st: ProfileState, force: bool) -> None:
        if st.loading:
            st.dirty = True
            st.force = st.force or force
            return
        cfg = st.entity.config_as(SslProfileConfig)
        if cfg.ordinal != st.published_ordinal:
            force = True
        store = st.store if cfg.ca_cert_file else None
        if cfg.ca_cert_file and store is None:
            return  # the first store is loading (or failed): its lane starts this
        st.loading = True
        material = _material(cfg)
        unchanged_if = None if force else st.fingerprint
        previous = st.current if store is None else None
        fut = self._loop.run_in_executor(
            self._pool,
            _load_blocking,
            material,
            cfg.password,
            previous,
            unchanged_if,
            store,
        )
        fut.add_done_callback(lambda f: self._loaded(name, st, f))

    def _loaded(self, name: str, st: ProfileState, fut: asyncio.Future[_LoadOutcome]) -> None:
        st.loading = False
        try:
            outcome = fut.result()
        except Exception as e:  # noqa: BLE001 - a loader bug must not kill the profile
            outcome = _LoadOutcome(None, _Display(None, None), set(), f"loader failed: {e!r}")
        if self._profiles.get(name) is st and not self._closed:
            self._apply(st, outcome)
        elif st.current is not None:  # deleted while loading
            st.current.free()
            st.current = None
        if st.dirty and not self._closed:
            st.dirty = False
            force, st.force = st.force, False
            self._reload_material(name, st, force)
        self._wake(st)

    def _reload_store(self, name: str, st: ProfileState) -> None:
        if st.ca_loading:
            # the running load re-reads the file and goes on with newer bytes;
            # one more load after it catches a write it can no longer see
            if st.ca_newer is not None:
                st.ca_newer.raise_()
            st.ca_dirty = True
            return
        cfg = st.entity.config_as(SslProfileConfig)
        st.ca_loading = True
        st.ca_newer = TlsNewer()
        fut = self._loop.run_in_executor(
            self._ca_pool,
            _load_store_blocking,
            _material(cfg),
            st.store_fingerprint,
            st.ca_newer,
            st.store,
        )
        fut.add_done_callback(lambda f: self._store_loaded(name, st, cfg.ca_cert_file, f))

    def _store_loaded(
        self, name: str, st: ProfileState, path: str | None, fut: asyncio.Future[_StoreOutcome]
    ) -> None:
        st.ca_loading = False
        st.ca_newer = None  # the load is over (the executor call held its own reference)
        st.ca_loads += 1
        try:
            outcome = fut.result()
        except Exception as e:  # noqa: BLE001 - a loader bug must not kill the profile
            outcome = _StoreOutcome(None, set(), 0.0, f"loader failed: {e!r}")
        live = self._profiles.get(name) is st and not self._closed
        if live and path == st.entity.config_as(SslProfileConfig).ca_cert_file:
            self._apply_store(name, st, outcome)
        if st.ca_dirty and not self._closed:
            st.ca_dirty = False
            self._reload_store(name, st)
        self._wake(st)

    def _apply_store(self, name: str, st: ProfileState, outcome: _StoreOutcome) -> None:
        if outcome.watch_dirs:
            self._set_watches(st, outcome.watch_dirs)
        result = outcome.result
        if result is None or not (result.ok or result.unchanged):
            st.reload_failures += 1
            st.ca_error = outcome.error or (result.error if result else "unknown error")
            kept = (
                f"trust store {st.store_fingerprint[:16]}… stays"
                if st.store_fingerprint
                else "nothing is published yet"
            )
            _log.error(f"sslProfile '{name}': CA bundle load failed, {kept}: {st.ca_error}")
            return
        st.ca_error = None
        st.ca_restarts += 1 if result.restarts else 0
        if result.unchanged:
            return
        assert result.store is not None
        st.store, st.store_fingerprint = result.store, result.fingerprint
        st.ca_parsed = result.parsed
        newer = f", went on with newer bytes ({result.restarts})" if result.restarts else ""
        _log.info(
            f"sslProfile '{name}': trust store {result.fingerprint[:16]}… loaded "
            f"({result.certs} CAs, {result.parsed} parsed, the rest cached{newer}; "
            f"{outcome.seconds:.2f} s); publishing it with the current certificate and key"
        )
        self._reload_material(name, st, False)  # a new store: a new fingerprint

    def _wake(self, st: ProfileState) -> None:
        if st.busy and not self._closed:
            return
        for w in st.waiters:
            if not w.done():
                w.set_result(None)
        st.waiters.clear()

    def _apply(self, st: ProfileState, outcome: _LoadOutcome) -> None:
        name = st.entity.name
        if outcome.watch_dirs:
            self._set_watches(st, outcome.watch_dirs)
        result = outcome.result
        if result is None or not (result.ok or result.unchanged):
            st.reload_failures += 1
            reason = outcome.error or (result.error if result else "unknown error")
            st.last_error = reason
            kept = f"version {st.version} stays" if st.version else "nothing is published yet"
            _log.error(f"sslProfile '{name}': reload failed, {kept}: {reason}")
            return
        if result.unchanged:
            st.last_error = None
            return
        assert result.config is not None
        dates = _date_problem(result)
        if dates and not st.entity.config_as(SslProfileConfig).allow_invalid_certificate_dates:
            result.config.free()
            st.reload_failures += 1
            st.dates_refused += 1
            st.last_error = f"certificate {dates}; refused (allowInvalidCertificateDates is false)"
            kept = f"version {st.version} stays" if st.version else "nothing is published yet"
            _log.error(f"sslProfile '{name}': reload refused, {kept}: {st.last_error}")
            return
        version = self._engine.tls_publish(st.slot, result.config)
        if st.current is not None:
            st.current.free()
        st.current = result.config
        st.version = version
        st.fingerprint = result.fingerprint
        st.cert_subject = outcome.display.subject
        st.cert_not_after = outcome.display.not_after
        st.not_after_unix = result.not_after
        st.expired = result.expired
        st.loaded_at = datetime.now(UTC).isoformat()
        st.last_error = None
        st.warnings = result.warnings
        st.published_ordinal = st.entity.config_as(SslProfileConfig).ordinal
        st.ca_in_force = result.ca_fingerprint or None
        st.reloads += 1
        extra = f" ({result.reads} reads)"
        if result.ca_fingerprint:
            extra += f", CA bundle {result.ca_fingerprint[:16]}…"
            if st.ca_loading:
                extra += " (a bundle load is running)"
        _log.info(
            f"sslProfile '{name}': published version {version}, fingerprint "
            f"{result.fingerprint[:16]}…{extra}"
        )
        if result.warnings:
            _log.warning(f"sslProfile '{name}': {result.warnings}")
        for callback in self._published:
            callback(name)

    # ------------------------------------------------------------ triggers

    def _set_watches(self, st: ProfileState, dirs: set[str]) -> None:
        if self._watcher is None:
            return
        for d in st.watch_dirs - dirs:
            if not any(d in o.watch_dirs for o in self._profiles.values() if o is not st):
                self._watcher.unwatch(d)
        for d in dirs - st.watch_dirs:
            try:
                self._watcher.watch(d)
            except OSError as e:
                _log.warning(f"sslProfile '{st.entity.name}': {e}")
        st.watch_dirs = set(dirs)

    def _dir_changed(self, directory: str) -> None:
        for name, st in list(self._profiles.items()):
            if directory in st.watch_dirs:
                self.reload(name)

    def _arm_check(self, st: ProfileState) -> None:
        if st.check_handle:
            st.check_handle.cancel()
            st.check_handle = None
        interval = st.entity.config_as(SslProfileConfig).check_interval_seconds
        if interval > 0 and not self._closed:
            st.check_handle = self._loop.call_later(interval, self._periodic, st.entity.name)

    def _periodic(self, name: str) -> None:
        st = self._profiles.get(name)
        if st is None:
            return
        if self._watcher is not None:
            self._watcher.rearm()
        self.reload(name)  # content hash: publishes only when the bytes changed
        self._arm_check(st)

    def close(self) -> None:
        self._closed = True
        for st in self._profiles.values():
            if st.check_handle:
                st.check_handle.cancel()
            for w in st.waiters:
                if not w.done():
                    w.set_result(None)
        if self._watcher is not None:
            self._watcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._ca_pool.shutdown(wait=False, cancel_futures=True)


def _material(cfg: SslProfileConfig) -> TlsMaterial:
    return TlsMaterial(
        cert_file=cfg.cert_file or None,
        key_file=cfg.private_key_file or None,
        ca_file=cfg.ca_cert_file or None,
        ciphers=cfg.ciphers or None,
        protocols=cfg.protocols or None,
        ordinal=cfg.ordinal,
    )


def _watch_dirs(material: TlsMaterial) -> set[str]:
    """Directories of the files as named and as resolved (symlinks elsewhere)."""
    dirs: set[str] = set()
    for path in (material.cert_file, material.key_file, material.ca_file):
        if not path:
            continue
        dirs.add(os.path.dirname(os.path.abspath(path)))
        real = os.path.realpath(path)
        if os.path.exists(real):
            dirs.add(os.path.dirname(real))
    return dirs


def _date_problem(result: TlsLoadResult) -> str | None:
    if result.expired:
        return "has expired"
    if result.not_yet_valid:
        return "is not yet valid"
    return None


def _load_store_blocking(
    material: TlsMaterial,
    unchanged_if: str | None,
    newer: TlsNewer | None = None,
    in_force: TlsStore | None = None,
) -> _StoreOutcome:
    """Runs on a CA loader thread: reads and parses the bundle (a second or
    more for thousands of new CAs, milliseconds when they are cached, nothing
    when stat shows the file the store in force was read from; a FIFO blocks
    until written)."""
    started = time.monotonic()
    dirs = _watch_dirs(material)
    assert material.ca_file
    result = tls_load_store(
        material.ca_file, unchanged_if=unchanged_if, newer=newer, in_force=in_force
    )
    elapsed = time.monotonic() - started
    if elapsed > 0.5:
        _log.info(f"loading {material.ca_file} took {elapsed:.2f} s")
    return _StoreOutcome(result, dirs, elapsed)


def _load_blocking(
    material: TlsMaterial,
    password_spec: str | None,
    previous: TlsConfig | None,
    unchanged_if: str | None,
    store: TlsStore | None = None,
) -> _LoadOutcome:
    """Runs on a loader thread: may block on files (that is its job)."""
    started = time.monotonic()
    dirs = _watch_dirs(material)
    try:
        password = resolve_password(password_spec)
    except PasswordError as e:
        return _LoadOutcome(None, _Display(None, None), dirs, str(e))
    full = TlsMaterial(
        material.cert_file,
        material.key_file,
        material.ca_file,
        password,
        material.ciphers,
        material.protocols,
        material.ordinal,
    )
    result = tls_load(full, previous=previous, unchanged_if=unchanged_if, store=store)
    display = _Display(None, None)
    if result.ok and result.leaf_der:
        try:
            display = _display(result.leaf_der)
        except (crypto.Error, ValueError) as e:
            _log.warning(f"cannot display certificate details: {e}")
    elapsed = time.monotonic() - started
    if elapsed > 0.5:
        _log.info(f"loading {material.cert_file or material.ca_file} took {elapsed:.2f} s")
    return _LoadOutcome(result, display, dirs)
