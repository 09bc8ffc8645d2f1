"""What a source's graph says about the range of its outputs: which ones lie in [0, 1] by construction
(ONNX graphs, torch.export programs, a PyTorch module's autograd graph, Keras output layers).

A sigmoid's or softmax's output is a probability whatever the input, and so is what averaging,
pooling, slicing, reshaping, concatenating or multiplying probabilities gives. Parity judges such an
output against its range (``probability`` in :data:`edgekit.parity.OUTPUT_KINDS`) rather than the
samples' largest value: a voice detector's speech probability of 0.003 on a silent sample, off by
0.002, is 0.2% of its range, not 67% of the sample.
"""

from __future__ import annotations

from typing import Any

SQUASHING = frozenset({"Sigmoid", "Softmax", "HardSigmoid"})
# Ops whose output lies within the range of their first input (a subset, an average, an extreme, a copy).
WITHIN_FIRST = frozenset({
    "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Slice", "Gather", "GatherElements",
    "GatherND", "ReduceMean", "ReduceMax", "ReduceMin", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "Split", "Tile", "Expand", "DepthToSpace", "SpaceToDepth", "Cast"})
# Ops whose output lies in [0, 1] when every data input does.
WITHIN_ALL = frozenset({"Concat", "Mul", "Max", "Min"})


def unit_range_values(graph: Any, outer: frozenset[str] = frozenset()) -> set[str]:
    """The names of ``graph``'s values (an ONNX GraphProto) that lie in [0, 1] by construction.

    ``outer`` holds the enclosing graph's such values, which a subgraph (an ``If`` branch) may read.
    """
    found: set[str] = set(outer)
    for node in graph.node:  # ONNX graphs are topologically sorted
        data = [name for name in node.input if name]
        if node.op_type == "If":
            branches = [a.g for a in node.attribute if a.name in ("then_branch", "else_branch")]
            inner = [unit_range_values(b, frozenset(found)) for b in branches]
            found.update(out for k, out in enumerate(node.output)
                         if len(branches) == 2 and all(k < len(b.output) and b.output[k].name in s
                                                       for b, s in zip(branches, inner, strict=True)))
            continue
        if node.op_type == "Where":
            data = data[1:]  # the condition is not a value of the output
        if node.op_type == "TopK":
            if data and data[0] in found:
                found.add(node.output[0])  # the values, not the indices
            continue
        if (node.op_type in SQUASHING or (node.op_type in WITHIN_FIRST and data and data[0] in found)
                or (node.op_type in WITHIN_ALL | {"Where"} and data and all(name in found for name in data))):
            found.update(node.output)
    return found


def unit_range_outputs(model: Any) -> set[str]:
    """The names of ``model``'s graph outputs (an ONNX ModelProto) that lie in [0, 1] by construction."""
    values = unit_range_values(model.graph)
    return {o.name for o in model.graph.output if o.name in values}


# torch.export programs: the same reading of their ATen graph.
_TORCH_SQUASHING = frozenset({"sigmoid", "softmax", "_softmax", "hardsigmoid"})
_TORCH_WITHIN_FIRST = frozenset({
    "view", "reshape", "_unsafe_view", "squeeze", "unsqueeze", "flatten", "permute", "transpose", "t", "slice",
    "select", "index_select", "gather", "mean", "amax", "amin", "max_pool1d", "max_pool2d", "max_pool3d",
    "max_pool2d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "clone", "contiguous", "expand", "repeat", "split",
    "split_with_sizes", "chunk", "unbind", "alias", "detach", "_to_copy", "to", "pixel_shuffle", "pixel_unshuffle"})
_TORCH_WITHIN_ALL = frozenset({"mul", "cat", "stack", "maximum", "minimum"})


def _aten_name(target: Any) -> str:
    """``aten.sigmoid.default`` -> ``sigmoid``; ``operator.getitem`` -> ``getitem``."""
    packet = getattr(target, "_opname", None) or getattr(target, "__name__", "") or str(target)
    return str(packet).split(".")[0]


def unit_range_program_outputs(program: Any) -> list[bool]:
    """For each user output of a torch.export ``program``, in order: whether its graph bounds it to [0, 1]."""
    found: set[str] = set()
    nodes = {n.name: n for n in program.graph.nodes}
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        name = _aten_name(node.target)
        data = [a for a in node.args if hasattr(a, "op")]
        listed = [x for a in node.args if isinstance(a, (list, tuple)) for x in a if hasattr(x, "op")]
        if (name in _TORCH_SQUASHING or (name in (_TORCH_WITHIN_FIRST | {"getitem"}) and data and data[0].name in found)
                or (name in _TORCH_WITHIN_ALL and (data + listed) and all(a.name in found for a in data + listed))):
            found.add(node.name)
    outs = [s.arg.name for s in program.graph_signature.output_specs if s.kind.name == "USER_OUTPUT"]
    return [name in found and name in nodes for name in outs]


def unit_range_keras_outputs(model: Any) -> list[bool]:
    """For each output of a Keras ``model``: whether its last layer ends in a sigmoid, softmax or hard sigmoid."""
    out = []
    for tensor in model.outputs:
        layer = getattr(getattr(tensor, "_keras_history", None), "operation", None)
        kind = type(layer).__name__
        activation = getattr(getattr(layer, "activation", None), "__name__", "")
        out.append(kind == "Softmax" or activation in ("sigmoid", "softmax", "hard_sigmoid"))
    return out


# A PyTorch module's outputs, read from the autograd graph of one forward pass.
_GRAD_SQUASHING = frozenset({"Sigmoid", "Softmax", "Hardsigmoid"})
_GRAD_WITHIN_FIRST = frozenset({
    "View", "Reshape", "UnsafeView", "Squeeze", "Unsqueeze", "Permute", "Transpose", "T", "Slice", "Select",
    "Index", "IndexSelect", "Gather", "Mean", "Amax", "Amin", "MaxPool2DWithIndices", "MaxPool1DWithIndices",
    "AvgPool2D", "AvgPool1D", "AdaptiveAvgPool2D", "AdaptiveAvgPool1D", "AdaptiveMaxPool2D", "Clone", "Expand",
    "Split", "SplitWithSizes", "Unbind", "Alias", "ToCopy", "Repeat", "PixelShuffle"})
_GRAD_WITHIN_ALL = frozenset({"Mul", "Cat", "Stack", "Maximum", "Minimum"})


def unit_range_autograd(tensor: Any, depth: int = 0) -> bool:
    """Whether a tensor computed with autograd on is in [0, 1] by construction (its ``grad_fn`` chain)."""
    fn = getattr(tensor, "grad_fn", tensor)
    if fn is None or depth > 64:
        return False
    name = type(fn).__name__
    name = name[:name.rfind("Backward")] if "Backward" in name else name
    parents = [f for f, _ in getattr(fn, "next_functions", ()) if f is not None]
    if name in _GRAD_SQUASHING:
        return True
    if name in _GRAD_WITHIN_FIRST:
        return bool(parents) and unit_range_autograd(parents[0], depth + 1)
    if name in _GRAD_WITHIN_ALL:
        return bool(parents) and all(unit_range_autograd(f, depth + 1) for f in parents)
    return False
