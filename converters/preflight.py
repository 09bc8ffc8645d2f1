"""``edgekit check``: say, without converting, whether and how a model can reach each target.

For every requested target: the route (or why there is none), the model's operators that the
route's converter is known not to take (ONNX models: the op types against onnx2tf's own op list),
the dynamic dimensions and what the target does with them, and the expected artifact size from the
model's weights; and, per family, what only a conversion can tell. Only the model is read; no
converter runs. (onnxruntime-web kernels need no check for an ONNX source: a source onnxruntime
cannot load is refused when it is read.)

``probe=True`` answers what only a conversion can tell, at the cost of one: the family's float
target is converted into a temporary directory (no quantization, nothing kept), and the TFLite Flex
ops it needed or the converter's error (a Core ML op newer than ``min_ios``, an op a converter
lacks) are reported against every requested target of that family.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.bundle import shown_dim
from edgekit.converters.planner import plan, resolve_targets, usable_passes
from edgekit.converters.registry import TARGETS, Kind, TargetInfo
from edgekit.errors import NoRouteError

# Bytes per weight by precision, for the size estimate (palettes and scales add a little).
BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "dynamic-int8": 1.0, "int16x8": 1.0,
                    "palettize6": 0.75, "palettize4": 0.5}
DYNAMIC_NOTES = {
    "onnx-web": "kept dynamic",
    "tflite": "kept dynamic (the interpreter resizes tensors); other than batch, fixed by onnx2tf at conversion",
    "coreml": "batch becomes a range 1..64; other dynamic dimensions must be fixed",
}


@dataclass
class TargetCheck:
    """What ``check`` found for one target."""

    target: str
    reachable: bool
    route: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    expected_bytes: int | None = None
    dynamic: str = ""
    after_conversion: str = ""  # what only a conversion can tell for this target
    probed: str = ""  # what the probe conversion found (with probe=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return dict(self.__dict__)


def _onnx_ops_and_weights(path: Path) -> tuple[set[str], int, list[str]]:
    """Op types, number of weight elements and dynamic input dims of an ONNX file (read, not run)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}
    weights = sum(int(max(1, _prod(t.dims))) for t in model.graph.initializer)
    initializers = {t.name for t in model.graph.initializer}
    dynamic = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        for i, d in enumerate(value.type.tensor_type.shape.dim):
            if not d.HasField("dim_value"):
                dynamic.append(f"{value.name}[{i}] ({shown_dim(d.dim_param or None, i)})")
    return ops, weights, dynamic


def source_weights(source: Any) -> int:
    """How many weight values a loaded Keras, SavedModel or PyTorch source holds: its variables or state, not
    its file size (a .keras file also holds the optimizer's slots; a SavedModel its graph and checkpoints)."""
    obj = source.value.obj
    if source.kind == Kind.KERAS:
        return sum(_prod(w.shape) for w in obj.weights)
    if source.kind == Kind.TF_SAVED_MODEL:
        _, function = obj  # its variables, and the float constants frozen into its graph (basic-pitch's CQT kernels)
        graph = function.graph.as_graph_def()
        nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
        floats = (1, 2, 14, 19)  # DT_FLOAT, DT_DOUBLE, DT_BFLOAT16, DT_HALF
        consts = sum(_prod(d.size for d in n.attr["value"].tensor.tensor_shape.dim) for n in nodes
                     if n.op == "Const" and n.attr["value"].tensor.dtype in floats)
        return sum(_prod(v.shape) for v in function.variables) + consts
    if source.kind in (Kind.TORCH_EXPORT, Kind.TORCH_MODULE):
        state = obj.state_dict() if source.kind == Kind.TORCH_MODULE else {
            **obj.state_dict, **dict(getattr(obj, "constants", {}) or {})}
        return int(sum(int(t.numel()) for t in state.values() if hasattr(t, "numel") and t.is_floating_point()))
    return int(source.info.size_bytes) // 4  # fp32 weights dominate what is left


def _prod(dims: Any) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


def onnx2tf_ops() -> set[str] | None:
    """The ONNX ops onnx2tf converts (its ops/ modules), read from the installed package without importing it."""
    spec = importlib.util.find_spec("onnx2tf")
    if spec is None or not spec.submodule_search_locations:
        return None
    ops_dir = Path(next(iter(spec.submodule_search_locations))) / "ops"
    return {p.stem for p in ops_dir.glob("*.py") if not p.stem.startswith("_")}


# What check cannot know without converting, said once per family so nobody reads silence as a pass.
AFTER_CONVERSION = {
    "tflite": "TensorFlow Select (Flex) ops show only when TFLiteConverter runs: convert refuses them by name",
    "coreml": "Core ML ops newer than --min-ios show only when coremltools runs: convert names them",
}


# The float target a probe converts for each family: the cheapest full pass through its converter.
PROBE_TARGET = {"onnx-web": "onnx-web", "tflite": "tflite", "coreml": "coreml"}


def probe_family(model: Path, family: str, min_ios: int = 16) -> tuple[bool, str, list[str]]:
    """Convert ``model`` to the family's float target in a temporary directory.

    Returns (reached, what was found, problems). Flex ops do not make a target unreachable
    (``--allow-flex`` reaches it) but are problems: each costs the Flex delegate at run time.
    """
    import tempfile

    from edgekit.converters.pipeline import convert
    from edgekit.errors import UserError

    target = PROBE_TARGET[family]
    with tempfile.TemporaryDirectory(prefix="edgekit-probe-") as tmp:
        try:
            result = convert(model, [target], out=Path(tmp) / "bundle", allow_flex=True, min_ios=min_ios,
                             keep_partial=True, accept_parity_failure=True, report=False)
        except UserError as exc:
            message = str(exc).splitlines()[0]
            return False, f"{target}: failed to convert (see above)", [f"probe conversion to {target}: {message}"]
        if result.failures:
            failure = result.failures[0]
            return False, f"{target}: failed to convert (see above)", [f"probe conversion to {target}: {failure.error}"]
        art = result.bundle.manifest.artifacts[0]
        flex = art.extra.get("conversion", {}).get("flex_ops") or []
        if art.unverified and not flex:  # converted, but its parity cannot be measured here (an op the MIL interpreter lacks)
            return True, f"{target}: converted, not verifiable here", [
                f"{target} converts, but its parity cannot be measured on this host: {art.unverified}; the "
                "artifact would be kept as unverified"]
        if flex:
            return True, f"{target}: converted; it needs Flex ops {', '.join(flex)}", [
                f"needs TensorFlow Select (Flex) ops {', '.join(flex)}: the app must link the Flex delegate "
                "(tens of MB) and these ops run outside LiteRT's optimized kernels; convert needs --allow-flex"]
        return True, f"{target}: converted in {result.seconds:.1f} s; no Flex ops, no op newer than the OS target", []


def check(model: str | Path, targets: list[str] | None = None, *, probe: bool = False,
          min_ios: int = 16, progress: Callable[[str], None] | None = None) -> list[TargetCheck]:
    """Check ``model`` (a file path) against ``targets`` (default: every target).

    With ``probe``, each requested family's float target is also converted (in a temporary
    directory) to find what only a conversion can tell: TFLite Flex ops, Core ML ops newer than
    ``min_ios``, converter errors; ``progress`` is told when each probe starts.

    Raises:
        InvalidModelError, UnsupportedModelError: The model cannot be read.
        UnknownTargetError: A target id is unknown.
    """
    from edgekit.converters.sources import SUFFIXES, load_source

    path = Path(model)
    infos: list[TargetInfo] = resolve_targets(targets) if targets else list(TARGETS.values())
    kind = Kind.TF_SAVED_MODEL if path.is_dir() else SUFFIXES.get(path.suffix.lower(), "")
    ops: set[str] = set()
    weights: int | None = None
    dynamic: list[str] = []
    if kind == Kind.ONNX:
        load_source(path)  # a clear error for a broken file, before anything else
        ops, weights, dynamic = _onnx_ops_and_weights(path)
    else:
        source = load_source(path)
        kind = source.kind
        dynamic = [f"{s.name}[{i}] ({shown_dim(d, i, len(s.shape) == 2 and s.dtype.startswith(('int', 'uint')))})"
                   for s in source.inputs for i, d in enumerate(s.shape)
                   if not isinstance(d, int) or d < 0]
        weights = source_weights(source)
    known_tf = onnx2tf_ops()
    passes = usable_passes()
    results = []
    for info in infos:
        item = TargetCheck(info.id, reachable=True)
        try:
            item.route = [p.name for p in plan(kind, info, passes)]
        except NoRouteError as exc:
            item.reachable = False
            item.problems.append(str(exc))
            results.append(item)
            continue
        if "onnx2tf" in item.route and ops:
            if known_tf is None:
                item.problems.append("onnx2tf is not installed (pip install 'edgekit[tflite]'): its op support is unknown")
            else:
                missing = sorted(ops - known_tf)
                if missing:
                    item.reachable = False
                    item.problems.append(f"onnx2tf (route {' -> '.join(item.route)}) does not convert the ONNX "
                                         f"operator(s) {', '.join(missing)}")
        if info.family in AFTER_CONVERSION and not probe:
            item.after_conversion = AFTER_CONVERSION[info.family]
        if weights is not None:
            item.expected_bytes = int(weights * BYTES_PER_WEIGHT.get(info.precision, 4.0))
        if dynamic:
            item.dynamic = f"{', '.join(dynamic)} in {info.family}: {DYNAMIC_NOTES.get(info.family, 'kept')}"
        results.append(item)
    if probe:
        found: dict[str, tuple[bool, str, list[str]]] = {}
        for item in results:
            family = TARGETS[item.target].family
            if not item.reachable or family not in PROBE_TARGET:
                continue
            if family not in found:
                if progress:
                    progress(f"probing {family}: converting to {PROBE_TARGET[family]} in a temporary directory")
                found[family] = probe_family(path, family, min_ios)
            reached, item.probed, problems = found[family]
            item.reachable = item.reachable and reached
            item.problems.extend(problems)
    return results
