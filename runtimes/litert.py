"""LiteRT (``ai-edge-litert``) sessions for ``.tflite`` artifacts.

``ai-edge-litert`` is TensorFlow Lite's successor and needs no TensorFlow; ``tflite_runtime`` is
accepted as a fallback import only (it fails on numpy 2 and on newer op versions).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle import TensorSpec
from edgekit.errors import InvalidInputError, MissingDependencyError, ProviderError
from edgekit.runtimes.base import POLICIES, Attempt, TimedSession
from edgekit.runtimes.failures import reason, run_failure

log = logging.getLogger(__name__)
GPU = "GPU"  # LiteRT's GPU delegate, when its shared library can be loaded on this host
XNNPACK = "XNNPACK"  # LiteRT's default CPU delegate, applied by the interpreter itself
CPU = "CPU"  # LiteRT's builtin kernels without default delegates: slower, but runs what XNNPACK refuses
DEFAULT_PROVIDERS = (GPU, XNNPACK, CPU)
# Where the GPU delegate lives on the platforms that ship one (Android apps bundle it; desktops rarely have it).
GPU_DELEGATE_LIBRARIES = ("libtensorflowlite_gpu_delegate.so", "libLiteRtGpuAccelerator.so")


def _interpreter_module() -> Any:
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        try:
            from tflite_runtime import interpreter  # type: ignore[no-redef,unused-ignore]
        except ImportError:
            raise MissingDependencyError(
                "running .tflite artifacts needs ai-edge-litert; install it with: pip install 'edgekit[litert]'"
            ) from None
    return interpreter


def _spec(details: Mapping[str, Any], name: str) -> TensorSpec:
    shape = details.get("shape_signature")
    if shape is None or len(shape) == 0:
        shape = details["shape"]
    dims = tuple(int(d) if int(d) >= 0 else None for d in shape)
    scale, zero = details.get("quantization", (0.0, 0))
    dtype = np.dtype(details["dtype"]).name
    quant = {"scale": float(scale), "zero_point": int(zero)} if scale else None
    return TensorSpec(name=name, shape=dims, dtype=dtype, quantization=quant)


class LiteRtSession(TimedSession):
    """One LiteRT interpreter, fed by tensor index: the signature's names map to the interpreter's tensors.

    A run goes straight to ``set_tensor``/``invoke``/``get_tensor`` (what a hand-written loop does);
    only a feed LiteRT refuses (another batch size, a float64 array) is checked against the model's
    shape signature, cast or used to resize the tensors, then set again.
    """

    def __init__(self, interpreter: Any, attempts: tuple[Attempt, ...], load_seconds: float):
        super().__init__()
        self._interpreter = interpreter
        self.attempts = attempts
        self.provider = attempts[-1].provider
        self.load_seconds = load_seconds
        interpreter.allocate_tensors()  # fails here, not at the first run, on ops the interpreter lacks (Flex)
        signatures = interpreter.get_signature_list()
        if signatures:
            key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
            runner = interpreter.get_signature_runner(key)
            in_details, out_details = runner.get_input_details(), runner.get_output_details()
            # signature_list keeps the model's order; the details dicts may not
            ins = [(n, in_details[n]) for n in signatures[key]["inputs"]]
            outs = [(n, out_details[n]) for n in signatures[key]["outputs"]]
        else:
            ins = [(d["name"], d) for d in interpreter.get_input_details()]
            outs = [(d["name"], d) for d in interpreter.get_output_details()]
        self.inputs = tuple(_spec(d, n) for n, d in ins)
        self.outputs = tuple(_spec(d, n) for n, d in outs)
        self._in_index = [(n, int(d["index"])) for n, d in ins]
        self._out_index = [(n, int(d["index"])) for n, d in outs]
        # what each input tensor holds now: (shape, dtype); a feed that matches needs no check
        self._current = {n: (tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"])) for n, d in ins}
        self._set, self._invoke, self._get = interpreter.set_tensor, interpreter.invoke, interpreter.get_tensor

    def _prepare(self, name: str, value: Any) -> np.ndarray:
        """Check a feed that differs from the last one; cast floats, resize the tensor for a new size."""
        spec = next(s for s in self.inputs if s.name == name)
        array: np.ndarray = np.asarray(value)
        fixed = [(i, d) for i, d in enumerate(spec.shape) if isinstance(d, int)]
        if array.ndim != len(spec.shape) or any(array.shape[i] != d for i, d in fixed):
            raise InvalidInputError(f"input {name!r} has shape {list(array.shape)}; the model takes "
                                    f"{list(spec.shape)} (None: any size)")
        if array.dtype.name != spec.dtype:
            want = np.dtype(spec.dtype)
            # floats cast to the model's float; integers (int64 token ids, where TFLite takes int32) when they fit
            fits = array.dtype.kind == want.kind == "f" or (
                array.dtype.kind in "iu" and want.kind in "iu" and
                (array.size == 0 or (array.min() >= np.iinfo(want).min and array.max() <= np.iinfo(want).max)))
            if not fits:
                raise InvalidInputError(f"input {name!r} is {array.dtype.name}; the model takes {spec.dtype}")
            array = array.astype(want)
        if array.shape != self._current[name][0]:
            index = dict(self._in_index)[name]
            self._interpreter.resize_tensor_input(index, array.shape)
            self._interpreter.allocate_tensors()
            self._current[name] = (array.shape, array.dtype)
        return array

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; a batch size different from the last run resizes the interpreter's tensors."""
        set_tensor = self._set
        try:
            for name, index in self._in_index:
                value = feeds[name]
                try:  # LiteRT checks shape and dtype itself: Python checks only what it refuses
                    set_tensor(index, value)
                except ValueError:
                    set_tensor(index, self._prepare(name, value))
            self._invoke()
        except KeyError as exc:
            missing = [n for n, _ in self._in_index if n not in feeds]
            raise run_failure("litert", self.provider, exc, self.inputs, missing) from None
        except (RuntimeError, ValueError) as exc:  # runtimes/failures.py: what LiteRT's errors mean
            raise run_failure("litert", self.provider, exc, self.inputs) from exc
        get_tensor = self._get
        return {name: get_tensor(index) for name, index in self._out_index}


class LiteRtRuntime:
    """LiteRT for the ``tflite`` artifact format (XNNPACK on CPU)."""

    name = "litert"
    formats = ("tflite",)

    def is_available(self) -> bool:
        """True when ai-edge-litert (or tflite_runtime) imports."""
        try:
            _interpreter_module()
        except MissingDependencyError:
            return False
        return True

    def open(self, path: Path, *, providers: str | Sequence[str] | None = None, policy: str = "fallback",
             threads: int | None = None) -> LiteRtSession:
        """Load a ``.tflite`` file on the first of ``providers`` that works (default: GPU, XNNPACK, CPU).

        ``GPU`` is tried when LiteRT's GPU delegate library loads on this host; ``CPU`` is LiteRT's
        builtin kernels without the XNNPACK delegate (XNNPACK refuses some quantized graphs at load
        time). Every provider passed over is recorded in ``attempts`` with its reason.

        Raises:
            MissingDependencyError: ai-edge-litert is not installed.
            ProviderError: No provider could load the model, or ``strict`` met a failure.
        """
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
        module = _interpreter_module()
        resolvers = {XNNPACK: module.OpResolverType.AUTO, CPU: module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                     GPU: module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
        chain = DEFAULT_PROVIDERS if providers in (None, "auto") else (
            tuple(p.strip() for p in providers.split(",")) if isinstance(providers, str) else tuple(providers))
        attempts: list[Attempt] = []
        for name in chain:
            provider = name.upper()
            start = time.perf_counter()
            try:
                if provider not in resolvers:
                    raise _Refused("not offered by edgekit's LiteRT runtime (it offers GPU, XNNPACK, CPU)")
                delegates = [_gpu_delegate(module)] if provider == GPU else None
                interpreter = module.Interpreter(model_path=os.fspath(path), num_threads=threads,
                                                 experimental_delegates=delegates,
                                                 experimental_op_resolver_type=resolvers[provider])
                session = LiteRtSession(interpreter, (*attempts, Attempt(provider, True)), 0.0)
            except (_Refused, RuntimeError, ValueError) as exc:
                why = str(exc).strip()[:500] if isinstance(exc, _Refused) else reason(exc)
                attempts.append(Attempt(provider, False, why))
                # "auto" lists GPU in case a delegate is present: its absence is not a failure
                absent_gpu = provider == GPU and providers in (None, "auto") and isinstance(exc, _Refused)
                if absent_gpu:
                    continue
                if policy == "strict":
                    raise ProviderError(f"LiteRT could not run {path.name} on {provider} and the policy is strict: "
                                        f"{why}") from None
                log.warning("LiteRT: %s passed over for %s: %s", provider, path.name, why)
                continue
            session.load_seconds = time.perf_counter() - start
            return session
        tried = "; ".join(f"{a.provider}: {a.reason}" for a in attempts)
        raise ProviderError(f"LiteRT could not load {path}: {tried}")


class _Refused(Exception):
    """A provider attempt that was not made; the message is the recorded reason."""


def _gpu_delegate(module: Any) -> Any:
    """LiteRT's GPU delegate, or :class:`_Refused` naming the libraries looked for."""
    import ctypes

    errors = []
    for library in GPU_DELEGATE_LIBRARIES:
        try:
            ctypes.CDLL(library)  # dlopen first: LiteRT's Delegate object misbehaves when its library is missing
            return module.load_delegate(library)
        except (ValueError, OSError, RuntimeError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else "not loadable"
            errors.append(text if text.startswith(library) else f"{library}: {text}")
    raise _Refused("no GPU delegate loads on this host (" + "; ".join(errors) + ")")
