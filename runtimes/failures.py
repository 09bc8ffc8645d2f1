"""What the runtime libraries raise, in edgekit's terms: the one place that reads onnxruntime's,
LiteRT's and Core ML's exceptions.

Each library has its own habits: onnxruntime raises classes from its compiled module
(``onnxruntime.capi.onnxruntime_pybind11_state``: ``InvalidArgument`` for inputs it refuses,
``Fail``, ``InvalidGraph``, ...), LiteRT raises ``ValueError``/``RuntimeError`` with C++ text,
coremltools anything from the framework. The sessions hand an exception to :func:`run_failure`
and raise what it returns; provider attempts record :func:`reason`.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgekit.bundle import TensorSpec
from edgekit.errors import InferenceError, InvalidInputError

RUNTIME_NAMES = {"onnxruntime": "onnxruntime", "litert": "LiteRT", "coreml": "Core ML"}


def reason(exc: BaseException) -> str:
    """``Class: first line`` of a library's exception (at most 400 characters): a provider attempt's reason."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {(text.splitlines() or [''])[0][:400]}"


def _refuses_inputs(runtime: str, exc: BaseException) -> bool:
    """Whether ``exc`` says the inputs are wrong (their names, shapes or dtypes), not the model or the runtime."""
    text = str(exc).lower()
    if runtime == "onnxruntime":
        try:
            from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument
        except ImportError:  # another build's layout: judge by the class name
            return type(exc).__name__ in ("InvalidArgument", "Fail") or "invalid" in text or "input" in text
        return isinstance(exc, InvalidArgument) or (isinstance(exc, Fail) and ("invalid" in text or "input" in text))
    if runtime == "litert":
        return isinstance(exc, KeyError)  # a feed named no input
    return False


def run_failure(runtime: str, provider: str, exc: BaseException, inputs: Sequence[TensorSpec],
                missing: Sequence[str] = ()) -> InvalidInputError | InferenceError:
    """The edgekit error for ``exc``, raised by ``runtime`` ("onnxruntime", "litert", "coreml") during a run
    on ``provider``: :class:`InvalidInputError` when the inputs were refused (naming what the model takes, or
    the ``missing`` ones), else :class:`InferenceError`."""
    name = RUNTIME_NAMES.get(runtime, runtime)
    if _refuses_inputs(runtime, exc):
        if missing:
            return InvalidInputError(f"missing input(s) {', '.join(missing)}; the model takes: "
                                     + ", ".join(s.name for s in inputs))
        wanted = ", ".join(f"{s.name} {list(s.shape)} {s.dtype}" for s in inputs)
        return InvalidInputError(f"{name} refused the inputs: {str(exc).strip()} (the model takes {wanted})")
    detail = f"{type(exc).__name__}: {str(exc).strip()}" if runtime == "onnxruntime" else str(exc)
    return InferenceError(f"{name} failed running the model on {provider}: {detail}")
