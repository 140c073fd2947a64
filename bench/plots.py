"""``report``: PNG plots from saved result files (matplotlib, Agg backend).

Why from JSON rather than during the run: plots are redrawn long after a
run, from several runs at once, on machines without a display; the result
files hold exact histograms and time series, so nothing is re-measured.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from bench.histogram import Histogram, bucket_range

DPI = 90


def _cdf(h: Histogram) -> tuple[list[float], list[float]]:
    """(latency ms, fraction ≤) at each non-empty bucket's upper edge."""
    xs: list[float] = []
    ys: list[float] = []
    seen = 0
    for i, c in enumerate(h.counts):
        if c:
            seen += c
            xs.append(min(bucket_range(i, h.bits)[1], h.max) / 1e6)
            ys.append(seen / h.count)
    return xs, ys


def _latency_by_series(data: dict[str, Any], label: str) -> dict[str, Histogram]:
    """Every latency histogram in a result, merged per subject."""
    out: dict[str, Histogram] = {}

    def add(name: str, d: dict[str, Any] | None) -> None:
        if d:
            h = Histogram.from_dict(d)
            if name in out:
                out[name].merge(h)
            else:
                out[name] = h

    for s in data.get("samples", []):  # compare
        add(f"{label}{s['subject']}", s.get("detail", {}).get("latency_histogram_ns"))
    for r in data.get("rounds", []):  # storm (direct vs engine)
        add(f"{label}{r['subject']}", r.get("latency_histogram_ns"))
    add(f"{label}target", data.get("latency_histogram_ns"))
    return out


def _timelines(data: dict[str, Any], label: str) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {}
    for s in data.get("samples", []):
        tl = s.get("detail", {}).get("timeline")
        if tl:
            out.setdefault(f"{label}{s['subject']}", tl)  # first round of each subject
    for r in data.get("rounds", []):
        if r.get("timeline"):
            out.setdefault(f"{label}{r['subject']}", r["timeline"])
    if data.get("timeline"):
        out[f"{label}target"] = data["timeline"]
    return out


def _bulk_series(data: dict[str, Any], label: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for s in data.get("samples", []):
        tl = s.get("detail", {}).get("timeline_bytes")
        if tl:
            out.setdefault(f"{label}{s['subject']} {s['workload']}", tl)
    if data.get("bulk_timeline_bytes"):
        out[f"{label}target"] = data["bulk_timeline_bytes"]
    return out


def plot_latency_cdf(series: dict[str, Histogram], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, h in sorted(series.items()):
        xs, ys = _cdf(h)
        ax.step(xs, ys, where="post", label=f"{name} (n={h.count:,})")
    ax.set_xscale("log")
    ax.set_xlabel("connection latency (connect + 64-byte echo), ms, log scale")
    ax.set_ylabel("fraction of connections ≤ x")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Latency distribution (CDF)")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_over_time(
    rates: dict[str, list[dict[str, float]]], bulk: dict[str, list[float]], path: Path
) -> None:
    rows = (1 if rates else 0) + (1 if bulk else 0)
    fig, axes = plt.subplots(rows, 1, figsize=(6.4, 3.0 * rows), squeeze=False)
    i = 0
    if rates:
        ax = axes[i][0]
        for name, tl in sorted(rates.items()):
            ax.plot([p["t_s"] for p in tl], [p["connections_per_s"] for p in tl], label=name)
        ax.set_ylabel("connections/s")
        ax.set_xlabel("seconds into the round")
        ax.set_title("Connection rate over time")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        i += 1
    if bulk:
        ax = axes[i][0]
        for name, b in sorted(bulk.items()):
            ax.plot(
                [0.1 * (k + 1) for k in range(len(b))], [x * 8 / 0.1 / 1e9 for x in b], label=name
            )
        ax.set_ylabel("Gbit/s")
        ax.set_xlabel("seconds into the stream")
        ax.set_title("Bulk throughput over time (sender side)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_compare_bars(data: dict[str, Any], path: Path, small: bool = False) -> None:
    """One panel per figure, one bar per subject (median, min..max whiskers)."""
    summary: dict[str, dict[str, dict[str, Any]]] = data["summary"]
    units: dict[str, dict[str, str]] = data.get("units", {})
    panels = [
        (wl, m)
        for wl, ms in summary.items()
        for m in ms
        if m not in ("latency_p99_ms",) or not small
    ]
    cols = min(3, len(panels)) or 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.5 * rows), squeeze=False)
    colors = {
        "skiffd": "#1f77b4",
        "haproxy": "#d62728",
        "minrelay": "#ff7f0e",
        "minrelay-splice": "#ffbb78",
        "engine": "#2ca02c",
        "direct": "#7f7f7f",
    }
    for k, (wl, metric) in enumerate(panels):
        ax = axes[k // cols][k % cols]
        cells = summary[wl][metric]
        names = [n for n, st in cells.items() if st is not None]
        med = [cells[n]["median"] for n in names]
        lo = [cells[n]["median"] - cells[n]["min"] for n in names]
        hi = [cells[n]["max"] - cells[n]["median"] for n in names]
        ax.bar(
            names, med, yerr=[lo, hi], capsize=3, color=[colors.get(n, "#9467bd") for n in names]
        )
        ax.set_title(f"{wl}: {units.get(wl, {}).get(metric, metric)}", fontsize=9)
        # names overlap unless slanted once they are longer than a panel is
        # wide (four subjects with minrelay-splice among them are)
        slant = sum(len(n) for n in names) > 24
        ax.tick_params(axis="x", labelsize=7, labelrotation=35 if slant else 0)
        if slant:
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    for k in range(len(panels), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle("skiff-bench compare (median of rounds; whiskers min..max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=70 if small else DPI)
    plt.close(fig)


def plot_rotation(data: dict[str, Any], path: Path) -> None:
    """Engine high-priority timer lateness over time, rotations marked."""
    samples = data.get("lateness_timeline", [])
    rotations = data.get("rotations", [])
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(6.4, 5.0), sharex=True)
    ts = [s["t_s"] for s in samples]
    ax.plot(ts, [s["p99_us"] / 1e3 for s in samples], label="p99 (bucket bound)")
    ax.plot(ts, [s["max_us"] / 1e3 for s in samples], label="max (bucket bound)", alpha=0.7)
    for r in rotations:
        colour = "red" if r.get("slow") else "grey"
        ax.axvline(r["t_s"], color=colour, alpha=0.25 if not r.get("slow") else 0.6, lw=0.8)
    ax.set_ylabel("timer lateness, ms")
    ax.set_title("High-priority timer lateness (grey: rotations, red: 200 ms loads)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    tl = data.get("timeline", [])
    ax2.plot([p["t_s"] for p in tl], [p["connections_per_s"] for p in tl])
    ax2.set_ylabel("TLS handshakes/s")
    ax2.set_xlabel("seconds into the run")
    ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_chain(data: dict[str, Any], path: Path) -> None:
    """``network --chain``: per-hop cost by chain length, skiffd beside HAProxy
    (median of rounds, whiskers min..max); direct as a dotted line."""
    summary: dict[str, dict[str, dict[str, Any]]] = data["summary"]
    panels = [
        (wl, m, label)
        for wl, m, label in (
            ("storm", "cpu_us_per_flow_router", "storm: µs CPU per flow per router"),
            ("latency", "latency_p50_ms", "unloaded: p50 ms per connection"),
            ("bulk", "gbit_s", "bulk: Gbit/s"),
            ("idle", "kib_per_flow_router", "idle: KiB RSS per flow per router"),
        )
        if wl in summary
    ]
    fig, axes = plt.subplots(1, len(panels) or 1, figsize=(3.0 * max(1, len(panels)), 3.0))
    axs = list(axes) if len(panels) > 1 else [axes]
    for ax, (wl, metric, label) in zip(axs, panels, strict=False):
        cells = summary[wl][metric]
        for family, colour in (("chain", "#1f77b4"), ("haproxy", "#d62728")):
            pts = [
                (n, cells[f"{family}{n}"])
                for n in (1, 2, 3)
                if cells.get(f"{family}{n}") is not None
            ]
            if not pts:
                continue
            xs = [n for n, _ in pts]
            med = [st["median"] for _, st in pts]
            err = [
                [st["median"] - st["min"] for _, st in pts],
                [st["max"] - st["median"] for _, st in pts],
            ]
            name = "skiffd" if family == "chain" else "haproxy"
            # idle: the max over rounds is the figure (first touch), no whiskers
            yerr = None if wl == "idle" else err
            ax.errorbar(xs, med, yerr=yerr, marker="o", capsize=3, color=colour, label=name)
        if cells.get("direct") is not None:
            ax.axhline(cells["direct"]["median"], ls=":", color="#7f7f7f", label="direct")
        ax.set_xticks([1, 2, 3])
        ax.set_xlabel("routers in the chain")
        ax.set_title(label, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.suptitle("network --chain: the data plane's cost per hop (median of rounds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def draw(paths: Iterable[Path], out_dir: Path) -> list[Path]:
    """Every plot the given results support; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = list(paths)
    multi = len(files) > 1
    latency: dict[str, Histogram] = {}
    rates: dict[str, list[dict[str, float]]] = {}
    bulk: dict[str, list[float]] = {}
    written: list[Path] = []
    for f in files:
        data = json.loads(f.read_text())
        label = f"{f.stem}: " if multi else ""
        latency.update(_latency_by_series(data, label))
        rates.update(_timelines(data, label))
        bulk.update(_bulk_series(data, label))
        schema = str(data.get("schema", ""))
        if schema.startswith("skiff-bench/compare") and data.get("summary"):
            p = out_dir / f"{f.stem}-compare.png"
            plot_compare_bars(data, p)
            written.append(p)
        if schema.startswith("skiff-bench/network-chain") and data.get("summary"):
            p = out_dir / f"{f.stem}-chain.png"
            plot_chain(data, p)
            written.append(p)
        if data.get("lateness_timeline"):
            p = out_dir / f"{f.stem}-rotation.png"
            plot_rotation(data, p)
            written.append(p)
    stem = files[0].stem if len(files) == 1 else "results"
    if latency:
        p = out_dir / f"{stem}-latency-cdf.png"
        plot_latency_cdf(latency, p)
        written.append(p)
    if rates or bulk:
        p = out_dir / f"{stem}-over-time.png"
        plot_over_time(rates, bulk, p)
        written.append(p)
    return written
