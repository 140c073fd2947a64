"""skiffd: the router daemon.

One uvloop event loop runs the control plane: configuration, the entity
registry, adaptors, and the engine's events. The engine's C workers do all
socket I/O. Signals: SIGTERM/SIGINT drain and exit 0, SIGHUP reloads the
configuration file (all or nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import uvloop

from router import schema
from router.config import DEFAULT_CONFIG, ConfigError, ConfigFile, load_config, parse_config_text
from router.configs import ListenerConfig, RouterConfig, TcpConnectorConfig, TcpListenerConfig
from router.engine import EngineError
from router.log import configure_log, get_logger, start_background_writer
from router.node import Node, check_cpus, router_config
from router.registry import Registry, RegistryError
from router.version import skiff_version

_log = get_logger("ROUTER")

DEFAULT_CONFIG_NAME = "<built-in default configuration>"
DEFAULT_CONTROL_SLICE_US = 100  # with direct reads the one wait left (docs/benchmarks.md)


def read_config(path: str | None) -> ConfigFile:
    if path is None:
        return parse_config_text(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME)
    return load_config(path)


class Daemon:
    """skiffd around one Node: start-up, signals, reload and drain."""

    def __init__(
        self,
        config: ConfigFile,
        path: str | None,
        log_level: str | None = None,
        control_slice_us: int = 0,
    ) -> None:
        self.config = config
        self.log_level = log_level
        self.path = path
        self.node = Node(router_config(config), control_slice_us=control_slice_us)
        self._stop = asyncio.Event()
        self._reloading = False

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        node = self.node
        node.start(loop)
        for warning in self.config.warnings:
            _log.warning(str(warning))
        try:
            node.apply(self.config.entities)
        except RegistryError as e:
            _log.error(f"cannot start: {e}")
            print(f"skiffd: cannot start: {e}", file=sys.stderr)
            node.stop()
            return 1
        self._apply_log_level()
        self._warn_unimplemented()
        await node.settle()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        self._banner()
        await self._stop.wait()
        await self._drain()
        return 0

    def _apply_log_level(self) -> None:
        # the command line wins over the file's DEFAULT log entity
        if self.log_level:
            configure_log("DEFAULT", f"{self.log_level}+")

    def _warn_unimplemented(self) -> None:
        for entity in self.node.registry.entities():
            if not entity.spec.implemented:
                _log.warning(
                    f"{entity.type} '{entity.name}' is accepted but not served yet by this "
                    "version of Skiff"
                )

    def _banner(self) -> None:
        node = self.node
        router = node.registry.router
        rc = router.config_as(RouterConfig) if router else node.router
        workers = f"{node.engine.workers} worker threads"
        if node.router.worker_cpus:
            workers += f" on CPUs {node.router.worker_cpus}"
        if node.router.worker_nice is not None:
            workers += f" at nice {node.router.worker_nice}"
        if node.router.control_cpus:
            workers += f", control loop on CPUs {node.router.control_cpus}"
        lines = [
            f"skiffd {skiff_version()}: router '{rc.id or 'skiff'}' ({rc.mode}), "
            f"{workers}, configuration {self.path or DEFAULT_CONFIG_NAME}",
        ]
        listeners = node.registry.entities("tcpListener")
        for entity in listeners:
            lc = entity.config_as(TcpListenerConfig)
            port = node.tcp.listener_port(entity.name)
            where = (
                f"listening on port {port}" if port else "down (no tcpConnector for its address)"
            )
            lines.append(
                f"  tcpListener '{entity.name}' ({lc.host or '*'}:{lc.port} -> address "
                f"'{lc.address}'): {where}"
            )
        for entity in node.registry.entities("tcpConnector"):
            cc = entity.config_as(TcpConnectorConfig)
            lines.append(
                f"  tcpConnector '{entity.name}' -> {cc.host}:{cc.port} (address '{cc.address}')"
            )
        if not listeners:
            lines += [
                "No service is configured yet. To relay one, write a file such as",
                "",
                "    tcpListener {",
                "        host: 127.0.0.1",
                "        port: 9000",
                "        address: web",
                "    }",
                "    tcpConnector {",
                "        host: 127.0.0.1",
                "        port: 8080",
                "        address: web",
                "    }",
                "",
                "check it with `skiffd --check -c FILE` and run `skiffd -c FILE`.",
            ]
        lines += self._management_banner()
        lines.append("Stop with Ctrl-C (SIGTERM drains open connections); SIGHUP reloads the file.")
        print("\n".join(lines), flush=True)

    def _management_banner(self) -> list[str]:
        """Where management and metrics listen, and how to add a service."""
        lines: list[str] = []
        amqp_url: str | None = None
        for entity in self.node.registry.entities("listener"):
            lc = entity.config_as(ListenerConfig)
            port, error = self.node.listeners.bound(entity.name)
            host = lc.host
            shown = host or "*"
            if lc.http:
                if port is None:
                    lines.append(f"  metrics listener '{entity.name}': DOWN ({error})")
                    continue
                scheme = "https" if lc.ssl_profile else "http"
                base = f"{scheme}://{host or '127.0.0.1'}:{port}"
                lines.append(
                    f"  metrics listener '{entity.name}': {base}/metrics, {base}/healthz, "
                    f"{base}/readyz"
                )
                continue
            if port is None:
                lines.append(
                    f"  AMQP management listener '{entity.name}' ({shown}): DOWN ({error})"
                )
                continue
            access = lc.anonymous_writes_policy()
            tls = lc.ssl_profile
            if tls:
                access += ", TLS " + ("required" if lc.require_ssl else "optional")
            lines.append(
                f"  AMQP management listener '{entity.name}' on {shown}:{port} "
                f"($management; {access})"
            )
            if amqp_url is None and not tls:  # the examples below use plain AMQP
                amqp_url = f"{host or '127.0.0.1'}:{port}"
        if amqp_url is not None:
            bus = "" if amqp_url == "127.0.0.1:5672" else f" -b {amqp_url}"
            lines += [
                "Add a service at run time with skiff-manage, for example:",
                f"    skiff-manage{bus} create --type tcpConnector --name web-c "
                "host=127.0.0.1 port=8080 address=web",
                f"    skiff-manage{bus} create --type tcpListener --name web "
                "host=127.0.0.1 port=9000 address=web",
                f"    skiff-manage{bus} query --type tcpListener",
                f"    skiff-stat{bus} -g",
            ]
        return lines

    async def reload(self) -> None:
        """Re-reads the file and applies the difference, or keeps everything."""
        if self.path is None:
            _log.info("SIGHUP: running on the built-in configuration; nothing to reload")
            return
        if self._reloading:
            return
        self._reloading = True
        try:
            loop = asyncio.get_running_loop()
            try:
                config = await loop.run_in_executor(None, load_config, self.path)
            except ConfigError as e:
                _log.error(f"SIGHUP: configuration rejected, the running one stays: {e}")
                return
            except OSError as e:
                _log.error(f"SIGHUP: cannot read {self.path}, the running one stays: {e}")
                return
            for warning in config.warnings:
                _log.warning(str(warning))
            try:
                result = self.node.apply(config.entities)
            except RegistryError as e:
                _log.error(f"SIGHUP: configuration rejected, the running one stays: {e}")
                return
            self._apply_log_level()
            await self.node.settle()
            self.config = config
            _log.info(
                f"SIGHUP: configuration reloaded: {len(result.added)} added, "
                f"{len(result.removed)} removed, {len(result.changed)} changed"
            )
        finally:
            self._reloading = False

    async def _drain(self) -> None:
        self.node.close()  # stop accepting
        grace = self.node.router.drain_grace_seconds
        _log.info(f"stopping: draining open connections for up to {grace:g} s")
        left = await self.node.drain(grace)
        if left:
            _log.info(f"stopping: closing {left} connections still open")
        self.node.stop()
        _log.info("stopped")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="skiffd",
        description="Skiff router daemon: relays TCP services (tcpListener -> tcpConnector).",
    )
    p.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="configuration file (skrouterd.conf "
        "syntax, or JSON when the name ends in .json); default: built-in",
    )
    p.add_argument(
        "--log-level",
        choices=sorted(schema.LOG_LEVELS),
        help="minimum level logged by every module (overrides the file's DEFAULT log)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration and exit 0 (valid) or 1 (invalid)",
    )
    p.add_argument(
        "--control-slice-us",
        type=int,
        default=DEFAULT_CONTROL_SLICE_US,
        metavar="US",
        help="the control loop thread's time slice in microseconds (Linux 6.12+ EEVDF: "
        "a shorter slice lets it preempt busy workers sooner when management input "
        f"arrives, with no more CPU); 0: the kernel's default; default "
        f"{DEFAULT_CONTROL_SLICE_US}",
    )
    p.add_argument("--version", action="version", version=f"skiffd {skiff_version()}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = read_config(args.config)
    except ConfigError as e:
        print(f"skiffd: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"skiffd: cannot read configuration {args.config}: {e.strerror}", file=sys.stderr)
        return 1
    if args.check:
        for warning in config.warnings:
            print(f"skiffd: warning: {warning}", file=sys.stderr)
        try:
            # what the file leads to as a whole: port owners, values that
            # need the other entities (nothing is started)
            Registry().apply_file(config.entities)
            rc = router_config(config)
            check_cpus("workerCpus", rc.worker_cpu_list)
            check_cpus("controlCpus", rc.control_cpu_list)
        except (RegistryError, EngineError) as e:
            print(f"skiffd: {e}", file=sys.stderr)
            return 1
        name = args.config or DEFAULT_CONFIG_NAME
        print(f"skiffd: {name}: configuration is valid ({len(config.entities)} entities)")
        return 0
    # the control loop must not wait for stderr or a log file
    start_background_writer()
    if args.log_level:
        configure_log("DEFAULT", f"{args.log_level}+")
    try:
        path = str(Path(args.config).resolve()) if args.config else None
        daemon = Daemon(config, path, args.log_level, args.control_slice_us)
    except EngineError as e:
        print(f"skiffd: {e}", file=sys.stderr)
        return 1
    return uvloop.run(daemon.run())


if __name__ == "__main__":
    sys.exit(main())
