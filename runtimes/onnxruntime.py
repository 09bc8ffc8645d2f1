"""ONNX Runtime sessions for ``.onnx`` and ``.ort`` artifacts, with a provider chain that is never silent.

ONNX Runtime's Python session quietly swaps a provider that fails for CPU and quietly runs nodes an
accelerator lacks on CPU. edgekit opens one provider at a time, checks that the provider asked for
is the one that runs, gives every accelerator a first run on zero inputs (missing libraries and
out-of-memory show up there, not at creation), counts the nodes ONNX Runtime placed on CPU inside an
accelerator session, and records all of it in ``attempts`` and ``notes``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle import TensorSpec
from edgekit.errors import InferenceError, ProviderError
from edgekit.runtimes.base import POLICIES, Attempt, TimedSession
from edgekit.runtimes.failures import reason, run_failure

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
# Tried in this order when the caller says "auto", intersected with what the installed onnxruntime offers.
PRIORITY = (
    "TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider",
    "DmlExecutionProvider", "CoreMLExecutionProvider", "QNNExecutionProvider", "OpenVINOExecutionProvider",
    "NnapiExecutionProvider", "XnnpackExecutionProvider", CPU,
)
SHORT_NAMES = {
    "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider", "migraphx": "MIGraphXExecutionProvider", "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider", "coreml": "CoreMLExecutionProvider", "qnn": "QNNExecutionProvider",
    "openvino": "OpenVINOExecutionProvider", "nnapi": "NnapiExecutionProvider", "xnnpack": "XnnpackExecutionProvider",
    "cpu": CPU, "azure": "AzureExecutionProvider",
}
# Provider "options" whose key starts with this are session config entries, applied to that attempt only.
SESSION_KEY = "session."
# onnxruntime's NCHWc layout transformer (ORT_ENABLE_ALL, CPU) crashes the process with SIGSEGV on some
# float16 graphs (a ViT of the corpus, onnxruntime 1.2x); on CPU float16 ops run in float32 anyway, so the
# blocked layout brings little there. Float16 artifacts are opened without it.
FP16_DISABLED_OPTIMIZERS = ("NchwcTransformer",)

ProviderSpec = str | tuple[str, Mapping[str, Any]]

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


def provider_name(name: str) -> str:
    """The ONNX Runtime name of a provider given by its full or short name (``cuda``, ``cpu``...)."""
    return SHORT_NAMES.get(name.lower().removesuffix("executionprovider"), name)


def provider_chain(providers: str | Sequence[ProviderSpec] | None) -> list[tuple[str, dict[str, Any]]]:
    """The providers to try, in order, with their options: ``"auto"`` (or None) is the priority order
    intersected with what the installed onnxruntime offers; a list is taken in the caller's order."""
    import onnxruntime as ort

    if providers is None or providers == "auto":
        available = set(ort.get_available_providers())
        return [(p, {}) for p in PRIORITY if p in available]
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    chain = []
    for item in providers:
        name, options = (item, {}) if isinstance(item, str) else (item[0], dict(item[1]))
        chain.append((provider_name(name), options))
    return chain


def zero_feeds(inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    """Zeros for each input, dynamic dimensions set to 1: the probe run of an accelerator."""
    feeds = {}
    for spec in inputs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
        dtype = np.dtype(spec.dtype) if spec.dtype != "string" else np.dtype(object)
        feeds[spec.name] = np.zeros(shape, dtype=dtype)
    return feeds


def _placement(profile: str) -> dict[str, list[str]]:
    """Node op types by the provider that ran them, from an ONNX Runtime profile."""
    with open(profile, encoding="utf-8") as f:
        events = json.load(f)
    nodes: dict[str, dict[str, str]] = {}
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and "provider" in args:
            nodes.setdefault(args["provider"], {})[event.get("name", "").removesuffix("_kernel_time")] = args.get(
                "op_name", "?")
    return {p: list(ops.values()) for p, ops in nodes.items()}


class OrtSession(TimedSession):
    """One ONNX Runtime inference session on the provider that actually opened."""

    def __init__(self, session: Any, provider: str, attempts: tuple[Attempt, ...], load_seconds: float,
                 notes: tuple[str, ...] = (), placement: dict[str, int] | None = None):
        super().__init__()
        self._session = session
        self.provider = provider
        self.attempts = attempts
        self.load_seconds = load_seconds
        self.notes = notes
        self.placement = placement  # nodes per provider, measured for accelerator sessions
        self.inputs = tuple(_spec(a) for a in session.get_inputs())
        self.outputs = tuple(_spec(a) for a in session.get_outputs())
        self._names = [o.name for o in self.outputs]

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(self._names, feeds if isinstance(feeds, dict) else dict(feeds))
        except Exception as exc:  # runtimes/failures.py reads onnxruntime's exception classes
            error = run_failure("onnxruntime", self.provider, exc, self.inputs)
            raise error from (exc if isinstance(error, InferenceError) else None)
        return dict(zip(self._names, values, strict=True))


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

    def open(self, path: Path, *, providers: str | Sequence[ProviderSpec] | None = None, policy: str = "fallback",
             optimization: str = "all", precision: str | None = None) -> OrtSession:
        """Open ``path`` on the first provider of the chain that loads and runs it.

        Args:
            path: An ``.onnx`` or ``.ort`` file.
            providers: ``"auto"`` (default: every accelerator the installed onnxruntime offers, in
                priority order, then CPU), or provider names in the order to try (``"cuda"`` or
                ``"CUDAExecutionProvider"``), each optionally as ``(name, options)``; option keys
                starting with ``session.`` are session config entries for that attempt.
            policy: ``"fallback"`` moves on to the next provider (logging a warning) when one fails;
                ``"strict"`` raises instead, and also refuses an accelerator session that would run
                some nodes on CPU.
            optimization: ONNX Runtime graph optimization level: ``none``, ``basic``, ``extended``
                or ``all``.
            precision: The artifact's precision from its manifest. ``fp16`` graphs are opened without
                the optimizers in :data:`FP16_DISABLED_OPTIMIZERS`.

        Raises:
            ProviderError: No provider could load and run the model, or ``strict`` met a failure
                (every attempt and its reason are listed).
        """
        import onnxruntime as ort

        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
        levels = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        available = set(ort.get_available_providers())
        attempts: list[Attempt] = []
        chain = provider_chain(providers)
        for provider, options in chain:
            if provider not in available:
                reason = "not offered by the installed onnxruntime " + (
                    f"{ort.__version__} (it offers {', '.join(sorted(available))})")
            else:
                start = time.perf_counter()
                try:
                    session = self._try(ort, path, provider, options, levels[optimization], policy,
                                        FP16_DISABLED_OPTIMIZERS if precision == "fp16" else ())
                except _Refused as refused:
                    reason = str(refused)
                else:
                    session.load_seconds = time.perf_counter() - start
                    session.attempts = (*attempts, Attempt(provider, True))
                    return session
            attempts.append(Attempt(provider, False, reason))
            if policy == "strict":
                raise ProviderError(f"{provider} could not run {path.name} and the policy is strict: {reason}")
            log.warning("onnxruntime: %s passed over for %s: %s", provider, path.name, reason)
        tried = "; ".join(f"{a.provider}: {a.reason}" for a in attempts) or "no provider was allowed"
        raise ProviderError(f"onnxruntime could not load {path}: {tried}")

    def _try(self, ort: Any, path: Path, provider: str, options: dict[str, Any], level: Any,
             policy: str, disabled: Sequence[str] = ()) -> OrtSession:
        accelerator = provider != CPU
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.log_severity_level = 3
        provider_options = {k: str(v) for k, v in options.items() if not k.startswith(SESSION_KEY)}
        for key, value in options.items():
            if key.startswith(SESSION_KEY):
                so.add_session_config_entry(key, str(value))
        if accelerator and policy == "strict":
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        with tempfile.TemporaryDirectory(prefix="edgekit-ort-") as tmp:
            if accelerator:  # one profiled probe run shows where each node ran
                so.enable_profiling = True
                so.profile_file_prefix = os.path.join(tmp, "probe")
            try:
                session = ort.InferenceSession(str(path), sess_options=so, providers=[(provider, provider_options)],
                                               **({"disabled_optimizers": list(disabled)} if disabled else {}))
            except Exception as exc:
                raise _Refused(f"session creation failed: {reason(exc)}") from None
            actual = session.get_providers()[0]
            if actual != provider:
                raise _Refused(f"onnxruntime silently fell back to {actual}")
            placement: dict[str, int] | None = None
            notes: tuple[str, ...] = ()
            opened = OrtSession(session, provider, (), 0.0)
            if accelerator:
                try:
                    session.run(None, zero_feeds(opened.inputs))
                except Exception as exc:
                    raise _Refused(f"first run failed: {reason(exc)}") from None
                by_provider = _placement(session.end_profiling())
                placement = {p: len(ops) for p, ops in by_provider.items()}
                on_cpu = by_provider.get(CPU, [])
                if on_cpu:
                    total = sum(placement.values())
                    note = (f"partial placement: {len(on_cpu)} of {total} nodes run on CPU inside the {provider} "
                            f"session (ops: {', '.join(sorted(set(on_cpu)))}); data crosses between devices")
                    log.warning("onnxruntime: %s: %s", path.name, note)
                    notes = (note,)
            return OrtSession(session, provider, (), 0.0, notes, placement)


class _Refused(Exception):
    """A provider attempt failed; the message is the recorded reason."""
