"""Source models: recognise what the user gave, describe its I/O, and run it as the reference.

ONNX sources are read here; PyTorch ones in :mod:`edgekit.converters.sources_torch`, Keras and
SavedModel ones in :mod:`edgekit.converters.sources_tf`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._deps import require
from edgekit._files import hash_path
from edgekit.bundle import Dim, SourceInfo, TensorSpec
from edgekit.converters.passes import Value
from edgekit.converters.registry import Kind
from edgekit.errors import InvalidInputError, InvalidModelError, UnsupportedModelError

log = logging.getLogger(__name__)

ReferenceFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

SUFFIXES = {".onnx": Kind.ONNX, ".pt2": Kind.TORCH_EXPORT, ".keras": Kind.KERAS, ".h5": Kind.KERAS}
ACCEPTED = (
    "an ONNX file (.onnx), a saved torch.export program (.pt2), a Keras model (.keras, .h5), a TensorFlow "
    "SavedModel directory, or in Python a torch.nn.Module with example_inputs or a keras.Model object"
)


@dataclass(frozen=True)
class Source:
    """The model to convert, ready for the planner and the validator."""

    kind: str
    value: Value
    info: SourceInfo
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    run: ReferenceFn
    example_inputs: tuple[Any, ...] | None = None


def with_computed_outputs(source: Source, reference: dict[str, np.ndarray], *, single: bool, stacked: bool) -> Source:
    """``source`` with each output's declared shape replaced where the graph computes another rank or size.

    Exporters sometimes declare shapes a graph does not compute (ddddocr declares [1, seqlen] for a
    [seq, 1, classes] output); converters and layout checks that trust them go wrong. The corrected
    shape keeps a dynamic first axis where the samples were batched, and the sizes seen elsewhere.
    """
    fixed = []
    for spec in source.outputs:
        value = reference.get(spec.name)
        if value is None:
            fixed.append(spec)
            continue
        got = tuple(np.shape(value)[1:] if stacked else np.shape(value))
        declared = spec.shape
        fits = len(declared) == len(got) and all(
            not isinstance(d, int) or d < 0 or d == g or (i == 0 and not single and not stacked)
            for i, (d, g) in enumerate(zip(declared, got, strict=True)))
        if fits:
            fixed.append(spec)
            continue
        shape: list[Dim] = [int(g) for g in got]
        if shape and not single and not stacked:
            shape[0] = declared[0] if declared and not isinstance(declared[0], int) else None
        log.info("output %s: declared shape %s, computed %s; using the computed one", spec.name, list(declared), shape)
        fixed.append(replace(spec, shape=tuple(shape), extra={**spec.extra, "declared_shape": list(declared)}))
    return replace(source, outputs=tuple(fixed))


def with_output_kinds(source: Source, reference: dict[str, np.ndarray],
                      kinds: Mapping[str, str] | None = None) -> Source:
    """``source`` with each output's parity kind: the one given in ``kinds`` (by output name), else the
    one :func:`edgekit.parity.infer_kind` sees in the source's outputs on the samples.

    Raises:
        InvalidInputError: ``kinds`` names an output the model does not have, or a kind that is not one
            of :data:`edgekit.parity.OUTPUT_KINDS`.
    """
    from edgekit.parity import OUTPUT_KINDS, has_token_inputs, infer_kind

    kinds = dict(kinds or {})
    names = [s.name for s in source.outputs]
    for name, kind in kinds.items():
        if name not in names:
            raise InvalidInputError(f"--output-kind names {name!r}, which is not an output of the model; its "
                                    f"outputs are {', '.join(names)}")
        if kind not in OUTPUT_KINDS:
            raise InvalidInputError(f"--output-kind {name}={kind}: the kind must be one of {', '.join(OUTPUT_KINDS)}")
    tokens = has_token_inputs(source.inputs)
    outputs = tuple(
        replace(spec, kind=kinds.get(spec.name) or infer_kind(spec, np.asarray(reference[spec.name]),
                                                              len(source.outputs), tokens))
        if spec.name in reference else spec
        for spec in source.outputs)
    return replace(source, outputs=outputs)


def load_source(model: Any, example_inputs: tuple[Any, ...] | None = None) -> Source:
    """Recognise ``model`` (a path or a framework object) and load it as a :class:`Source`.

    Raises:
        InvalidModelError: The file is missing or is not a readable model of its kind.
        UnsupportedModelError: edgekit does not take this kind of model.
        MissingDependencyError: The framework needed to read it is not installed.
    """
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.exists():
            raise InvalidModelError(f"model file {path} does not exist; check the path")
        if path.is_dir() and (path / "saved_model.pb").is_file():
            from edgekit.converters.sources_tf import saved_model_source

            return saved_model_source(path)
        kind = SUFFIXES.get(path.suffix.lower())
        if kind is None or not path.is_file():
            raise UnsupportedModelError(f"edgekit cannot read {path}: it takes {ACCEPTED}")
        if kind == Kind.ONNX:
            return _onnx_source(path)
        if kind == Kind.TORCH_EXPORT:
            from edgekit.converters.sources_torch import torch_program_source

            return torch_program_source(path)
        from edgekit.converters.sources_tf import keras_source

        return keras_source(path)
    module = type(model).__module__.split(".")[0]
    if module == "torch" or _is_torch_module(model):
        if example_inputs is None:
            raise UnsupportedModelError(
                "a torch.nn.Module needs example inputs to be traced: pass example_inputs=(tensor, ...)"
            )
        from edgekit.converters.sources_torch import torch_module_source

        return torch_module_source(model, tuple(example_inputs))
    if module in ("keras", "tf_keras") or _is_keras_model(model):
        from edgekit.converters.sources_tf import keras_source

        return keras_source(None, model)
    raise UnsupportedModelError(f"edgekit cannot convert a {type(model).__name__} object: it takes {ACCEPTED}")


def _is_torch_module(obj: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(obj).__mro__)


def _is_keras_model(obj: Any) -> bool:
    return any(c.__module__.startswith("keras") and c.__name__ in ("Model", "Layer") for c in type(obj).__mro__)


# ---------------------------------------------------------------- ONNX


def onnx_io(model: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Input and output specs of an ONNX ModelProto (initializers are not inputs)."""
    from onnx import helper

    def spec(value_info: Any) -> TensorSpec:
        tensor = value_info.type.tensor_type
        shape: list[int | str | None] = []
        for d in tensor.shape.dim:
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                shape.append(d.dim_param)
            else:
                shape.append(None)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        return TensorSpec(name=value_info.name, shape=tuple(shape), dtype=dtype)

    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(spec(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(spec(v) for v in model.graph.output)
    return inputs, outputs


# Operators of an already quantized ONNX model (QDQ or QOperator, static or dynamic).
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
    "ConvInteger", "QLinearAdd", "QLinearMul", "QGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
})


def _onnx_source(path: Path) -> Source:
    onnx = require("onnx", purpose="read ONNX models")
    from google.protobuf.message import DecodeError

    fix = "re-export the model, or check that the file was copied completely"
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise InvalidModelError(f"{path} is not a valid ONNX model: it could not be parsed ({exc}); {fix}") from exc
    if not model.graph.node or not model.graph.output or not model.opset_import:
        raise InvalidModelError(f"{path} is not a valid ONNX model: it has no graph, outputs or opset; {fix}")
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(f"{path} is not a valid ONNX model: {first}; {fix}") from exc
    inputs, outputs = onnx_io(model)
    from edgekit.converters.ranges import unit_range_outputs

    bounded = unit_range_outputs(model)  # probabilities by construction: parity judges them against [0, 1]
    outputs = tuple(replace(o, extra={**o.extra, "range": [0, 1]}) if o.name in bounded else o for o in outputs)
    if not inputs:
        raise UnsupportedModelError(f"{path} has no inputs (all values are constants); nothing to convert")

    from edgekit.runtimes.onnxruntime import OrtRuntime

    try:
        session = OrtRuntime().open(path, providers=("CPUExecutionProvider",), optimization="none")
    except Exception as exc:
        raise InvalidModelError(f"onnxruntime cannot load the source model {path}: {exc}") from exc
    digest, size = hash_path(path)
    extra: dict[str, Any] = {"opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))}
    quantized = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS})
    if quantized:
        extra["quantized"] = quantized
    info = SourceInfo(format="onnx", file=path.name, sha256=digest, size_bytes=size, extra=extra)
    return Source(Kind.ONNX, Value(Kind.ONNX, path=path), info, inputs, outputs, session.run)


# ---------------------------------------------------------------- PyTorch


# ---------------------------------------------------------------- Keras


# ---------------------------------------------------------------- TensorFlow SavedModel


def flatten_outputs(result: Any) -> list[Any]:
    if isinstance(result, dict):
        return list(result.values())
    if isinstance(result, (tuple, list)):
        return list(result)
    return [result]


def output_names(result: Any) -> list[str]:
    if isinstance(result, dict):
        return [str(k) for k in result]
    count = len(flatten_outputs(result))
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
