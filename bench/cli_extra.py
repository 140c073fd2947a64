"""Command lines of the workloads beyond ``storm``: compare, bulk, idle,
mixed, rotate, report, serve.

Why a module apart from __main__: __main__ keeps the storm's original
options untouched; each later workload adds its parser and runner here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.compare import SUBJECTS, WORKLOADS, CompareConfig, format_compare, run_compare
from bench.progress import Progress
from bench.results import compare_json, write_result


def _csv(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=Path, default=None, help="write every figure here")
    p.add_argument("--quiet", action="store_true", help="no progress, only the result table")


def add_compare_parser(sub: Any) -> None:
    d = CompareConfig()
    p = sub.add_parser(
        "compare",
        help="the same workloads against skiffd, haproxy, the in-process engine and direct",
        description="Interleaved rounds (A B A B …) of each workload against each subject; "
        "min/median/max per subject and the ratio of medians skiffd/haproxy.",
    )
    p.add_argument("--subjects", default=",".join(d.subjects), help=f"among {','.join(SUBJECTS)}")
    p.add_argument(
        "--workloads", default=",".join(d.workloads), help=f"among {','.join(WORKLOADS)}"
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
    p.add_argument("--source-addrs", type=int, default=d.source_addrs)
    p.add_argument("--pause", type=float, default=d.pause_s)
    _common(p)


def _run_compare(args: argparse.Namespace) -> int:
    cfg = CompareConfig(
        subjects=_csv(args.subjects),
        workloads=_csv(args.workloads),
        rounds=args.rounds,
        workers=args.workers,
        clients=args.clients,
        procs=args.procs,
        storm_duration_s=args.storm_duration,
        bulk_duration_s=args.bulk_duration,
        idle_conns=args.idle_conns,
        source_addrs=args.source_addrs,
        pause_s=max(0.0, args.pause),
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


def run_extra(args: argparse.Namespace) -> int:
    if args.command == "compare":
        return _run_compare(args)
    return 2


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data
