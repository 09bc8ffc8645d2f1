"""Mixed float16 precision for ONNX, chosen by measurement (:func:`mixed_search.search`).

The search runs the fp32 graph with a chosen set of nodes computed as float16 would compute them: the
float inputs of each chosen node (weights included, clamped to float16's range as the converter
clamps them) and its float outputs are rounded to float16 by explicit cast pairs, which onnxruntime
keeps. The nodes the search leaves out are then kept float32 by onnxruntime's float16 converter
(``node_block_list``), and the converted graph is checked again on every sample by
:func:`edgekit.converters.passes.onnx_fp16_ranges.float16_emulation` and by onnxruntime itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.converters.passes import PassContext
from edgekit.converters.passes.mixed_search import Choice, search, search_samples, verdict, with_margin
from edgekit.converters.passes.onnx_fp16_ranges import FP16_MAX
from edgekit.parity import Tolerance, attention_mask, compare, run_batched


class _Search:
    """Runs the fp32 ``model`` on the search samples with chosen nodes rounded to float16."""

    def __init__(self, model: Any, ctx: PassContext, tolerance: Tolerance, exclude: set[str]):
        import onnx
        from onnx import TensorProto
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

        self.model = model
        self.runs = 0
        graph = model.graph
        inferred = onnx.shape_inference.infer_shapes(model)
        self.floats = {v.name for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
                       if v.type.tensor_type.elem_type == TensorProto.FLOAT}
        self.inits = {i.name: i for i in graph.initializer}
        self.floats |= {name for name, i in self.inits.items() if i.data_type == TensorProto.FLOAT}
        from edgekit.converters.passes.onnx_fp16 import QUANTIZED_OPS

        blocked = set(DEFAULT_OP_BLOCK_LIST) | set(QUANTIZED_OPS)
        self.nodes = [n for n in graph.node if n.op_type not in blocked and n.name not in exclude
                      and any(o in self.floats for o in n.output)]
        self.weights = {n.name: sum(int(np.prod(self.inits[x].dims)) for x in n.input
                                    if x in self.inits and x in self.floats) for n in self.nodes}
        self.inputs = ctx.inputs
        self.outputs = ctx.outputs
        self.samples = search_samples(ctx.samples, ctx.inputs)
        self.mask = attention_mask(self.samples, ctx.inputs)
        self.margin = with_margin(tolerance)
        self.reference = self._run(frozenset())

    def _graph(self, half: frozenset[str]) -> Any:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        out = onnx.ModelProto()
        out.CopyFrom(self.model)
        graph = out.graph
        rounded: dict[str, str] = {}  # tensor -> its float16-rounded copy
        extra_inits = []
        nodes = []

        def rounding(src: str, dst: str) -> list[Any]:
            return [helper.make_node("Cast", [src], [f"{dst}__h"], to=TensorProto.FLOAT16),
                    helper.make_node("Cast", [f"{dst}__h"], [dst], to=TensorProto.FLOAT)]

        for node in graph.node:
            if node.name not in half:
                nodes.append(node)
                continue
            for k, name in enumerate(node.input):
                if not name or name not in self.floats:
                    continue
                if name not in rounded:
                    rounded[name] = f"{name}__r16"
                    if name in self.inits:
                        value = np.clip(numpy_helper.to_array(self.inits[name]), -FP16_MAX, FP16_MAX)
                        extra_inits.append(numpy_helper.from_array(
                            value.astype(np.float16).astype(np.float32), rounded[name]))
                    else:
                        nodes.extend(rounding(name, rounded[name]))
                node.input[k] = rounded[name]
            nodes.append(node)
            for k, name in enumerate(node.output):
                if name and name in self.floats:
                    node.output[k] = f"{name}__f32"
                    nodes.extend(rounding(node.output[k], name))
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(extra_inits)
        return out

    def _run(self, half: frozenset[str]) -> dict[str, np.ndarray]:
        from edgekit.converters.passes.onnx_fp16_ranges import plain_runner

        self.runs += 1
        with np.errstate(all="ignore"):
            return run_batched(plain_runner(self._graph(half)), self.samples, self.inputs)

    def measure(self, half: frozenset[str]) -> tuple[bool, float]:
        """Whether the outputs pass the search's tolerance, and the worst error (inf on overflow)."""
        actual = self._run(half)
        return verdict(compare(self.reference, actual, self.outputs, self.margin, mask=self.mask)[0], self.margin)


def choose(model: Any, ctx: PassContext, tolerance: Tolerance, fixed_fp32_types: frozenset[str],
           exclude: set[str]) -> Choice:
    """Which nodes of the fp32 ``model`` (named, in topological order) to compute in float16; nodes in
    ``exclude`` (kept float32 for range) are never candidates.

    Raises:
        ParityError: More than ``MAX_FP32_WEIGHT_SHARE`` of the weights must stay float32.
    """
    found = _Search(model, ctx, tolerance, exclude)
    names = [n.name for n in found.nodes]
    types = {n.name: n.op_type for n in found.nodes}
    from onnx import TensorProto

    # A weight read by k nodes counts 1/k for each (as the per-node sums do), over every node's float weights
    # plus the integer weights of an already quantized model.
    inits = {i.name: i for i in model.graph.initializer}
    floats = sum(int(np.prod(inits[x].dims)) for n in model.graph.node for x in n.input
                 if x in inits and inits[x].data_type == TensorProto.FLOAT)
    integers = sum(int(np.prod(i.dims)) for i in inits.values() if i.data_type in (TensorProto.INT8, TensorProto.UINT8))
    total = (floats + integers) or 1

    def share_of(kept: set[str]) -> float:
        return sum(found.weights[n] for n in kept) / total

    return search(found.measure, names, types, found.weights, fixed_fp32_types, lambda: found.runs,
                  "onnx-web-fp16", "use the onnx-web (fp32) target, or onnx-web-int8 for smaller weights", share_of)
