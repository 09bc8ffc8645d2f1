"""The ONNX-web family: optimized fp32 ONNX for onnxruntime-web, plus ORT format.

float16 is in onnx_fp16.py, int8 in onnx_int8.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgekit.converters.passes import Pass, PassContext, Value
from edgekit.converters.passes.onnx_rewrites import clear_wrong_output_shapes
from edgekit.converters.registry import Kind

log = logging.getLogger(__name__)

MAX_WEB_IR_VERSION = 13  # onnxruntime-web 1.30 rejects IR 14, which onnx 1.23 writes by default


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
