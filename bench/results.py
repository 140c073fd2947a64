"""JSON results of every workload: one envelope, one schema per workload.

Why one envelope: ``report`` draws plots from any mix of result files, so
each file says what it holds (``schema``), the exact command line, its
parameters and its environment, next to every figure.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.compare import METRICS, RATIOS, CompareReport

SCHEMA_PREFIX = "skiff-bench/"
REQUIRED_KEYS = ("schema", "command", "params", "environment", "ok")


def envelope(
    schema: str, argv: Sequence[str], params: dict[str, Any], environment: dict[str, Any], ok: bool
) -> dict[str, Any]:
    return {
        "schema": SCHEMA_PREFIX + schema,
        "command": " ".join(["python -m bench", *argv[1:]]) if argv else "",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "params": params,
        "environment": environment,
        "ok": ok,
    }


def compare_json(report: CompareReport, argv: Sequence[str]) -> dict[str, Any]:
    cfg = dataclasses.asdict(report.config)
    env = dict(report.environment)
    env["versions"] = report.versions
    env["worker_threads"] = report.config.workers
    out = envelope("compare/1", argv, cfg, env, all(s.ok for s in report.samples))
    summary = report.summary()
    ratios: dict[str, dict[str, float | None]] = {}
    for wl in report.config.workloads:
        ratios[wl] = {}
        for metric, _unit, _low in METRICS[wl]:
            ratios[wl][f"{metric}_skiffd_over_haproxy"] = report.ratio(wl, metric)
            ratios[wl][f"{metric}_engine_over_haproxy"] = report.ratio(wl, metric, "engine")
            ratios[wl][f"{metric}_skiffd_over_direct"] = report.ratio(
                wl, metric, "skiffd", "direct"
            )
            # against the physical limit of a relay (None when minrelay was skipped)
            pairs = {*RATIOS, ("engine", "minrelay"), ("engine", "minrelay-splice")}
            for a, b in sorted(pairs):
                if b.startswith("minrelay"):
                    ratios[wl][f"{metric}_{a}_over_{b}"] = report.ratio(wl, metric, a, b)
    out.update(
        {
            "units": {wl: {m: u for m, u, _ in METRICS[wl]} for wl in report.config.workloads},
            "summary": summary,
            "ratios": ratios,
            "skipped": report.skipped,
            "session_tickets": report.tickets,
            "samples": [dataclasses.asdict(s) for s in report.samples],
            "wall_s": report.wall_s,
        }
    )
    return out


def write_result(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def validate(data: dict[str, Any]) -> list[str]:
    """Problems with a result's shape (empty when it is well-formed)."""
    problems = [f"missing key {k!r}" for k in REQUIRED_KEYS if k not in data]
    schema = str(data.get("schema", ""))
    if not schema.startswith(SCHEMA_PREFIX):
        problems.append(f"unknown schema {schema!r}")
    return problems
