"""coreml-int8 with the weights 8 bits cannot hold kept in float16, chosen by measurement (docs/adr/0019).

The fallback of ``coreml-int8`` when int8 weights everywhere fail parity (a recognizer whose per-step
decisions move, an audio model's CQT kernels). coremltools compresses the fp16 program's weights once;
edgekit's MIL interpreter then runs the fp16 program with any chosen set of its weights replaced by their
dequantized int8 values, and the search float16 mixed precision uses (:func:`mixed_search.search`)
picks the set. The shipped program is compressed again by coremltools with the weights left out
uncompressed (``op_name_configs``), so they stay float16; the pipeline checks it as any artifact. At
most ``mixed_search.MAX_FLOAT16_WEIGHT_SHARE`` of the weights may stay float16.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from edgekit._console import captured_output
from edgekit.converters.passes import Pass, PassContext, Value
from edgekit.errors import ConversionError


class CoremlInt8Mixed(Pass):
    """int8 weights (linear symmetric, per channel) on the fp16 program except those measured to need float16."""

    def _run(self, value: Value, ctx: PassContext) -> Value:
        import coremltools as ct
        import coremltools.optimize.coreml as cto

        from edgekit.converters.artifacts import held_to
        from edgekit.converters.mil import load_program
        from edgekit.converters.passes.coreml import WEIGHT_THRESHOLD, _save
        from edgekit.converters.passes.mixed_search import INT8_PRECISIONS, MAX_FLOAT16_WEIGHT_SHARE, int8_notes, search
        from edgekit.converters.registry import TARGETS

        model = ct.models.MLModel(str(value.file), skip_model_load=True)
        int8 = cto.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=WEIGHT_THRESHOLD)
        with captured_output():
            everything = cto.linear_quantize_weights(model, cto.OptimizationConfig(global_config=int8))
        plain = load_program(value.file)
        found = _dequantized(plain, load_program(_save(everything, ctx, f"{self.name}-all")))
        if not found:
            raise ConversionError("coremltools compressed none of this program's weights to int8")
        names = list(found)
        tolerance = held_to(TARGETS["coreml-int8"], quantized_source=ctx.quantized_source).tolerance
        measure = _Measure(plain, value, ctx, tolerance, {n: v for n, (v, _, _) in found.items()})
        choice = search(measure, names, {n: kind for n, (_, kind, _) in found.items()},
                        {n: int(v.size) for n, (v, _, _) in found.items()}, frozenset(), lambda: measure.runs,
                        "coreml-int8", "use coreml-fp16, or accept the drift with --accept-parity-failure",
                        max_share=MAX_FLOAT16_WEIGHT_SHARE, precisions=INT8_PRECISIONS)
        kept = [n for n in names if n not in choice.half]
        config = cto.OptimizationConfig(global_config=int8, op_name_configs={found[n][2]: None for n in kept})
        with captured_output():
            mixed = cto.linear_quantize_weights(model, config)
        out = _save(mixed, ctx, self.name)
        notes = {**value.notes, "compression": f"{self.name} (coremltools.optimize.coreml linear int8, weights with "
                 f"at least {WEIGHT_THRESHOLD} elements, those measured to need it kept float16)",
                 **int8_notes(choice, len(names))}
        return Value(self.produces, path=out, notes=notes, inputs=value.inputs, outputs=value.outputs)


def _dequantized(plain: Any, quantized: Any) -> dict[str, tuple[np.ndarray, str, str]]:
    """The weights of ``plain`` (an fp16 program) that ``quantized`` (the same program compressed) holds in
    int8, in program order: constant name -> (its dequantized value, the op type reading it, its op's name).
    The two programs' other ops have the same names, so each compressed input is found by its reader."""
    from edgekit.converters.mil.table import run_block

    env: dict[str, Any] = {}
    run_block([op for op in quantized.operations if op.op_type == "const" or op.op_type.startswith("constexpr_")], env)
    readers = {op.name: op for op in quantized.operations if op.op_type != "const"}
    out: dict[str, tuple[np.ndarray, str, str]] = {}
    for op in plain.operations:
        twin = readers.get(op.name)
        if op.op_type == "const" or twin is None:
            continue
        for key, var in op.inputs.items():
            new = twin.inputs.get(key)
            if (isinstance(var, (list, tuple)) or var.op is None or var.op.op_type != "const" or new is None
                    or isinstance(new, (list, tuple)) or new.op is None or not new.op.op_type.startswith("constexpr_")):
                continue
            if var.name not in out and new.name in env:
                original = np.asarray(var.val)
                out[var.name] = (np.asarray(env[new.name]).astype(original.dtype).reshape(original.shape),
                                 op.op_type, var.op.name)
    return out


class _Measure:
    """Runs the fp16 program on the search samples with chosen weights replaced by their int8 values, against
    the program's own outputs there."""

    def __init__(self, function: Any, value: Value, ctx: PassContext, tolerance: Any,
                 dequantized: dict[str, np.ndarray]):
        from edgekit.converters.mil import MilSession
        from edgekit.converters.passes.mixed_search import search_samples, with_margin
        from edgekit.runtimes.adapt import adapt, describe_io

        self.runs = 0
        self._dequantized = dequantized
        self._raw = MilSession(function, 0.0)
        self._session = adapt(self._raw, describe_io(self._raw.inputs, {s.name: s for s in value.inputs or ()}),
                              describe_io(self._raw.outputs, {s.name: s for s in value.outputs or ()}))
        kinds = {s.name: s.kind for s in value.outputs or ()}
        self._specs = tuple(replace(s, kind=kinds.get(s.name)) for s in self._session.outputs)
        self._like = ctx.inputs
        self._samples = search_samples(ctx.samples, ctx.inputs)
        self._margin = with_margin(tolerance)
        self._reference = self._run(frozenset())

    def _run(self, int8: frozenset[str]) -> dict[str, np.ndarray]:
        from edgekit.parity import run_batched

        self._raw.weights = {n: self._dequantized[n] for n in int8}
        self.runs += 1
        with np.errstate(all="ignore"):
            return run_batched(self._session.run, self._samples, self._session.inputs, self._like)

    def __call__(self, int8: frozenset[str]) -> tuple[bool, float]:
        from edgekit.converters.passes.mixed_search import verdict
        from edgekit.parity import compare

        actual = self._run(int8)
        return verdict(compare(self._reference, actual, self._specs, self._margin)[0], self._margin)
