"""Optional dependencies: import a heavy module on first use, or say which extra to install."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from edgekit.errors import MissingDependencyError

# module name -> (pip distribution, edgekit extra that brings it)
OPTIONAL_MODULES: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "onnx"),
    "onnxslim": ("onnxslim", "onnx"),
    "onnxconverter_common": ("onnxconverter-common", "onnx"),
    "onnxscript": ("onnxscript", "torch"),
    "torch": ("torch", "torch"),
    "tensorflow": ("tensorflow", "tensorflow"),
    "keras": ("keras", "tensorflow"),
    "tf2onnx": ("tf2onnx", "tensorflow"),
    "ai_edge_litert": ("ai-edge-litert", "litert"),
    "onnx2tf": ("onnx2tf", "tflite"),
    "tf_keras": ("tf-keras", "tflite"),
    "onnx_graphsurgeon": ("onnx-graphsurgeon", "tflite"),
    "litert_torch": ("litert-torch", "litert-torch"),
    "ai_edge_quantizer": ("ai-edge-quantizer", "litert-torch"),
    "coremltools": ("coremltools", "coreml"),
    "onnxruntime": ("onnxruntime", "(base install)"),
}


# extra -> the extras it installs too (so a listing can name the one to install)
EXTRA_INCLUDES: dict[str, frozenset[str]] = {
    "torch": frozenset({"onnx"}),
    "tensorflow": frozenset({"onnx"}),
    "tflite": frozenset({"tensorflow", "litert", "onnx"}),
    "litert-torch": frozenset({"torch", "litert", "onnx"}),
}


def minimal_extras(extras: set[str]) -> list[str]:
    """``extras`` without those another one of them already installs."""
    implied = set().union(*(EXTRA_INCLUDES.get(e, frozenset()) for e in extras))
    return sorted(extras - implied)


def is_available(module: str) -> bool:
    """Tell whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, *, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise an error that names the edgekit extra to install.

    Args:
        module: The module to import, for example ``"onnx"`` or ``"tensorflow"``.
        purpose: What edgekit needs it for, shown in the error message.

    Raises:
        MissingDependencyError: The module is not installed (or fails to import).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        package, extra = OPTIONAL_MODULES.get(top, (top, "all"))
        why = f" to {purpose}" if purpose else ""
        hint = (
            "reinstall edgekit"
            if extra.startswith("(")
            else f"install it with: pip install 'edgekit[{extra}]'"
        )
        raise MissingDependencyError(
            f"edgekit needs the Python package '{package}'{why}, and it could not be imported "
            f"({exc}); {hint}",
            extra=extra,
            package=package,
        ) from exc
