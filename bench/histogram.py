"""Log-linear latency histogram (HDR-like) that merges exactly.

Why not averaged percentiles: a load generator split over processes (and a
run split over rounds) must combine its latency figures without losing the
tail. Averaging per-process p99s is wrong; adding bucket counts is exact. The
buckets are log-linear like HdrHistogram: values below ``2**bits`` each get
their own bucket, and every octave above is cut into ``2**(bits-1)`` equal
buckets, so a reported percentile is within ``1 / 2**(bits-1)`` of the true
sample (0.8 % with the default ``bits=8``) whatever the magnitude.

Values are non-negative integers (the bench records nanoseconds).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_BITS = 8
# 2**40 ns is about 18 minutes: anything above is clamped into the last bucket
DEFAULT_HIGHEST = 1 << 40


def bucket_index(value: int, bits: int) -> int:
    """Bucket of value: identity below 2**bits, then 2**(bits-1) per octave."""
    shift = value.bit_length() - bits
    if shift <= 0:
        return value
    return (shift << (bits - 1)) + (value >> shift)


def bucket_range(index: int, bits: int) -> tuple[int, int]:
    """Lowest and highest value (inclusive) that fall into bucket index."""
    if index < (1 << bits):
        return index, index
    shift = (index >> (bits - 1)) - 1
    top = index - (shift << (bits - 1))
    return top << shift, ((top + 1) << shift) - 1


@dataclass(slots=True)
class Histogram:
    """Counts per log-linear bucket plus exact count, sum, min and max."""

    bits: int = DEFAULT_BITS
    highest: int = DEFAULT_HIGHEST
    counts: list[int] = field(default_factory=list)
    count: int = 0
    total: int = 0
    min: int = 0
    max: int = 0

    def __post_init__(self) -> None:
        size = bucket_index(self.highest, self.bits) + 1
        if not self.counts:
            self.counts = [0] * size
        elif len(self.counts) != size:
            raise ValueError(f"expected {size} buckets, got {len(self.counts)}")

    # ------------------------------------------------------------ recording

    def record(self, value: int) -> None:
        """Adds one value; negative values count as 0, huge ones are clamped."""
        v = 0 if value < 0 else (self.highest if value > self.highest else value)
        self.counts[bucket_index(v, self.bits)] += 1
        if self.count == 0 or v < self.min:
            self.min = v
        if v > self.max:
            self.max = v
        self.count += 1
        self.total += v

    def record_many(self, values: Iterable[int]) -> None:
        for v in values:
            self.record(v)

    # ------------------------------------------------------------ combining

    def _check_compatible(self, other: Histogram) -> None:
        if (self.bits, self.highest) != (other.bits, other.highest):
            raise ValueError("histograms with different bucket layouts cannot be combined")

    def merge(self, other: Histogram) -> None:
        """Adds other's counts to self: exact, as if every sample was recorded here."""
        self._check_compatible(other)
        if other.count == 0:
            return
        for i, c in enumerate(other.counts):
            if c:
                self.counts[i] += c
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    @classmethod
    def merged(cls, parts: Iterable[Histogram]) -> Histogram:
        """A new histogram holding every part's samples."""
        out: Histogram | None = None
        for p in parts:
            if out is None:
                out = cls(bits=p.bits, highest=p.highest)
            out.merge(p)
        return out if out is not None else cls()

    # ------------------------------------------------------------ reading

    def quantile(self, q: float) -> int:
        """The value at quantile q (0..1): the highest value of the bucket that
        holds the ceil(q*count)-th sample, clamped to the exact min and max."""
        if self.count == 0:
            return 0
        # nearest rank; the epsilon keeps 0.99 * 100 from rounding up to 100
        rank = max(1, min(self.count, math.ceil(q * self.count - 1e-9)))
        seen = 0
        for i, c in enumerate(self.counts):
            if c:
                seen += c
                if seen >= rank:
                    hi = bucket_range(i, self.bits)[1]
                    return max(self.min, min(hi, self.max))
        return self.max

    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def precision(self) -> float:
        """Worst relative error of quantile() for values at or above 2**bits."""
        return 1.0 / (1 << (self.bits - 1))

    def summary(self, scale: float = 1.0) -> dict[str, float]:
        """count, mean, p50/p90/p99/p99.9, min and max, divided by scale."""
        return {
            "count": self.count,
            "mean": self.mean() / scale,
            "min": self.min / scale,
            "p50": self.quantile(0.50) / scale,
            "p90": self.quantile(0.90) / scale,
            "p99": self.quantile(0.99) / scale,
            "p999": self.quantile(0.999) / scale,
            "max": self.max / scale,
        }

    # ------------------------------------------------------------ transport

    def to_dict(self) -> dict[str, Any]:
        """Sparse, JSON-ready form (only non-empty buckets)."""
        return {
            "bits": self.bits,
            "highest": self.highest,
            "count": self.count,
            "total": self.total,
            "min": self.min,
            "max": self.max,
            "buckets": {str(i): c for i, c in enumerate(self.counts) if c},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        h = cls(bits=int(data["bits"]), highest=int(data["highest"]))
        for key, c in dict(data["buckets"]).items():
            h.counts[int(key)] = int(c)
        h.count = int(data["count"])
        h.total = int(data["total"])
        h.min = int(data["min"])
        h.max = int(data["max"])
        return h
