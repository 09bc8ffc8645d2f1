"""edgekit.runtimes: run a bundle's artifacts on this host.

This is the thin device side: it imports numpy and, when a session is opened, the runtime of the
artifact's format (onnxruntime; ai-edge-litert for TFLite; coremltools on macOS for Core ML). It
never imports converters or a training framework.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekit.bundle import MANIFEST_NAME, Artifact, Manifest, read_bundle, verify_artifact
from edgekit.errors import BundleError, EdgekitError, IntegrityError, ProviderError, did_you_mean
from edgekit.formats import format_of
from edgekit.runtimes.adapt import AdaptedSession, adapt
from edgekit.runtimes.base import POLICIES, Attempt, Runtime, Session, TimedSession
from edgekit.runtimes.coreml import CoreMlRuntime, host_can_run_coreml
from edgekit.runtimes.litert import LiteRtRuntime, LiteRtSession
from edgekit.runtimes.null import NullSession
from edgekit.runtimes.onnxruntime import CPU, OrtRuntime, OrtSession, provider_chain
from edgekit.runtimes.smoke import smoke_test
from edgekit.runtimes.stats import LatencyHistogram, Stats

__all__ = ["AdaptedSession", "Attempt", "CoreMlRuntime", "LatencyHistogram", "LiteRtRuntime", "LiteRtSession",
           "NullSession", "OrtRuntime", "OrtSession", "Runtime", "Session", "Stats", "choose", "open",
           "host_formats", "runtime_for", "smoke_test"]

log = logging.getLogger(__name__)
# Providers that make a host a GPU/NPU host for the choice of precision (XNNPACK is a CPU library).
_ACCELERATORS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider",
                 "MIGraphXExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider", "QNNExecutionProvider",
                 "OpenVINOExecutionProvider", "NnapiExecutionProvider")
_CPU_PRECISIONS = ("int8", "dynamic-int8", "fp32", "int16x8", "fp16")  # smallest that runs well on CPU first
_ACCEL_PRECISIONS = ("fp16", "fp32", "int8", "int16x8", "dynamic-int8")  # GPUs and NPUs favour fp16
# Core ML only where it runs. .onnx before .ort: an ORT-format file loads faster but keeps only the
# optimizations applied when it was written, and ran 2-3x slower per call on the digits CNN here.
_FORMAT_ORDER = ("mlpackage", "onnx", "ort", "tflite")


def precision_option(fmt: str, precision: str) -> dict[str, Any]:
    """The ``precision`` argument of ``open`` where the runtime takes one (onnxruntime: see
    :data:`edgekit.runtimes.onnxruntime.FP16_DISABLED_OPTIMIZERS`)."""
    return {"precision": precision} if fmt in ("onnx", "ort") else {}


def runtime_for(fmt: str) -> OrtRuntime | LiteRtRuntime | CoreMlRuntime:
    """The runtime that runs artifacts of format ``fmt``.

    Raises:
        BundleError: edgekit has no runtime for the format.
    """
    for runtime in (OrtRuntime(), LiteRtRuntime(), CoreMlRuntime()):
        if fmt in runtime.formats:
            return runtime
    raise BundleError(f"edgekit has no runtime for {fmt!r} artifacts")


def host_formats() -> dict[str, str]:
    """Each artifact format, and why this host cannot run it ('' when it can)."""
    litert = "" if LiteRtRuntime().is_available() else "needs ai-edge-litert (pip install 'edgekit[litert]')"
    coreml = "" if host_can_run_coreml() else "Core ML runs only on macOS (with coremltools)"
    return {"onnx": "", "ort": "", "tflite": litert, "mlpackage": coreml}


def choose(manifest: Manifest, *, target: str | None = None, format: str | None = None,
           providers: Any = "auto") -> tuple[list[Artifact], str]:
    """The bundle's artifacts this host can run, best first, and a sentence saying why the first leads.

    Parity first (passed, then accepted, then unverified); then precision by the hardware: on a
    host whose onnxruntime offers a GPU/NPU provider fp16 leads, on CPU the smallest (int8); then
    format (Core ML where it runs, ONNX, ORT format, TFLite).
    """
    why_not = host_formats()
    chain = [p for p, _ in provider_chain(providers)] if providers is not None else [CPU]
    accelerators = [p for p in chain if p in _ACCELERATORS]
    order = _ACCEL_PRECISIONS if accelerators else _CPU_PRECISIONS
    wanted = [a for a in manifest.artifacts
              if (target is None or a.target == target) and (format is None or a.format == format)]
    runnable = [a for a in wanted if not why_not.get(a.format, "unknown format")]

    def rank(a: Artifact) -> tuple[int, int, int]:
        verdict = 0 if a.parity is not None and a.parity.passed else 1 if a.parity is not None else 2
        precision = order.index(a.precision) if a.precision in order else len(order)
        fmt = _FORMAT_ORDER.index(a.format) if a.format in _FORMAT_ORDER else len(_FORMAT_ORDER)
        return verdict, precision, fmt

    runnable.sort(key=rank)
    skipped = sorted({f"{a.format} ({why_not.get(a.format) or 'unknown format'})" for a in wanted if a not in runnable})
    if not runnable:
        return [], "; ".join(skipped)
    best = runnable[0]
    host = f"onnxruntime offers {', '.join(accelerators)}" if accelerators else "CPU-only host"
    reason = (f"chose {best.target} ({best.format}, {best.precision}) of {len(runnable)} runnable: {host}, so "
              f"precision order {' > '.join(order[:3])}; parity "
              + ("passed" if best.parity is not None and best.parity.passed else "not passed"))
    if skipped:
        reason += f"; cannot run here: {', '.join(skipped)}"
    return runnable, reason


def open(  # noqa: A001 - the public name the SDK documents
    bundle_or_artifact: str | os.PathLike[str],
    *,
    target: str | None = None,
    format: str | None = None,
    providers: str | Sequence[Any] | None = "auto",
    policy: str = "fallback",
) -> TimedSession:
    """Open a session on a bundle's artifact (verified against the manifest) or on a model file.

    A bundle's session takes and returns tensors in the source model's names, layout and dtype:
    it applies the layout transposes and int8 I/O quantization the manifest records.

    Args:
        bundle_or_artifact: A bundle directory, or an ``.onnx``/``.ort``/``.tflite``/``.mlpackage`` path.
        target: The bundle's target to run; None picks the best artifact for this host (see
            :func:`choose`; the reason is the session's last note).
        format: ``"onnx"`` or ``"ort"`` when a target has both.
        providers: ``"auto"``, or the providers to try in order: onnxruntime names or short names
            (``"cuda"``, ``"cpu"``), LiteRT's ``GPU``/``XNNPACK``/``CPU``, Core ML's compute units.
        policy: ``"fallback"`` (the next provider, or the next artifact, when one fails; logged as a
            warning) or ``"strict"`` (raise at the first failure).

    Raises:
        BundleError: Not a bundle or model file, or no artifact this host can run.
        IntegrityError: The artifact's bytes differ from the manifest.
        ProviderError: No provider could run the artifact (every attempt is listed).
    """
    if policy not in POLICIES:
        raise BundleError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    path = Path(bundle_or_artifact)
    fmt = format_of(path)
    if fmt is not None and path.exists() and not (path / MANIFEST_NAME).is_file():
        return runtime_for(fmt).open(path, providers=providers, policy=policy)
    if not (path / MANIFEST_NAME).is_file():
        raise BundleError(f"{path} is neither a bundle directory nor an .onnx/.ort/.tflite/.mlpackage model")
    bundle = read_bundle(path, verify=False)  # only the artifact that runs is hashed, just before it opens
    absent = {a.file for a in bundle.manifest.artifacts if not bundle.artifact_path(a).exists()}
    present = bundle.manifest if not absent else dataclasses.replace(
        bundle.manifest, artifacts=tuple(a for a in bundle.manifest.artifacts if a.file not in absent))
    if absent and not present.artifacts:
        raise IntegrityError(f"bundle {path} holds none of its artifacts' files ({', '.join(sorted(absent))}); "
                             "download or convert the bundle again")
    candidates, reason = choose(present, target=target, format=format, providers=providers)
    if not candidates:
        have = ", ".join(f"{a.target} ({a.format})" for a in bundle.manifest.artifacts) or "none"
        hint = did_you_mean(target, {a.target for a in bundle.manifest.artifacts}) if target else ""
        wanted = f"target {target!r}{hint}" + (f" in format {format!r}" if format else "") if target else "any artifact"
        raise BundleError(f"bundle {path} has no {wanted} that this host can run ({reason or 'no such target'}); "
                          f"it has: {have}")
    failures: list[str] = []
    for art in candidates if target is None and policy == "fallback" else candidates[:1]:
        verify_artifact(bundle, art)  # IntegrityError: the bytes differ from the manifest, never run
        try:
            raw = runtime_for(art.format).open(bundle.artifact_path(art), providers=providers, policy=policy,
                                               **precision_option(art.format, art.precision))
        except EdgekitError as exc:
            if policy == "strict" or target is not None:
                raise
            failures.append(f"{art.target} ({art.format}): {exc}")
            log.warning("could not open %s (%s): %s; trying the next artifact", art.target, art.format, exc)
            continue
        session = adapt(raw, art.inputs, art.outputs)
        session.bundle, session.artifact = bundle, art
        notes = [*session.notes, reason if art is candidates[0] else f"{art.target} ({art.format}) after: "
                 + " | ".join(failures)]
        session.notes = tuple(notes)
        return session
    raise ProviderError("no artifact of the bundle could be opened: " + " | ".join(failures))
