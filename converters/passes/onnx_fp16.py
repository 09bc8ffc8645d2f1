"""onnx-web-fp16: float16 ONNX that holds on real models (docs/adr/0013).

onnxruntime's float16 converter, with the nodes whose activations leave float16's range kept float32,
parity also judged on an emulation that stores float16 as a GPU does, and mixed precision chosen by
measurement (:mod:`edgekit.converters.passes.onnx_precision`) when plain float16 fails.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from typing import Any

import numpy as np

from edgekit.converters.passes import Pass, PassContext, Value
from edgekit.converters.passes.mixed_search import MAX_FP32_WEIGHT_SHARE
from edgekit.converters.passes.onnx_web import save_for_web
from edgekit.converters.registry import Kind
from edgekit.errors import ParityError
from edgekit.parity import iter_feeds

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


FP16_MAX = 65504.0
# The float side of quantized ops stays float32 (DynamicQuantizeLinear takes float32 only; the others take
# float16 only from opset 19): an already quantized source keeps its integer weights and kernels, and
# only its float ops become float16.
QUANTIZED_OPS = ("DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                 "DynamicQuantizeLSTM", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention")
# Activations beyond this magnitude on the samples keep their producers and consumers in float32: half of
# float16's range, since the samples do not hold every input a device will see.
FP16_RANGE_LIMIT = FP16_MAX / 2
RANGE_SAMPLES = 8  # samples run to measure activation ranges (every intermediate tensor is kept)
RANGE_CHUNK = 4


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
        emulated = _emulated_parity(model, ctx)
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


def _emulated_parity(model: Any, ctx: PassContext) -> dict[str, Any]:
    """Run :func:`float16_emulation` of ``model`` on the samples against the source's outputs.

    The validator reads the result (``passed`` and, when it did not, ``failure``) as it reads the runtime's
    parity: a failure fails the route (mixed precision is tried next) unless parity failures are accepted.
    """
    from edgekit.converters.artifacts import held_to
    from edgekit.converters.registry import TARGETS
    from edgekit.parity import attention_mask, compare, describe_failure, run_batched

    if ctx.reference is None:
        return {"not_emulated": "no reference outputs"}
    emulated = float16_emulation(model)
    if emulated is None:
        return {"not_emulated": "the graph has subgraphs (If, Loop, Scan)"}
    tolerance = held_to(TARGETS["onnx-web-fp16"], quantized_source=ctx.quantized_source).tolerance
    with np.errstate(all="ignore"):
        actual = run_batched(plain_runner(emulated), ctx.samples, ctx.inputs)
    parity, _ = compare(ctx.reference, actual, ctx.outputs, tolerance, mask=attention_mask(ctx.samples, ctx.inputs))
    worst = max((e.get("max_rel_error", 0.0) for e in parity.per_output or ()), default=0.0)
    out: dict[str, Any] = {"passed": parity.passed, "n_samples": parity.n_samples, "max_rel_error": worst}
    if not parity.passed:
        out["failure"] = describe_failure("onnx-web-fp16 (float16 storage emulated)", parity)
    return out


def _name_nodes(model: Any) -> None:
    """Give every top-level node a unique name (the converter's node block list goes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"edgekit_n{i}"
        seen.add(node.name)


def overflowing_nodes(model: Any, ctx: PassContext) -> tuple[set[str], str]:
    """Names of the nodes that must stay float32 for range, and how that was measured.

    The fp32 model runs (optimizations off) on up to :data:`RANGE_SAMPLES` samples with every float
    intermediate as an output. A node is kept when a float tensor it produces or reads (a weight
    included) holds a finite value beyond :data:`FP16_RANGE_LIMIT`. Models the probe cannot run (over
    2 GB, or inputs it cannot feed) are converted without it, which the note says.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    from edgekit.parity import chunk_size

    limit = FP16_RANGE_LIMIT
    graph = model.graph
    big = {init.name for init in graph.initializer if init.data_type == TensorProto.FLOAT
           and numpy_helper.to_array(init).size and float(np.abs(numpy_helper.to_array(init)).max()) > limit}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type
                 for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
        wanted = [name for node in graph.node for name in node.output if name and types.get(name) == TensorProto.FLOAT]
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        declared = {o.name for o in probe.graph.output}
        probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                  for n in wanted if n not in declared)
        run = plain_runner(probe)
        peak: dict[str, float] = {}
        chunk = min(chunk_size(ctx.inputs), RANGE_CHUNK)
        count = 0
        for feeds in iter_feeds(ctx.samples, ctx.inputs, chunk, limit=RANGE_SAMPLES):
            for name, out in run(feeds).items():
                arr = np.asarray(out)
                if arr.size and np.issubdtype(arr.dtype, np.floating):
                    finite = np.abs(arr[np.isfinite(arr)])
                    if finite.size:
                        peak[name] = max(peak.get(name, 0.0), float(finite.max()))
            count += 1
    except Exception as exc:  # the probe is a safeguard; the converted model is still validated
        log.info("float16: activation ranges not measured (%s)", exc)
        return set(), f"not measured: {type(exc).__name__}: {str(exc)[:200]}"
    wide = big | {name for name, value in peak.items() if value > limit}
    kept = {node.name for node in graph.node if wide & (set(node.input) | set(node.output))}
    note = (f"measured on {min(count * chunk, RANGE_SAMPLES) if count else 0} samples: {len(wide)} tensors "
            f"beyond {limit:g}")
    return kept, note


def plain_runner(model: Any) -> Any:
    """A function running ``model`` on onnxruntime's CPU provider with graph optimizations off: feeds in the
    source's names (or its input order) and dtypes in, every graph output by name out."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    model_inputs = session.get_inputs()

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        by_name = all(i.name in feeds for i in model_inputs)
        given = [feeds[i.name] for i in model_inputs] if by_name else list(feeds.values())
        run_feeds: dict[str, np.ndarray] = {i.name: np.asarray(v).astype(_ORT_DTYPES.get(i.type, np.float32))
                     for i, v in zip(model_inputs, given, strict=True)}
        return dict(zip(names, session.run(names, run_feeds), strict=True))

    return run


def float16_emulation(model: Any) -> Any:
    """An fp32 graph that computes what ``model`` (a float16 graph) computes where float16 is stored, not
    only declared: every float16 tensor a node writes is rounded to float16 (an explicit cast pair, which
    onnxruntime keeps) and float16 weights and constants are held as their float32 values. Each op then
    computes in float32 on float16-rounded values, as GPU kernels with float32 accumulation do; what
    overflows float16 becomes inf. onnxruntime's CPU provider runs a float16 graph in float32 and drops
    its own casts, so neither an overflow nor float16's coarse spacing shows there.

    Returns None for graphs with subgraphs (If, Loop, Scan), which are not emulated.
    """
    import onnx
    from onnx import AttributeProto, TensorProto, helper, numpy_helper

    graph = model.graph
    if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return None
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output)}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    del g.value_info[:]
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT16:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
    nodes = []
    for i, node in enumerate(g.node):
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
        nodes.append(node)
        for j, name in enumerate(node.output):
            if name and types.get(name) == TensorProto.FLOAT16:
                raw = f"{name}__edgekit_f32_{i}_{j}"
                node.output[j] = raw
                nodes.append(helper.make_node("Cast", [raw], [f"{raw}_h"], to=TensorProto.FLOAT16))
                nodes.append(helper.make_node("Cast", [f"{raw}_h"], [name], to=TensorProto.FLOAT))
    del g.node[:]
    g.node.extend(nodes)
    return out


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
               "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def float32_weight_share(model: Any) -> float:
    """The share of the model's weight bytes stored as float32 (the size cost of mixed precision); the
    integer weights of an already quantized model count in the whole."""
    from onnx import helper

    def nbytes(init: Any) -> int:
        count = int(np.prod(init.dims)) if init.dims else 1
        return count * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize

    sizes = [(i.data_type, nbytes(i)) for i in model.graph.initializer]
    total = sum(n for _, n in sizes)
    fp32 = sum(n for t, n in sizes if t == 1)  # TensorProto.FLOAT
    return fp32 / total if total else 0.0
