"""Rewrites of an ONNX model before onnx2tf reads it: exact graph changes that work around what onnx2tf
and TensorFlow cannot take, each recorded in the artifact's notes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.converters.passes import PassContext
from edgekit.converters.passes.onnx_integer import integer_ops_to_float
from edgekit.parity import is_stacked

# TensorFlow scope names (onnx2tf names its layers after ONNX nodes): anything else fails the conversion
_TF_SCOPE_CHAR = re.compile(r"[^A-Za-z0-9_.\\/>-]")


FOLDED = "input shapes fixed in the graph and shape computations folded (onnxslim; onnx2tf's own onnxsim skipped)"


def prepare_for_onnx2tf(path: Path, samples: dict[str, np.ndarray], fixed: dict[str, list[int]]) -> list[str]:
    """Apply every rewrite to the ONNX file at ``path`` (a copy: onnx2tf rewrites it anyway); what changed.

    ``fixed`` input shapes are written into the graph and its shape computations folded with onnxslim
    first: onnx2tf fixes shapes too, but leaves states built from ``Shape`` (an LSTM's zero initial
    state) as computations it then cannot convert.
    """
    import onnx

    model = onnx.load(str(path))
    notes = []
    cleared = clear_wrong_output_shapes(model, path, samples)  # before folding, which would trust them
    if cleared:
        notes.append(f"declared shapes of {cleared} outputs dropped: the graph computes others")
    if fixed and fix_input_shapes(model, fixed):
        notes.append(FOLDED)
        model = slim(model)
    renamed = sanitize_names(model)
    if renamed:
        notes.append(f"{renamed} node and tensor names with characters TensorFlow rejects renamed")
    expanded = expand_function_ops(model)
    if expanded:
        notes.append("ONNX ops onnx2tf lacks expanded into their ONNX function definitions: "
                     + ", ".join(f"{n} {op}" for op, n in sorted(expanded.items())))
    constants = constants_to_initializers(model)
    if constants:
        notes.append(f"{constants} Constant nodes with scalar or list attributes made initializers")
    integer = integer_ops_to_float(model)
    if integer:
        notes.append(f"{integer} integer ops (ConvInteger, MatMulInteger, DynamicQuantizeLSTM) computed in float on "
                     "their dequantized weights (onnx2tf has no integer kernels)")
    pools = ceil_pools_to_edge_pads(model)
    if pools:
        notes.append(f"{pools} ceil-mode MaxPool -> edge Pad + MaxPool (exact; keeps int8 ranges)")
    if notes:
        try:  # shapes for every tensor again, once each (onnx2tf reads them from value_info)
            del model.graph.value_info[:]
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - onnx2tf infers what it can itself
            pass
        onnx.save(model, str(path))
    return notes


def expand_function_ops(model: Any, rounds: int = 4, known: set[str] | frozenset[str] | None = None) -> dict[str, int]:
    """Replace each node whose op onnx2tf does not convert, where ONNX defines that op as a function
    (CastLike, Attention, Gelu, HardSwish's newer forms, ...), by the function's body: primitive ops
    computing the same thing. Repeats for ops inside the bodies; returns the count per op expanded."""
    import onnx
    from onnx import defs

    from edgekit.converters.preflight import onnx2tf_ops

    known = onnx2tf_ops() if known is None else known
    if not known:
        return {}
    from onnx.backend.test.case.node import function_expand_helper

    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    counts: dict[str, int] = {}
    for _ in range(rounds):
        try:
            typed = onnx.shape_inference.infer_shapes(model)
            types = {v.name: v.type for v in (*typed.graph.value_info, *typed.graph.input, *typed.graph.output)}
        except Exception:  # noqa: BLE001 - context-dependent functions need types; others expand without
            types = {}
        nodes: list[Any] = []
        changed = False
        for i, node in enumerate(model.graph.node):
            body = None
            if node.domain in ("", "ai.onnx") and node.op_type not in known and version is not None:
                body = _function_body(defs, node, version, types)
            if body is None:
                nodes.append(node)
                continue
            nodes.extend(function_expand_helper(node, body, f"{node.op_type}_{i}_expanded_"))
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            changed = True
        if not changed:
            break
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return counts


def _function_body(defs: Any, node: Any, version: int, types: dict[str, Any]) -> Any:
    """The FunctionProto defining ``node``'s op at the model's opset, with defaults filled in, or None."""
    from onnx import FunctionProto

    try:
        schema = defs.get_schema(node.op_type, version, domain="")
    except Exception:  # noqa: BLE001 - an op ONNX does not define at this opset
        return None
    function = FunctionProto()
    plain = [v for v in schema.function_opset_versions if v <= version]
    context = [v for v in schema.context_dependent_function_opset_versions if v <= version]
    try:
        if plain:
            function.ParseFromString(schema.get_function_with_opset_version(max(plain)))
        elif context:
            if not all(name in types for name in node.input if name):
                return None
            function.ParseFromString(schema.get_context_dependent_function_with_opset_version(
                max(context), node.SerializeToString(), [types[n].SerializeToString() for n in node.input if n]))
        else:
            return None
    except Exception:  # noqa: BLE001 - a context the function builder refuses
        return None
    given = {a.name for a in node.attribute}
    for name, attr in schema.attributes.items():
        if name not in given and attr.default_value and attr.default_value.name:
            node.attribute.append(attr.default_value)
    return function


def constants_to_initializers(model: Any) -> int:
    """Turn Constant nodes given as ``value_float``/``value_int``/``value_floats``/``value_ints`` (which
    function bodies use and onnx2tf reads as Python numbers, failing) into initializers."""
    from onnx import helper, numpy_helper

    forms = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    nodes, count = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        form = next((k for k in forms if k in attrs), None)
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or form is None:
            nodes.append(node)
            continue
        model.graph.initializer.append(numpy_helper.from_array(np.array(attrs[form], forms[form]), node.output[0]))
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return count


def fix_input_shapes(model: Any, fixed: dict[str, list[int]]) -> bool:
    """Write static input shapes into the graph; False when an input's rank does not match."""
    for value in model.graph.input:
        dims = fixed.get(value.name)
        if dims is None:
            continue
        shape = value.type.tensor_type.shape.dim
        if len(shape) != len(dims):
            return False
        for d, n in zip(shape, dims, strict=True):
            d.ClearField("dim_param")
            d.dim_value = int(n)
    return True


def slim(model: Any) -> Any:
    """The model folded by onnxslim, or as it is when onnxslim fails."""
    try:
        import onnxslim

        return onnxslim.slim(model)
    except Exception:  # noqa: BLE001 - folding is an aid; onnx2tf still gets the fixed shapes
        return model


def fixed_input_shapes(ctx: PassContext, *, fix_all: bool) -> dict[str, list[int]]:
    """Input shapes to fix: ``--input-shape`` ones, and with ``fix_all`` every dynamic dimension
    fixed from the samples (the batch to 1): converters and delegates that need static shapes."""
    out: dict[str, list[int]] = {}
    for spec in ctx.inputs:
        given = ctx.options.input_shapes.get(spec.name)
        if given:
            out[spec.name] = list(given)
            continue
        dynamic = [i for i, d in enumerate(spec.shape) if not isinstance(d, int) or d < 0]
        if not fix_all or not dynamic or spec.name not in ctx.samples:
            continue
        sample = ctx.samples[spec.name].shape[1:] if is_stacked(ctx.samples, ctx.inputs) else \
            ctx.samples[spec.name].shape
        out[spec.name] = [1 if i == 0 and i in dynamic else int(sample[i]) if i in dynamic else int(d)  # type: ignore[arg-type]
                          for i, d in enumerate(spec.shape)]
    return out


def sanitize_names(model: Any) -> int:
    """Replace characters TensorFlow scope names reject (``Softmax@0``) in node and internal tensor names.

    Graph inputs and outputs keep their names (the artifact's I/O is matched to them); models with
    subgraphs are left alone, since their bodies refer to outer names.
    """
    from onnx import AttributeProto

    graph = model.graph
    if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return 0
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    taken = {n for node in graph.node for n in (*node.input, *node.output)} | {i.name for i in graph.initializer}
    mapping: dict[str, str] = {}

    def clean(name: str) -> str:
        if name in keep or not _TF_SCOPE_CHAR.search(name):
            return name
        if name not in mapping:
            new = _TF_SCOPE_CHAR.sub("_", name)
            while new in taken:
                new += "_"
            taken.add(new)
            mapping[name] = new
        return mapping[name]

    count = 0
    for node in graph.node:
        if _TF_SCOPE_CHAR.search(node.name):
            node.name = _TF_SCOPE_CHAR.sub("_", node.name)
            count += 1
        node.input[:] = [clean(x) for x in node.input]
        node.output[:] = [clean(x) for x in node.output]
    for init in graph.initializer:
        init.name = clean(init.name)
    for info in graph.value_info:
        info.name = clean(info.name)
    return count + len(mapping)


def _first_feed(path: Path, samples: dict[str, np.ndarray]) -> dict[str, list[int]] | None:
    """The output shapes onnxruntime computes for the first sample, or None when it cannot run it."""
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {}
        for spec in session.get_inputs():
            value = np.asarray(samples[spec.name])
            feeds[spec.name] = value if value.ndim == len(spec.shape) and value.ndim == 0 else \
                value[:1] if value.ndim == len(spec.shape) else value[0]
        outs = session.run(None, feeds)
    except Exception:  # noqa: BLE001 - without a run, declared shapes stay as they are
        return None
    return {o.name: list(np.shape(v)) for o, v in zip(session.get_outputs(), outs, strict=True)}


def clear_wrong_output_shapes(model: Any, path: Path, samples: dict[str, np.ndarray]) -> int:
    """Drop declared output shapes the graph does not compute (and then all value_info, which may be as
    stale): ddddocr declares [1, seqlen] for a [seq, 1, classes] output, and converters that trust
    the declaration build a wrong graph."""
    actual = _first_feed(path, samples)
    if actual is None:
        return 0
    count = 0
    for out in model.graph.output:
        tensor = out.type.tensor_type
        if not tensor.HasField("shape") or out.name not in actual:
            continue
        dims = tensor.shape.dim
        got = actual[out.name]
        fits = len(dims) == len(got) and all(not d.HasField("dim_value") or d.dim_value in (g, -1) or i == 0
                                             for i, (d, g) in enumerate(zip(dims, got, strict=True)))
        if not fits:
            tensor.ClearField("shape")
            count += 1
    if count:
        del model.graph.value_info[:]
    return count


def ceil_pools_to_edge_pads(model: Any) -> int:
    """Rewrite ceil-mode MaxPool nodes as an edge-mode Pad and a floor-mode MaxPool, in place.

    onnx2tf pads a ceil-mode MaxPool with the float32 minimum: full-integer quantization then
    gives that tensor a range of 1e38 and every activation after it collapses (MTCNN's O-Net loses
    its outputs). Repeating the border values instead is exact for max pooling, since every window
    that reaches into the padding also covers the border element it copies, and keeps the tensor's
    range. Rewrites ``model`` in place; returns the number of nodes rewritten (nodes with unknown spatial
    sizes are left alone).
    """
    import onnx
    from onnx import helper, numpy_helper

    shapes = {}
    for info in (*onnx.shape_inference.infer_shapes(model).graph.value_info, *model.graph.input):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    count = 0
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = shapes.get(node.input[0]) if node.input else None
        if (node.op_type != "MaxPool" or not attrs.get("ceil_mode") or len(node.output) != 1 or shape is None
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
                or any(d != 1 for d in attrs.get("dilations", [])) or any(d is None for d in shape[2:])):
            nodes.append(node)
            continue
        kernel = list(attrs["kernel_shape"])
        rank = len(kernel)
        strides = list(attrs.get("strides", [1] * rank))
        pads = list(attrs.get("pads", [0] * 2 * rank))
        begin, end = pads[:rank], pads[rank:]
        for i in range(rank):
            n = int(shape[2 + i] or 0)
            out = -(-(n + begin[i] + end[i] - kernel[i]) // strides[i]) + 1
            if (out - 1) * strides[i] >= n + begin[i]:  # the last window must start inside the input
                out -= 1
            end[i] = max((out - 1) * strides[i] + kernel[i] - n - begin[i], end[i])
        padded = f"{node.output[0]}__edge_padded"
        pads_name = f"{node.output[0]}__edge_pads"
        model.graph.initializer.append(numpy_helper.from_array(
            np.array([0, 0, *begin, 0, 0, *end], dtype=np.int64), pads_name))
        nodes.append(helper.make_node("Pad", [node.input[0], pads_name], [padded], mode="edge",
                                      name=f"{node.name}_edge_pad"))
        nodes.append(helper.make_node("MaxPool", [padded], list(node.output), name=node.name, kernel_shape=kernel,
                                      strides=strides))
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return count
