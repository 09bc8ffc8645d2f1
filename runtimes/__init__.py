"""edgekit.runtimes: run a bundle's artifacts on this host.

This is the thin device side: it imports numpy and, when a session is opened, the runtime of the
artifact's format (onnxruntime, ai-edge-litert). It never imports converters or a training framework.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgekit.bundle import MANIFEST_NAME, Artifact, read_bundle
from edgekit.errors import BundleError
from edgekit.runtimes.adapt import AdaptedSession, adapt
from edgekit.runtimes.base import Attempt, Runtime, Session
from edgekit.runtimes.litert import LiteRtRuntime, LiteRtSession
from edgekit.runtimes.null import NullSession
from edgekit.runtimes.onnxruntime import OrtRuntime, OrtSession

__all__ = ["AdaptedSession", "Attempt", "LiteRtRuntime", "LiteRtSession", "NullSession", "OrtRuntime", "OrtSession",
           "Runtime", "Session", "open", "runtime_for"]

_FORMAT_SUFFIXES = {".onnx": "onnx", ".ort": "ort", ".tflite": "tflite"}


def runtime_for(fmt: str) -> OrtRuntime | LiteRtRuntime:
    """The runtime that runs artifacts of format ``fmt``.

    Raises:
        BundleError: edgekit has no runtime for the format.
    """
    if fmt in OrtRuntime.formats:
        return OrtRuntime()
    if fmt in LiteRtRuntime.formats:
        return LiteRtRuntime()
    raise BundleError(f"edgekit has no runtime for {fmt!r} artifacts on this host")


def open(  # noqa: A001 - the public name the SDK documents
    bundle_or_artifact: str | os.PathLike[str],
    *,
    target: str | None = None,
    format: str | None = None,
    providers: tuple[str, ...] | None = None,
) -> Session:
    """Open a session on a bundle's artifact (verified against the manifest) or on a model file.

    A bundle's session takes and returns tensors in the source model's names, layout and dtype:
    it applies the layout transposes and int8 I/O quantization the manifest records.

    Args:
        bundle_or_artifact: A bundle directory, or an ``.onnx``/``.ort``/``.tflite`` file.
        target: The bundle's target to run; by default the first artifact this host can run.
        format: ``"onnx"`` or ``"ort"`` when a target has both.
        providers: Execution providers to try, in order (default: the runtime's CPU provider).

    Raises:
        BundleError: Not a bundle or model file, no artifact this host can run, or it fails to load.
        IntegrityError: The artifact's bytes differ from the manifest.
    """
    path = Path(bundle_or_artifact)
    if path.is_file() and path.suffix in _FORMAT_SUFFIXES:
        return runtime_for(_FORMAT_SUFFIXES[path.suffix]).open(path, providers=providers)
    if not (path / MANIFEST_NAME).is_file():
        raise BundleError(f"{path} is neither a bundle directory nor an .onnx/.ort/.tflite model file")
    bundle = read_bundle(path)
    runnable = {"onnx", "ort"} | ({"tflite"} if LiteRtRuntime().is_available() else set())
    candidates: list[Artifact] = [
        a for a in bundle.manifest.artifacts
        if a.format in runnable and (target is None or a.target == target) and (format is None or a.format == format)
    ]
    if not candidates:
        have = ", ".join(f"{a.target} ({a.format})" for a in bundle.manifest.artifacts) or "none"
        wanted = f"target {target!r}" if target else "any artifact"
        raise BundleError(f"bundle {path} has no {wanted} that this host can run ({', '.join(sorted(runnable))}); "
                          f"it has: {have}")
    art = candidates[0]
    raw = runtime_for(art.format).open(bundle.artifact_path(art), providers=providers)
    return adapt(raw, art.inputs, art.outputs)
