"""The ONNX-web family: optimized fp32, float16 and int8 ONNX for onnxruntime-web, plus ORT format."""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle import TensorSpec
from edgekit.converters.passes import Pass, PassContext, Value
from edgekit.converters.passes.mixed_search import MAX_FP32_WEIGHT_SHARE
from edgekit.converters.passes.onnx_rewrites import clear_wrong_output_shapes
from edgekit.converters.registry import Kind
from edgekit.errors import ConversionError, ParityError
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

    name = "onnx-fp16"
    consumes = Kind.ONNX_WEB
    produces = Kind.ONNX_WEB_FP16
    modules = ("onnx", "onnxruntime")
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

    name = "onnx-fp16-mixed"
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


class Int8(Pass):
    """Quantize to int8 with the recipes of the model's family (:func:`model_family`), in order: for
    transformers, MatMul/Gemm weights only, dynamically (:data:`MATMUL_RECIPE`), then static QDQ, then
    every weight dynamically; for the rest, static QDQ (per-channel 7-bit weights, with calibration
    data), then every weight dynamically (:data:`DYNAMIC_RECIPE`), then MatMul/Gemm only. This pass
    uses the first; its fallbacks the next ones, when one fails parity or cannot be loaded. A recipe
    that leaves most of the weights in float is refused. The recipe and family go in the notes."""

    name = "onnx-int8"
    consumes = Kind.ONNX_WEB
    produces = Kind.ONNX_WEB_INT8
    modules = ("onnx", "onnxruntime")
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
        recipe_fn = {"matmul": self._matmul_only, "static": self._static, "dynamic": self._dynamic}[recipe_name]
        method, recipe = recipe_fn(source, out, ctx, per_channel_ok)
        log.info("int8 quantization took %.2fs", time.perf_counter() - start)
        model = onnx.load(str(out))
        share = quantized_weight_share(model)
        if share < MIN_QUANTIZED_SHARE:
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


class Int8Second(Int8):
    """int8 with the family's second recipe (see :class:`Int8`)."""

    name = "onnx-int8-second"
    rank = 1


class Int8Third(Int8):
    """int8 with the family's third recipe (see :class:`Int8`)."""

    name = "onnx-int8-third"
    rank = 2


# The recipes tried in order, by family; "static" needs calibration data and is skipped without it.
RECIPE_ORDER: dict[str, tuple[str, ...]] = {"transformer": ("matmul", "static", "dynamic"),
                                             "cnn": ("static", "dynamic", "matmul")}
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
