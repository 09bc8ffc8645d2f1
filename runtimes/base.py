"""The runtime protocol: a Runtime opens an artifact, a Session runs feeds to outputs and keeps stats."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgekit.bundle import TensorSpec
from edgekit.histogram import LatencyHistogram
from edgekit.runtimes.stats import Stats

POLICIES = ("fallback", "strict")
_now = time.perf_counter_ns


@dataclass(frozen=True)
class Attempt:
    """One provider tried while opening a session, and why it was passed over (if it was)."""

    provider: str
    ok: bool
    reason: str = ""


class Session(Protocol):
    """A loaded artifact that turns feeds into outputs."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    provider: str
    attempts: tuple[Attempt, ...]
    load_seconds: float
    notes: tuple[str, ...]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model once; keys of the result are the output names."""
        ...

    def stats(self) -> Stats:
        """Runs, errors, latency percentiles and load time so far."""
        ...


class Runtime(Protocol):
    """A way to run one artifact format on this host."""

    name: str
    formats: tuple[str, ...]

    def is_available(self) -> bool:
        """True when this runtime can run on this host."""
        ...

    def open(self, path: Path, *, providers: Any = None, policy: str = "fallback") -> Session:
        """Load the artifact at ``path``."""
        ...


class TimedSession:
    """Base of the concrete sessions: ``run`` times ``_run`` into a fixed-size histogram.

    Subclasses set ``inputs``, ``outputs``, ``provider``, ``attempts`` and ``load_seconds`` and
    implement ``_run``; a wrapping session calls the inner one's ``_run`` so a run is counted once.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    provider: str
    attempts: tuple[Attempt, ...]
    load_seconds: float
    notes: tuple[str, ...] = ()  # what the caller should know: partial placement, the artifact chosen and why
    bundle: Any = None  # the Bundle and Artifact this session runs, when it was opened from a bundle
    artifact: Any = None

    def __init__(self) -> None:
        self._latency = LatencyHistogram()
        self._errors = 0
        self._error_kinds: dict[str, int] = {}

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model once on ``feeds`` (keyed by input name); the outputs are keyed by output name."""
        start = _now()
        try:
            out = self._run(feeds)
        except BaseException as exc:
            self._errors += 1
            kind = type(exc).__name__
            self._error_kinds[kind] = self._error_kinds.get(kind, 0) + 1
            raise
        self._latency.add(_now() - start)
        return out

    def stats(self) -> Stats:
        """Runs, failed runs, latency P50/P95/P99 (ms) and load time (s) so far."""
        return Stats.of(self._latency, self._errors, self.load_seconds)

    def histogram(self) -> LatencyHistogram:
        """A copy of the latency histogram so far (what fleet telemetry sends the delta of)."""
        return self._latency.copy()

    def error_kinds(self) -> dict[str, int]:
        """Failed runs so far by exception class name."""
        return dict(self._error_kinds)

    def reset_stats(self) -> None:
        """Forget the runs so far (after a warm-up, say); the load time stays."""
        self._latency = LatencyHistogram()
        self._errors = 0
        self._error_kinds = {}
