"""Parity: run an artifact on the source's inputs and measure how far its outputs drift.

Numpy only: the converters measure parity with it when they validate an artifact, and the runtime
with it when a device checks a downloaded artifact against the reference outputs in the bundle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.bundle import Accuracy, Parity, TensorSpec


@dataclass(frozen=True)
class Tolerance:
    """When an artifact's outputs count as matching the source's.

    ``max_rel_error`` bounds each output's max abs error divided by the largest magnitude of the
    source output (by 1, the range, for a ``probability`` output). For outputs that are class scores,
    ``min_top1_agreement`` (when set) replaces the error bound: quantized models move logits but must
    keep the decisions. A probability map that fails the error bound passes when its decisions (values
    above 0.5) overlap the source's by this floor (intersection over union) and the bound holds for 99 %
    of its values (:data:`MAP_ERROR_QUANTILE`). For embeddings,
    ``min_cosine`` (when set) does: the least cosine similarity of any vector to the source's (see
    :data:`OUTPUT_KINDS`).
    """

    max_rel_error: float
    min_top1_agreement: float | None = None
    min_cosine: float | None = None

    def to_dict(self) -> dict[str, float]:
        out = {"max_rel_error": self.max_rel_error}
        if self.min_top1_agreement is not None:
            out["min_top1_agreement"] = self.min_top1_agreement
        if self.min_cosine is not None:
            out["min_cosine"] = self.min_cosine
        return out


# How an output is judged. ``exact``: integers, shapes, indices and masks must equal the source's (the
# target's agreement floor, where it has one, bounds how many may differ) and stay out of the error
# statistics. ``scores``: class scores, judged by top-1 agreement along the last axis where the target
# sets a floor. ``embedding``: vectors along the last axis, judged by cosine similarity where the target
# sets a floor (token vectors outside an attention mask are not judged). ``probability``: values in [0, 1]
# by construction (a sigmoid or softmax, maybe averaged, pooled or reshaped; the source graph says so,
# see edgekit.converters.ranges), held to the error bound against their range, 1, not against the
# samples' largest value: a speech probability of 0.003 off by 0.002 is 0.2% of its range, not 67%.
# A probability output of at least MAP_MIN_ELEMENTS values per sample is a probability map (a text
# detector's or segmenter's): where the target has an agreement floor (reduced precision), one that fails the
# error bound still passes when its decisions, the values above MAP_THRESHOLD, overlap the source's by that
# floor (intersection over union) and 99 % of its values are within the bound; a few pixels at the edge of a
# region that flip from 0.4 to 0.6 are how 8 bits move such a map, and what its users threshold away
# (docs/adr/0018).
# ``map``: everything else (detection and segmentation maps, regressions, signals), held to the
# relative error bound.
MAP_MIN_ELEMENTS = 64
MAP_THRESHOLD = 0.5
MAP_ERROR_QUANTILE = 0.99
OUTPUT_KINDS = ("exact", "scores", "embedding", "probability", "map")
EMBEDDING_WORDS = ("embed", "pool", "sentence", "hidden_state", "last_hidden", "encod", "feature")
MIN_EMBEDDING_WIDTH = 16
TOKEN_MODEL_MIN_WIDTH = 64


def infer_kind(spec: TensorSpec, ref: np.ndarray, n_outputs: int, token_inputs: bool = False) -> str:
    """The output kind :func:`compare` judges ``spec`` as when none was set (see :data:`OUTPUT_KINDS`).

    Non-float outputs are ``exact``. A float output of vectors (last axis at least 16 wide) is an
    ``embedding`` when its name says so (embedding, pooled, sentence, hidden state, encoding, features),
    or when the model takes token ids (an integer input of rank 2) and the vectors are at least 64
    wide: a sentence encoder's pooled output is (samples, 384), which would otherwise read as 384
    class scores. Class scores as :func:`is_class_scores` sees them are ``scores``; of the rest, an output
    the source graph bounds to [0, 1] (``spec.extra["range"]``) is ``probability``, the others ``map``.
    """
    if spec.kind:
        return spec.kind
    if not np.issubdtype(ref.dtype, np.floating):
        return "exact"
    width = ref.shape[-1] if ref.ndim >= 2 else 0
    name = spec.name.lower()
    if width >= MIN_EMBEDDING_WIDTH and any(w in name for w in EMBEDDING_WORDS):
        return "embedding"
    if token_inputs and width >= TOKEN_MODEL_MIN_WIDTH and not _probability_rows(ref, min_rank=2):
        return "embedding"  # (a classifier of token or byte sequences ends in probabilities: scores)
    if is_class_scores(ref, only_output=n_outputs == 1) or _probability_rows(ref):
        return "scores"
    return "probability" if list(spec.extra.get("range") or ()) == [0, 1] else "map"


def _probability_rows(ref: np.ndarray, min_rank: int = 3) -> bool:
    """A float output of rank 3 (``min_rank``) or more whose last axis holds probabilities: per-position class
    scores (an OCR recognizer's (samples, steps, characters) softmax, decoded by arg-max per step)."""
    if ref.ndim < min_rank or ref.shape[-1] < 2 or not ref.size:
        return False
    with np.errstate(invalid="ignore", over="ignore"):
        return bool(np.all(ref >= 0) and np.allclose(ref.sum(axis=-1), 1.0, atol=1e-3))


def has_token_inputs(inputs: tuple[TensorSpec, ...]) -> bool:
    """True when the model takes token ids: an integer input of rank 2 (samples, tokens)."""
    return any(len(s.shape) == 2 and s.dtype.startswith(("int", "uint")) for s in inputs)


def attention_mask(samples: Mapping[str, Any], inputs: tuple[TensorSpec, ...]) -> np.ndarray | None:
    """The samples' attention mask: an integer or boolean input of rank 2 whose name has "mask"."""
    for spec in inputs:
        if "mask" in spec.name.lower() and len(spec.shape) == 2 and spec.name in samples:
            value = np.asarray(samples[spec.name])
            if value.ndim == 2 and (value.dtype == bool or np.issubdtype(value.dtype, np.integer)):
                return value
    return None


def min_cosine(ref: np.ndarray, act: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The least cosine similarity between matching vectors (along the last axis) of ``act`` and ``ref``.

    With ``mask`` of ``ref``'s leading shape, vectors where it is 0 (padding tokens) are skipped. Two
    zero vectors count as similar (1), a zero vector against another as 0.
    """
    a = ref.astype(np.float64).reshape(-1, ref.shape[-1] if ref.ndim else 1)
    b = act.astype(np.float64).reshape(a.shape)
    if mask is not None and ref.ndim >= 2 and mask.shape == ref.shape[:-1]:
        keep = mask.reshape(-1) != 0
        a, b = a[keep], b[keep]
    if not a.size:
        return 1.0
    with np.errstate(invalid="ignore", over="ignore"):
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        cos = np.einsum("ij,ij->i", a, b) / (na * nb)
    cos = np.where((na == 0) & (nb == 0), 1.0, np.where((na == 0) | (nb == 0), 0.0, cos))
    cos = np.where(np.isfinite(cos), cos, -1.0)  # inf or NaN vectors never match
    return float(cos.min())


RunFn = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]
MAX_CHUNK = 64


def is_single_feed(feeds: Mapping[str, Any], inputs: tuple[TensorSpec, ...]) -> bool:
    """True when ``feeds`` are one feed of a fully static model, not a batch of samples along axis 0.

    Samples are stacked along the first axis, which is the model's batch axis. A model whose inputs
    are all fixed and do not share a first dimension (a scalar input, or inputs of 2 and 5 rows) has
    no such axis: arrays of exactly the inputs' shapes are then one sample, run as they are.
    """
    if not inputs or any(spec.name not in feeds for spec in inputs):
        return False
    for spec in inputs:
        if not all(isinstance(d, int) and d >= 0 for d in spec.shape):
            return False
        if tuple(np.shape(feeds[spec.name])) != tuple(spec.shape):
            return False
    firsts = {spec.shape[0] if spec.shape else None for spec in inputs}
    return None in firsts or len(firsts) > 1


def is_stacked(feeds: Mapping[str, Any], inputs: tuple[TensorSpec, ...]) -> bool:
    """True when ``feeds`` are a list of whole feeds along a new first axis: every array has one axis
    more than its input (scalars, shared by all, aside).

    For models whose batch axis is not the first of every input, such as a recurrent state laid out
    (layers, batch, hidden): samples cannot be stacked along axis 0, so each is given whole.
    """
    if not inputs or any(spec.name not in feeds for spec in inputs):
        return False
    ranks = [(np.ndim(feeds[spec.name]), len(spec.shape)) for spec in inputs if np.ndim(feeds[spec.name])]
    return bool(ranks) and all(got == want + 1 for got, want in ranks)


def sample_count(feeds: Mapping[str, Any], inputs: tuple[TensorSpec, ...]) -> int:
    """How many samples (or whole feeds) ``feeds`` hold."""
    if is_single_feed(feeds, inputs):
        return 1
    return int(next((np.shape(v)[0] for v in feeds.values() if np.ndim(v)), 1))


def chunk_size(inputs: tuple[TensorSpec, ...] | None) -> int:
    """Samples per run: the model's fixed batch size, else up to 64."""
    first = inputs[0].shape[0] if inputs and inputs[0].shape else None
    return first if isinstance(first, int) and first > 0 else MAX_CHUNK


def iter_feeds(samples: Mapping[str, np.ndarray], inputs: tuple[TensorSpec, ...], chunk: int,
               limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The feeds to run: the single feed as it is, each stacked feed, or chunks of up to ``chunk``
    samples along axis 0 (scalars shared by all); at most ``limit`` samples."""
    if is_single_feed(samples, inputs):
        yield dict(samples)
        return
    count = sample_count(samples, inputs)
    count = min(count, limit) if limit else count
    if is_stacked(samples, inputs):
        for i in range(count):
            yield {k: v[i] if np.ndim(v) else v for k, v in samples.items()}
        return
    for start in range(0, count, chunk):
        yield {k: v[start:min(start + chunk, count)] if np.ndim(v) else v for k, v in samples.items()}


def run_batched(run: RunFn, samples: dict[str, np.ndarray], inputs: tuple[TensorSpec, ...],
                like: tuple[TensorSpec, ...] | None = None) -> dict[str, np.ndarray]:
    """Run ``run`` over all samples in chunks the model accepts, concatenating the outputs.

    A model whose first input dimension is fixed to k gets chunks of k; a dynamic one gets chunks of
    up to 64 samples. A single feed of a fully static model (:func:`is_single_feed`) runs once;
    stacked feeds (:func:`is_stacked`) run one by one and their outputs are stacked the same way.
    ``like`` (the source's inputs, when ``run`` is an artifact) makes the chunks no larger than the
    source's, so that outputs whose first axis is not the batch (time-major sequences, detections)
    are cut and joined the same way as the reference.
    """
    if is_single_feed(samples, inputs):
        return {k: np.asarray(v) for k, v in run(samples).items()}
    stacked = is_stacked(samples, inputs)
    chunk = min(chunk_size(inputs), chunk_size(like)) if like else chunk_size(inputs)
    parts: dict[str, list[np.ndarray]] = {}
    for feeds in iter_feeds(samples, inputs, chunk):
        for name, value in run(feeds).items():
            parts.setdefault(name, []).append(np.asarray(value))
    if stacked:
        return {k: np.stack(v) for k, v in parts.items()}
    return {k: v[0] if len(v) == 1 else np.concatenate(v, axis=0) for k, v in parts.items()}


def is_class_scores(array: np.ndarray, only_output: bool = True) -> bool:
    """True for a float (samples, classes) output with at least two classes that holds decisions.

    A model's only such output is taken as class scores (logits or probabilities). Among several
    outputs only probability rows count: a detector's box or landmark regressions are (samples, k)
    too, and their arg-max means nothing, so they are held to the error bound.
    """
    if not (array.ndim == 2 and array.shape[1] >= 2 and np.issubdtype(array.dtype, np.floating)):
        return False
    if only_output:
        return True
    return bool(np.all(array >= 0) and np.allclose(array.sum(axis=1), 1.0, atol=1e-3))


def compare(
    reference: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    outputs: tuple[TensorSpec, ...],
    tolerance: Tolerance,
    labels: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    token_inputs: bool = False,
) -> tuple[Parity, Accuracy | None]:
    """Measure each output's error against ``reference``, judged by its kind (:data:`OUTPUT_KINDS`).

    Outputs are matched by name, or by position when a converter renamed them. An output's kind is its
    spec's ``kind``, else :func:`infer_kind`'s (``token_inputs`` says whether the model takes token ids);
    ``mask`` is the samples' attention mask for token embeddings. The parity passes when every output
    is within ``tolerance``; see :class:`Tolerance`.
    """
    ref_values = [np.asarray(reference[o.name]) for o in outputs]
    by_name = all(o.name in actual for o in outputs)
    act_values = [actual[o.name] for o in outputs] if by_name else list(actual.values())
    per_output: list[dict[str, Any]] = []
    passed = True
    top1_all: list[float] = []
    accuracy = None
    n = int(ref_values[0].shape[0]) if ref_values[0].ndim else 1
    for spec, ref, act in zip(outputs, ref_values, act_values, strict=True):
        act = np.asarray(act)
        kind = infer_kind(spec, ref, len(outputs), token_inputs)
        if act.shape != ref.shape:
            per_output.append({"name": spec.name, "kind": kind,
                               "error": f"shape {list(act.shape)} != source {list(ref.shape)}"})
            passed = False
            continue
        if kind == "exact":
            # Integer and boolean outputs (shapes, indices, masks) are compared exactly and kept out of the
            # error statistics: a shape off by one is not "error 1.0". Reduced precision may flip an
            # index as it flips a top-1 decision, so the agreement floor applies where the target has one.
            same = float(np.mean(act == ref)) if ref.size else 1.0
            floor = tolerance.min_top1_agreement if tolerance.min_top1_agreement is not None else 1.0
            per_output.append({"name": spec.name, "kind": kind, "exact": True, "agreement": same,
                               "passed": same >= floor})
            passed = passed and same >= floor
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(act.astype(np.float64) - ref.astype(np.float64))
        # inf or NaN where the source has a finite (or different) value: an overflow, never a match
        bad = ~np.isfinite(diff) & ~(np.isnan(ref) & np.isnan(act)) & (act != ref)
        diff[~np.isfinite(diff)] = 0.0
        max_abs = float(diff.max()) if diff.size else 0.0
        finite_ref = np.abs(ref[np.isfinite(ref)])
        scale = 1.0 if kind == "probability" else float(finite_ref.max()) if finite_ref.size else 0.0
        rel = max_abs / scale if scale > 0 else max_abs
        entry: dict[str, Any] = {
            "name": spec.name,
            "kind": kind,
            "max_abs_error": max_abs,
            "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
            "max_rel_error": rel,
        }
        ok = rel <= tolerance.max_rel_error
        if bad.any():
            entry["non_finite_values"] = int(bad.sum())
        if kind == "scores" and ref.ndim >= 1 and ref.shape[-1] >= 2:
            agreement = float(np.mean(ref.argmax(axis=-1) == act.argmax(axis=-1)))
            entry["top1_agreement"] = agreement
            top1_all.append(agreement)
            if tolerance.min_top1_agreement is not None:
                ok = agreement >= tolerance.min_top1_agreement
            if labels is not None and accuracy is None and ref.ndim == 2:
                accuracy = Accuracy(
                    top1=float(np.mean(act.argmax(axis=1) == labels)),
                    source_top1=float(np.mean(ref.argmax(axis=1) == labels)),
                    n_samples=int(labels.shape[0]),
                )
        if kind == "probability" and ref.ndim >= 2 and ref[0].size >= MAP_MIN_ELEMENTS:
            iou = decision_iou(ref, act)
            quantile = float(np.quantile(diff, MAP_ERROR_QUANTILE)) if diff.size else 0.0
            entry["decision_iou"] = iou
            entry["quantile_abs_error"] = {str(MAP_ERROR_QUANTILE): quantile}
            if tolerance.min_top1_agreement is not None:  # the bound, or else the decisions and the bulk
                ok = ok or (iou >= tolerance.min_top1_agreement and quantile <= tolerance.max_rel_error)
        if kind == "embedding":
            cosine = min_cosine(ref, act, mask)
            entry["min_cosine"] = cosine
            if tolerance.min_cosine is not None:
                ok = cosine >= tolerance.min_cosine
        entry["passed"] = ok and not bad.any()
        passed = passed and bool(entry["passed"])
        per_output.append(entry)
    errors = [e for e in per_output if "max_abs_error" in e]
    parity = Parity(
        max_abs_error=max((float(e["max_abs_error"]) for e in errors), default=0.0),
        mean_abs_error=float(np.mean([e["mean_abs_error"] for e in errors])) if errors else 0.0,
        n_samples=n,
        passed=passed,
        top1_agreement=min(top1_all) if top1_all else None,
        tolerance=tolerance.to_dict(),
        per_output=tuple(per_output),
    )
    return parity, accuracy


def decision_iou(ref: np.ndarray, act: np.ndarray, threshold: float = MAP_THRESHOLD) -> float:
    """Intersection over union of the values above ``threshold`` in ``act`` and in ``ref`` (1 when neither has any)."""
    a, b = ref > threshold, act > threshold
    union = int(np.count_nonzero(a | b))
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def describe_failure(target: str, parity: Parity) -> str:
    """A message naming each output's error against the tolerance."""
    parts = []
    for entry in parity.per_output or ():
        if "error" in entry:
            parts.append(f"{entry['name']}: {entry['error']}")
            continue
        if entry.get("exact"):
            parts.append(f"{entry['name']}: {entry['agreement']:.4f} of its integer values equal the source's"
                         + ("" if entry["passed"] else " FAILED"))
            continue
        text = f"{entry['name']}: max abs error {entry['max_abs_error']:.3g} (relative {entry['max_rel_error']:.3g})"
        if "non_finite_values" in entry:
            text += f", {entry['non_finite_values']} values overflow to inf/NaN"
        if "top1_agreement" in entry:
            text += f", top-1 agreement {entry['top1_agreement']:.4f}"
        if "min_cosine" in entry:
            text += f", least cosine similarity {entry['min_cosine']:.4f}"
        if "decision_iou" in entry:
            (q, value), = entry["quantile_abs_error"].items()
            text += (f", decisions (> {MAP_THRESHOLD}) overlap {entry['decision_iou']:.4f} (IoU), "
                     f"{float(q):.0%} of values within {value:.3g}")
        parts.append(text + ("" if entry["passed"] else " FAILED"))
    tol = ", ".join(f"{k} {v}" for k, v in (parity.tolerance or {}).items())
    return (
        f"target {target} drifts from the source model beyond its tolerance ({tol}) on "
        f"{parity.n_samples} samples: {'; '.join(parts)}. Choose a higher-precision target, give "
        f"representative --calibration data, or keep it anyway with --accept-parity-failure"
    )
