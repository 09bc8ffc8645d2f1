"""Source models: recognise what the user gave, describe its I/O, and run it as the reference."""

from __future__ import annotations

import hashlib
import inspect
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
            return _saved_model_source(path)
        kind = SUFFIXES.get(path.suffix.lower())
        if kind is None or not path.is_file():
            raise UnsupportedModelError(f"edgekit cannot read {path}: it takes {ACCEPTED}")
        if kind == Kind.ONNX:
            return _onnx_source(path)
        if kind == Kind.TORCH_EXPORT:
            return _torch_program_source(path)
        return _keras_source(path)
    module = type(model).__module__.split(".")[0]
    if module == "torch" or _is_torch_module(model):
        if example_inputs is None:
            raise UnsupportedModelError(
                "a torch.nn.Module needs example inputs to be traced: pass example_inputs=(tensor, ...)"
            )
        return _torch_module_source(model, tuple(example_inputs))
    if module in ("keras", "tf_keras") or _is_keras_model(model):
        return _keras_source(None, model)
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


def _torch_dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _flatten_outputs(result: Any) -> list[Any]:
    if isinstance(result, dict):
        return list(result.values())
    if isinstance(result, (tuple, list)):
        return list(result)
    return [result]


def _output_names(result: Any) -> list[str]:
    if isinstance(result, dict):
        return [str(k) for k in result]
    count = len(_flatten_outputs(result))
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _torch_reference(call: Callable[..., Any], names: list[str], out_names: list[str]) -> ReferenceFn:
    import torch

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            result = call(*[torch.from_numpy(np.require(feeds[n], requirements="C")) for n in names])
        return {n: t.detach().cpu().numpy() for n, t in zip(out_names, _flatten_outputs(result), strict=True)}

    return run


def _torch_specs(names: list[str], tensors: list[Any], dynamic_batch: bool) -> tuple[TensorSpec, ...]:
    specs = []
    for name, t in zip(names, tensors, strict=True):
        shape: list[int | str | None] = [int(d) for d in t.shape]
        if dynamic_batch and shape:
            shape[0] = "batch"
        specs.append(TensorSpec(name=name, shape=tuple(shape), dtype=_torch_dtype_name(t.dtype)))
    return tuple(specs)


def _torch_module_source(module: Any, example_inputs: tuple[Any, ...]) -> Source:
    torch = require("torch", purpose="convert PyTorch models")
    module.eval()
    params = list(inspect.signature(module.forward).parameters)
    names = params[: len(example_inputs)] if len(params) >= len(example_inputs) else [
        f"input_{i}" for i in range(len(example_inputs))
    ]
    with torch.no_grad():
        result = module(*example_inputs)
    out_names = _output_names(result)
    digest = hashlib.sha256()
    size = 0
    for key, tensor in module.state_dict().items():
        data = tensor.detach().cpu().contiguous().numpy().tobytes()
        digest.update(key.encode() + b"\0" + data)
        size += len(data)
    info = SourceInfo(format="torch.nn.Module", file=f"{type(module).__module__}.{type(module).__qualname__}",
                      sha256=digest.hexdigest(), size_bytes=size)
    return Source(
        Kind.TORCH_MODULE,
        Value(Kind.TORCH_MODULE, obj=module),
        info,
        _torch_specs(names, list(example_inputs), dynamic_batch=True),
        _torch_specs(out_names, _flatten_outputs(result), dynamic_batch=True),
        _torch_reference(module, names, out_names),
        example_inputs,
    )


def _torch_program_source(path: Path) -> Source:
    torch = require("torch", purpose="read torch.export programs (.pt2)")
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch raises many types for a bad archive
        raise InvalidModelError(
            f"{path} is not a torch.export program that torch can load ({type(exc).__name__}: {exc}); "
            "save one with torch.export.save(torch.export.export(model, args), 'model.pt2')"
        ) from exc
    args, kwargs = program.example_inputs or ((), {})
    if kwargs or not args:
        raise UnsupportedModelError(f"{path} must carry positional example inputs (export it with args, not kwargs)")
    names = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    specs = []
    for name, arg in zip(names, args, strict=True):
        fake = placeholders[name].meta.get("val", arg)
        shape = tuple(int(d) if isinstance(d, int) else str(d) for d in fake.shape)
        specs.append(TensorSpec(name=name, shape=shape, dtype=_torch_dtype_name(arg.dtype)))
    module = program.module()
    with torch.no_grad():
        result = module(*args)
    out_names = _output_names(result)
    dynamic = any(isinstance(d, str) for s in specs for d in s.shape[:1])
    digest, size = hash_path(path)
    info = SourceInfo(format="torch.export", file=path.name, sha256=digest, size_bytes=size)
    return Source(
        Kind.TORCH_EXPORT,
        Value(Kind.TORCH_EXPORT, path=path, obj=program),
        info,
        tuple(specs),
        _torch_specs(out_names, _flatten_outputs(result), dynamic_batch=dynamic),
        _torch_reference(module, names, out_names),
        tuple(args),
    )


# ---------------------------------------------------------------- Keras


def _keras_source(path: Path | None, model: Any = None) -> Source:
    keras = require("keras", purpose="convert Keras models")
    if path is not None:
        try:
            model = keras.saving.load_model(str(path), compile=False)
        except Exception as exc:  # keras raises ValueError, OSError, zipfile errors...
            raise InvalidModelError(
                f"{path} is not a Keras model that keras {keras.__version__} can load "
                f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
                "save it with model.save('model.keras')"
            ) from exc
    if not getattr(model, "inputs", None):
        raise UnsupportedModelError("the Keras model has no defined inputs; build it (call it once) or give it an Input")
    inputs = tuple(
        TensorSpec(name=t.name, shape=tuple(d if d is not None else "batch" if i == 0 else None
                                            for i, d in enumerate(t.shape)), dtype=str(t.dtype))
        for t in model.inputs
    )
    names = [s.name for s in inputs]
    out_names = list(getattr(model, "output_names", None) or [])
    if len(out_names) != len(model.outputs):
        out_names = ["output"] if len(model.outputs) == 1 else [f"output_{i}" for i in range(len(model.outputs))]
    outputs = tuple(
        TensorSpec(name=n, shape=tuple(d if d is not None else "batch" if i == 0 else None
                                       for i, d in enumerate(t.shape)), dtype=str(t.dtype))
        for n, t in zip(out_names, model.outputs, strict=True)
    )

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [feeds[n] for n in names]
        result = model(args[0] if len(args) == 1 else args, training=False)
        values = _flatten_outputs(result)
        return {n: np.asarray(v) for n, v in zip(out_names, values, strict=True)}

    if path is not None:
        digest_file, size = hash_path(path)
        info = SourceInfo(format="keras", file=path.name, sha256=digest_file, size_bytes=size)
    else:
        digest = hashlib.sha256()
        size = 0
        for weight in model.weights:
            data = np.asarray(weight.numpy()).tobytes()
            digest.update(weight.path.encode() + b"\0" + data)
            size += len(data)
        info = SourceInfo(format="keras.Model", file=f"{type(model).__module__}.{type(model).__qualname__}",
                          sha256=digest.hexdigest(), size_bytes=size)
    return Source(Kind.KERAS, Value(Kind.KERAS, path=path, obj=model), info, inputs, outputs, run)


# ---------------------------------------------------------------- TensorFlow SavedModel


def _saved_model_source(path: Path) -> Source:
    tf = require("tensorflow", purpose="read TensorFlow SavedModels")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow raises many types for a bad directory
        raise InvalidModelError(f"{path} is not a SavedModel TensorFlow can load ({type(exc).__name__}: "
                                f"{str(exc).strip()[:300]})") from exc
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if not signatures:
        raise UnsupportedModelError(f"{path} has no serving signature; export it with model.export(dir) (Keras) or "
                                    "tf.saved_model.save(obj, dir, signatures=...)")
    function = signatures.get("serving_default") or next(iter(signatures.values()))
    args, kwargs = function.structured_input_signature
    if args or not kwargs:
        raise UnsupportedModelError(f"{path}: edgekit needs a signature with named inputs")

    def spec(name: str, t: Any) -> TensorSpec:
        dims = tuple(int(d) if d is not None else "batch" if i == 0 else None for i, d in enumerate(t.shape))
        return TensorSpec(name=name, shape=dims, dtype=t.dtype.name)

    inputs = tuple(spec(n, kwargs[n]) for n in sorted(kwargs))
    outputs = tuple(spec(n, t) for n, t in sorted(function.structured_outputs.items()))

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = function(**{s.name: tf.constant(feeds[s.name]) for s in inputs})
        return {s.name: np.asarray(result[s.name]) for s in outputs}

    digest, size = hash_path(path)
    info = SourceInfo(format="tf.savedmodel", file=path.name, sha256=digest, size_bytes=size)
    return Source(Kind.TF_SAVED_MODEL, Value(Kind.TF_SAVED_MODEL, path=path, obj=(loaded, function)), info, inputs,
                  outputs, run)
