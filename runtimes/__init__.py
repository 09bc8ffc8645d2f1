"""edgekit.runtimes: run a bundle's artifacts on this host.

This is the thin device side: it imports numpy and, when a session is opened, onnxruntime. It never
imports converters or a training framework.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgekit.bundle import MANIFEST_NAME, Artifact, read_bundle
from edgekit.errors import BundleError
from edgekit.runtimes.base import Attempt, Runtime, Session
from edgekit.runtimes.null import NullSession
from edgekit.runtimes.onnxruntime import OrtRuntime, OrtSession

__all__ = ["Attempt", "NullSession", "OrtRuntime", "OrtSession", "Runtime", "Session", "open"]

_FORMAT_SUFFIXES = {".onnx": "onnx", ".ort": "ort"}


def open(  # noqa: A001 - the public name the SDK documents
    bundle_or_artifact: str | os.PathLike[str],
    *,
    target: str | None = None,
    format: str | None = None,
    providers: tuple[str, ...] | None = None,
) -> OrtSession:
    """Open a session on a bundle's artifact (verified against the manifest) or on a model file.

    Args:
        bundle_or_artifact: A bundle directory, or an ``.onnx``/``.ort`` file.
        target: The bundle's target to run; by default the first artifact this host can run.
        format: ``"onnx"`` or ``"ort"`` when a target has both.
        providers: Execution providers to try, in order (default: CPU).

    Raises:
        BundleError: Not a bundle or model file, no artifact this host can run, or it fails to load.
        IntegrityError: The artifact's bytes differ from the manifest.
    """
    path = Path(bundle_or_artifact)
    runtime = OrtRuntime()
    if path.is_file() and path.suffix in _FORMAT_SUFFIXES:
        return runtime.open(path, providers=providers)
    if not (path / MANIFEST_NAME).is_file():
        raise BundleError(f"{path} is neither a bundle directory nor an .onnx/.ort model file")
    bundle = read_bundle(path)
    candidates: list[Artifact] = [
        a for a in bundle.manifest.artifacts
        if a.format in runtime.formats and (target is None or a.target == target)
        and (format is None or a.format == format)
    ]
    if not candidates:
        have = ", ".join(f"{a.target} ({a.format})" for a in bundle.manifest.artifacts) or "none"
        wanted = f"target {target!r}" if target else "any artifact"
        raise BundleError(f"bundle {path} has no {wanted} that onnxruntime can run; it has: {have}")
    return runtime.open(bundle.artifact_path(candidates[0]), providers=providers)
