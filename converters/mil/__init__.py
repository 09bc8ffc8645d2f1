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

from edgekit.bundle import TensorSpec
from edgekit.converters.mil import ops, ops_compressed, ops_nn  # noqa: F401  (they fill OPS)
from edgekit.converters.mil.ops_compressed import unpack_bits
from edgekit.converters.mil.table import OPS, Env, dtype_of
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
        self.provider = "mil-reference"
        self.attempts = (Attempt(self.provider, True),)
        self.load_seconds = load_seconds
        self.inputs = tuple(_spec(v) for v in function.inputs.values())
        self.outputs = tuple(_spec(v) for v in function.outputs)
        self.op_types = sorted({op.op_type for op in function.operations})

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        env: Env = {}
        for name, var in self._function.inputs.items():
            env[name] = np.asarray(feeds[name]).astype(dtype_of(var))
        for op in self._function.operations:
            if op.op_type == "const":
                env[op.outputs[0].name] = np.asarray(op.outputs[0].val)
                continue

            def get(name: str, default: Any = None, op: Any = op) -> Any:
                var = op.inputs.get(name)
                if var is None:
                    return default
                if isinstance(var, (list, tuple)):
                    return [env[v.name] if v.name in env else v.val for v in var]
                if var.name in env:
                    return env[var.name]
                return var.val

            results = OPS[op.op_type](op, get)
            for var, value in zip(op.outputs, results, strict=True):
                env[var.name] = np.asarray(value).astype(dtype_of(var))
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
        unknown = sorted({op.op_type for op in function.operations if op.op_type != "const" and op.op_type not in OPS})
        if unknown:
            raise NotVerifiableError(f"unverified: op {', '.join(unknown)} (not implemented by edgekit's MIL reference "
                                     "interpreter)")
        return MilSession(function, time.perf_counter() - start)
