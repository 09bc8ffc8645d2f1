"""The artifact formats edgekit writes: one table of their facts (core: data only, no imports).

Each format's file suffix, whether it is a directory, what a device needs to run it (recorded in
OTA descriptors), and the class edgekit loads to check an artifact of it on this host (named, not
imported: Core ML artifacts are checked by the numpy MIL interpreter on any OS).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FormatInfo:
    name: str
    suffix: str
    device_runtime: str  # what a device needs to run it
    checker: str  # "module:Class" of the runtime adapter that checks it here
    directory: bool = False


FORMATS: dict[str, FormatInfo] = {f.name: f for f in (
    FormatInfo("onnx", ".onnx", "onnxruntime", "edgekit.runtimes.onnxruntime:OrtRuntime"),
    FormatInfo("ort", ".ort", "onnxruntime", "edgekit.runtimes.onnxruntime:OrtRuntime"),
    FormatInfo("tflite", ".tflite", "ai-edge-litert", "edgekit.runtimes.litert:LiteRtRuntime"),
    FormatInfo("mlpackage", ".mlpackage", "coreml (macOS)", "edgekit.converters.mil:MilRuntime", directory=True),
)}


def format_of(path: str | Path) -> str | None:
    """The format of an artifact file by its suffix (None when edgekit writes no such format)."""
    suffix = Path(path).suffix.lower()
    return next((f.name for f in FORMATS.values() if f.suffix == suffix), None)
