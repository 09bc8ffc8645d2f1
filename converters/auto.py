"""Accuracy-gated precision: ``--target tflite-auto`` (``coreml-auto``, ``onnx-web-auto``, ``all-auto``).

Every candidate precision of a family is built and validated; the smallest one within the user's
budget wins, and an integer candidate also has to be no slower on this host than the next larger
one (unless size alone matters). The manifest keeps every candidate's size, accuracy and latency and
the reason for the choice, so the decision can be audited later.

The budget is part of the conversion's options (:class:`edgekit.converters.options.Budget`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekit.bundle import Artifact, Selection
from edgekit.converters.options import Budget
from edgekit.errors import UnknownTargetError, did_you_mean

# Candidates per family, smallest expected size first.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "onnx-web": ("onnx-web-int8", "onnx-web-fp16", "onnx-web"),
    "tflite": ("tflite-int8", "tflite-dynamic-int8", "tflite-int16x8", "tflite-fp16", "tflite"),
    "coreml": ("coreml-palettize4", "coreml-palettize6", "coreml-int8", "coreml-fp16", "coreml"),
}
AUTO_TARGETS: dict[str, tuple[str, ...]] = {
    "onnx-web-auto": ("onnx-web",), "tflite-auto": ("tflite",), "coreml-auto": ("coreml",),
    "all-auto": ("onnx-web", "tflite", "coreml"),
}
__all__ = ["AUTO_TARGETS", "CANDIDATES", "Budget", "discard", "expand", "select"]

INTEGER_PRECISIONS = ("int8", "dynamic-int8", "int16x8")  # kept only when not slower than the next larger
# An integer candidate counts as slower only beyond timing noise: 10% and 0.02 ms (two clock-level
# jitters on a 15 us model would otherwise flip the choice from run to run).
SLOWER_RATIO = 1.10
SLOWER_MS = 0.02
LATENCY_RUNS = 30


def expand(targets: Sequence[str]) -> tuple[list[str], list[str]]:
    """Plain target ids (auto ones replaced by their candidates) and the auto families asked for.

    Raises:
        UnknownTargetError: An ``-auto`` id that does not exist (the plain ones are checked later).
    """
    plain: list[str] = []
    families: list[str] = []
    for tid in targets:
        if tid.endswith("-auto"):
            if tid not in AUTO_TARGETS:
                raise UnknownTargetError(f"unknown target {tid!r}{did_you_mean(tid, AUTO_TARGETS)}; automatic ones: "
                                         f"{', '.join(AUTO_TARGETS)}")
            for family in AUTO_TARGETS[tid]:
                if family not in families:
                    families.append(family)
                plain.extend(c for c in CANDIDATES[family] if c not in plain)
        elif tid not in plain:
            plain.append(tid)
    return plain, families


def _verdict(art: Artifact, budget: Budget, has_labels: bool) -> tuple[bool, dict[str, Any]]:
    """Whether ``art`` meets the budget, and its figures for the record."""
    figures: dict[str, Any] = {"target": art.target, "format": art.format, "precision": art.precision,
                               "size_bytes": art.size_bytes, "size_ratio": art.size_ratio}
    parity = art.parity
    if parity is None:
        figures["verdict"] = f"not verified ({art.unverified})"
        return False, figures
    figures["top1_agreement"] = parity.top1_agreement
    errors = [float(e["max_rel_error"]) for e in parity.per_output or () if e.get("max_rel_error") is not None]
    figures["max_rel_error"] = max(errors) if errors else None
    if art.accuracy is not None:
        figures["top1"] = art.accuracy.top1
        figures["source_top1"] = art.accuracy.source_top1
    if has_labels and art.accuracy is not None and budget.max_accuracy_drop is not None:
        drop = (art.accuracy.source_top1 - art.accuracy.top1) * 100
        figures["accuracy_drop_points"] = round(drop, 3)
        ok = drop <= budget.max_accuracy_drop
        why = f"accuracy drop {drop:.2f} points {'<=' if ok else '>'} {budget.max_accuracy_drop}"
    elif parity.top1_agreement is not None:
        floor = budget.min_agreement if budget.min_agreement is not None else 0.99
        ok = parity.top1_agreement >= floor
        why = f"top-1 agreement {parity.top1_agreement:.4f} {'>=' if ok else '<'} {floor}"
    else:
        bound = budget.max_error if budget.max_error is not None else 0.05
        worst = figures["max_rel_error"] or 0.0
        ok = worst <= bound
        why = f"max relative error {worst:.4g} {'<=' if ok else '>'} {bound}"
    figures["verdict"] = ("within budget: " if ok else "over budget: ") + why
    return ok, figures


def select(family: str, artifacts: list[Artifact], failed: dict[str, str], budget: Budget, has_labels: bool,
           latency_ms: Any) -> tuple[Artifact | None, Selection]:
    """The smallest candidate of ``family`` within ``budget`` (and not slower, for integer ones).

    ``latency_ms(artifact)`` gives a candidate's median latency and the runtime it was measured on
    (None when it cannot be run): the runtime that will run it (onnxruntime-web for onnx-web).
    """
    main = [a for a in artifacts if a.target in CANDIDATES[family] and a.format == _main_format(a, artifacts)]
    records: dict[str, dict[str, Any]] = {}
    passing: list[Artifact] = []
    for art in sorted(main, key=lambda a: a.size_bytes):
        ok, figures = _verdict(art, budget, has_labels)
        records[art.target] = figures
        if ok:
            passing.append(art)
    for target, error in failed.items():
        if target in CANDIDATES[family]:
            records[target] = {"target": target, "verdict": f"failed: {error[:300]}"}
    chosen: Artifact | None = None
    reason = ""
    for i, art in enumerate(passing):
        if art.precision in INTEGER_PRECISIONS and budget.optimize != "size" and i + 1 < len(passing):
            bigger = passing[i + 1]
            mine, theirs = _timed(records[art.target], latency_ms(art)), _timed(records[bigger.target], latency_ms(bigger))
            if mine is not None and theirs is not None and mine > theirs * SLOWER_RATIO and mine - theirs > SLOWER_MS:
                where = records[art.target]["latency_runtime"]
                records[art.target]["verdict"] += (f"; but slower than {bigger.target} "
                                                   f"({mine:.3f} vs {theirs:.3f} ms p50 on {where})")
                continue
        chosen = art
        rejected = [r for t, r in records.items() if t != art.target and not r["verdict"].startswith("within budget")
                    or "slower" in r["verdict"]]
        reason = (f"{art.target} is the smallest candidate within the budget ({records[art.target]['verdict']}; "
                  f"{art.size_bytes:,} bytes"
                  + (f", {art.size_ratio:.2f}x fp32" if art.size_ratio else "") + ")")
        if rejected:
            reason += "; rejected: " + "; ".join(f"{r['target']}: {r['verdict']}" for r in rejected)
        break
    if chosen is None:
        reason = "no candidate met the budget: " + "; ".join(f"{t}: {r['verdict']}" for t, r in records.items())
    order = [records[t] for t in CANDIDATES[family] if t in records]
    return chosen, Selection(family=family, chosen=chosen.target if chosen else None, budget=budget.describe(),
                             candidates=tuple(order), reason=reason)


def _timed(record: dict[str, Any], measured: tuple[float, str] | None) -> float | None:
    """Record a candidate's latency and the runtime it was measured on; the latency."""
    if measured is None:
        record["latency_p50_ms"] = None
        return None
    record["latency_p50_ms"], record["latency_runtime"] = measured
    return measured[0]


def _main_format(art: Artifact, artifacts: list[Artifact]) -> str:
    """The format a target is judged by: its first artifact (format variants follow it)."""
    return next(a.format for a in artifacts if a.target == art.target)


def discard(staging: Path, artifacts: list[Artifact], keep: set[str]) -> list[Artifact]:
    """Remove the files of artifacts whose target is not in ``keep``; the rest, in order."""
    import shutil

    kept = []
    for art in artifacts:
        if art.target in keep:
            kept.append(art)
            continue
        path = staging / art.file
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return kept
