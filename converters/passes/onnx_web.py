"""The ONNX-web family: optimized fp32, float16 and int8 ONNX for onnxruntime-web, plus ORT format."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle import TensorSpec
from edgekit.converters.passes import Pass, PassContext, Value
from edgekit.converters.passes.onnx_rewrites import clear_wrong_output_shapes
from edgekit.converters.registry import Kind
from edgekit.parity import iter_feeds, sample_count

log = logging.getLogger(__name__)

MAX_WEB_IR_VERSION = 13  # onnxruntime-web 1.30 rejects IR 14, which onnx 1.23 writes by default
CALIBRATION_CHUNK = 32


def compact(model: Any) -> None:
    """Shorten internal tensor and node names and drop shape hints and doc strings, in place.

    Exporters and optimizers write long scoped names (``StatefulPartitionedCall/model/...``) that
    every download carries; graph inputs and outputs keep their names. Models with subgraphs
    (If, Loop, Scan) reference outer names from inside and are left as they are.
    """
    from onnx import AttributeProto

    graph = model.graph
    if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if name in keep:
            return name
        return mapping.setdefault(name, f"t{len(mapping):x}")

    for init in graph.initializer:
        init.name = short(init.name)
    for sparse in graph.sparse_initializer:
        sparse.values.name = short(sparse.values.name)
    for i, node in enumerate(graph.node):
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
        node.name = f"n{i:x}"
        node.doc_string = ""
    del graph.value_info[:]
    graph.doc_string = ""
    model.doc_string = ""


def save_for_web(model: Any, path: Path) -> None:
    """Save ``model`` as one compact file with an IR version onnxruntime-web accepts."""
    import onnx
    from onnx import helper

    compact(model)
    needed = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    if model.ir_version > MAX_WEB_IR_VERSION:
        model.ir_version = max(MAX_WEB_IR_VERSION, needed)
    onnx.save(model, str(path))


def ort_optimize(src: Path, dst: Path, *, ort_format: bool = False) -> None:
    """Run onnxruntime's portable (basic) graph optimizations offline and save the result.

    Basic optimizations (constant folding, redundant node removal, semantics-preserving fusions)
    are provider-independent; the extended and layout levels emit CPU-specific contrib ops that
    onnxruntime-web and other execution providers may lack, so they are left to load time.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    if ort_format:
        options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(src), sess_options=options, providers=["CPUExecutionProvider"])


def write_ort_format(src: Path, dst: Path) -> None:
    """Write the ORT (flatbuffer) format of an ONNX model, for smaller files and faster loads."""
    ort_optimize(src, dst, ort_format=True)


class OptimizeForWeb(Pass):
    """Simplify with onnxslim, then apply onnxruntime's basic offline optimizer."""

    name = "onnx-web-optimize"
    consumes = Kind.ONNX
    produces = Kind.ONNX_WEB
    modules = ("onnx", "onnxslim", "onnxruntime")

    def _run(self, value: Value, ctx: PassContext) -> Value:
        import onnx
        import onnxslim

        slim_path = ctx.scratch("slim.onnx")
        source = onnx.load(str(value.file))
        cleared = clear_wrong_output_shapes(source, value.file, ctx.samples)
        slim = onnxslim.slim(source)
        onnx.save(slim, str(slim_path))
        optimized = ctx.scratch("web.onnx")
        ort_optimize(slim_path, optimized)
        save_for_web(onnx.load(str(optimized)), optimized)
        notes: dict[str, Any] = {"optimizations": f"onnxslim {onnxslim.__version__}, onnxruntime basic offline"}
        if cleared:
            notes["rewrites"] = [f"declared shapes of {cleared} outputs dropped: the graph computes others"]
        return Value(Kind.ONNX_WEB, path=optimized, notes=notes)


# Mixed precision: what stays float32 when plain float16 fails. Normalizations, softmax, reductions and
# the elementwise ops whose range or precision float16 loses (exp, pow, large-range sums and
# differences); matrix products and convolutions, which hold nearly all the weights, stay float16.
MIXED_FP32_OPS = (
    "LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "BatchNormalization",
    "InstanceNormalization", "GroupNormalization", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum",
    "ReduceSumSquare", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceLogSumExp", "Pow", "Exp", "Log",
    "Sqrt", "Reciprocal", "Div", "Erf", "Add", "Sub", "Sigmoid", "Tanh", "Softplus", "CumSum",
)


class Float16(Pass):
    """Convert weights and compute to float16, keeping float32 inputs and outputs."""

    name = "onnx-fp16"
    consumes = Kind.ONNX_WEB
    produces = Kind.ONNX_WEB_FP16
    modules = ("onnx", "onnxconverter_common")
    keep_fp32: tuple[str, ...] = ()  # op types left in float32 (mixed precision)

    def _run(self, value: Value, ctx: PassContext) -> Value:
        import onnx
        from onnxconverter_common import float16

        source = onnx.load(str(value.file))
        kept = sorted({n.op_type for n in source.graph.node if n.op_type in self.keep_fp32})
        blocked = list(float16.DEFAULT_OP_BLOCK_LIST) + kept if kept else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = float16.convert_float_to_float16(source, keep_io_types=True, op_block_list=blocked)
        truncated = sum("truncated" in str(w.message) for w in caught)
        if truncated:  # tiny weights flush to fp16's smallest normal; log, don't spam the terminal
            log.info("float16: %d weights outside the float16 range were clamped", truncated)
        out = ctx.scratch("web-fp16.onnx")
        save_for_web(model, out)
        notes: dict[str, Any] = {"method": "onnxconverter-common float16, fp32 I/O"}
        if self.keep_fp32:
            notes["method"] += "; mixed precision"
            notes["kept_float32_ops"] = kept
        return Value(Kind.ONNX_WEB_FP16, path=out, notes=notes)


class Float16Mixed(Float16):
    """float16 with the ops that lose range or precision kept in float32: the fallback when plain float16
    fails to load or fails parity."""

    name = "onnx-fp16-mixed"
    keep_fp32 = MIXED_FP32_OPS


class _Reader:
    """An onnxruntime CalibrationDataReader over the calibration samples, in small chunks."""

    def __init__(self, samples: dict[str, np.ndarray], inputs: tuple[TensorSpec, ...], chunk: int):
        self._chunks = iter_feeds(samples, inputs, chunk)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._chunks, None)


# The int8 recipe (docs/adr/0009): chosen so that native onnxruntime with and without VNNI and
# onnxruntime-web's wasm build compute the same outputs. x86 int8 kernels without VNNI multiply
# uint8 activations by int8 weights with VPMADDUBSW, whose 16-bit sums of two products saturate;
# 7-bit weights (reduce_range) keep every sum in range, so an AVX2-only CPU computes what a VNNI
# CPU and wasm compute.
STATIC_RECIPE = {"quant_format": "QDQ", "activation_type": "QUInt8", "weight_type": "QInt8",
                 "per_channel": True, "reduce_range": True}
STATIC_METHOD = "static QDQ, per-channel 7-bit int8 weights, uint8 activations"
# Dynamic quantization (no calibration data): ConvInteger has uint8 kernels only, and uint8 x uint8
# products never saturate on any CPU.
DYNAMIC_RECIPE = {"weight_type": "QUInt8", "reduce_range": False}
DYNAMIC_METHOD = "dynamic (no calibration data): uint8 weights, activations quantized at run time"


class Int8(Pass):
    """Quantize to int8: static QDQ (per-channel 7-bit weights) with calibration data, else dynamic."""

    name = "onnx-int8"
    consumes = Kind.ONNX_WEB
    produces = Kind.ONNX_WEB_INT8
    modules = ("onnx", "onnxruntime")

    def _run(self, value: Value, ctx: PassContext) -> Value:
        import onnx
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        upgraded, per_channel_ok, opset_note = _opset_for_qdq(value.file, ctx)
        source = ctx.scratch("int8-pre.onnx")
        try:
            quant_pre_process(str(upgraded), str(source), skip_symbolic_shape=False)
        except Exception as exc:  # pre-processing is an optimization; quantize without it
            log.warning("quantization pre-processing failed (%s); quantizing the model as is", exc)
            source = upgraded
        out = ctx.scratch("web-int8.onnx")
        start = time.perf_counter()
        if ctx.has_calibration:
            first = ctx.inputs[0].shape[0] if ctx.inputs[0].shape else None
            chunk = first if isinstance(first, int) and first > 0 else CALIBRATION_CHUNK
            r = STATIC_RECIPE if per_channel_ok else {**STATIC_RECIPE, "per_channel": False}
            quantize_static(
                str(source), str(out), _Reader(ctx.samples, ctx.inputs, chunk),
                quant_format=getattr(QuantFormat, str(r["quant_format"])), per_channel=bool(r["per_channel"]),
                activation_type=getattr(QuantType, str(r["activation_type"])),
                weight_type=getattr(QuantType, str(r["weight_type"])), reduce_range=bool(r["reduce_range"]),
            )
            count = sample_count(ctx.samples, ctx.inputs)
            method = f"{STATIC_METHOD}, MinMax on {count} samples"
            if not per_channel_ok:
                method = method.replace("per-channel", "per-tensor")
            recipe = r
        else:
            quantize_dynamic(str(source), str(out), weight_type=getattr(QuantType, str(DYNAMIC_RECIPE["weight_type"])),
                             reduce_range=bool(DYNAMIC_RECIPE["reduce_range"]))
            method = DYNAMIC_METHOD
            recipe = {"dynamic": True, **DYNAMIC_RECIPE}
        log.info("int8 quantization took %.2fs", time.perf_counter() - start)
        save_for_web(onnx.load(str(out)), out)
        notes: dict[str, Any] = {"method": method, "recipe": dict(recipe)}
        if opset_note:
            notes["opset"] = opset_note
        return Value(Kind.ONNX_WEB_INT8, path=out, notes=notes)


QDQ_PER_CHANNEL_OPSET = 13  # DequantizeLinear's axis attribute (per-channel) came with opset 13


def _opset_for_qdq(path: Path, ctx: PassContext) -> tuple[Path, bool, str]:
    """The model to quantize, whether per-channel QDQ fits its opset, and what was done about it.

    Models exported at opset 10-12 get per-channel DequantizeLinear nodes their opset does not allow
    (onnxruntime refuses them: "Unrecognized attribute: axis"). edgekit converts such a graph to
    opset 13 first; where the converter cannot, it quantizes per tensor, which opset 10 allows.
    """
    import onnx
    from onnx import version_converter

    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), QDQ_PER_CHANNEL_OPSET)
    if opset >= QDQ_PER_CHANNEL_OPSET:
        return path, True, ""
    try:
        upgraded = version_converter.convert_version(model, QDQ_PER_CHANNEL_OPSET)
        onnx.checker.check_model(upgraded)
    except Exception as exc:  # the converter lacks an adapter for some op: stay at the old opset
        log.info("cannot convert opset %d to %d (%s); quantizing per tensor", opset, QDQ_PER_CHANNEL_OPSET, exc)
        return path, False, f"opset {opset} kept (conversion to {QDQ_PER_CHANNEL_OPSET} failed); per-tensor weights"
    out = ctx.scratch("int8-opset13.onnx")
    onnx.save(upgraded, str(out))
    return out, True, f"converted from opset {opset} to {QDQ_PER_CHANNEL_OPSET} for per-channel QDQ"
