"""Mixed float16 precision for Core ML, chosen by measurement on the calibration samples.

A float16 program that fails parity usually fails because of a few places: a variance computed as
mean(x²) - mean(x)², which cancels; integer-valued convolutions whose sums pass 65504; a deep stack
whose rounding piles up before a sigmoid. A fixed list of sensitive op types (``MIXED_FP32_MIL_OPS``)
rescues the first kind only when the ops that feed it are on the list too. So the fp32 program is
converted once and searched with edgekit's MIL interpreter, which can compute any set of ops as a
float16 program would (:func:`edgekit.converters.mil.table.run_block`):

1. the fixed list is tried first (one run);
2. else the ops, in program order, are cut into ``GROUPS`` runs of neighbours; each group alone in
   float16 measures how much error it brings to the outputs;
3. the fewest most harmful groups are kept float32 until the outputs pass the target's tolerance
   with a margin (70 % of the error bound), found by doubling then bisection;
4. each group kept is split in halves while one half alone in float32 still passes, then each kept op
   that holds weights, heaviest first, goes back to float16 alone if the outputs still pass (bounded
   numbers of runs), so that as few weights as possible stay float32.

The chosen ops are then cast to float16 by coremltools' own ``FP16ComputePrecision`` pass, applied to
the saved fp32 program, so what was measured is what ships; the pipeline then checks parity against
the source model as for any artifact. When more than ``MAX_FP32_WEIGHT_SHARE`` of the weights would
have to stay float32, the target fails with the measured reason instead of shipping a float32 model
under a float16 name.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgekit.bundle import TensorSpec
from edgekit.errors import ParityError
from edgekit.parity import Tolerance, compare, is_single_feed, run_batched
from edgekit.runtimes.adapt import adapt, describe_io

log = logging.getLogger(__name__)

GROUPS = 16
SEARCH_SAMPLES = 8  # samples the search runs on (the parity check after it uses all of them)
REFINE_RUNS = 12
RELEASE_RUNS = 16
MAX_FP32_WEIGHT_SHARE = 0.5
MARGIN = 0.7  # the search aims at this fraction of the target's error bound


@dataclass(frozen=True)
class Choice:
    """The ops computed in float16 and what stays float32."""

    half: frozenset[str]  # ops (by first output name) cast to float16
    method: str
    fp32_op_types: dict[str, int]
    fp32_weight_share: float
    search_error: float  # the worst output's relative error the search measured
    runs: int

    def notes(self) -> dict[str, Any]:
        return {"compute_precision": "fp16, mixed", "mixed_method": self.method,
                "fp32_ops": dict(sorted(self.fp32_op_types.items())),
                "fp32_weight_share": round(self.fp32_weight_share, 4),
                "search_max_rel_error": float(f"{self.search_error:.3g}"), "search_runs": self.runs,
                "why": "the float16 program failed parity; these ops keep float32 compute"}


def _subset(samples: Mapping[str, np.ndarray], inputs: tuple[TensorSpec, ...], n: int) -> dict[str, np.ndarray]:
    if is_single_feed(samples, inputs):
        return dict(samples)
    return {k: v[:n] if np.ndim(v) else v for k, v in samples.items()}


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
        first = like[0].shape[0] if like and like[0].shape else None
        self._samples = _subset(samples, like, max(SEARCH_SAMPLES, first if isinstance(first, int) else 0))
        self._margin = replace(tolerance, max_rel_error=tolerance.max_rel_error * MARGIN, min_cosine=(
            None if tolerance.min_cosine is None else 1 - (1 - tolerance.min_cosine) * MARGIN))
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
        parity, _ = compare(self.reference, actual, self.output_specs, self._margin)
        worst = 0.0
        for entry in parity.per_output or ():
            if entry.get("non_finite_values"):
                return False, float("inf")
            worst = max(worst, float(entry.get("max_rel_error", 0.0)))
            if "top1_agreement" in entry:
                worst = max(worst, 1.0 - float(entry["top1_agreement"]))
        return parity.passed, worst


def choose(function: Any, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
           samples: Mapping[str, np.ndarray], like: tuple[TensorSpec, ...], tolerance: Tolerance,
           fixed_fp32_types: frozenset[str], reference: Mapping[str, np.ndarray] | None = None) -> Choice:
    """Which ops of the fp32 ``function`` to compute in float16; see the module docstring.

    Raises:
        WrongGraphError: The fp32 program itself fails the tolerance against ``reference``.
        ParityError: More than ``MAX_FP32_WEIGHT_SHARE`` of the weights must stay float32.
    """
    search = _Search(function, inputs, outputs, samples, like, tolerance, reference)
    names = [op.outputs[0].name for op in search.ops]
    types = {op.outputs[0].name: op.op_type for op in search.ops}
    everything = frozenset(names)

    def choice(kept: set[str], method: str, error: float) -> Choice:
        total = sum(search.weights.values()) or 1
        share = sum(search.weights[n] for n in kept) / total
        if share > MAX_FP32_WEIGHT_SHARE:
            raise ParityError(
                f"float16 cannot hold this model: to stay within the coreml-fp16 tolerance, ops holding "
                f"{share:.0%} of the weights must compute in float32 ({', '.join(sorted(set(types[n] for n in kept)))}); "
                "use the coreml (fp32) target, or coreml-int8 for smaller weights")
        return Choice(half=everything - kept, method=method, fp32_op_types=dict(Counter(types[n] for n in kept)),
                      fp32_weight_share=share, search_error=error, runs=search.runs)

    fixed = {n for n in names if types[n] in fixed_fp32_types}
    ok, error = search.measure(everything - fixed)
    if ok:
        return choice(fixed, "the fixed list of range-sensitive op types", error)

    size = max(1, -(-len(names) // GROUPS))
    groups = [names[i:i + size] for i in range(0, len(names), size)]
    harm = [search.measure(frozenset(g))[1] for g in groups]
    order = sorted(range(len(groups)), key=lambda i: -harm[i])
    log.info("mixed precision: %d ops in %d groups; error of each group alone in float16: %s", len(names),
             len(groups), ", ".join(f"{h:.3g}" for h in harm))

    def kept_by(k: int) -> set[str]:
        return {n for i in order[:k] for n in groups[i]}

    results: dict[int, float] = {}

    def passes(k: int) -> bool:
        ok, err = search.measure(everything - kept_by(k))
        if ok:
            results[k] = err
        return ok

    lo, hi = 0, 1  # lo fails (the fixed list did no better than nothing), hi is tried next
    while hi < len(groups) and not passes(hi):
        lo, hi = hi, min(2 * hi, len(groups))
    if hi == len(groups) and hi not in results:
        results[hi] = 0.0  # every group float32: the fp32 program itself
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if passes(mid) else (mid, hi)
    kept_groups = [list(groups[i]) for i in order[:hi]]
    error = results[hi]

    # shrink each kept group while half of it in float32 is enough (least harmful groups first)
    budget = REFINE_RUNS
    for index in reversed(range(len(kept_groups))):
        while len(kept_groups[index]) > 1 and budget > 0:
            group = kept_groups[index]
            others = {n for j, g in enumerate(kept_groups) if j != index for n in g}
            halves = (group[len(group) // 2:], group[:len(group) // 2])
            for part in halves:
                if budget <= 0:
                    break
                budget -= 1
                ok, err = search.measure(everything - others - set(part))
                if ok:
                    kept_groups[index], error = part, err
                    break
            else:
                break
            if kept_groups[index] is group:
                break
    kept = {n for g in kept_groups for n in g}
    # then each op that holds weights, heaviest first, back to float16 alone if the outputs still pass
    for name in sorted((n for n in kept if search.weights[n]), key=lambda n: -search.weights[n])[:RELEASE_RUNS]:
        ok, err = search.measure(everything - (kept - {name}))
        if ok:
            kept, error = kept - {name}, err
    return choice(kept, f"measured: {len(kept)} of {len(names)} ops kept float32 after {search.runs} "
                        "interpreter runs", error)


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
