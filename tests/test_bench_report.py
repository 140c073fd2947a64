"""compare's JSON schema and the report command's PNG files.

Why: people read the JSON with their own tools and the README shows the
plots; a key dropped or a plot that fails on a saved result breaks both.
The run is short: the in-process engine and direct only, tiny workloads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.results import validate


@pytest.fixture(scope="module")
def compare_result(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cmp") / "compare.json"
    rc = main(
        [
            "compare",
            "--subjects",
            "engine,direct",
            "--workloads",
            "idle,storm,bulk1",
            "--rounds",
            "2",
            "--clients",
            "10",
            "--storm-duration",
            "0.3",
            "--bulk-duration",
            "0.3",
            "--idle-conns",
            "100",
            "--pause",
            "0",
            "--idle-settle",
            "0.1",
            "--quiet",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    return out


def test_compare_json_schema(compare_result: Path) -> None:
    data = json.loads(compare_result.read_text())
    assert validate(data) == []
    assert data["schema"] == "skiff-bench/compare/1"
    assert data["ok"] is True
    assert data["command"].startswith("python -m bench")
    assert {"cpu_count", "python", "worker_threads", "versions"} <= set(data["environment"])
    assert data["params"]["rounds"] == 2
    s = data["summary"]
    assert set(s) == {"idle", "storm", "bulk1"}
    for subject in ("engine", "direct"):
        st = s["storm"]["connections_per_s"][subject]
        assert st["min"] <= st["median"] <= st["max"] and st["n"] == 2
        assert s["bulk1"]["gbit_s"][subject]["median"] > 0
    assert s["storm"]["cpu_us_per_conn"]["engine"]["median"] > 0
    assert s["storm"]["cpu_us_per_conn"]["direct"] is None  # no proxy, no proxy CPU
    assert s["idle"]["kib_per_conn"]["engine"] is not None
    assert "gbit_s_skiffd_over_haproxy" in data["ratios"]["bulk1"]
    # interleaved: round 0 of every subject before round 1 of any
    order = [(x["round"], x["workload"], x["subject"]) for x in data["samples"]]
    assert order[:2] == [(0, "idle", "engine"), (0, "idle", "direct")]
    assert max(i for i, o in enumerate(order) if o[0] == 0) < min(
        i for i, o in enumerate(order) if o[0] == 1
    )
    storm = next(x for x in data["samples"] if x["workload"] == "storm")
    assert {"client_bottleneck", "ports", "latency_histogram_ns", "timeline"} <= set(
        storm["detail"]
    )


def test_validate_flags_foreign_files() -> None:
    assert validate({"schema": "other"})


def test_report_draws_pngs_from_a_saved_result(compare_result: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    rc = main(["report", str(compare_result), "--out", str(tmp_path), "--small-bars", str(small)])
    assert rc == 0
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "compare-compare.png" in pngs
    assert "compare-latency-cdf.png" in pngs
    assert "compare-over-time.png" in pngs
    for name in pngs:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_rejects_a_missing_file(tmp_path: Path) -> None:
    assert main(["report", str(tmp_path / "nope.json"), "--out", str(tmp_path)]) == 2
