"""Mixed float16 precision chosen by measurement: the search both float16 families share.

A float16 graph that fails parity usually fails because of a few places: a variance computed as
mean(x²) - mean(x)², which cancels; integer-valued convolutions whose sums pass 65504; a deep stack
whose rounding piles up before a sigmoid. A fixed list of sensitive op types rescues the first kind
only when the ops that feed it are on the list too. So a family's fp32 graph is run with any chosen
set of ops computed as float16 would compute them (Core ML: edgekit's MIL interpreter; ONNX: an fp32
graph that rounds the chosen nodes' inputs and outputs to float16), and :func:`search` picks the set:

1. the fixed list is tried first (one run);
2. else the ops, in graph order, are cut into ``GROUPS`` runs of neighbours; each group alone in
   float16 measures how much error it brings to the outputs;
3. the fewest most harmful groups are kept float32 until the outputs pass the target's tolerance
   with a margin (70 % of the error bound), found by doubling then bisection;
4. each group kept is split in halves while one half alone in float32 still passes, then each kept op
   that holds weights, heaviest first, goes back to float16 alone if the outputs still pass (bounded
   numbers of runs), so that as few weights as possible stay float32.

When more than ``MAX_FP32_WEIGHT_SHARE`` of the weights would have to stay float32, the target fails
with the measured reason instead of shipping a float32 model under a float16 name.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgekit.bundle import Parity, TensorSpec
from edgekit.errors import ParityError
from edgekit.parity import Tolerance, is_single_feed

log = logging.getLogger(__name__)

GROUPS = 16
SEARCH_SAMPLES = 8  # samples the search runs on (the parity check after it uses all of them)
REFINE_RUNS = 12
RELEASE_RUNS = 16
MAX_FP32_WEIGHT_SHARE = 0.5
# The int8 searches (docs/adr/0019): at most this share of the weights stays float16, so that an int8 artifact's
# weights take at most 0.4 of their float32 bytes (float16 everywhere is 0.5, int8 0.25).
MAX_FLOAT16_WEIGHT_SHARE = 0.6
INT8_PRECISIONS = ("int8", "keep float16 weights")  # ``search``'s wording for them
MARGIN = 0.7  # the search aims at this fraction of the target's error bound

Measure = Callable[[frozenset[str]], tuple[bool, float]]


@dataclass(frozen=True)
class Choice:
    """The ops computed in float16 and what stays float32."""

    half: frozenset[str]  # ops (by name) computed in float16
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
                "why": "the float16 graph failed parity; these ops keep float32 compute"}


def subset(samples: Mapping[str, np.ndarray], inputs: tuple[TensorSpec, ...], n: int) -> dict[str, np.ndarray]:
    """The first ``n`` samples (all of a single feed)."""
    if is_single_feed(samples, inputs):
        return dict(samples)
    return {k: v[:n] if np.ndim(v) else v for k, v in samples.items()}


def search_samples(samples: Mapping[str, np.ndarray], inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    """The samples a search runs on: the first ``SEARCH_SAMPLES``, or a fixed batch of more."""
    first = inputs[0].shape[0] if inputs and inputs[0].shape else None
    return subset(samples, inputs, max(SEARCH_SAMPLES, first if isinstance(first, int) else 0))


def int8_notes(choice: Choice, count: int) -> dict[str, Any]:
    """What an int8 search records (the ``count`` candidates, those kept float16 by op type, how it measured)."""
    kept = sum(choice.fp32_op_types.values())
    return {"float16_weight_count": kept, "float16_weight_share": round(choice.fp32_weight_share, 4),
            "float16_weight_ops": dict(sorted(choice.fp32_op_types.items())),
            "mixed_method": f"measured: {kept} of {count} weights kept float16 after {choice.runs} runs",
            "search_max_rel_error": float(f"{choice.search_error:.3g}"), "search_runs": choice.runs}


def with_margin(tolerance: Tolerance) -> Tolerance:
    """The tolerance the search aims at: ``MARGIN`` of the error bound (and of the cosine gap)."""
    return replace(tolerance, max_rel_error=tolerance.max_rel_error * MARGIN, min_cosine=(
        None if tolerance.min_cosine is None else 1 - (1 - tolerance.min_cosine) * MARGIN))


def verdict(parity: Parity, tolerance: Tolerance) -> tuple[bool, float]:
    """Whether a measured parity passes the search, and its worst error (inf on overflow).

    Class scores must keep their decisions and also stay within ``tolerance``'s error bound: top-1
    agreement on the few search samples is too coarse to tell a choice that holds on all of them.
    """
    worst = 0.0
    ok = parity.passed
    for entry in parity.per_output or ():
        if entry.get("non_finite_values"):
            return False, float("inf")
        worst = max(worst, float(entry.get("max_rel_error", 0.0)))
        if "top1_agreement" in entry:
            worst = max(worst, 1.0 - float(entry["top1_agreement"]))
            ok = ok and float(entry.get("max_rel_error", 0.0)) <= tolerance.max_rel_error
        if "min_cosine" in entry:
            worst = max(worst, 1.0 - float(entry["min_cosine"]))
    return ok, worst


def search(measure: Measure, names: list[str], types: Mapping[str, str], weights: Mapping[str, int],
           fixed_fp32_types: frozenset[str], runs: Callable[[], int], target: str, instead: str,
           share_of: Callable[[set[str]], float] | None = None, *, max_share: float = MAX_FP32_WEIGHT_SHARE,
           precisions: tuple[str, str] = ("float16", "compute in float32")) -> Choice:
    """Which of the ops ``names`` (in graph order) to compute in float16; see the module docstring.

    ``measure`` runs the graph with a set of ops in float16 and says whether the outputs pass and the
    worst error; ``runs`` counts the runs so far; ``target`` and ``instead`` word the refusal.
    ``share_of`` gives the share of the model's weights the kept ops hold (default: their ``weights``
    over all ops'; a graph whose ops share weights, or whose integer weights count too, says its own).
    The same search chooses int8 weights among float16 ones (:mod:`onnx_int8_mixed`): ``precisions``
    words the lower precision and what the kept ops do instead, ``max_share`` bounds what they may hold.

    Raises:
        ParityError: More than ``max_share`` of the weights must stay in the higher precision.
    """
    everything = frozenset(names)

    def choice(kept: set[str], method: str, error: float) -> Choice:
        share = share_of(kept) if share_of else sum(weights[n] for n in kept) / (sum(weights.values()) or 1)
        if share > max_share:
            raise ParityError(
                f"{precisions[0]} cannot hold this model: to stay within the {target} tolerance, ops holding "
                f"{share:.0%} of the weights must {precisions[1]} ({', '.join(sorted(set(types[n] for n in kept)))}); "
                f"{instead}")
        return Choice(half=everything - kept, method=method, fp32_op_types=dict(Counter(types[n] for n in kept)),
                      fp32_weight_share=share, search_error=error, runs=runs())

    fixed = {n for n in names if types[n] in fixed_fp32_types}
    ok, error = measure(everything - fixed)
    if ok:
        return choice(fixed, "the fixed list of range-sensitive op types", error)

    size = max(1, -(-len(names) // GROUPS))
    groups = [names[i:i + size] for i in range(0, len(names), size)]
    harm = [measure(frozenset(g))[1] for g in groups]
    order = sorted(range(len(groups)), key=lambda i: -harm[i])
    log.info("mixed precision: %d ops in %d groups; error of each group alone in %s: %s", len(names),
             len(groups), precisions[0], ", ".join(f"{h:.3g}" for h in harm))

    def kept_by(k: int) -> set[str]:
        return {n for i in order[:k] for n in groups[i]}

    results: dict[int, float] = {}

    def passes(k: int) -> bool:
        ok, err = measure(everything - kept_by(k))
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
                ok, err = measure(everything - others - set(part))
                if ok:
                    kept_groups[index], error = part, err
                    break
            else:
                break
            if kept_groups[index] is group:
                break
    kept = {n for g in kept_groups for n in g}
    # then each op that holds weights, heaviest first, back to float16 alone if the outputs still pass
    for name in sorted((n for n in kept if weights[n]), key=lambda n: -weights[n])[:RELEASE_RUNS]:
        ok, err = measure(everything - (kept - {name}))
        if ok:
            kept, error = kept - {name}, err
    return choice(kept, f"measured: {len(kept)} of {len(names)} ops kept float32 after {runs()} runs", error)
