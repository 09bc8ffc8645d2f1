"""int8 weights with the few that 8 bits cannot hold in float16, chosen by measurement (docs/adr/0019).

The last ONNX int8 recipe (``weights-mixed``), for models whose weight-only int8 (``weights``) fails
parity: the search float16 mixed precision uses (:func:`mixed_search.search`) chooses which weights to
store as int8; here a candidate is a convolution or matrix weight, "lower precision" is int8 per channel
behind a DequantizeLinear, and a weight left out is stored as float16 behind a Cast to float32 (float32
where float16 cannot hold its values). The graph computes in float32 either way. The artifact must stay
an 8-bit one in size: at most ``mixed_search.MAX_FLOAT16_WEIGHT_SHARE`` of the weights may stay float16.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edgekit.converters.passes import PassContext
from edgekit.errors import ConversionError

log = logging.getLogger(__name__)

METHOD = ("weight-only, mixed: convolution and matrix weights int8 per channel (symmetric) but those measured to "
          "need more, in float16; activations and compute stay float32")


def quantizable_weights(model: Any) -> list[tuple[str, str, int]]:
    """The float weights :func:`onnx_int8.quantize_weights` would quantize, in graph order: (name, op type, size)."""
    from onnx import TensorProto

    from edgekit.converters.passes.onnx_int8 import MIN_WEIGHT_ELEMENTS, WEIGHT_AXIS

    inits = {i.name: i for i in model.graph.initializer}
    found: dict[str, tuple[str, str, int]] = {}
    for node in model.graph.node:
        if node.op_type not in WEIGHT_AXIS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        init = inits[node.input[1]]
        size = int(np.prod(init.dims)) if init.dims else 1
        if init.data_type == TensorProto.FLOAT and size >= MIN_WEIGHT_ELEMENTS:
            found.setdefault(init.name, (init.name, node.op_type, size))
    return list(found.values())


class _Measure:
    """Runs the model with a chosen set of weights in int8 (the rest float16) on the search samples against
    the float32 model's outputs there."""

    def __init__(self, model: Any, ctx: PassContext, per_channel: bool, names: list[str]):
        from edgekit.converters.artifacts import held_to
        from edgekit.converters.passes.mixed_search import search_samples, with_margin
        from edgekit.converters.registry import TARGETS
        from edgekit.parity import attention_mask

        self.model, self.ctx, self.per_channel, self.names = model, ctx, per_channel, frozenset(names)
        self.runs = 0
        self.samples = search_samples(ctx.samples, ctx.inputs)
        self.mask = attention_mask(self.samples, ctx.inputs)
        tolerance = held_to(TARGETS["onnx-web-int8"], quantized_source=ctx.quantized_source).tolerance
        self.margin = with_margin(tolerance)
        self.reference = self._run(self.model)

    def build(self, int8: frozenset[str]) -> tuple[Any, set[str]]:
        """A copy of the model with the weights ``int8`` in int8 and the others in float16; returns it and
        the weights that stayed float32 (float16 cannot hold them)."""
        from edgekit.converters.passes.onnx_int8 import quantize_weights

        out = _copy(self.model)
        quantize_weights(out, per_channel=self.per_channel, only=int8)
        return out, _float16_weights(out, self.names - int8)

    def _run(self, model: Any) -> dict[str, np.ndarray]:
        from edgekit.converters.passes.onnx_fp16_ranges import plain_runner
        from edgekit.parity import run_batched

        self.runs += 1
        with np.errstate(all="ignore"):
            return run_batched(plain_runner(model), self.samples, self.ctx.inputs)

    def __call__(self, int8: frozenset[str]) -> tuple[bool, float]:
        from edgekit.converters.passes.mixed_search import verdict
        from edgekit.parity import compare

        actual = self._run(self.build(int8)[0])
        return verdict(compare(self.reference, actual, self.ctx.outputs, self.margin, mask=self.mask)[0], self.margin)


def mixed_weights(model: Any, ctx: PassContext, per_channel: bool) -> tuple[Any, dict[str, Any]]:
    """The model with int8 weights except the fewest float16 ones the search finds it needs (see the module).

    Raises:
        ConversionError: There are no weights to quantize.
        ParityError: More than ``MAX_FLOAT16_WEIGHT_SHARE`` of the weights would have to stay float16.
    """
    from edgekit.converters.passes.mixed_search import INT8_PRECISIONS, MAX_FLOAT16_WEIGHT_SHARE, int8_notes, search

    weights = quantizable_weights(model)
    if not weights:
        raise ConversionError("the mixed weight-only int8 recipe found no float convolution or matrix weights")
    names = [name for name, _, _ in weights]
    sizes = {name: size for name, _, size in weights}
    measure = _Measure(model, ctx, per_channel, names)
    choice = search(measure, names, {name: op for name, op, _ in weights}, sizes, frozenset(), lambda: measure.runs,
                    "onnx-web-int8", "choose onnx-web-fp16, or accept the drift with --accept-parity-failure",
                    max_share=MAX_FLOAT16_WEIGHT_SHARE, precisions=INT8_PRECISIONS)
    out, wide = measure.build(choice.half)
    kept = set(names) - choice.half
    total = sum(sizes.values())
    stored = sum(sizes[n] for n in choice.half) + 2 * sum(sizes[n] for n in kept) + 2 * sum(sizes[n] for n in wide)
    notes = int8_notes(choice, len(names))
    log.info("mixed int8: %s", notes["mixed_method"])
    return out, {**notes, "float16_weights": sorted(kept)[:32], "float32_weights": sorted(wide)[:32],
                 "weight_bytes_ratio": round(stored / (4 * total), 4)}


def _copy(model: Any) -> Any:
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _float16_weights(model: Any, names: frozenset[str]) -> set[str]:
    """Store the named float32 weights as float16 behind a Cast to float32, in place; returns those that
    float16 cannot hold (finite values past its range) or that a subgraph reads, which stay float32."""
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.converters.passes.onnx_fp16_ranges import FP16_MAX
    from edgekit.converters.passes.onnx_int8 import subgraph_inputs

    graph = model.graph
    inner = subgraph_inputs(graph) | {o.name for o in graph.output}
    renamed: dict[str, str] = {}
    wide: set[str] = set()
    casts = []
    for init in list(graph.initializer):
        if init.name not in names:
            continue
        w = numpy_helper.to_array(init)
        if init.name in inner or float(np.abs(w[np.isfinite(w)]).max(initial=0.0)) > FP16_MAX:
            wide.add(init.name)
            continue
        half = numpy_helper.from_array(w.astype(np.float16), f"{init.name}_fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        renamed[init.name] = f"{init.name}_as_fp32"
        casts.append(helper.make_node("Cast", [half.name], [renamed[init.name]], to=TensorProto.FLOAT,
                                      name=f"{init.name}_Cast"))
    for node in graph.node:
        for i, x in enumerate(node.input):
            if x in renamed:
                node.input[i] = renamed[x]
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return wide
