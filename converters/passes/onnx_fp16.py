"""onnx-web-fp16: float16 ONNX that holds on real models (docs/adr/0013).

onnxruntime's float16 converter, with the nodes whose activations leave float16's range kept float32,
parity also judged on an emulation that stores float16 as a GPU does, and mixed precision chosen by
measurement (:mod:`edgekit.converters.passes.onnx_precision`) when plain float16 fails. The range probe
and the emulation are in :mod:`edgekit.converters.passes.onnx_fp16_ranges`.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from typing import Any

from edgekit.converters.passes import Pass, PassContext, Value
from edgekit.converters.passes.mixed_search import MAX_FP32_WEIGHT_SHARE
from edgekit.converters.passes.onnx_fp16_ranges import emulated_parity, float32_weight_share, overflowing_nodes
from edgekit.converters.passes.onnx_web import save_for_web
from edgekit.converters.registry import Kind
from edgekit.errors import ParityError

log = logging.getLogger(__name__)


# Mixed precision: what stays float32 when plain float16 fails. Normalizations, softmax, reductions and
# the elementwise ops whose range or precision float16 loses (exp, pow, large-range sums and
# differences); matrix products and convolutions, which hold nearly all the weights, stay float16.
MIXED_FP32_OPS = (
    "LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "BatchNormalization",
    "InstanceNormalization", "GroupNormalization", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum",
    "ReduceSumSquare", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceLogSumExp", "Pow", "Exp", "Log",
    "Sqrt", "Reciprocal", "Div", "Erf", "Add", "Sub", "Sigmoid", "Tanh", "Softplus", "CumSum",
)


# The float side of quantized ops stays float32 (DynamicQuantizeLinear takes float32 only; the others take
# float16 only from opset 19): an already quantized source keeps its integer weights and kernels, and
# only its float ops become float16.
QUANTIZED_OPS = ("DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                 "DynamicQuantizeLSTM", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention")


class Float16(Pass):
    """Convert weights and compute to float16, keeping float32 inputs and outputs.

    Before converting, the fp32 graph runs on a few samples with every intermediate tensor as an
    output: a node whose output or input goes beyond float16's range (half of 65504, for headroom) stays
    float32, as do weights beyond it. Runtimes cannot be trusted to show an overflow: onnxruntime's CPU
    provider computes most float16 ops in float32 and removes its own cast pairs, so a float16 graph
    that overflows on a GPU passes there. onnxruntime's converter
    (``onnxruntime.transformers.float16``) writes the casts around float32 nodes; it keeps weights
    exact up to 65504 (onnxconverter-common clamps them to 10000).
    """

    keep_fp32: tuple[str, ...] = ()  # op types left in float32 (mixed precision)

    def _run(self, value: Value, ctx: PassContext) -> Value:
        import onnx
        from onnxruntime.transformers import float16

        source = onnx.load(str(value.file))
        _name_nodes(source)
        overflowing, range_note = overflowing_nodes(source, ctx)
        kept = sorted({n.op_type for n in source.graph.node if n.op_type in self.keep_fp32})
        blocked_nodes = set(overflowing)
        choice = None
        if self.keep_fp32 and ctx.reference is not None:  # mixed: which nodes stay float32, by measurement
            from edgekit.converters.artifacts import held_to
            from edgekit.converters.passes.onnx_precision import choose
            from edgekit.converters.registry import TARGETS

            tolerance = held_to(TARGETS["onnx-web-fp16"], quantized_source=ctx.quantized_source).tolerance
            choice = choose(source, ctx, tolerance, frozenset(self.keep_fp32), overflowing)
            blocked_nodes = {n.name for n in source.graph.node if n.name not in choice.half}
            kept = sorted(choice.fp32_op_types)
        block_types = list(float16.DEFAULT_OP_BLOCK_LIST) + list(QUANTIZED_OPS) + ([] if choice else kept)
        copied = separate_shared_weights(source, blocked_nodes, set(block_types))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = float16.convert_float_to_float16(source, keep_io_types=True, op_block_list=block_types,
                                                     node_block_list=sorted(blocked_nodes))
        if copied:
            join_weight_copies(model)
        dropped = drop_cast_round_trips(model)
        emulated = emulated_parity(model, ctx)
        truncated = sum("truncated" in str(w.message) for w in caught)
        if truncated:  # tiny weights flush to fp16's smallest subnormal; log, don't spam the terminal
            log.info("float16: %d weights outside the float16 range were clamped", truncated)
        out = ctx.scratch("web-fp16.onnx")
        share = float32_weight_share(model)
        if share > MAX_FP32_WEIGHT_SHARE and choice is None:  # (a search refuses on its own, copies aside)
            ops = sorted({n.op_type for n in source.graph.node if n.name in overflowing or n.op_type in kept})
            raise ParityError(
                f"float16 cannot hold this model: nodes holding {share:.0%} of the weights must compute in float32 "
                f"({', '.join(ops)}; {range_note}); use the onnx-web (fp32) target, or onnx-web-int8 for smaller "
                "weights")
        save_for_web(model, out)
        notes: dict[str, Any] = {"method": "onnxruntime float16 converter, fp32 I/O",
                                 "activation_range": range_note}
        if ctx.quantized_source and out.stat().st_size >= value.file.stat().st_size:
            # the integer weights stay integer either way; float16 of the small float rest did not pay
            shutil.copyfile(value.file, out)
            return Value(Kind.ONNX_WEB_FP16, path=out, notes={
                "method": "the quantized source's graph as it is: its weights stay 8-bit, and float16 of its few "
                          "float tensors made the file larger (casts around the quantized ops)"})
        if dropped:
            notes["cast_round_trips_removed"] = dropped
        if copied:
            notes["float32_shared_weights"] = f"{copied} (read by float32 and float16 nodes: stored once in float32)"
        if overflowing:
            ops = sorted({n.op_type for n in source.graph.node if n.name in overflowing})
            notes["float32_for_range"] = f"{len(overflowing)} nodes ({', '.join(ops)})"
        if self.keep_fp32:
            notes["method"] += "; mixed precision" + (f" ({choice.method})" if choice else " (the fixed list)")
            notes["kept_float32_ops"] = kept
            if choice:
                notes["search_runs"] = choice.runs
                notes["search_max_rel_error"] = float(f"{choice.search_error:.3g}")
        notes["float32_weight_share"] = round(choice.fp32_weight_share if choice else share, 4)
        if copied:
            notes["float32_bytes_share"] = round(share, 4)  # the file's, with the copies
        notes["float16_emulated"] = emulated
        return Value(Kind.ONNX_WEB_FP16, path=out, notes=notes)


class Float16Mixed(Float16):
    """float16 with the nodes that lose range or precision kept in float32, chosen by measurement
    (:mod:`edgekit.converters.passes.onnx_precision`; the fixed list of op types first): the fallback
    when plain float16 fails to load or fails parity."""

    keep_fp32 = MIXED_FP32_OPS


def separate_shared_weights(model: Any, blocked_nodes: set[str], blocked_types: set[str]) -> int:
    """Give float32 nodes their own copy of float weights they share with float16 nodes; returns how many
    weights were copied.

    The converter casts a shared weight to float16 once, so a node kept float32 for precision would
    read it rounded all the same (basic-pitch's CQT kernels feed 32 convolutions). After conversion
    :func:`join_weight_copies` keeps the float32 copy only.
    """
    from onnx import TensorProto

    graph = model.graph
    floats = {i.name: i for i in graph.initializer if i.data_type == TensorProto.FLOAT}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in set(node.input):
            if name in floats:
                readers.setdefault(name, []).append(node)

    def blocked(node: Any) -> bool:
        return node.name in blocked_nodes or node.op_type in blocked_types

    copied = 0
    for name, nodes in readers.items():
        kept = [n for n in nodes if blocked(n)]
        if not kept or len(kept) == len(nodes):
            continue
        twin = graph.initializer.add()
        twin.CopyFrom(floats[name])
        twin.name = f"{name}__fp32"
        for node in kept:
            node.input[:] = [twin.name if x == name else x for x in node.input]
        copied += 1
    return copied


def join_weight_copies(model: Any) -> None:
    """Store each weight :func:`separate_shared_weights` copied once, in float32: its float16 readers get it
    through a Cast node (folded when the session loads), so the file holds 4 bytes per value, not 4 + 2."""
    from onnx import TensorProto, helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    casts = []
    for name in [n for n in inits if n.endswith("__fp32")]:
        half = inits.get(name.removesuffix("__fp32"))
        if half is None or half.data_type != TensorProto.FLOAT16:
            continue
        graph.initializer.remove(half)
        casts.append(helper.make_node("Cast", [name], [half.name], to=TensorProto.FLOAT16, name=f"{half.name}_cast"))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


def drop_cast_round_trips(model: Any) -> int:
    """Remove the float32 -> float16 -> float32 cast pairs the converter writes between float32 nodes
    and around float32 inputs and outputs; returns how many were removed.

    They only lose precision and range: a float32 node's output beyond 65504 that feeds a graph output
    would reach it as inf. The fp32 model the pass starts from has no such pairs of its own. Nodes are
    put in topological order afterwards (the converter appends its casts at the end).
    """
    from onnx import TensorProto, helper

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}

    def cast_to(node: Any) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    rename: dict[str, str] = {}
    removed: list[Any] = []
    identities: list[Any] = []
    for node in graph.node:
        first = producer.get(node.input[0]) if node.input else None
        if cast_to(node) != TensorProto.FLOAT or first is None or cast_to(first) != TensorProto.FLOAT16:
            continue
        if node.output[0] in outputs:
            identities.append(helper.make_node("Identity", [first.input[0]], [node.output[0]],
                                               name=f"{node.name}_kept_float32"))
        else:
            rename[node.output[0]] = first.input[0]
        removed.append(node)
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    if not removed:
        ordered = _topological(list(graph.node), known)
        del graph.node[:]
        graph.node.extend(ordered)
        return 0
    gone = {id(n) for n in removed}
    kept = [n for n in graph.node if id(n) not in gone] + identities
    for node in kept:
        node.input[:] = [rename.get(x, x) for x in node.input]
    used = {x for n in kept for x in n.input} | outputs
    kept = [n for n in kept if not (n.op_type == "Cast" and not any(o in used for o in n.output))]
    del graph.node[:]
    graph.node.extend(_topological(kept, known))
    return len(removed)


def _topological(nodes: list[Any], known: set[str]) -> list[Any]:
    """``nodes`` in an order where each runs after the producers of its inputs (stable otherwise)."""
    ready = set(known) | {""}
    pending = list(nodes)
    ordered: list[Any] = []
    while pending:
        rest = [n for n in pending if not all(x in ready for x in n.input)]
        progressed = [n for n in pending if all(x in ready for x in n.input)]
        if not progressed:  # inputs from an outer scope or a cycle: keep the remaining order
            return ordered + rest
        for n in progressed:
            ordered.append(n)
            ready.update(n.output)
        pending = rest
    return ordered


def _name_nodes(model: Any) -> None:
    """Give every top-level node a unique name (the converter's node block list goes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"edgekit_n{i}"
        seen.add(node.name)


