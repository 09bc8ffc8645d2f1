"""A numpy reference interpreter for Core ML ML Programs (MIL), so Core ML artifacts are checked on Linux.

coremltools converts, compresses and saves ``.mlpackage`` files on any OS but predicts only on
macOS. This module reads a saved package back (its spec and weight blobs, through coremltools'
MIL loader) and evaluates the program op by op in numpy, including the compressed-weight ops that
edgekit's compression emits. Each op's result is rounded to the dtype the program declares for it
(fp16 programs store every intermediate as float16), so fp16 rounding is reproduced; accumulation
runs in float32. An op this interpreter does not know is reported by name before anything runs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import edgekit.converters.mil.control
import edgekit.converters.mil.ops
import edgekit.converters.mil.ops_compressed
import edgekit.converters.mil.ops_nn  # noqa: F401  (these fill OPS and CONTROL)
from edgekit.bundle import TensorSpec
from edgekit.converters.mil.ops_compressed import unpack_bits
from edgekit.converters.mil.table import CONTROL, OPS, Env, dtype_of, op_types, run_block
from edgekit.errors import BundleError, NotVerifiableError
from edgekit.runtimes.base import Attempt, TimedSession

__all__ = ["OPS", "MilRuntime", "MilSession", "load_program", "unpack_bits"]


# ---------------------------------------------------------------- the session

def load_program(path: Path) -> Any:
    """The main function of a saved ``.mlpackage``, as coremltools' MIL objects with weights loaded."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    if not spec.HasField("mlProgram"):
        raise NotVerifiableError(f"{path.name} is a neural-network Core ML model, not an ML Program; the MIL "
                                 "reference interpreter reads ML Programs only")
    weights = path / "Data" / "com.apple.CoreML" / "weights"
    program = load_milproto(spec, spec.specificationVersion, str(weights))
    return program.functions["main"]


def _spec(var: Any) -> TensorSpec:
    from coremltools.converters.mil.mil import types

    shape = tuple(int(d) if isinstance(d, (int, np.integer)) else None for d in var.shape)
    return TensorSpec(name=var.name, shape=shape, dtype=types.builtin_to_string(var.dtype).replace("fp", "float"))


class MilSession(TimedSession):
    """Runs a Core ML ML Program in numpy (the provider is ``mil-reference``)."""

    def __init__(self, function: Any, load_seconds: float):
        super().__init__()
        self._function = function
        self.half: frozenset[str] = frozenset()  # ops computed as float16 although declared fp32 (see run_block)
        self.weights: dict[str, np.ndarray] = {}  # constants replaced by these values (see run_block)
        self.provider = "mil-reference"
        self.attempts = (Attempt(self.provider, True),)
        self.load_seconds = load_seconds
        self.inputs = tuple(_spec(v) for v in function.inputs.values())
        self.outputs = tuple(_spec(v) for v in function.outputs)
        self.op_types = sorted(op_types(function.operations))

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        env: Env = {}
        for name, var in self._function.inputs.items():
            env[name] = np.asarray(feeds[name]).astype(dtype_of(var))
        run_block(self._function.operations, env, self.half, self.weights)
        return {o.name: env[o.name] for o in self._function.outputs}


class MilRuntime:
    """The reference interpreter as a runtime for ``mlpackage`` artifacts (validation on any OS)."""

    name = "mil-reference"
    formats = ("mlpackage",)

    def is_available(self) -> bool:
        """True when coremltools is installed (it reads the package)."""
        try:
            import coremltools  # noqa: F401
        except ImportError:
            return False
        return True

    def open(self, path: Path, *, providers: Any = None, policy: str = "fallback") -> MilSession:
        """Read ``path`` and check that every op is one the interpreter knows.

        Raises:
            NotVerifiableError: The program uses an op the interpreter does not implement (named).
            BundleError: The package cannot be read.
        """
        start = time.perf_counter()
        try:
            function = load_program(Path(path))
        except NotVerifiableError:
            raise
        except Exception as exc:  # coremltools raises many types for a bad package
            raise BundleError(f"coremltools could not read {path}: {type(exc).__name__}: {exc}") from exc
        known = set(OPS) | set(CONTROL) | {"const"}
        unknown = sorted(op_types(function.operations) - known)
        if unknown:
            raise NotVerifiableError(f"unverified: op {', '.join(unknown)} (not implemented by edgekit's MIL reference "
                                     "interpreter)")
        return MilSession(function, time.perf_counter() - start)
