"""onnx-web-int8: int8 ONNX by the model family's recipes (docs/adr/0009, docs/adr/0013)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle import TensorSpec
from edgekit.converters.passes import Pass, PassContext, Value
from edgekit.converters.passes.onnx_web import save_for_web
from edgekit.converters.registry import Kind
from edgekit.errors import ConversionError
from edgekit.parity import iter_feeds, sample_count

log = logging.getLogger(__name__)

CALIBRATION_CHUNK = 32


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


# The transformer recipe (optimum's and onnxruntime's for BERT-like encoders): only the weights of matrix
# products are quantized, dynamically; embeddings (Gather), normalizations, softmax and the rest stay
# float. uint8 weights, as in DYNAMIC_RECIPE, so that no CPU saturates.
MATMUL_RECIPE: dict[str, Any] = {"dynamic": True, "op_types": ["MatMul", "Gemm"], "weight_type": "QUInt8", "per_channel": True,
                 "reduce_range": False}
MATMUL_METHOD = ("dynamic, MatMul and Gemm weights only (uint8 per channel), activations quantized at run time; "
                 "embeddings, normalizations and softmax stay float")
# Weight-only int8 (the last recipe of every family, the one Core ML's int8 uses): convolution and matrix
# weights stored as int8 per output channel, symmetric (full 8 bits: no int8 kernel multiplies them, so
# nothing saturates), each behind a DequantizeLinear; the model computes in float32. For models whose
# activations cannot be 8-bit (probability maps that flip at their threshold, recognizers whose per-step
# decisions move): the download is as small as static int8's, the compute is float's.
WEIGHTS_RECIPE: dict[str, Any] = {"weight_only": True, "op_types": ["Conv", "ConvTranspose", "MatMul", "Gemm"],
                                  "weight_type": "QInt8", "per_channel": True, "symmetric": True}
WEIGHTS_METHOD = ("weight-only: convolution and matrix weights int8 per channel (symmetric), dequantized to float32 "
                  "in the graph; activations and compute stay float32")


class Int8(Pass):
    """Quantize to int8 with the recipes of the model's family (:func:`model_family`), in order: for
    transformers, MatMul/Gemm weights only, dynamically (:data:`MATMUL_RECIPE`), then static QDQ, then
    every weight dynamically; for the rest, static QDQ (per-channel 7-bit weights, with calibration
    data), then every weight dynamically (:data:`DYNAMIC_RECIPE`), then MatMul/Gemm only; for both, then
    int8 weights with float32 compute (:data:`WEIGHTS_RECIPE`), and last the same with the weights that
    8 bits cannot hold in float16 (``weights-mixed``, measured: :mod:`onnx_int8_mixed`). This pass
    uses the first; its fallbacks the next ones, when one fails parity or cannot be loaded. A recipe
    that leaves most of the weights in float is refused (the mixed one: past its float16 share). The
    recipe and family go in the notes."""

    rank = 0  # which of the family's recipes this pass uses

    def _run(self, value: Value, ctx: PassContext) -> Value:
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        family = model_family(onnx.load(str(value.file)))
        order = RECIPE_ORDER["transformer" if family == "transformer" else "cnn"]
        order = tuple(r for r in order if r != "static" or ctx.has_calibration)
        if self.rank >= len(order):
            raise ConversionError(f"no further int8 recipe for this model (a {family} graph"
                                  f"{'' if ctx.has_calibration else ', no calibration data'}: {', '.join(order)})")
        recipe_name = order[self.rank]
        upgraded, per_channel_ok, opset_note = _opset_for_qdq(value.file, ctx)
        source = ctx.scratch("int8-pre.onnx")
        try:
            quant_pre_process(str(upgraded), str(source), skip_symbolic_shape=False)
        except Exception as exc:  # pre-processing is an optimization; quantize without it
            log.warning("quantization pre-processing failed (%s); quantizing the model as is", exc)
            source = upgraded
        out = ctx.scratch("web-int8.onnx")
        start = time.perf_counter()
        recipe_fn = {"matmul": self._matmul_only, "static": self._static, "dynamic": self._dynamic,
                     "weights": self._weights, "weights-mixed": self._weights_mixed}[recipe_name]
        method, recipe = recipe_fn(source, out, ctx, per_channel_ok)
        log.info("int8 quantization took %.2fs", time.perf_counter() - start)
        model = onnx.load(str(out))
        share = quantized_weight_share(model)
        if share < MIN_QUANTIZED_SHARE and recipe_name != "weights-mixed":  # its search bounds the float16 share
            raise ConversionError(f"the int8 recipe '{recipe_name}' quantized only {share:.0%} of this model's weights "
                                  "outside embedding tables (its matrix products or convolutions hold few of them); an "
                                  "int8 target must hold most weights in 8 bits")
        save_for_web(model, out)
        notes: dict[str, Any] = {"method": method, "recipe": {"name": recipe_name, **recipe}, "family": family,
                                 "quantized_weight_share": round(share, 4)}
        if opset_note:
            notes["opset"] = opset_note
        return Value(Kind.ONNX_WEB_INT8, path=out, notes=notes)

    def _matmul_only(self, source: Path, out: Path, ctx: PassContext,
                     per_channel_ok: bool) -> tuple[str, dict[str, Any]]:
        """The transformer recipe (:data:`MATMUL_RECIPE`)."""
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(source), str(out), op_types_to_quantize=list(MATMUL_RECIPE["op_types"]),
                         weight_type=getattr(QuantType, str(MATMUL_RECIPE["weight_type"])),
                         per_channel=bool(MATMUL_RECIPE["per_channel"]) and per_channel_ok,
                         reduce_range=bool(MATMUL_RECIPE["reduce_range"]), extra_options={"MatMulConstBOnly": True})
        return MATMUL_METHOD, dict(MATMUL_RECIPE)

    def _static(self, source: Path, out: Path, ctx: PassContext, per_channel_ok: bool) -> tuple[str, dict[str, Any]]:
        """Static QDQ from the calibration data (:data:`STATIC_RECIPE`)."""
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

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
        return method, dict(r)

    def _dynamic(self, source: Path, out: Path, ctx: PassContext, per_channel_ok: bool) -> tuple[str, dict[str, Any]]:
        """Every weight dynamically (:data:`DYNAMIC_RECIPE`): activation ranges measured per run."""
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(source), str(out), weight_type=getattr(QuantType, str(DYNAMIC_RECIPE["weight_type"])),
                         reduce_range=bool(DYNAMIC_RECIPE["reduce_range"]))
        return DYNAMIC_METHOD, {"dynamic": True, **DYNAMIC_RECIPE}


    def _weights(self, source: Path, out: Path, ctx: PassContext, per_channel_ok: bool) -> tuple[str, dict[str, Any]]:
        """int8 weights, float32 compute (:data:`WEIGHTS_RECIPE`)."""
        import onnx

        model = onnx.load(str(source))
        count = quantize_weights(model, per_channel=per_channel_ok)
        if not count:
            raise ConversionError("the weight-only int8 recipe found no float convolution or matrix weights to quantize")
        onnx.save(model, str(out))
        method = WEIGHTS_METHOD if per_channel_ok else WEIGHTS_METHOD.replace("per channel", "per tensor")
        return method, {**WEIGHTS_RECIPE, "per_channel": per_channel_ok, "quantized_weights": count}

    def _weights_mixed(self, source: Path, out: Path, ctx: PassContext,
                       per_channel_ok: bool) -> tuple[str, dict[str, Any]]:
        """int8 weights but the fewest float16 ones that pass parity, float32 compute (onnx_int8_mixed)."""
        import onnx

        from edgekit.converters.passes import onnx_int8_mixed

        model, found = onnx_int8_mixed.mixed_weights(onnx.load(str(source)), ctx, per_channel_ok)
        onnx.save(model, str(out))
        method = onnx_int8_mixed.METHOD if per_channel_ok else onnx_int8_mixed.METHOD.replace("per channel", "per tensor")
        return method, {**WEIGHTS_RECIPE, "per_channel": per_channel_ok, **found}


class Int8Second(Int8):
    """int8 with the family's second recipe (see :class:`Int8`)."""

    rank = 1


class Int8Third(Int8):
    """int8 with the family's third recipe (see :class:`Int8`)."""

    rank = 2


class Int8Fourth(Int8):
    """int8 with the family's fourth recipe (see :class:`Int8`)."""

    rank = 3


class Int8Fifth(Int8):
    """int8 with the family's fifth recipe (see :class:`Int8`)."""

    rank = 4


# The recipes tried in order, by family; "static" needs calibration data and is skipped without it.
RECIPE_ORDER: dict[str, tuple[str, ...]] = {"transformer": ("matmul", "static", "dynamic", "weights", "weights-mixed"),
                                             "cnn": ("static", "dynamic", "matmul", "weights", "weights-mixed")}
# The axis of each op's weight (its second input) that holds its output channels; MatMul's is its last,
# Gemm's depends on transB.
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1, "MatMul": -1, "Gemm": None}
MIN_WEIGHT_ELEMENTS = 16


def quantize_weights(model: Any, per_channel: bool = True, *, only: frozenset[str] | None = None) -> int:
    """Store the float weights of the graph's Conv, ConvTranspose, MatMul and Gemm nodes as int8 (symmetric,
    per output channel when ``per_channel``, else per tensor) behind a DequantizeLinear, in place; returns
    how many weights were quantized. ``only`` limits it to those weights. A
    weight shared by several nodes is quantized once; a float weight also read inside a subgraph is kept for it."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    dequantized: dict[str, str] = {}
    added = []
    for node in graph.node:
        if node.op_type not in WEIGHT_AXIS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        name = node.input[1]
        init = inits[name]
        if only is not None and name not in only:
            continue
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < MIN_WEIGHT_ELEMENTS:
            continue
        if name not in dequantized:
            w = numpy_helper.to_array(init).astype(np.float32)
            axis = WEIGHT_AXIS[node.op_type]
            if axis is None:
                axis = 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
            axis = axis % w.ndim if w.ndim else 0
            if per_channel and w.ndim >= 2:
                shape = [1] * w.ndim
                shape[axis] = -1
                peak = np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != axis))
                scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
                q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
                zero = np.zeros(scale.shape, np.int8)
            else:
                peak = float(np.abs(w).max()) if w.size else 0.0
                scale = np.asarray(peak / 127.0 if peak > 0 else 1.0, np.float32)
                q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
                zero = np.asarray(0, np.int8)
            base = f"{name}_int8"
            graph.initializer.extend([numpy_helper.from_array(q, base), numpy_helper.from_array(scale, f"{base}_scale"),
                                      numpy_helper.from_array(zero, f"{base}_zero")])
            dequantized[name] = f"{base}_dq"
            dq = helper.make_node("DequantizeLinear", [base, f"{base}_scale", f"{base}_zero"], [dequantized[name]],
                                  name=f"{base}_DequantizeLinear")
            if per_channel and w.ndim >= 2:
                dq.attribute.append(helper.make_attribute("axis", axis))
            added.append(dq)
        node.input[1] = dequantized[name]
    if not dequantized:
        return 0
    used = {x for n in graph.node for x in n.input} | subgraph_inputs(graph)
    kept = [i for i in graph.initializer if i.name not in dequantized or i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = added + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(dequantized)


def subgraph_inputs(graph: Any) -> set[str]:
    """Every name read by a node inside the graph's subgraphs (If, Loop, Scan bodies), recursively."""
    from onnx import AttributeProto

    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                names |= {x for n in sub.node for x in n.input} | subgraph_inputs(sub)
    return names
MIN_QUANTIZED_SHARE = 0.5  # an int8 artifact holds at least this share of its weights in 8 bits


def quantized_weight_share(model: Any) -> float:
    """The share of the model's weight elements stored in 8 bits, embedding tables left aside (the transformer
    recipe keeps them float by design: a lookup loses more in 8 bits than it saves in compute)."""
    from onnx import TensorProto

    tables = {n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input}
    counts = [(i.data_type, int(np.prod(i.dims)) if i.dims else 1) for i in model.graph.initializer
              if not (i.name in tables and i.data_type == TensorProto.FLOAT)]
    total = sum(n for _, n in counts)
    eight = sum(n for t, n in counts if t in (TensorProto.INT8, TensorProto.UINT8))
    return eight / total if total else 0.0


def model_family(model: Any) -> str:
    """``transformer`` when the graph has attention's parts: a Softmax, a normalization over the last axis
    (LayerNormalization, or the ReduceMean a decomposed one starts with), and matrix products holding at
    least half of the weights outside embedding tables; else ``cnn`` when convolutions hold most of the
    weights; else ``other``."""
    graph = model.graph
    sizes = {i.name: int(np.prod(i.dims)) if i.dims else 1 for i in graph.initializer}
    types = {n.op_type for n in graph.node}
    held: dict[str, int] = {}
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv", "ConvTranspose"):
            group = "conv" if node.op_type.startswith("Conv") else "matmul"
            held[group] = held.get(group, 0) + sum(sizes.get(x, 0) for x in node.input[1:2])
    total = sum(held.values())
    if not total:
        return "other"
    if "Softmax" in types and types & {"LayerNormalization", "ReduceMean"} and held.get("matmul", 0) * 2 >= total:
        return "transformer"
    return "cnn" if held.get("conv", 0) * 2 > total else "other"


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
