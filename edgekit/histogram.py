"""Latency in fixed memory: a log-linear histogram, as HdrHistogram keeps them.

8 sub-buckets per power of two of nanoseconds, so a percentile is exact to within 12.5% whatever the
number of runs, and memory stays at a few hundred integers (no list of samples grows with the run
count). Histograms with this layout add up exactly (:meth:`LatencyHistogram.merge`): a device sends
what its sessions recorded since the last batch (:meth:`LatencyHistogram.since`) as an OpenTelemetry
explicit-bucket histogram (:meth:`LatencyHistogram.to_explicit`), and the service adds the fleet's.
"""

from __future__ import annotations

from collections.abc import Sequence

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

    def copy(self) -> LatencyHistogram:
        out = LatencyHistogram()
        out.counts, out.count, out.total_ns = list(self.counts), self.count, self.total_ns
        out.min_ns, out.max_ns = self.min_ns, self.max_ns
        return out

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        """Add ``other``'s runs to these (same layout: exact). Returns self."""
        for index, n in enumerate(other.counts):
            if n:
                self.counts[index] += n
        self.count += other.count
        self.total_ns += other.total_ns
        self.min_ns = min(self.min_ns, other.min_ns)
        self.max_ns = max(self.max_ns, other.max_ns)
        return self

    def since(self, earlier: LatencyHistogram) -> LatencyHistogram:
        """The runs recorded after ``earlier`` (a copy of this histogram taken before them): the delta a
        telemetry batch carries. Its min and max are this histogram's (the runs' own are not kept)."""
        out = LatencyHistogram()
        out.counts = [a - b for a, b in zip(self.counts, earlier.counts, strict=True)]
        out.count, out.total_ns = self.count - earlier.count, self.total_ns - earlier.total_ns
        if out.count:
            lows = [i for i, n in enumerate(out.counts) if n]
            out.min_ns = max(self.min_ns, self.upper(lows[0] - 1) + 1 if lows[0] else 0)
            out.max_ns = min(self.max_ns, self.upper(lows[-1]))
        return out

    def to_explicit(self) -> dict[str, object]:
        """The OpenTelemetry explicit-bucket form (seconds), trimmed to the buckets that hold runs:
        ``bucketCounts[i]`` counts runs in ``(explicitBounds[i-1], explicitBounds[i]]``, the last one
        those above the last bound, so ``len(bucketCounts) == len(explicitBounds) + 1``."""
        used = [i for i, n in enumerate(self.counts) if n]
        if not used:
            return {"count": 0, "sum": 0.0, "bucketCounts": [0], "explicitBounds": []}
        lo, hi = used[0], used[-1]
        return {"count": self.count, "sum": self.total_ns / 1e9, "min": self.min_ns / 1e9, "max": self.max_ns / 1e9,
                "bucketCounts": self.counts[lo:hi + 1], "explicitBounds": [self.upper(i) / 1e9 for i in range(lo, hi)]}

    @classmethod
    def from_explicit(cls, counts: Sequence[int], bounds: Sequence[float], total_s: float,
                      low_s: float | None = None, high_s: float | None = None) -> LatencyHistogram:
        """An explicit-bucket histogram (seconds) in this layout. Each bucket's runs go to the bucket
        holding its upper bound (exact for histograms :meth:`to_explicit` wrote; for another layout, a
        percentile is off by at most that layout's bucket width plus 12.5%); the last, unbounded bucket's
        to the one holding ``high_s`` (or the last bound)."""
        out = cls()
        for i, n in enumerate(counts):
            if not n:
                continue
            edge = bounds[i] if i < len(bounds) else (high_s if high_s is not None else (bounds[-1] if bounds else 0.0))
            out.counts[cls.bucket(round(edge * 1e9))] += int(n)
            out.count += int(n)
        out.total_ns = round(total_s * 1e9)
        if out.count:
            used = [i for i, n in enumerate(out.counts) if n]
            out.min_ns = round(low_s * 1e9) if low_s is not None else cls.upper(used[0] - 1) + 1 if used[0] else 0
            out.max_ns = round(high_s * 1e9) if high_s is not None else cls.upper(used[-1])
        return out

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
