"""Reduced-precision TFLite from a finished fp32 ``.tflite``, with Google's AI Edge Quantizer.

TFLiteConverter quantizes while it converts from TensorFlow, so a model whose fp32 TFLite came another
way (edgekit's ONNX-to-PyTorch interpreter and litert-torch, for graphs onnx2tf gets wrong) had no
float16 or int8 form. ``ai-edge-quantizer`` rewrites a ``.tflite`` file itself: float16 weights
(dequantized to float32 at load, as TFLiteConverter's float16 does) and dynamic-range int8 (int8
weights per channel, activations quantized at run time). The artifact keeps the fp32 model's
tensors and signature, so the fp32 artifact's I/O record carries over.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._console import captured_output
from edgekit.converters.passes import Pass, PassContext, Value, carried_notes
from edgekit.converters.passes.mixed_search import INT8_PRECISIONS, MAX_FLOAT16_WEIGHT_SHARE, MAX_FP32_WEIGHT_SHARE
from edgekit.converters.registry import Kind
from edgekit.errors import ConversionError


class _Quantize(Pass):
    consumes = Kind.TFLITE
    modules = ("ai_edge_quantizer",)
    method = ""

    def _recipe(self, quantizer: Any) -> None:
        raise NotImplementedError

    def _run(self, value: Value, ctx: PassContext) -> Value:
        from ai_edge_quantizer import quantizer

        q = quantizer.Quantizer(str(value.file))
        self._recipe(q)
        with captured_output():  # it prints its timing
            result = q.quantize()
        out = ctx.scratch(f"{self.name}.tflite")
        out.write_bytes(result.quantized_model)
        notes = carried_notes(value.notes, {"method": self.method, "quantizer": _version()})
        return Value(self.produces, path=out, notes=notes, inputs=value.inputs, outputs=value.outputs)


def _version() -> str:
    from importlib.metadata import version

    return f"ai-edge-quantizer {version('ai-edge-quantizer')}"


class TfliteFloat16Weights(_Quantize):
    """float16 weights of every op that has weights, dequantized to float32 at load."""

    method = "float16 weights (ai-edge-quantizer float casting), float32 compute and I/O"

    def _recipe(self, q: Any) -> None:
        from ai_edge_quantizer import qtyping
        from ai_edge_quantizer.quantizer import AlgorithmName

        q.update_quantization_recipe(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                     algorithm_key=AlgorithmName.FLOAT_CASTING, op_config=_float16_config())


class TfliteDynamicInt8Weights(_Quantize):
    """int8 weights per channel, activations quantized at run time (dynamic range)."""

    method = "dynamic range: int8 weights per channel (ai-edge-quantizer), activations quantized at run time"

    def _recipe(self, q: Any) -> None:
        from ai_edge_quantizer import recipe

        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())


class TfliteWeightInt8(_Quantize):
    """int8 weights per channel, float32 activations and compute: the fallback when dynamic range fails parity
    (activations quantized at run time move a probability map's edges or a recognizer's steps)."""

    method = ("weight-only: int8 weights per channel (ai-edge-quantizer), dequantized at load; float32 activations "
              "and compute")

    def _recipe(self, q: Any) -> None:
        from ai_edge_quantizer import recipe

        q.load_quantization_recipe(recipe.weight_only_wi8_afp32())


def weight_only_int8(path: Path) -> bytes:
    """The ``.tflite`` at ``path`` with int8 weights per channel and float32 compute (:class:`TfliteWeightInt8`)."""
    from ai_edge_quantizer import quantizer, recipe

    q = quantizer.Quantizer(str(path))
    q.load_quantization_recipe(recipe.weight_only_wi8_afp32())
    with captured_output():
        return bytes(q.quantize().quantized_model)


class TfliteFloat16Mixed(TfliteFloat16Weights):
    """float16 weights except on the ops measured to need float32 ones: the fallback when every weight in
    float16 fails parity (a detector's deep stack, an audio model's CQT kernels).

    On CPU LiteRT dequantizes float16 weights at load and computes in float32, so what drifts is the
    weights' rounding; the shared search (:mod:`edgekit.converters.passes.mixed_search`) measures which
    ops' weights must stay float32 with LiteRT itself, on the quantized file each choice gives.
    """

    method = "float16 weights except on the ops measured to need float32 (ai-edge-quantizer), float32 compute and I/O"
    target = "tflite-fp16"  # whose tolerance the search aims at
    instead = "use the tflite (fp32) target, or tflite-dynamic-int8 for smaller weights"
    precisions = ("float16", "compute in float32")  # the lower precision, and what the ops kept out of it do
    max_share = MAX_FP32_WEIGHT_SHARE  # of the weights, at most, kept out of the lower precision

    def _run(self, value: Value, ctx: PassContext) -> Value:
        from edgekit.converters.artifacts import held_to
        from edgekit.converters.passes.mixed_search import search
        from edgekit.converters.registry import TARGETS

        ops = _weighted_ops(value.file)
        if not ops:
            raise ConversionError("the model has no float weights for float16 to hold")
        tolerance = held_to(TARGETS[self.target], quantized_source=ctx.quantized_source).tolerance
        measure = _Measure(self, value, ctx, tolerance)
        names = [name for name, _, _, _ in ops]
        types = {name: kind for name, kind, _, _ in ops}
        weights = {name: size for name, _, size, _ in ops}
        measure.members = {name: members for name, _, _, members in ops}
        choice = search(measure, names, types, weights, frozenset(), lambda: measure.runs, self.target,
                        self.instead, max_share=self.max_share, precisions=self.precisions)
        out = ctx.scratch(f"{self.name}.tflite")
        out.write_bytes(measure.quantized(choice.half))
        notes = carried_notes(value.notes, {"method": self.method, "quantizer": _version(), **self._notes(choice, len(names))})
        return Value(self.produces, path=out, notes=notes, inputs=value.inputs, outputs=value.outputs)

    def _notes(self, choice: Any, count: int) -> dict[str, Any]:
        """What the manifest records of the search (``count`` candidates)."""
        return dict(choice.notes())

    def quantized(self, path: Path, half: frozenset[str]) -> bytes:
        """The model at ``path`` with the weights of the ops named in ``half`` (first output names) in float16."""
        if not half:
            return path.read_bytes()
        from ai_edge_quantizer import qtyping, quantizer

        q = quantizer.Quantizer(str(path))
        q.update_quantization_recipe(
            regex=_names_regex(half), operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING, op_config=_float16_config())
        with captured_output():
            return bytes(q.quantize().quantized_model)


class TfliteWeightInt8Mixed(TfliteFloat16Mixed):
    """int8 weights per channel except on the ops measured to need float16 ones, float32 compute: the last
    fallback of dynamic-range int8, when int8 weights everywhere fail parity (an audio model's CQT kernels,
    docs/adr/0019). The same search as float16's chooses the ops whose weights are int8."""

    method = ("weight-only, mixed: int8 weights per channel except on the ops measured to need float16 "
              "(ai-edge-quantizer), float32 compute and I/O")
    target = "tflite-dynamic-int8"
    instead = "use tflite-fp16, or accept the drift with --accept-parity-failure"
    precisions = INT8_PRECISIONS
    max_share = MAX_FLOAT16_WEIGHT_SHARE

    def _notes(self, choice: Any, count: int) -> dict[str, Any]:
        from edgekit.converters.passes.mixed_search import int8_notes

        return {"compute_precision": "fp32", **int8_notes(choice, count)}

    def quantized(self, path: Path, half: frozenset[str]) -> bytes:
        """The model at ``path`` with int8 weights on the ops named in ``half`` and float16 ones on the rest
        (nothing in int8: the fp32 file, the search's reference)."""
        if not half:
            return path.read_bytes()
        from ai_edge_quantizer import qtyping, quantizer, recipe

        q = quantizer.Quantizer(str(path))
        q.update_quantization_recipe(
            regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING, op_config=_float16_config())
        int8 = recipe.weight_only_wi8_afp32()[0]
        q.update_quantization_recipe(
            regex=_names_regex(half), operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            algorithm_key=int8["algorithm_key"], op_config=qtyping.OpQuantizationConfig.from_dict(int8["op_config"]))
        with captured_output():
            return bytes(q.quantize().quantized_model)


class TfliteWeightInt8MixedAfter(TfliteWeightInt8Mixed):
    """:class:`TfliteWeightInt8Mixed` as the fallback of ``tflite-aeq-dynamic-int8`` (routes that reach TFLite
    without TensorFlow: litert-torch)."""


def _names_regex(names: frozenset[str]) -> str:
    """ai-edge-quantizer's op selector for the ops whose first outputs are ``names``."""
    return "^(?:" + "|".join(re.escape(n) for n in sorted(names)) + ");"


def _float16_config() -> Any:
    """float16 weights dequantized at load, float32 compute (ai-edge-quantizer's float casting)."""
    from ai_edge_quantizer import qtyping

    return qtyping.OpQuantizationConfig(
        weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
        compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True)


def _weighted_ops(path: Path) -> list[tuple[str, str, int, tuple[str, ...]]]:
    """The units the search chooses among: ops that read float constant tensors, those sharing a weight
    joined into one (ai-edge-quantizer fails on a weight read by a float16 and a float32 op, and both read
    the same stored copy anyway). Each: (name, op type, float weight elements stored, each once, the ops'
    first output names)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

    model = tfl.read_model(str(path))
    ops: list[tuple[str, str, set[tuple[int, int]], int]] = []
    sizes: dict[tuple[int, int], int] = {}
    for sg_index, sg in enumerate(model.subgraphs):
        for op_index, op in enumerate(sg.operators):
            names = [tfl.get_tensor_name(sg.tensors[i]) for i in op.outputs if i != -1]
            consts: set[tuple[int, int]] = set()
            size = 0
            for i in op.inputs:
                data = tfl.get_tensor_data(sg.tensors[i], model.buffers) if i != -1 else None
                if data is not None and data.dtype == np.float32:
                    consts.add((sg_index, i))
                    sizes[(sg_index, i)] = int(data.size)
                    size += int(data.size)
            if names and size:
                ops.append((names[0], tfl.get_op_name_by_index(model, sg_index, op_index), consts, size))
    parent = list(range(len(ops)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[tuple[int, int], int] = {}
    for i, (_, _, consts, _) in enumerate(ops):
        for c in consts:
            if c in owner:
                parent[root(i)] = root(owner[c])
            else:
                owner[c] = i
    units: dict[int, list[int]] = {}
    for i in range(len(ops)):
        units.setdefault(root(i), []).append(i)
    out = []
    for members in units.values():
        first = ops[members[0]]
        kinds = sorted({ops[m][1] for m in members})
        stored = set().union(*(ops[m][2] for m in members))  # a weight the unit's ops share counts once
        out.append((first[0], "+".join(kinds), sum(sizes[c] for c in stored), tuple(ops[m][0] for m in members)))
    return out


class _Measure:
    """Runs a float16 choice's quantized file with LiteRT on the search samples against the fp32 file's outputs."""

    def __init__(self, owner: TfliteFloat16Mixed, value: Value, ctx: PassContext, tolerance: Any):
        from edgekit.converters.passes.mixed_search import search_samples, with_margin
        from edgekit.parity import attention_mask

        self.owner, self.value, self.ctx = owner, value, ctx
        self.runs = 0
        self.members: dict[str, tuple[str, ...]] = {}
        self.samples = search_samples(ctx.samples, ctx.inputs)
        self.mask = attention_mask(self.samples, ctx.inputs)
        self.margin = with_margin(tolerance)
        self.kinds = {s.name: s.kind for s in ctx.outputs}
        self.reference, self.specs = self._run(frozenset())

    def quantized(self, half: frozenset[str]) -> bytes:
        """The file with the units in ``half`` (each the ops sharing its weights) in float16."""
        return self.owner.quantized(self.value.file, frozenset(m for n in half for m in self.members.get(n, (n,))))

    def _run(self, half: frozenset[str]) -> tuple[dict[str, np.ndarray], tuple[Any, ...]]:
        from dataclasses import replace

        from edgekit.parity import run_batched
        from edgekit.runtimes.adapt import adapt, describe_io
        from edgekit.runtimes.litert import LiteRtRuntime

        self.runs += 1
        path = self.ctx.scratch("fp16-search.tflite")
        path.write_bytes(self.quantized(half))
        try:
            with captured_output():
                raw = LiteRtRuntime().open(path, providers=("XNNPACK", "CPU"))
            session = adapt(raw, describe_io(raw.inputs, {s.name: s for s in self.value.inputs or ()}),
                            describe_io(raw.outputs, {s.name: s for s in self.value.outputs or ()}))
            with np.errstate(all="ignore"):
                outputs = run_batched(session.run, self.samples, session.inputs, self.ctx.inputs)
        finally:
            path.unlink(missing_ok=True)
        return outputs, tuple(replace(s, kind=self.kinds.get(s.name)) for s in session.outputs)

    def __call__(self, half: frozenset[str]) -> tuple[bool, float]:
        from edgekit.converters.passes.mixed_search import verdict
        from edgekit.parity import compare

        actual, _ = self._run(half)
        return verdict(compare(self.reference, actual, self.specs, self.margin, mask=self.mask)[0], self.margin)
