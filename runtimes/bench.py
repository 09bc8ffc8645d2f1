"""Measure artifacts on this host: load time, latency percentiles, throughput and peak memory.

``edgekit bench`` prints what :func:`bench_bundle` returns; the precision choice of the converters
can use the same numbers. Memory is the peak resident set size above the level before the artifact
was opened (Linux resets the peak per artifact through ``/proc/self/clear_refs``; elsewhere the
process peak is reported).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle import TensorSpec, read_bundle
from edgekit.errors import EdgekitError, UnknownTargetError, did_you_mean


@dataclass(frozen=True)
class BenchResult:
    """One artifact measured on this host (or why it could not be)."""

    target: str
    format: str
    precision: str
    provider: str = ""
    load_ms: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    throughput: float = 0.0  # samples per second
    peak_memory_mb: float | None = None
    runs: int = 0
    batch: int = 1
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON (floats rounded)."""
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def random_feeds(inputs: tuple[TensorSpec, ...], batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs of each spec's shape: dynamic first dimension = ``batch``, other dynamic ones = 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        shape = [d if isinstance(d, int) and d > 0 else (batch if i == 0 else 1) for i, d in enumerate(spec.shape)]
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feeds[spec.name] = rng.random(shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=dtype)
    return feeds


def _status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux 4.0+)
        return True
    except OSError:
        return False


def _process_peak_kb() -> float:
    import resource

    peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak / 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def bench_session(open_session: Any, *, runs: int, warmup: int, batch: int) -> tuple[Any, dict[str, Any]]:
    """Open a session with ``open_session()``, warm it up, time ``runs`` runs; the session and the figures."""
    gc.collect()
    resettable = _reset_peak()
    before = _status_kb("VmRSS") if resettable else None
    session = open_session()
    feeds = random_feeds(session.inputs, batch)
    for _ in range(warmup):
        session.run(feeds)
    session.reset_stats()
    start = time.perf_counter()
    for _ in range(runs):
        session.run(feeds)
    elapsed = time.perf_counter() - start
    peak = _status_kb("VmHWM") if resettable else _process_peak_kb()
    figures = {
        "load_ms": session.load_seconds * 1e3,
        "throughput": runs * batch / elapsed if elapsed > 0 else 0.0,
        "peak_memory_mb": ((peak - before) if before is not None and peak is not None else (peak or 0.0)) / 1024,
    }
    return session, figures


def bench_bundle(path: str | Path, *, targets: list[str] | None = None, runs: int = 100, warmup: int = 10,
                 batch: int = 1, providers: Any = "auto") -> list[BenchResult]:
    """Measure every artifact of the bundle this host can run (or those of ``targets``).

    Latency percentiles are the session's own fixed-size histogram, reset after the warm-up runs.
    """
    from edgekit.runtimes import host_formats
    from edgekit.runtimes import open as open_artifact

    bundle = read_bundle(path)
    held = [a.target for a in bundle.manifest.artifacts]
    for wanted in targets or ():
        if wanted not in held:
            raise UnknownTargetError(f"bundle {path} has no artifact for target {wanted!r}{did_you_mean(wanted, held)}; "
                                     f"it holds: {', '.join(dict.fromkeys(held)) or 'none'}")
    results = []
    primed: set[str] = set()
    for art in bundle.manifest.artifacts:
        if targets and art.target not in targets:
            continue
        row = BenchResult(target=art.target, format=art.format, precision=art.precision, batch=batch)
        why_not = host_formats().get(art.format, "no runtime for this format")
        if why_not:
            results.append(dataclasses.replace(row, error=f"this host cannot run {art.format} artifacts: {why_not}"))
            continue
        if art.format not in primed:  # the runtime's first open loads its libraries: keep that out of the figures
            primed.add(art.format)
            try:
                open_artifact(path, target=art.target, format=art.format, providers=providers)
            except EdgekitError:
                pass
        try:
            session, figures = bench_session(
                lambda a=art: open_artifact(path, target=a.target, format=a.format, providers=providers),
                runs=runs, warmup=warmup, batch=batch)
        except EdgekitError as exc:
            results.append(dataclasses.replace(row, error=str(exc)))
            continue
        timed = session.stats()
        results.append(dataclasses.replace(row, provider=session.provider, p50_ms=timed.p50_ms, p95_ms=timed.p95_ms,
                                           p99_ms=timed.p99_ms, mean_ms=timed.mean_ms, runs=runs, **figures))
    return results


def report_latency(bundle: str | os.PathLike[str], *, runs: int = 50, warmup: int = 5) -> dict[str, dict[str, Any]]:
    """Every artifact this host can run, timed for the bundle's report (edgekit.report.write_report);
    empty, with a warning, when nothing could be timed."""
    from edgekit.report import latency_of

    try:
        return latency_of(bench_bundle(Path(bundle), runs=runs, warmup=warmup))
    except EdgekitError as exc:
        logging.getLogger("edgekit").warning("latency for the report not measured: %s", exc)
        return {}
