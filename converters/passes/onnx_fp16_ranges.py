"""float16's range on real models: which nodes must stay float32, and parity on an emulation of float16
storage (docs/adr/0013).

onnxruntime's CPU provider computes float16 in float32 and drops its own casts, so overflow never shows
when the artifact is validated there; this module measures activation ranges on the fp32 graph and
runs a copy of the graph that rounds every float16 tensor as a GPU stores it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edgekit.converters.passes import PassContext
from edgekit.parity import iter_feeds

log = logging.getLogger(__name__)


FP16_MAX = 65504.0


# Activations beyond this magnitude on the samples keep their producers and consumers in float32: half of
# float16's range, since the samples do not hold every input a device will see.
FP16_RANGE_LIMIT = FP16_MAX / 2


RANGE_SAMPLES = 8  # samples run to measure activation ranges (every intermediate tensor is kept)


RANGE_CHUNK = 4


def emulated_parity(model: Any, ctx: PassContext) -> dict[str, Any]:
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
