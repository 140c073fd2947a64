"""``python -m bench`` / ``skiff-bench``: the command line of the load benches.

Every workload's parser is here: each parses its options into that bench's
config object and leaves the work to the bench's module (rotate and the
plots, the slow imports, only when their command runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import compare
from bench import sasl as sasl_bench
from bench.compare import CompareConfig, format_compare, run_compare
from bench.mgmt import MgmtConfig, run_mgmt
from bench.network import TOPOLOGIES, NetworkBenchConfig
from bench.progress import Progress
from bench.report import format_table, write_json
from bench.results import compare_json, envelope, write_result
from bench.storm import SUBJECTS, StormConfig, run_storm
from bench.workloads import TargetConfig, format_target, run_target, target_json

MGMT_HELP = (
    "management QUERY round trips, idle and during a 500-client storm, with a "
    "2 s heartbeat connection held open"
)


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _cpu_list(text: str) -> tuple[int, ...]:
    from router.schema import parse_cpu_list

    try:
        return parse_cpu_list(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _nice(text: str) -> int:
    """A value the router's workerNice takes (the schema's bounds)."""
    from router import schema

    try:
        value = schema.convert(schema.entity_type("router"), "workerNice", text)
    except schema.InvalidValue as e:
        raise argparse.ArgumentTypeError(e.message) from None
    assert isinstance(value, int)
    return value


def _positive_float(text: str) -> float:
    v = float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def _csv(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skiff-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_storm_parser(sub)
    _add_compare_parser(sub)
    _add_workload_parsers(sub)
    _add_mgmt_parser(sub)
    _add_network_parser(sub)
    _add_netstorm_parser(sub)
    _add_failover_parser(sub)
    sasl_bench.add_parser(sub)
    return parser


def _add_storm_parser(sub: Any) -> None:
    d = StormConfig()
    storm = sub.add_parser(
        "storm",
        help="short-connection storm: direct vs through the engine",
        description="N concurrent clients loop connect, send 64 bytes, read the echo, "
        "close; the same load runs directly against the echo server and through a "
        "Skiff engine, in interleaved rounds.",
    )
    storm.add_argument("--clients", type=_positive_int, default=d.clients)
    storm.add_argument(
        "--duration", type=_positive_float, default=d.duration_s, help="seconds per round"
    )
    storm.add_argument(
        "--count",
        type=_positive_int,
        default=None,
        help="connections per round instead of a duration",
    )
    storm.add_argument("--procs", type=_positive_int, default=d.procs, help="client processes")
    storm.add_argument(
        "--workers", type=int, default=d.workers, help="engine worker threads (0: per CPU)"
    )
    storm.add_argument(
        "--worker-cpus",
        type=_cpu_list,
        default=(),
        metavar="LIST",
        help="pin the engine's workers, one CPU each, round robin (as workerCpus: '0-1')",
    )
    storm.add_argument(
        "--worker-nice",
        type=_nice,
        default=None,
        metavar="N",
        help="run the engine's workers at nice N (-20..19, as workerNice; below this "
        "process's value needs CAP_SYS_NICE); with --tls also the baseline skiffd's",
    )
    storm.add_argument("--rounds", type=_positive_int, default=d.rounds)
    storm.add_argument(
        "--subjects",
        default=",".join(d.subjects),
        help=f"comma-separated, among {','.join(SUBJECTS)}",
    )
    storm.add_argument(
        "--timeout",
        type=_positive_float,
        default=d.timeout_s,
        help="per-connection limit (connect + echo), seconds",
    )
    storm.add_argument(
        "--source-addrs",
        type=int,
        default=d.source_addrs,
        help="127.0.0.x source addresses to rotate over (0: kernel's choice)",
    )
    storm.add_argument("--echo-procs", type=_positive_int, default=d.echo_procs)
    storm.add_argument(
        "--echo-addrs",
        type=_positive_int,
        default=d.echo_addrs,
        help="echo server listens on this many loopback addresses, each an engine "
        "target (spreads the engine's outbound 4-tuples)",
    )
    storm.add_argument(
        "--corrupt-echo",
        action="store_true",
        help="self-test: the echo server flips a bit, every connection must fail",
    )
    storm.add_argument("--pause", type=float, default=d.pause_s, help="seconds between rounds")
    storm.add_argument("--json", type=Path, default=None, help="write every figure here")
    storm.add_argument(
        "--tls",
        action="store_true",
        help="TLS handshake storm: against the engine's TLS listener, or with --spawn a "
        "skiffd sslProfile listener, or with --target (and --tls-ca) any TLS relay",
    )
    _add_target_options(storm, storm=True)


def _add_compare_parser(sub: Any) -> None:
    d = CompareConfig()
    p = sub.add_parser(
        "compare",
        help="the same workloads against skiffd, haproxy, minrelay (the physical limit "
        "of a relay, built from ../shared/minrelay), the in-process engine and direct",
        description="Interleaved rounds (A B A B …) of each workload against each subject; "
        "min/median/max per subject and the ratios of medians skiffd/haproxy, "
        "skiffd/minrelay, haproxy/minrelay and skiffd/minrelay-splice. storm is the "
        "TIME_WAIT-heavy default, storm_fresh the same on fresh 4-tuples.",
    )
    p.add_argument(
        "--subjects",
        default=None,
        help=f"among {','.join(compare.SUBJECTS)} "
        f"(default: all; with --tls: {','.join(compare.TLS_SUBJECTS)}); also "
        f"{compare.BASE_SUBJECT}: skiffd from the tree in ${compare.BASE_ENV}; with --tls, "
        f"{compare.CACHE_SUBJECT}: skiffd with tlsResumption: cache (HAProxy's "
        "no-tls-tickets mode)",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="TLS variant: skiffd with a generated sslProfile vs haproxy `bind ... ssl crt` "
        "(same certificate, no-tls-tickets); storm = full handshakes (the clients keep no "
        "ticket); the header says how many tickets each proxy sent",
    )
    p.add_argument(
        "--no-tickets",
        action="store_true",
        help="with --tls: neither proxy sends a session ticket (skiffd tlsResumption: off; "
        "haproxy also OpenSSL's NumTickets = 0, as its no-tls-tickets still sends two "
        "stateful ones); checked by a probe handshake per proxy",
    )
    p.add_argument(
        "--workloads",
        default=",".join(d.workloads),
        help=f"among {','.join(compare.WORKLOADS)} (default: all but mixed, four bulk "
        "streams with a short connection every 20 ms beside them, whose latency it reports, "
        "and serial, one client's connections back to back for --storm-duration: the "
        "latency each adds, with --tls the handshake's)",
    )
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        help="worker threads of skiffd and the engine, nbthread of haproxy",
    )
    p.add_argument("--clients", type=int, default=d.clients, help="storm: concurrent clients")
    p.add_argument("--procs", type=int, default=d.procs, help="client processes")
    p.add_argument("--storm-duration", type=float, default=d.storm_duration_s)
    p.add_argument("--bulk-duration", type=float, default=d.bulk_duration_s)
    p.add_argument("--idle-conns", type=int, default=d.idle_conns)
    p.add_argument(
        "--fresh-conns",
        type=int,
        default=d.fresh_conns,
        help="storm_fresh: connections per sample, each sample on a fresh echo port "
        "through a fresh relay instance",
    )
    p.add_argument("--source-addrs", type=int, default=d.source_addrs)
    p.add_argument("--pause", type=float, default=d.pause_s)
    p.add_argument(
        "--idle-settle",
        type=float,
        default=d.idle_settle_s,
        help="seconds before reading memory, before and after opening",
    )
    p.add_argument("--json", type=Path, default=None, help="write every figure here")
    p.add_argument("--quiet", action="store_true", help="no progress, only the result table")


def _add_target_options(p: argparse.ArgumentParser, storm: bool = False) -> None:
    """--target/--spawn and the scale options shared by storm, bulk, idle, mixed."""
    p.add_argument(
        "--target",
        default=None,
        metavar="HOST:PORT",
        help="load this address (a relay of a bench echo/sink server, or one)",
    )
    p.add_argument(
        "--spawn",
        action="store_true",
        help="start a local skiffd (generated config) with echo and sink servers",
    )
    if not storm:
        p.add_argument("--workers", type=int, default=2, help="--spawn: skiffd workerThreads")
        p.add_argument("--procs", type=int, default=2, help="client processes")
        p.add_argument("--duration", type=float, default=5.0, help="seconds")
        p.add_argument("--timeout", type=float, default=10.0)
        p.add_argument("--source-addrs", type=int, default=253)
        p.add_argument(
            "--tls",
            action="store_true",
            help="clients speak TLS (--spawn: skiffd terminates it with a generated "
            "sslProfile; --target: give --tls-ca)",
        )
    p.add_argument(
        "--tls-ca",
        default=None,
        metavar="FILE",
        help="--tls --target: the CA certificate (PEM) the clients trust for 'localhost'",
    )
    p.add_argument("--quiet", action="store_true", help="no progress, only the result")


def _add_workload_parsers(sub: Any) -> None:
    bulk = sub.add_parser("bulk", help="long streams, every byte verified by the sink")
    _add_target_options(bulk)
    bulk.add_argument("--streams", type=int, default=1)
    bulk.add_argument("--json", type=Path, default=None)
    idle = sub.add_parser("idle", help="hold N idle relayed connections; router memory/conn")
    _add_target_options(idle)
    idle.add_argument("--conns", type=int, default=2000)
    idle.add_argument("--hold", type=float, default=1.0, help="seconds to hold them")
    idle.add_argument("--json", type=Path, default=None)
    mixed = sub.add_parser("mixed", help="bulk streams and a storm at once")
    _add_target_options(mixed)
    mixed.add_argument(
        "--bulk-target",
        default=None,
        metavar="HOST:PORT",
        help="with --target: the sink side for the streams",
    )
    mixed.add_argument("--streams", type=int, default=2)
    mixed.add_argument("--clients", type=int, default=100)
    mixed.add_argument("--json", type=Path, default=None)
    rot = sub.add_parser(
        "rotate",
        help="TLS storm on the engine while certificates are rewritten and republished",
    )
    rot.add_argument("--clients", type=int, default=100)
    rot.add_argument("--duration", type=float, default=5.0)
    rot.add_argument("--procs", type=int, default=2)
    rot.add_argument("--workers", type=int, default=2)
    rot.add_argument("--interval", type=float, default=0.1, help="seconds between rotations")
    rot.add_argument(
        "--slow-every",
        type=int,
        default=10,
        help="every Nth rotation also rewrites a large CA bundle of a second profile (0: never)",
    )
    rot.add_argument(
        "--slow", type=float, default=0.2, help="idle parse time the bundle is sized for (s)"
    )
    rot.add_argument(
        "--bundle-same-profile",
        action="store_true",
        help="the bundle is the rotating profile's own caCertFile (the original failure: "
        "with --interval 0.1 --slow-every 10 it is rewritten every second)",
    )
    rot.add_argument(
        "--bundle-certs",
        type=_positive_int,
        default=None,
        help="the bundle holds this many distinct CA certificates (4000: the original "
        "failure; 1: its control) instead of being sized by --slow",
    )
    rot.add_argument(
        "--stale-after",
        type=_positive_float,
        default=0.5,
        help="a handshake presenting a certificate this long (s) after a newer one was "
        "written counts as stale",
    )
    rot.add_argument("--json", type=Path, default=None)
    rot.add_argument("--quiet", action="store_true")
    report = sub.add_parser("report", help="draw PNG plots from result JSON files")
    report.add_argument("results", type=Path, nargs="+", metavar="RESULT.json")
    report.add_argument("--out", type=Path, default=Path("bench-plots"), help="directory")
    report.add_argument(
        "--small-bars",
        type=Path,
        default=None,
        metavar="PNG",
        help="also write a small compare bar chart here (for the README)",
    )
    serve = sub.add_parser("serve", help="run the bench's echo and sink servers for --target")
    serve.add_argument("--sink-port", type=int, default=0)
    serve.add_argument("--duration", type=float, default=3600.0, help="stop after this long")


def _add_mgmt_parser(sub: Any) -> None:
    d = MgmtConfig()
    p = sub.add_parser(
        "mgmt",
        help=MGMT_HELP,
        description=f"{MGMT_HELP}; starts skiffd, the bench's echo server and storm clients.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--seconds", type=_positive_float, default=d.seconds, help="length of each phase"
    )
    p.add_argument(
        "--clients", type=_positive_int, default=d.clients, help="concurrent storm clients"
    )
    p.add_argument("--workers", type=_positive_int, default=d.workers, help="router workerThreads")
    p.add_argument(
        "--heartbeat",
        type=_positive_float,
        default=d.heartbeat,
        help="idle timeout of the watcher connection (s)",
    )
    p.add_argument(
        "--control-slice-us",
        type=int,
        default=d.control_slice_us,
        help="skiffd --control-slice-us (0: the kernel's default slice)",
    )


def _add_network_parser(sub: Any) -> None:
    d = NetworkBenchConfig()
    p = sub.add_parser(
        "network",
        help="router network control plane: convergence after a link cut and a kill -9, "
        "a new address at the far end, idle CPU per router",
        description="Starts K skiffd routers on loopback (line, ring or full mesh) and "
        "times route convergence (every router's router.node against least-cost routes "
        "computed by the bench), address propagation and idle CPU. auto: cut, kill and "
        "idle CPU on a ring of K, the address rounds on a line of K.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--topology", choices=TOPOLOGIES, default=d.topology)
    p.add_argument("--routers", type=_positive_int, default=d.routers, help="K")
    p.add_argument(
        "--rounds", type=_positive_int, default=d.rounds, help="link cuts and kills, each"
    )
    p.add_argument(
        "--address-rounds", type=int, default=d.address_rounds, help="new addresses timed"
    )
    p.add_argument("--idle", type=_positive_float, default=d.idle_s, help="idle CPU window (s)")
    p.add_argument(
        "--quiet-before",
        type=float,
        default=d.quiet_s,
        help="seconds of nothing before the idle window",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=d.settle_s,
        help="seconds of polling after each convergence, counting deviations",
    )
    p.add_argument(
        "--timeout", type=_positive_float, default=d.timeout_s, help="bound of every wait (s)"
    )
    p.add_argument(
        "--poll-pause",
        type=float,
        default=d.poll_pause_s,
        help="seconds between polling sweeps (0: back to back; the sweep period is the "
        "resolution, and polling costs the routers CPU)",
    )
    p.add_argument(
        "--workdir", type=Path, default=None, help="routers' configs and logs (default: temp)"
    )
    p.add_argument("--json", type=Path, default=None, help="write every figure here")
    p.add_argument("--quiet", action="store_true", help="no progress, only the result")
    _add_chain_options(p)


def _add_chain_options(p: Any) -> None:
    from bench.chain import SUBJECTS as CHAIN_SUBJECTS
    from bench.chain import WORKLOADS as CHAIN_WORKLOADS
    from bench.chain import ChainConfig

    d = ChainConfig()
    g = p.add_argument_group(
        "--chain",
        "the data plane's cost per hop: storm, unloaded latency, bulk and idle through chains "
        "of 1, 2 and 3 routers beside direct and HAProxy chained the same way, in rounds "
        "(--rounds), CPU of every router process (--workdir, --json, --quiet apply)",
    )
    g.add_argument("--chain", action="store_true", help="run the chain bench instead")
    g.add_argument(
        "--subjects", default=",".join(d.subjects), help=f"among {','.join(CHAIN_SUBJECTS)}"
    )
    g.add_argument(
        "--workloads", default=",".join(d.workloads), help=f"among {','.join(CHAIN_WORKLOADS)}"
    )
    g.add_argument(
        "--workers", type=_positive_int, default=d.workers, help="workerThreads / nbthread"
    )
    g.add_argument("--clients", type=_positive_int, default=d.clients, help="storm clients")
    g.add_argument("--procs", type=_positive_int, default=d.procs, help="client processes")
    g.add_argument(
        "--storm-duration", type=_positive_float, default=d.storm_duration_s, help="seconds"
    )
    g.add_argument(
        "--storm-count", type=_positive_int, default=None, help="connections instead of seconds"
    )
    g.add_argument(
        "--bulk-duration", type=_positive_float, default=d.bulk_duration_s, help="seconds"
    )
    g.add_argument("--streams", type=_positive_int, default=d.bulk_streams, help="bulk streams")
    g.add_argument("--idle-conns", type=_positive_int, default=d.idle_conns, help="idle flows")
    g.add_argument(
        "--latency-clients",
        type=_positive_int,
        default=d.latency_clients,
        help="clients of the unloaded latency storm",
    )
    g.add_argument(
        "--latency-duration",
        type=_positive_float,
        default=d.latency_duration_s,
        help="seconds of the latency storm",
    )


def _chain(args: argparse.Namespace) -> int:
    from bench.chain import ChainConfig, format_report, run_chain, to_json

    cfg = ChainConfig(
        subjects=_csv(args.subjects),
        workloads=_csv(args.workloads),
        rounds=args.rounds,
        workers=args.workers,
        clients=args.clients,
        procs=args.procs,
        storm_duration_s=args.storm_duration,
        storm_count=args.storm_count,
        bulk_duration_s=args.bulk_duration,
        bulk_streams=args.streams,
        idle_conns=args.idle_conns,
        latency_clients=args.latency_clients,
        latency_duration_s=args.latency_duration,
        workdir=args.workdir,
    )
    try:
        cfg.validate()
    except ValueError as exc:
        print(f"skiff-bench network --chain: {exc}", file=sys.stderr)
        return 2
    try:
        report = run_chain(cfg, Progress.auto(args.quiet))
    except KeyboardInterrupt:
        print("skiff-bench network --chain: interrupted; the routers were stopped", file=sys.stderr)
        return 130
    print(format_report(report, sys.argv))
    data = to_json(report, sys.argv)
    if args.json is not None:
        write_result(data, args.json)
        print(f"wrote {args.json}")
    return 0 if data["ok"] else 1


def _add_netstorm_parser(sub: Any) -> None:
    p = sub.add_parser(
        "network-storm",
        help="two linked routers; a TLS storm on one while its certificate is rewritten: "
        "links lost (goal 0) and HELLO lateness",
    )
    p.add_argument("--clients", type=_positive_int, default=2000)
    p.add_argument("--duration", type=_positive_float, default=20.0, help="seconds of storm")
    p.add_argument(
        "--rotate-every", type=_positive_float, default=1.0,
        help="seconds between rewrites of the certificate and key",
    )  # fmt: skip
    p.add_argument("--workers", type=_positive_int, default=2, help="router A's workerThreads")
    p.add_argument("--procs", type=_positive_int, default=2, help="storm client processes")
    p.add_argument("--json", type=str, default=None, help="write every figure here")
    p.add_argument("--quiet", action="store_true", help="no progress, only the result")


def _add_failover_parser(sub: Any) -> None:
    from bench.failover import FailoverConfig

    d = FailoverConfig()
    p = sub.add_parser(
        "network-failover",
        help="flows through a diamond of 4 routers while a link is cut and a router is "
        "killed: failed flows (goal 0 while another path exists) and reroute times",
    )
    p.add_argument("--clients", type=_positive_int, default=d.clients, help="concurrent clients")
    p.add_argument("--size", type=_positive_int, default=d.size, help="bytes per flow")
    p.add_argument("--phase", type=_positive_float, default=d.phase_s, help="seconds per phase")
    p.add_argument("--workers", type=_positive_int, default=d.workers, help="workerThreads")
    p.add_argument("--json", type=str, default=None, help="write every figure here")
    p.add_argument("--quiet", action="store_true", help="no progress, only the result")


def _failover(args: argparse.Namespace) -> int:
    from bench.failover import FailoverConfig, format_report, run_failover, write_json

    cfg = FailoverConfig(
        clients=args.clients, size=args.size, phase_s=args.phase, workers=args.workers
    )
    try:
        report = run_failover(cfg, None if args.quiet else lambda m: print(m, file=sys.stderr))
    except KeyboardInterrupt:
        print("skiff-bench network-failover: interrupted; routers stopped", file=sys.stderr)
        return 130
    print(format_report(report))
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0 if report.failed == 0 else 1


def _netstorm(args: argparse.Namespace) -> int:
    from bench.netstorm import NetStormConfig, format_report, main_log, run_netstorm, write_json

    cfg = NetStormConfig(args.clients, args.duration, args.rotate_every, args.workers, args.procs)
    try:
        report = run_netstorm(cfg, None if args.quiet else main_log)
    except KeyboardInterrupt:
        print("skiff-bench network-storm: interrupted; the routers were stopped", file=sys.stderr)
        return 130
    print(format_report(report))
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0 if report.links_lost == 0 and report.storm_rc == 0 else 1


def _network(args: argparse.Namespace) -> int:
    from bench.network import format_report, main_log, run_network, to_json

    if args.chain:
        return _chain(args)

    cfg = NetworkBenchConfig(
        topology=args.topology,
        routers=args.routers,
        rounds=args.rounds,
        address_rounds=args.address_rounds,
        idle_s=args.idle,
        quiet_s=args.quiet_before,
        settle_s=args.settle,
        timeout_s=args.timeout,
        poll_pause_s=args.poll_pause,
        workdir=args.workdir,
    )
    try:
        cfg.validate()
    except ValueError as exc:
        print(f"skiff-bench network: {exc}", file=sys.stderr)
        return 2
    try:
        report = run_network(cfg, None if args.quiet else main_log)
    except KeyboardInterrupt:
        print("skiff-bench network: interrupted; the routers were stopped", file=sys.stderr)
        return 130
    print(format_report(report, sys.argv))
    data = to_json(report, sys.argv)
    if args.json is not None:
        write_result(data, args.json)
        print(f"wrote {args.json}")
    return 0 if data["ok"] else 1


def storm_config(args: argparse.Namespace) -> StormConfig:
    return StormConfig(
        clients=args.clients,
        duration_s=args.duration,
        count=args.count,
        procs=args.procs,
        workers=args.workers,
        worker_cpus=args.worker_cpus,
        worker_nice=args.worker_nice,
        rounds=args.rounds,
        subjects=_csv(args.subjects),
        timeout_s=args.timeout,
        source_addrs=args.source_addrs,
        echo_procs=args.echo_procs,
        echo_addrs=args.echo_addrs,
        corrupt_echo=args.corrupt_echo,
        pause_s=max(0.0, args.pause),
    )


def _run_storm(args: argparse.Namespace) -> int:
    if args.tls and args.target is None and not args.spawn:
        return run_tls(args, None)
    if args.target is not None or args.spawn:
        return run_target_command(args, "storm")
    try:
        cfg = storm_config(args)
        cfg.validate()
    except ValueError as exc:
        print(f"skiff-bench storm: {exc}", file=sys.stderr)
        return 2
    report = run_storm(cfg)
    print(format_table(report))
    if args.json is not None:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    cfg = CompareConfig(
        subjects=_csv(args.subjects)
        if args.subjects is not None
        else (compare.TLS_SUBJECTS if args.tls else compare.SUBJECTS),
        workloads=_csv(args.workloads),
        rounds=args.rounds,
        workers=args.workers,
        clients=args.clients,
        procs=args.procs,
        storm_duration_s=args.storm_duration,
        bulk_duration_s=args.bulk_duration,
        idle_conns=args.idle_conns,
        fresh_conns=args.fresh_conns,
        source_addrs=args.source_addrs,
        pause_s=max(0.0, args.pause),
        idle_settle_s=max(0.0, args.idle_settle),
        tls=args.tls,
        no_tickets=args.no_tickets,
    )
    try:
        cfg.validate()
    except ValueError as exc:
        print(f"skiff-bench compare: {exc}", file=sys.stderr)
        return 2
    report = run_compare(cfg, Progress.auto(args.quiet))
    print(format_compare(report))
    data = compare_json(report, sys.argv)
    if args.json is not None:
        write_result(data, args.json)
        print(f"wrote {args.json}")
    bad = any(not s.ok for s in report.samples)
    return 1 if bad else 0


def target_config(args: argparse.Namespace, workload: str) -> TargetConfig:
    cfg = TargetConfig(
        workload=workload,
        target=args.target,
        spawn=args.spawn,
        workers=getattr(args, "workers", 2),
        procs=getattr(args, "procs", 2),
        timeout_s=getattr(args, "timeout", 10.0),
        source_addrs=getattr(args, "source_addrs", 253),
        tls=bool(getattr(args, "tls", False)),
        tls_ca=getattr(args, "tls_ca", None),
    )
    if workload == "storm":
        cfg.clients, cfg.count, cfg.duration_s = args.clients, args.count, args.duration
    else:
        cfg.duration_s = args.duration
    cfg.streams = getattr(args, "streams", 1)
    cfg.clients = getattr(args, "clients", cfg.clients)
    cfg.idle_conns = getattr(args, "conns", cfg.idle_conns)
    cfg.hold_s = getattr(args, "hold", cfg.hold_s)
    cfg.bulk_target = getattr(args, "bulk_target", None)
    return cfg


def run_target_command(args: argparse.Namespace, workload: str) -> int:
    try:
        cfg = target_config(args, workload)
        cfg.validate()
    except ValueError as exc:
        print(f"skiff-bench {workload}: {exc}", file=sys.stderr)
        return 2
    res = run_target(cfg, Progress.auto(args.quiet))
    print(format_target(res))
    _write_result(args.json, f"{workload}/1", res.ok, target_json(res))
    return 0 if res.ok else 1


def run_tls(args: argparse.Namespace, interval: float | None) -> int:
    """rotate, or storm --tls (interval None: no rotation)."""
    from bench.rotate import RotateConfig, format_rotate, rotate_json, run_rotate

    cfg = RotateConfig(
        clients=args.clients,
        duration_s=args.duration,
        procs=args.procs,
        workers=args.workers,
        interval_s=interval,
        slow_every=getattr(args, "slow_every", 10),
        slow_s=getattr(args, "slow", 0.2),
        bundle_same_profile=getattr(args, "bundle_same_profile", False),
        bundle_certs=getattr(args, "bundle_certs", None),
        stale_after_s=getattr(args, "stale_after", 0.5),
        worker_nice=getattr(args, "worker_nice", None),
    )
    try:
        cfg.validate()
    except ValueError as exc:
        print(f"skiff-bench: {exc}", file=sys.stderr)
        return 2
    res = run_rotate(cfg, Progress.auto(args.quiet))
    print(format_rotate(res))
    schema = "rotate/1" if interval else "storm-tls/1"
    _write_result(args.json, schema, res.ok, rotate_json(res))
    return 0 if res.ok else 1


def _write_result(path: Path | None, schema: str, ok: bool, figures: dict[str, Any]) -> None:
    """figures in the bench's result envelope, when --json was given."""
    if path is not None:
        data = envelope(schema, sys.argv, {}, {}, ok)
        data.update(figures)
        write_result(data, path)
        print(f"wrote {path}")


def _report(args: argparse.Namespace) -> int:
    from bench.plots import draw, plot_compare_bars

    for path in args.results:
        if not path.is_file():
            print(f"skiff-bench report: no such file {path}", file=sys.stderr)
            return 2
    for path in draw(args.results, args.out):
        print(f"wrote {path}")
    if args.small_bars is not None:
        data = json.loads(args.results[0].read_text())
        if not isinstance(data, dict) or "summary" not in data:
            print("skiff-bench report: --small-bars needs a compare result", file=sys.stderr)
            return 2
        plot_compare_bars(data, args.small_bars, small=True)
        print(f"wrote {args.small_bars}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import time

    from bench.bulk import SinkServer
    from bench.echo import EchoServer

    with SinkServer.start(port=args.sink_port) as sink, EchoServer.start(1) as echo:
        print(
            f"echo 127.0.0.1:{echo.port}  sink 127.0.0.1:{sink.port}  "
            f"(for {args.duration:g} s; Ctrl-C stops)",
            flush=True,
        )
        try:
            time.sleep(max(0.0, args.duration))
        except KeyboardInterrupt:
            pass  # Ctrl-C is the normal way to stop serving
    return 0


def _mgmt(args: argparse.Namespace) -> int:
    return run_mgmt(
        MgmtConfig(args.seconds, args.clients, args.workers, args.heartbeat, args.control_slice_us)
    )


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "storm": _run_storm,
    "compare": _run_compare,
    "bulk": lambda args: run_target_command(args, "bulk"),
    "idle": lambda args: run_target_command(args, "idle"),
    "mixed": lambda args: run_target_command(args, "mixed"),
    "rotate": lambda args: run_tls(args, args.interval),
    "report": _report,
    "serve": _serve,
    "mgmt": _mgmt,
    "network": _network,
    "network-storm": _netstorm,
    "network-failover": _failover,
    "sasl": lambda args: sasl_bench.run_args(args),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
