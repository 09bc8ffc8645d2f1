"""What an ONNX graph says about the range of its values: which ones lie in [0, 1] by construction.

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
