"""Latency statistics in fixed memory: a log-linear histogram, as HdrHistogram keeps them.

A session records every run in :class:`LatencyHistogram`: 8 sub-buckets per power of two of
nanoseconds, so a percentile is exact to within 12.5% whatever the number of runs, and memory stays
at a few hundred integers (no list of samples grows with the run count).
"""

from __future__ import annotations

from dataclasses import dataclass

SUB_BITS = 3  # 8 sub-buckets per octave: relative bucket width <= 1/8
_SUB = 1 << SUB_BITS
_OCTAVES = 40  # 2**40 ns is about 18 minutes; longer runs land in the last bucket
_LAST = _OCTAVES * _SUB - 1
_NEVER = 1 << 62  # min_ns before the first run


class LatencyHistogram:
    """Counts of run durations (nanoseconds) in log-linear buckets, plus count, sum, min and max."""

    __slots__ = ("counts", "count", "total_ns", "min_ns", "max_ns")

    def __init__(self) -> None:
        self.counts = [0] * (_OCTAVES * _SUB)
        self.count = 0
        self.total_ns = 0
        self.min_ns = _NEVER
        self.max_ns = 0

    @staticmethod
    def bucket(ns: int) -> int:
        """The bucket index of a duration: octave from the bit length, sub-bucket from the next 3 bits."""
        if ns < _SUB:
            return ns if ns > 0 else 0
        octave = ns.bit_length() - SUB_BITS
        return min(octave * _SUB + ((ns >> (octave - 1)) & (_SUB - 1)), _LAST)

    @staticmethod
    def upper(index: int) -> int:
        """The largest duration (ns) that falls in bucket ``index``."""
        if index < _SUB:
            return index
        octave, sub = divmod(index, _SUB)
        return ((_SUB | sub) + 1 << (octave - 1)) - 1

    def add(self, ns: int) -> None:
        """Record one run's duration (the bucket arithmetic of :meth:`bucket`, inlined: it runs per call)."""
        if ns < _SUB:
            index = ns if ns > 0 else 0
        else:
            octave = ns.bit_length() - SUB_BITS
            index = octave * _SUB + ((ns >> (octave - 1)) & (_SUB - 1))
            if index > _LAST:
                index = _LAST
        self.counts[index] += 1
        self.count += 1
        self.total_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns
        if ns < self.min_ns:
            self.min_ns = ns

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) in milliseconds: the upper edge of its bucket, capped at the max."""
        if self.count == 0:
            return 0.0
        rank = max(1, int(q / 100.0 * self.count + 0.999999))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(self.upper(index), self.max_ns) / 1e6
        return self.max_ns / 1e6


@dataclass(frozen=True)
class Stats:
    """A session's record so far: runs, failed runs, latency percentiles (ms) and load time (s)."""

    count: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    load_seconds: float

    @classmethod
    def of(cls, hist: LatencyHistogram, errors: int, load_seconds: float) -> Stats:
        """A snapshot of ``hist``."""
        mean = hist.total_ns / hist.count / 1e6 if hist.count else 0.0
        low = hist.min_ns if hist.count else 0
        return cls(hist.count, errors, hist.percentile(50), hist.percentile(95), hist.percentile(99), mean,
                   low / 1e6, hist.max_ns / 1e6, load_seconds)

    def to_dict(self) -> dict[str, float | int]:
        """Plain numbers for JSON."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}
