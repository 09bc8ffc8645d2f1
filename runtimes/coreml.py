"""Core ML (``.mlpackage``) sessions: coremltools' MLModel, on macOS only.

coremltools converts and saves on Linux but predicts only on macOS; elsewhere opening a Core ML
artifact is a clear error naming what the host can run instead (the bundle-level open says which
of the bundle's artifacts those are).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle import TensorSpec
from edgekit.errors import MissingDependencyError, ProviderError
from edgekit.runtimes.base import POLICIES, Attempt, TimedSession
from edgekit.runtimes.failures import reason, run_failure

# Compute units in the order "auto" tries them (Apple's names; ALL lets Core ML choose ANE, GPU or CPU).
COMPUTE_UNITS = ("ALL", "CPU_AND_GPU", "CPU_ONLY")


def host_can_run_coreml() -> bool:
    """True on macOS (where Core ML exists) with coremltools installed."""
    if sys.platform != "darwin":
        return False
    try:
        import coremltools  # noqa: F401
    except ImportError:
        return False
    return True


class CoreMlSession(TimedSession):
    """An MLModel with the compute units that loaded it."""

    def __init__(self, model: Any, provider: str, attempts: tuple[Attempt, ...], load_seconds: float):
        super().__init__()
        self._model = model
        self.provider = provider
        self.attempts = attempts
        self.load_seconds = load_seconds
        spec = model.get_spec().description
        self.inputs = tuple(TensorSpec(name=i.name, shape=tuple(i.type.multiArrayType.shape), dtype="float32")
                            for i in spec.input)
        self.outputs = tuple(TensorSpec(name=o.name, shape=tuple(o.type.multiArrayType.shape), dtype="float32")
                             for o in spec.output)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            result = self._model.predict({k: np.asarray(v) for k, v in feeds.items()})
        except Exception as exc:  # coremltools raises RuntimeError and others from the framework
            raise run_failure("coreml", self.provider, exc, self.inputs) from exc
        return {o.name: np.asarray(result[o.name]) for o in self.outputs}


class CoreMlRuntime:
    """Core ML through coremltools, for the ``mlpackage`` format (macOS only)."""

    name = "coreml"
    formats = ("mlpackage",)

    def is_available(self) -> bool:
        """True on macOS with coremltools installed."""
        return host_can_run_coreml()

    def open(self, path: Path, *, providers: str | Sequence[str] | None = None,
             policy: str = "fallback") -> CoreMlSession:
        """Load an ``.mlpackage`` with the first compute units that work (default: ALL, CPU_AND_GPU, CPU_ONLY).

        Raises:
            ProviderError: This host cannot run Core ML (not macOS), or no compute units loaded it.
            MissingDependencyError: coremltools is not installed (on macOS).
        """
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
        if sys.platform != "darwin":
            raise ProviderError(
                f"this host ({platform.system()} {platform.machine()}) cannot run Core ML artifacts such as "
                f"{path.name}: Core ML exists only on Apple platforms; run the bundle's onnx or tflite artifact here")
        try:
            import coremltools as ct
        except ImportError:
            raise MissingDependencyError("running .mlpackage artifacts needs coremltools: pip install coremltools") from None
        chain = COMPUTE_UNITS if providers in (None, "auto") else (
            tuple(p.strip() for p in providers.split(",")) if isinstance(providers, str) else tuple(providers))
        attempts: list[Attempt] = []
        for units in chain:
            start = time.perf_counter()
            try:
                model = ct.models.MLModel(os.fspath(path), compute_units=getattr(ct.ComputeUnit, units.upper()))
            except Exception as exc:  # unknown units (AttributeError) or a framework load failure
                attempts.append(Attempt(units, False, reason(exc)))
                if policy == "strict":
                    raise ProviderError(f"Core ML could not load {path.name} with {units}: {exc}") from None
                continue
            return CoreMlSession(model, units.upper(), (*attempts, Attempt(units.upper(), True)),
                                 time.perf_counter() - start)
        tried = "; ".join(f"{a.provider}: {a.reason}" for a in attempts)
        raise ProviderError(f"Core ML could not load {path}: {tried}")
