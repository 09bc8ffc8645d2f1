"""Mixed float16 precision for Core ML, chosen by measurement on the calibration samples.

The fp32 program is converted once and searched (:func:`edgekit.converters.passes.mixed_search.search`)
with edgekit's MIL interpreter, which can compute any set of ops as a float16 program would
(:func:`edgekit.converters.mil.table.run_block`).

The chosen ops are then cast to float16 by coremltools' own ``FP16ComputePrecision`` pass, applied to
the saved fp32 program, so what was measured is what ships; the pipeline then checks parity against
the source model as for any artifact. When more than ``MAX_FP32_WEIGHT_SHARE`` of the weights would
have to stay float32, the target fails with the measured reason instead of shipping a float32 model
under a float16 name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from edgekit.bundle import TensorSpec
from edgekit.converters.passes.mixed_search import (
    Choice,
    search,
    search_samples,
    verdict,
    with_margin,
)
from edgekit.parity import Tolerance, compare, run_batched
from edgekit.runtimes.adapt import adapt, describe_io

__all__ = ["Choice", "choose", "to_mixed_fp16"]


def _weights(op: Any) -> int:
    """Float weight elements among the op's constant inputs."""
    total = 0
    for var in op.inputs.values():
        for v in var if isinstance(var, (list, tuple)) else (var,):
            val = getattr(v, "val", None)
            if isinstance(val, np.ndarray) and val.dtype.kind == "f" and v.op is not None and v.op.op_type == "const":
                total += int(val.size)
    return total


def _is_float(var: Any) -> bool:
    from coremltools.converters.mil.mil import types

    return getattr(var, "dtype", None) is not None and types.is_float(var.dtype)


class _Search:
    """Runs the fp32 program on the search samples with chosen ops computed in float16."""

    def __init__(self, function: Any, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                 samples: Mapping[str, np.ndarray], like: tuple[TensorSpec, ...], tolerance: Tolerance,
                 reference: Mapping[str, np.ndarray] | None = None):
        from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

        from edgekit.converters.mil import MilSession

        self.runs = 0
        self._raw = MilSession(function, 0.0)
        self._session = adapt(self._raw, describe_io(self._raw.inputs, {s.name: s for s in inputs}),
                              describe_io(self._raw.outputs, {s.name: s for s in outputs}))
        kinds = {s.name: s.kind for s in outputs}  # the source's names and layout, judged as the source's
        self.output_specs = tuple(replace(s, kind=kinds.get(s.name)) for s in self._session.outputs)
        self._like = like
        if reference is not None:  # the fp32 program first, on every sample: is this route's graph right?
            self._samples = dict(samples)
            parity, _ = compare(reference, self._run(frozenset()), self.output_specs, tolerance)
            if not parity.passed:
                from edgekit.errors import WrongGraphError

                worst = max((e for e in parity.per_output or () if "max_rel_error" in e),
                            key=lambda e: e["max_rel_error"], default={"name": "?", "max_rel_error": float("nan")})
                raise WrongGraphError(
                    f"the fp32 program of this route differs from the source beyond the float16 tolerance "
                    f"({worst['name']}: max relative error {worst['max_rel_error']:.3g}), so no choice of precision "
                    "can pass on it: the route's graph is wrong, not float16")
        self._samples = search_samples(samples, like)
        self._margin = with_margin(tolerance)
        valid = FP16ComputePrecision()
        self.ops = [op for op in function.operations
                    if op.op_type != "const" and op.outputs and valid.is_valid_op(op)
                    and any(_is_float(v) for v in op.outputs)]
        self.weights = {op.outputs[0].name: _weights(op) for op in self.ops}
        self.reference = self._run(frozenset())

    def _run(self, half: frozenset[str]) -> dict[str, np.ndarray]:
        self._raw.half = half  # the adapted session runs the same raw session
        self.runs += 1
        return run_batched(self._session.run, self._samples, self._session.inputs, self._like)

    def measure(self, half: frozenset[str]) -> tuple[bool, float]:
        """Whether the outputs pass the search's tolerance, and the worst relative error (inf on overflow)."""
        with np.errstate(all="ignore"):
            actual = self._run(half)
        return verdict(compare(self.reference, actual, self.output_specs, self._margin)[0], self._margin)


def choose(function: Any, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
           samples: Mapping[str, np.ndarray], like: tuple[TensorSpec, ...], tolerance: Tolerance,
           fixed_fp32_types: frozenset[str], reference: Mapping[str, np.ndarray] | None = None) -> Choice:
    """Which ops of the fp32 ``function`` to compute in float16 (:func:`mixed_search.search`).

    Raises:
        WrongGraphError: The fp32 program itself fails the tolerance against ``reference``.
        ParityError: More than ``MAX_FP32_WEIGHT_SHARE`` of the weights must stay float32.
    """
    found = _Search(function, inputs, outputs, samples, like, tolerance, reference)
    names = [op.outputs[0].name for op in found.ops]
    types = {op.outputs[0].name: op.op_type for op in found.ops}
    return search(found.measure, names, types, found.weights, fixed_fp32_types, lambda: found.runs,
                  "coreml-fp16", "use the coreml (fp32) target, or coreml-int8 for smaller weights")


def to_mixed_fp16(model: Any, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                  samples: Mapping[str, np.ndarray], like: tuple[TensorSpec, ...], tolerance: Tolerance,
                  fixed_fp32_types: frozenset[str], reference: Mapping[str, np.ndarray] | None = None,
                  ) -> tuple[Any, Choice]:
    """The fp32 ML Program ``model`` with the ops :func:`choose` picks cast to float16."""
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision
    from coremltools.models.utils import _apply_graph_pass, _convert_model_spec_to_pymil_prog

    spec = model.get_spec()
    program = _convert_model_spec_to_pymil_prog(model, spec.specificationVersion, load_milproto)
    picked = choose(program.functions["main"], inputs, outputs, samples, like, tolerance, fixed_fp32_types,
                    reference)
    half = picked.half
    cast = FP16ComputePrecision(op_selector=lambda op: bool(op.outputs) and op.outputs[0].name in half)
    mixed = _apply_graph_pass(model, cast, spec_version=spec.specificationVersion, skip_model_load=True)
    return mixed, picked
