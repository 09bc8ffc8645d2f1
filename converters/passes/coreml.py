"""Core ML: ML Programs (``.mlpackage``) from PyTorch (traced) and from TensorFlow graphs, then compressed.

PyTorch goes through ``torch.jit.trace`` (coremltools 9 rejects this model's ``torch.export`` program:
"non-contiguous dim order"); Keras, SavedModel and ONNX (through onnx2tf) go through the same
``tf.function`` the TFLite family uses. Inputs and outputs stay float32 whatever the compute
precision, and keep the source's names. Compression (int8 weights, 4- and 6-bit palettes) starts from
the fp16 program, as an iOS app would ship it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgekit._console import captured_output
from edgekit.bundle import TensorSpec
from edgekit.converters.passes import Pass, PassContext, Value, carried_notes, coreml_ops
from edgekit.converters.registry import Kind
from edgekit.errors import UnsupportedModelError
from edgekit.parity import iter_feeds

MAX_BATCH = 64  # the dynamic batch dimension of a converted model ranges over 1..MAX_BATCH
# Weights smaller than this many elements stay uncompressed (biases, tiny kernels).
WEIGHT_THRESHOLD = 64


def _target(ct: Any, min_ios: int) -> Any:
    target = getattr(ct.target, f"iOS{min_ios}", None)
    if target is None or min_ios < 15:
        raise UnsupportedModelError(f"--min-ios {min_ios} is not a Core ML ML Program target coremltools offers "
                                    "(use 15 to 18)")
    return target


def _shape(ct: Any, spec: TensorSpec) -> Any:
    dims = [d if isinstance(d, int) and d > 0 else None for d in spec.shape]
    if all(d is not None for d in dims):
        return tuple(dims)
    return tuple(ct.RangeDim(1, MAX_BATCH, 1) if d is None else d for d in dims)


def _save(model: Any, ctx: PassContext, name: str) -> Path:
    out = ctx.scratch(f"{name}.mlpackage")
    with captured_output():
        model.save(str(out))
    return out


def _io(model: Any, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> tuple[
        tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Artifact I/O named as the model's features (with their dtypes), mapped in order to ``inputs``/``outputs``."""
    desc = model.get_spec().description

    def spec(feature: Any, s: TensorSpec) -> TensorSpec:
        return TensorSpec(feature.name, s.shape, _feature_dtype(feature), layout=s.layout,
                          source_name=s.source_name or s.name, source_transpose=s.source_transpose)

    return (tuple(spec(f, s) for f, s in zip(desc.input, inputs, strict=True)),
            tuple(spec(f, s) for f, s in zip(desc.output, outputs, strict=True)))


def _feature_dtype(feature: Any) -> str:
    names = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}  # ArrayFeatureType.ArrayDataType
    return names.get(int(feature.type.multiArrayType.dataType), "float32")


def _input_dtype(spec: TensorSpec) -> Any:
    """Core ML takes float32 or int32 inputs: integer inputs (token ids) become int32."""
    return np.int32 if np.issubdtype(np.dtype(spec.dtype), np.integer) else np.float32


def _explicit_prelu(x: Any, weight: Any) -> Any:
    """PReLU written as ``where(x >= 0, x, alpha * x)``, one slope per channel (axis 1), for any rank."""
    import torch

    shape = [1, -1] + [1] * (x.dim() - 2) if x.dim() >= 2 else [-1]
    return torch.where(x >= 0, x, x * weight.reshape(shape))


def rewrite_prelu(module: Any) -> tuple[Any, int]:
    """A copy of ``module`` whose PReLUs are :func:`_explicit_prelu` (exact), and how many were rewritten.

    coremltools' PyTorch frontend maps PReLU to MIL ``prelu``, which takes rank-4 inputs and rank 3 or 5
    only with one shared slope: the PReLU after a linear layer (MTCNN's O-Net) fails to convert.
    """
    import copy

    import torch
    from torch import nn

    class ExplicitPReLU(nn.Module):
        def __init__(self, weight: Any):
            super().__init__()
            self.weight = weight

        def forward(self, x: Any) -> Any:
            return _explicit_prelu(x, self.weight)

    module = copy.deepcopy(module)
    count = 0
    if isinstance(module, torch.fx.GraphModule):  # a torch.export program's module: rewrite the calls
        targets = {torch.ops.aten.prelu.default, torch.nn.functional.prelu}
        for node in module.graph.nodes:
            if node.op == "call_function" and node.target in targets:
                node.target = _explicit_prelu
                count += 1
        if count:
            module.recompile()
    for name, child in list(module.named_modules()):
        if isinstance(child, nn.PReLU):
            parent = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
            setattr(parent, name.rpartition(".")[2], ExplicitPReLU(child.weight))
            count += 1
    return module, count


# Mixed precision, the fallback when a float16 program fails parity: the ops whose range or precision
# float16 loses stay float32 (as in onnx_web.MIXED_FP32_OPS); convolutions and matrix products, which
# hold nearly all the weights, stay float16.
MIXED_FP32_MIL_OPS = frozenset({
    "layer_norm", "batch_norm", "instance_norm", "l2_norm", "softmax", "reduce_mean", "reduce_sum", "reduce_max",
    "reduce_min", "reduce_prod", "reduce_l2_norm", "reduce_log_sum_exp", "pow", "exp", "log", "sqrt", "rsqrt",
    "real_div", "inverse", "erf", "add", "sub", "sigmoid", "tanh", "softplus", "cumsum", "gelu", "silu",
    "mul", "square",  # x * x ahead of a variance (hand-written LayerNorm) passes 65504 long before the mean does
})


def _precision(ct: Any, precision: str) -> Any:
    # mixed precision converts at fp32 and casts the ops it measured to float16 afterwards (_mixed)
    return ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32


def _mixed(model: Any, precision: str, ctx: PassContext, inputs: tuple[TensorSpec, ...],
           outputs: tuple[TensorSpec, ...]) -> tuple[Any, dict[str, Any]]:
    """The converted model in its final precision, and the notes that say which."""
    if precision != "fp16-mixed":
        return model, {"compute_precision": precision}
    from edgekit.converters.artifacts import held_to
    from edgekit.converters.passes.coreml_precision import to_mixed_fp16
    from edgekit.converters.registry import TARGETS

    target = held_to(TARGETS["coreml-fp16"], quantized_source=ctx.quantized_source)
    with captured_output():
        mixed, choice = to_mixed_fp16(model, inputs, outputs, ctx.samples, ctx.inputs, target.tolerance,
                                      MIXED_FP32_MIL_OPS, ctx.reference)
    return mixed, choice.notes()


def _scalar_inputs_as_vectors(module: Any, args: tuple[Any, ...], specs: tuple[TensorSpec, ...]) -> tuple[
        Any, tuple[Any, ...], tuple[TensorSpec, ...], list[str]]:
    """Core ML refuses rank-0 inputs ("Rank-0 input is unsupported"): such an input (a sample rate) becomes shape
    [1], and a wrapper reshapes it back to a scalar before the model sees it (exact)."""
    import torch

    scalars = [i for i, s in enumerate(specs) if len(s.shape) == 0]
    if not scalars:
        return module, args, specs, []

    class ScalarInputs(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *xs: Any) -> Any:
            return self.inner(*(x.reshape(()) if i in scalars else x for i, x in enumerate(xs)))

    args = tuple(a.reshape(1) if i in scalars else a for i, a in enumerate(args))
    specs = tuple(replace(s, shape=(1,)) if i in scalars else s for i, s in enumerate(specs))
    return ScalarInputs(module).eval(), args, specs, [specs[i].name for i in scalars]


class _TorchToCoreml(Pass):
    """Trace the module and convert; ``precision`` is the compute precision."""

    modules = ("torch", "coremltools")
    precision: ClassVar[str]
    fix_shapes: ClassVar[bool] = False  # fix the batch too (one calibration sample traced)

    def module(self, value: Value, ctx: PassContext) -> tuple[Any, tuple[Any, ...]]:
        raise NotImplementedError

    def _run(self, value: Value, ctx: PassContext) -> Value:
        import coremltools as ct
        import torch

        coreml_ops.register()
        module, args = self.module(value, ctx)
        module, prelus = rewrite_prelu(module)
        specs = ctx.inputs
        # Tracing bakes the example's sizes into shape computations, so a dynamic dimension other than the batch
        # (a sequence length) is fixed from one calibration sample; the batch too in the fixed-shapes fallback
        # (a ViT's class token expanded to the traced batch fails parity at any other batch)
        fix_batch = self.fix_shapes or value.notes.get("batch") == "fixed to 1"  # a program traced at batch 1
        dynamic = any(not isinstance(d, int) or d < 0 for spec in specs for i, d in enumerate(spec.shape)
                      if i > 0 or fix_batch)
        if dynamic:
            feed = next(iter_feeds(ctx.samples, specs, 1))
            args = tuple(torch.from_numpy(np.array(feed[s.name], order="C")) for s in specs)
            specs = tuple(replace(s, shape=tuple(int(d) for d in np.shape(feed[s.name]))) for s in specs)
        module, args, specs, scalars = _scalar_inputs_as_vectors(module, args, specs)
        with torch.no_grad(), captured_output():
            traced = torch.jit.trace(module, args)  # type: ignore[no-untyped-call]
            model = ct.convert(
                traced, convert_to="mlprogram", minimum_deployment_target=_target(ct, ctx.options.min_ios),
                compute_precision=_precision(ct, self.precision),
                inputs=[ct.TensorType(name=s.name, shape=_shape(ct, s), dtype=_input_dtype(s)) for s in specs],
                outputs=[ct.TensorType(name=s.name, dtype=np.float32) for s in ctx.outputs])
        inputs, outputs = _io(model, specs, ctx.outputs)
        model, precision = _mixed(model, self.precision, ctx, inputs, outputs)
        notes: dict[str, Any] = {"converter": f"coremltools {ct.__version__} (torch.jit.trace)",
                                 "minimum_deployment_target": f"iOS{ctx.options.min_ios}", **precision}
        if prelus:
            notes["rewrites"] = [f"{prelus} PReLU -> where(x >= 0, x, alpha * x) (exact; coremltools' prelu "
                                 "takes rank-4 inputs only)"]
        if dynamic:
            notes["fixed_shapes"] = {s.name: list(s.shape) for s in specs}
        if scalars:
            notes.setdefault("rewrites", []).append(
                f"scalar inputs {', '.join(scalars)} given as shape [1] (Core ML has no rank-0 inputs; the runtime "
                "reshapes a one-element feed)")
        notes = carried_notes(value.notes, notes)
        return Value(self.produces, path=_save(model, ctx, self.name), notes=notes, inputs=inputs, outputs=outputs)


class TorchModuleToCoremlFp32(_TorchToCoreml):
    """An nn.Module to an fp32 ML Program."""

    precision = "fp32"

    def module(self, value: Value, ctx: PassContext) -> tuple[Any, tuple[Any, ...]]:
        return value.obj.eval(), tuple(ctx.example_inputs or ())


class TorchModuleToCoremlFp16(TorchModuleToCoremlFp32):
    """An nn.Module to an fp16 ML Program."""

    precision = "fp16"


class TorchProgramToCoremlFp32(_TorchToCoreml):
    """A saved torch.export program (its module, traced) to an fp32 ML Program."""

    precision = "fp32"

    def module(self, value: Value, ctx: PassContext) -> tuple[Any, tuple[Any, ...]]:
        args, _ = value.obj.example_inputs
        return value.obj.module(), tuple(args)


class TorchProgramToCoremlFp16(TorchProgramToCoremlFp32):
    """A saved torch.export program to an fp16 ML Program."""

    precision = "fp16"


class TfToCoremlFp32(Pass):
    """A TensorFlow graph (Keras, SavedModel, or ONNX through onnx2tf) to an fp32 ML Program."""

    precision = "fp32"

    def _run(self, value: Value, ctx: PassContext) -> Value:
        import coremltools as ct

        coreml_ops.register()
        graph = value.obj
        structured = graph.function.structured_outputs
        # the converter names outputs after the graph's tensors, in the order TensorFlow flattens the
        # output dict (sorted keys); rename them to the source's names
        flat = sorted(structured) if isinstance(structured, dict) else [s.name for s in graph.outputs]
        with captured_output():
            model = ct.convert(
                [graph.function], source="tensorflow", convert_to="mlprogram",
                minimum_deployment_target=_target(ct, ctx.options.min_ios),
                compute_precision=_precision(ct, self.precision),
                inputs=[ct.TensorType(name=s.name, shape=_shape(ct, s), dtype=_input_dtype(s)) for s in graph.inputs],
                outputs=[ct.TensorType(name=t.name.split(":")[0], dtype=np.float32) for t in graph.function.outputs])
        spec = model.get_spec()
        for feature, name in zip(list(spec.description.output), flat, strict=True):
            if feature.name != name:
                ct.utils.rename_feature(spec, feature.name, name, rename_inputs=False)
        model = ct.models.MLModel(spec, weights_dir=model.weights_dir, skip_model_load=True)
        by_name = {s.name: s for s in graph.outputs}
        outputs = tuple(by_name[n] for n in flat)
        inputs, outs = _io(model, graph.inputs, outputs)
        model, precision = _mixed(model, self.precision, ctx, inputs, outs)
        notes = {"converter": f"coremltools {ct.__version__} ({value.notes.get('frontend', 'tf')} -> tf.function)",
                 "minimum_deployment_target": f"iOS{ctx.options.min_ios}", **precision}
        return Value(self.produces, path=_save(model, ctx, self.name), notes=notes, inputs=inputs, outputs=outs)


class TfToCoremlFp16(TfToCoremlFp32):
    """A TensorFlow graph to an fp16 ML Program."""

    precision = "fp16"


class TorchModuleToCoremlFp16Mixed(TorchModuleToCoremlFp16):
    """An nn.Module to an fp16 ML Program with the range-sensitive ops in fp32: a fallback."""

    precision = "fp16-mixed"


class TorchProgramToCoremlFp16Mixed(TorchProgramToCoremlFp16):
    """A torch.export program to an fp16 ML Program with the range-sensitive ops in fp32: a fallback."""

    precision = "fp16-mixed"


def _fixed_shapes(base: type[_TorchToCoreml]) -> type[_TorchToCoreml]:
    """``base`` traced on one calibration sample with every shape fixed (batch 1): the fallback when the
    ranged-batch program fails."""
    return type(f"{base.__name__}Fixed", (base,), {"name": f"{base.name}-fixed-shapes", "fix_shapes": True,
                                                  "__doc__": _fixed_shapes.__doc__})


TorchModuleToCoremlFp32Fixed = _fixed_shapes(TorchModuleToCoremlFp32)
TorchModuleToCoremlFp16Fixed = _fixed_shapes(TorchModuleToCoremlFp16)
TorchProgramToCoremlFp32Fixed = _fixed_shapes(TorchProgramToCoremlFp32)
TorchProgramToCoremlFp16Fixed = _fixed_shapes(TorchProgramToCoremlFp16)


class TfToCoremlFp16Mixed(TfToCoremlFp16):
    """A TensorFlow graph to an fp16 ML Program with the range-sensitive ops in fp32: a fallback."""

    precision = "fp16-mixed"


class _Compress(Pass):
    """Compress the weights of the fp16 program with coremltools.optimize.coreml."""

    consumes = Kind.COREML_FP16
    modules = ("coremltools",)

    def config(self, cto: Any) -> Any:
        raise NotImplementedError

    def apply(self, cto: Any, model: Any, config: Any) -> Any:
        raise NotImplementedError

    def _run(self, value: Value, ctx: PassContext) -> Value:
        import coremltools as ct
        import coremltools.optimize.coreml as cto

        model = ct.models.MLModel(str(value.file), skip_model_load=True)
        with captured_output():
            compressed = self.apply(cto, model, cto.OptimizationConfig(global_config=self.config(cto)))
        out = _save(compressed, ctx, self.name)
        notes = {**value.notes, "compression": f"{self.name} (coremltools.optimize.coreml, weights with at least "
                 f"{WEIGHT_THRESHOLD} elements)"}
        return Value(self.produces, path=out, notes=notes, inputs=value.inputs, outputs=value.outputs)


class CoremlInt8(_Compress):
    """Linear symmetric int8 weights, per channel (constexpr_affine_dequantize)."""


    def config(self, cto: Any) -> Any:
        return cto.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=WEIGHT_THRESHOLD)

    def apply(self, cto: Any, model: Any, config: Any) -> Any:
        return cto.linear_quantize_weights(model, config)


class CoremlInt8Fp32(CoremlInt8):
    """Linear symmetric int8 weights on the fp32 program: the fallback when the fp16 one fails parity (a model
    whose sums float16 cannot hold runs its int8 weights in float32 compute, on CPU and GPU)."""

    def _run(self, value: Value, ctx: PassContext) -> Value:
        made = super()._run(value, ctx)
        notes = {**made.notes, "compute_precision": "fp32 (the fp16 program failed parity)"}
        return Value(made.kind, path=made.file, notes=notes, inputs=made.inputs, outputs=made.outputs)


class CoremlPalettize4(_Compress):
    """4-bit k-means palettes (constexpr_lut_to_dense)."""

    nbits = 4

    def config(self, cto: Any) -> Any:
        return cto.OpPalettizerConfig(nbits=self.nbits, mode="kmeans", weight_threshold=WEIGHT_THRESHOLD)

    def apply(self, cto: Any, model: Any, config: Any) -> Any:
        return cto.palettize_weights(model, config)


class CoremlPalettize6(CoremlPalettize4):
    """6-bit k-means palettes."""

    nbits = 6
