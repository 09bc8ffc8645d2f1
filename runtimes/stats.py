"""A session's statistics: its runs recorded in :class:`~edgekit.histogram.LatencyHistogram` (fixed
memory; mergeable across sessions and devices, which is how fleet telemetry adds them up)."""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.histogram import LatencyHistogram

__all__ = ["LatencyHistogram", "Stats"]


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
