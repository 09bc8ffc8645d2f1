"""A runtime that needs no hardware: it returns zeros of the declared output shapes.

It lets code around a session (CLI, apps, tests of the plumbing) run without a model runtime.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgekit.bundle import TensorSpec
from edgekit.runtimes.base import Attempt, TimedSession


class NullSession(TimedSession):
    """Answers every run with zero arrays shaped like the declared outputs."""

    provider = "null"
    load_seconds = 0.0

    def __init__(self, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]):
        super().__init__()
        self.inputs = inputs
        self.outputs = outputs
        self.attempts = (Attempt("null", True),)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Zeros for each output; a dynamic leading dim takes the first feed's batch size."""
        batch = next(iter(feeds.values())).shape[0] if feeds else 1
        out = {}
        for spec in self.outputs:
            shape = [d if isinstance(d, int) and d >= 0 else batch for d in spec.shape]
            out[spec.name] = np.zeros(shape, dtype=np.dtype(spec.dtype))
        return out
