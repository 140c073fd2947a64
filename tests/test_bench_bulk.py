"""The bulk workload's correctness check: every byte verified by the sink.

Why: a bulk figure from a relay that lost or corrupted bytes is worse than
no figure; the check itself must be shown to catch flips, losses and
shifts, and a corrupting data path must turn the run into a failure.
"""

from __future__ import annotations

import pytest

from bench.bulk import (
    CHUNK,
    NO_ERROR,
    PERIOD,
    BulkFigures,
    SinkServer,
    StreamCheck,
    StreamResult,
    pattern,
    run_streams,
)


def _stream(seed: int, n: int) -> bytes:
    p = pattern(seed)[:PERIOD]
    reps = n // PERIOD + 1
    return (p * reps)[:n]


def test_pattern_windows_are_contiguous() -> None:
    p = pattern(3)
    assert len(p) == PERIOD + CHUNK
    assert p[PERIOD : PERIOD + 100] == p[:100]


@pytest.mark.parametrize("piece", [1000, CHUNK, 7919])
def test_clean_stream_passes_in_any_piece_size(piece: int) -> None:
    data = _stream(5, 3 * PERIOD + 12345)
    check = StreamCheck(pattern(5))
    for i in range(0, len(data), piece):
        check.feed(data[i : i + piece])
    assert check.received == len(data)
    assert check.first_bad == NO_ERROR


def test_flipped_byte_is_found_at_its_offset() -> None:
    data = bytearray(_stream(9, 2 * PERIOD))
    data[PERIOD + 77] ^= 0x40
    check = StreamCheck(pattern(9))
    for i in range(0, len(data), 65536):
        check.feed(bytes(data[i : i + 65536]))
    assert check.first_bad == PERIOD + 77


def test_dropped_block_shifts_the_stream_and_fails() -> None:
    data = _stream(11, 2 * PERIOD)
    damaged = data[:500_000] + data[500_000 + 65536 :]
    check = StreamCheck(pattern(11))
    check.feed(damaged)
    assert check.first_bad != NO_ERROR


def test_lost_tail_is_a_failure() -> None:
    r = StreamResult(1, sent=1000, received_by_sink=900)
    assert not r.ok
    assert "lost data" in (r.failure() or "")


def test_bulk_stream_through_the_real_sink_is_verified() -> None:
    with SinkServer.start() as sink:
        res = run_streams("127.0.0.1", sink.port, 2, 0.4, 100, start_delay_s=0.0)
    f = BulkFigures.of(res)
    assert f.ok, f.failures
    assert f.bytes > 0 and f.gbit_s > 0
    assert sum(f.timeline_bytes) == sum(r.sent for r in res)


def test_corrupting_data_path_fails_the_run() -> None:
    with SinkServer.start(corrupt=True) as sink:
        res = run_streams("127.0.0.1", sink.port, 1, 0.3, 200, start_delay_s=0.0)
    f = BulkFigures.of(res)
    assert not f.ok
    assert "corrupted" in f.failures[0]
    assert f.bytes == 0  # a failed stream's bytes do not count


def test_compare_mixed_reports_bulk_and_short_probe_latency() -> None:
    """compare's mixed workload: four verified bulk streams through a subject
    with short connections beside them; both the streams' figures and the
    probes' latency come out, and every probe's echo was checked."""
    from bench.compare import CompareConfig, format_compare, run_compare
    from bench.progress import Progress

    cfg = CompareConfig(
        subjects=("engine",),
        workloads=("mixed",),
        rounds=1,
        workers=1,
        procs=1,
        bulk_duration_s=0.5,
        pause_s=0.0,
    )
    report = run_compare(cfg, Progress.auto(quiet=True))
    (s,) = report.samples
    assert s.ok, s.failures
    assert (s.figures["bytes"] or 0) > 0
    assert (s.figures["probes"] or 0) >= 5  # one per 20 ms over 0.5 s, at least a few
    p50, p99 = s.figures["probe_p50_ms"], s.figures["probe_p99_ms"]
    assert p50 is not None and p99 is not None and 0 < p50 <= p99
    assert "probe p99 ms" in format_compare(report)
    # not a default workload: it adds a bulk run per subject and round
    assert "mixed" not in CompareConfig().workloads
