"""ONNX Runtime sessions for ``.onnx`` and ``.ort`` artifacts.

edgekit owns the provider fallback: ONNX Runtime's Python session silently retries other providers,
so each provider is opened on its own and every attempt is recorded in ``Session.attempts``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle import TensorSpec
from edgekit.errors import BundleError
from edgekit.runtimes.base import Attempt

log = logging.getLogger(__name__)

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
    "tensor(bfloat16)": "bfloat16",
}


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) or d is None else str(d) for d in arg.shape)
    return TensorSpec(name=arg.name, shape=shape, dtype=_ORT_DTYPES.get(arg.type, arg.type))


class OrtSession:
    """One ONNX Runtime inference session on the provider that actually opened."""

    def __init__(self, session: Any, attempts: tuple[Attempt, ...], load_seconds: float):
        self._session = session
        self.attempts = attempts
        self.provider: str = session.get_providers()[0]
        self.load_seconds = load_seconds
        self.inputs = tuple(_spec(a) for a in session.get_inputs())
        self.outputs = tuple(_spec(a) for a in session.get_outputs())

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; feeds are keyed by input name."""
        names = [o.name for o in self.outputs]
        values = self._session.run(names, dict(feeds))
        return dict(zip(names, values, strict=True))


class OrtRuntime:
    """ONNX Runtime, for the ``onnx`` and ``ort`` artifact formats."""

    name = "onnxruntime"
    formats = ("onnx", "ort")

    def is_available(self) -> bool:
        """True when the onnxruntime package imports."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return True

    def open(self, path: Path, *, providers: tuple[str, ...] | None = None,
             optimization: str = "all") -> OrtSession:
        """Open ``path`` on the first provider of ``providers`` that works (default: CPU only).

        Args:
            path: An ``.onnx`` or ``.ort`` file.
            providers: Execution providers to try in order; each one is tried alone.
            optimization: ONNX Runtime graph optimization level: ``none``, ``basic``, ``extended``
                or ``all``.

        Raises:
            BundleError: No provider could load the model (the reasons of each are listed).
        """
        import onnxruntime as ort

        levels = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        available = set(ort.get_available_providers())
        attempts: list[Attempt] = []
        for provider in providers or ("CPUExecutionProvider",):
            if provider not in available:
                attempts.append(Attempt(provider, False, "not offered by the installed onnxruntime"))
                continue
            options = ort.SessionOptions()
            options.graph_optimization_level = levels[optimization]
            options.log_severity_level = 3
            start = time.perf_counter()
            try:
                session = ort.InferenceSession(str(path), sess_options=options, providers=[provider])
            except Exception as exc:  # onnxruntime raises its own untyped errors
                reason = f"{type(exc).__name__}: {exc}".strip()
                log.warning("onnxruntime could not open %s with %s: %s", path.name, provider, reason)
                attempts.append(Attempt(provider, False, reason))
                continue
            seconds = time.perf_counter() - start
            attempts.append(Attempt(provider, True))
            return OrtSession(session, tuple(attempts), seconds)
        tried = "; ".join(f"{a.provider}: {a.reason}" for a in attempts)
        raise BundleError(f"onnxruntime could not load {path}: {tried}")
