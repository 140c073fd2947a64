"""``python -m bench`` / ``skiff-bench``: the command line of the load benches.

Subcommands are added here as benches are added; each parses its options
into that bench's config object and leaves the work to the bench's module.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.cli_extra import (
    add_compare_parser,
    add_target_options,
    add_workload_parsers,
    run_extra,
    run_target_command,
    run_tls,
)
from bench.report import format_table, write_json
from bench.storm import SUBJECTS, StormConfig, run_storm


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _positive_float(text: str) -> float:
    v = float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skiff-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
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
    add_target_options(storm, storm=True)
    add_compare_parser(sub)
    add_workload_parsers(sub)
    sub.add_parser(
        "mgmt",
        help="management QUERY round trips, idle and during a 500-client storm, with a "
        "2 s heartbeat connection held open (options: mgmt --help)",
        add_help=False,
    )
    return parser


def storm_config(args: argparse.Namespace) -> StormConfig:
    return StormConfig(
        clients=args.clients,
        duration_s=args.duration,
        count=args.count,
        procs=args.procs,
        workers=args.workers,
        rounds=args.rounds,
        subjects=tuple(s.strip() for s in args.subjects.split(",") if s.strip()),
        timeout_s=args.timeout,
        source_addrs=args.source_addrs,
        echo_procs=args.echo_procs,
        echo_addrs=args.echo_addrs,
        corrupt_echo=args.corrupt_echo,
        pause_s=max(0.0, args.pause),
    )


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["mgmt"]:
        # the management workload lives with the management tools
        from router.tools.mgmt_bench import main as mgmt_main

        return mgmt_main(raw[1:])
    args = build_parser().parse_args(raw)
    if args.command == "storm" and args.tls and args.target is None and not args.spawn:
        if args.duration is None:
            args.duration = 5.0
        return run_tls(args, None)
    if args.command == "storm" and (args.target is not None or args.spawn):
        return run_target_command(args, "storm")
    if args.command == "storm":
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
    return run_extra(args)


if __name__ == "__main__":
    sys.exit(main())
