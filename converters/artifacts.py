"""One target: its routes, passes and artifacts, validated on the runtimes that will run them.

:func:`build_target` tries a target's routes in order (planner.fallback_routes) and, on the first
that works, places the artifact (and its format variants) in the bundle being built, runs it on the
samples in the source's terms (:mod:`edgekit.converters.validation`: native runtime, then
onnxruntime-web for web formats) and describes it for the manifest. ``convert`` calls it in a
worker process per family (isolation.py) or in its own process.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._files import hash_path
from edgekit.bundle import Artifact
from edgekit.converters.calibration import Samples
from edgekit.converters.passes import PassContext, Value, load_pass
from edgekit.converters.registry import TARGETS, VARIANTS, TargetInfo
from edgekit.converters.sources import Source
from edgekit.converters.validation import Progress, load_seconds, place_and_validate
from edgekit.errors import (
    ConversionError,
    MissingDependencyError,
    OutputExistsError,
    ParityError,
    UserError,
    WrongGraphError,
)
from edgekit.parity import Tolerance

log = logging.getLogger(__name__)
# A format variant holds the same graph as its main artifact, so its parity is measured on a leading
# subset of the samples (recorded as n_samples): a full second pass over large calibration sets
# would cost as much as validating the target again.
VARIANT_SAMPLES = 64
EIGHT_BIT = ("int8", "dynamic-int8")  # precisions an int8 source's artifacts may not grow beyond it in


class RouteCache:
    """What the targets of one conversion share: each route prefix's product, the steps that failed,
    and the route prefixes whose product failed fp32 parity (other targets skip those)."""

    def __init__(self, source: Source):
        self.values: dict[tuple[str, ...], tuple[Value, float]] = {(): (source.value, 0.0)}
        self.by_kind: dict[str, Value] = {source.kind: source.value}
        self.failed: dict[tuple[str, ...], BaseException] = {}
        self.bad: dict[tuple[str, ...], str] = {}


def build_target(
    target: TargetInfo, routes: list[list[Any]], cache: RouteCache,
    ctx: PassContext, staging: Path, source: Source, samples: Samples, reference: dict[str, np.ndarray],
    accept_parity_failure: bool, say: Progress,
) -> list[Artifact]:
    """Build, validate and describe the target's artifacts on the first of ``routes`` that works.

    A route that fails to convert (or, for an fp32 target, fails parity) is recorded and the next is
    tried (planner.fallback_routes): onnx2tf with fixed shapes, with inputs kept in their layout, an
    alternative converter. The artifacts record every route that was tried before (``routes_tried``).
    """
    import importlib.util

    target = judged_as_given(target, source)

    def bad(route: list[Any]) -> str | None:
        names = tuple(step.name for step in route)
        return next((why for prefix, why in cache.bad.items() if names[:len(prefix)] == prefix), None)

    # A route whose product failed fp32 parity for another target goes last: another route is likely
    # better, but this target's own (looser) tolerance may still accept it.
    routes = sorted(routes, key=lambda r: bad(r) is not None)
    tried: list[dict[str, str]] = []
    first_error: BaseException | None = None
    for i, route in enumerate(routes):
        names = tuple(step.name for step in route)
        missing = [m for step in route for m in step.modules if importlib.util.find_spec(m) is None]
        if i > 0 and missing:  # the planned route's missing modules were reported up front
            tried.append({"route": " -> ".join(names), "error": f"not installed: {', '.join(sorted(set(missing)))}"})
            continue
        try:
            made = _build_on_route(target, route, cache, ctx, staging, source, samples, reference,
                                   accept_parity_failure, say)
        except Exception as exc:
            remove_target_files(staging, target)  # what the failed route left (a copied artifact that failed)
            if first_error is None:
                first_error = exc
            if isinstance(exc, WrongGraphError):  # measured by a mixed-precision search on its fp32 program
                cache.bad[names[:-1]] = f"its fp32 program failed parity for {target.id}"
            elif isinstance(exc, ParityError) and target.precision == "fp32":  # this route's graph is wrong
                cache.bad[names[:-1]] = f"its fp32 artifact failed parity for {target.id}"
            elif (isinstance(exc, ParityError) and target.precision != "fp32"
                  and (wrong := _wrong_graph(target, route, cache, ctx, staging, source, samples, reference, say))):
                # the graph this route quantized is wrong in fp32 already (onnx2tf guessed a layout): another
                # route's graph may be right, so it is tried before the precision fallbacks on this one
                cache.bad[wrong] = f"its fp32 artifact failed parity for {target.id}"
                routes[i + 1:] = sorted(routes[i + 1:], key=lambda r: bad(r) is not None)
            elif isinstance(exc, ParityError) and (retries := _precision_retries(route, routes[i + 1:])):
                # routes on the same graph with another precision step (mixed float16, the next int8 recipe)
                # or another precision fallback (int8 weights on the fp32 program) come next
                routes[i + 1:] = retries + [r for r in routes[i + 1:] if r not in retries]
            elif isinstance(exc, (ParityError, OutputExistsError, MissingDependencyError)):
                if tried:
                    raise _with_routes(exc, tried) from exc
                raise
            tried.append({"route": " -> ".join(names), "error": f"{type(exc).__name__}: {str(exc)[:400]}"})
            if i + 1 < len(routes):
                say(f"{target.id}: route {' -> '.join(names)} failed ({type(exc).__name__}); trying another")
            continue
        if tried:
            made = [replace(a, extra={**a.extra, "routes_tried": tried}) for a in made]
        return made
    assert first_error is not None or tried
    raise _with_routes(first_error, tried[1:]) if first_error is not None else ConversionError(
        f"no route to {target.id} could run: " + "; ".join(f"{t['route']}: {t['error']}" for t in tried))


def _prefix(route: list[Any]) -> tuple[str, ...]:
    return tuple(step.name for step in route[:-1])


def _wrong_graph(target: TargetInfo, route: list[Any], cache: RouteCache, ctx: PassContext, staging: Path,
                 source: Source, samples: Samples, reference: dict[str, np.ndarray], say: Progress) -> tuple[str, ...]:
    """The prefix of ``route`` whose graph fails fp32 parity, when a reduced-precision target failed on it: the
    graph before the last step that has an fp32 sibling (tflite-fp32 beside tflite-dynamic-int8, tf-coreml-fp32
    beside tf-coreml-fp16) is converted to fp32 and validated (in a scratch folder, not the bundle); an empty
    tuple when it passes, has no sibling or cannot be built. Prefixes already known bad are not rebuilt."""
    from edgekit.converters.registry import PASSES

    fp32 = next((t for t in TARGETS.values() if t.kind == target.reference_kind and t.precision == "fp32"), None)
    for i in range(len(route) - 1, -1, -1):
        step = next((p for p in PASSES if p.consumes == route[i].consumes and p.produces == target.reference_kind
                     and p.fallback_of is None and p.alternative is None), None)
        if step is not None:
            break
    else:
        return ()
    prefix = tuple(s.name for s in route[:i])
    if fp32 is None or not prefix or prefix in cache.bad:
        return ()
    check = staging / ".fp32-check"
    check.mkdir(exist_ok=True)
    try:
        _build_on_route(judged_as_given(fp32, source), [*route[:i], step], cache, ctx, check, source, samples,
                        reference, False, say)
    except ParityError:
        return prefix
    except Exception:  # noqa: BLE001 - the check is a hint; the route's own error stands
        return ()
    finally:
        shutil.rmtree(check, ignore_errors=True)
    return ()


def _precision_retries(route: list[Any], later: list[list[Any]]) -> list[list[Any]]:
    """The routes in ``later`` worth trying after ``route`` failed a reduced-precision parity: those on the same
    graph with another last step, and those with a precision fallback pass ``route`` lacks (a pass standing in
    for another that makes a reduced-precision kind: mixed float16, int8 weights on the fp32 program) and no
    alternative converter it lacks."""
    from edgekit.converters.registry import TARGETS

    reduced = {t.kind for t in TARGETS.values() if t.precision != "fp32"}

    def precision_fallback(r: list[Any]) -> bool:
        new = [p for p in r if p not in route]
        return any(p.fallback_of and p.produces in reduced for p in new) and not any(p.alternative for p in new)

    return [r for r in later if _prefix(r) == _prefix(route) or precision_fallback(r)]


def judged_as_given(target: TargetInfo, source: Source) -> TargetInfo:
    """The target with the tolerance its artifacts are held to against this source.

    The source is run with ONNX's exact semantics (no graph optimizations), which for an already
    quantized model means float arithmetic around its Quantize/DequantizeLinear nodes; any runtime's
    int8 kernels round differently. So artifacts of a quantized source, which keep its quantized
    weights whatever their target's precision, are held to the int8 tolerance at least.
    """
    return held_to(target, quantized_source=bool(source.info.extra.get("quantized")))


def held_to(target: TargetInfo, *, quantized_source: bool) -> TargetInfo:
    """The target with its tolerance, at least the int8 one for a quantized source (see judged_as_given)."""
    if not quantized_source:
        return target
    int8 = TARGETS["onnx-web-int8"].tolerance
    tolerance = Tolerance(
        max_rel_error=max(target.tolerance.max_rel_error, int8.max_rel_error),
        min_top1_agreement=min(t for t in (target.tolerance.min_top1_agreement, int8.min_top1_agreement)
                               if t is not None),
        min_cosine=min(t for t in (target.tolerance.min_cosine, int8.min_cosine) if t is not None))
    return replace(target, tolerance=tolerance)


def remove_target_files(staging: Path, target: TargetInfo) -> None:
    """Remove a target's files (artifact and format variants) from the bundle being built."""
    for suffix in (target.suffix, *(VARIANTS[fmt][1] for fmt in target.variants)):
        path = staging / f"{target.id}{suffix}"
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _with_routes(exc: BaseException, tried: list[dict[str, str]]) -> BaseException:
    """The error of the planned route, naming the other routes tried and why each failed."""
    if not tried or not isinstance(exc, UserError):
        return exc
    others = "; ".join(f"[{t['route']}] {t['error']}" for t in tried)
    try:
        return type(exc)(f"{exc} (other routes tried: {others})")
    except TypeError:
        return exc


def _build_on_route(
    target: TargetInfo, route: list[Any], cache: RouteCache,
    ctx: PassContext, staging: Path, source: Source, samples: Samples, reference: dict[str, np.ndarray],
    accept_parity_failure: bool, say: Progress,
) -> list[Artifact]:
    """Run the missing passes of ``route``, then copy, validate and describe the target's artifacts.

    A step's product is shared by every target whose route starts the same way, and a step that
    failed is not run again for the next target (onnx2tf runs once per family, not once per target).
    """
    value, seconds = cache.values[()]
    steps: tuple[str, ...] = ()
    for step in route:
        prefix = (*steps, step.name)
        if prefix in cache.values:
            value, seconds = cache.values[prefix]
            steps = prefix
            continue
        if prefix in cache.failed:  # a shared step that already failed for another target of this run
            raise cache.failed[prefix]
        say(f"{target.id}: {step.name} ({step.consumes} -> {step.produces})")
        start = time.perf_counter()
        try:
            value = load_pass(step).run(value, ctx)
        except Exception as exc:
            cache.failed[prefix] = exc
            raise
        seconds += time.perf_counter() - start
        steps = prefix
        cache.values[prefix] = (value, seconds)
        cache.by_kind[step.produces] = value

    made = [place_and_validate(target, target.format, value.file, staging / f"{target.id}{target.suffix}", steps, seconds,
                    value, source, samples, reference, accept_parity_failure, say)]
    if (source.info.extra.get("quantized") and target.precision in EIGHT_BIT
            and made[0].size_bytes > source.info.size_bytes):
        raise ConversionError(
            f"this route's {target.id} artifact ({made[0].size_bytes} bytes) is larger than the already quantized "
            f"source ({source.info.size_bytes} bytes): an 8-bit target keeps the source's size at most; onnx-web-int8 "
            "keeps its quantized weights as they are")

    subset, subset_reference = leading_samples(samples, reference, source, VARIANT_SAMPLES)
    for fmt in target.variants:
        impl, suffix = VARIANTS[fmt]
        module, _, func = impl.partition(":")
        dst = staging / f"{target.id}{suffix}"
        start = time.perf_counter()
        try:
            getattr(importlib.import_module(module), func)(value.file, dst)
            variant = place_and_validate(target, fmt, dst, dst, (*steps, f"to-{fmt}"),
                              seconds + time.perf_counter() - start, value, source, subset, subset_reference,
                              accept_parity_failure, say)
        except Exception as exc:  # a variant is optional: record why it was not kept
            log.info("%s: no %s variant: %s", target.id, fmt, exc)
            dst.unlink(missing_ok=True)
            continue
        verdict = _variant_pays_off(made[0], variant, staging)
        if source.info.extra.get("quantized") and variant.size_bytes > source.info.size_bytes:
            verdict = ""  # an already quantized source: no artifact larger than what the user gave
        if verdict:
            made.append(replace(variant, extra={**variant.extra, "kept_because": verdict}))
        else:
            dst.unlink(missing_ok=True)
    base_value = cache.by_kind.get(target.reference_kind)
    if base_value is not None and base_value.path is not None:  # for when no fp32 artifact is in the bundle
        base = hash_path(base_value.file)[1]
        made = [replace(a, size_ratio=round(a.size_bytes / base, 4) if base else None) for a in made]
    return made


def leading_samples(samples: Samples, reference: dict[str, np.ndarray], source: Source,
                     limit: int) -> tuple[Samples, dict[str, np.ndarray]]:
    """The first ``limit`` samples (a multiple of a fixed batch size) and their reference outputs."""
    if samples.single:
        return samples, reference
    first = source.inputs[0].shape[0] if source.inputs[0].shape else None
    step = first if isinstance(first, int) and first > 0 else 1
    n = min(samples.count, max(limit // step, 1) * step)
    if n == samples.count:
        return samples, reference
    labels = samples.labels[:n] if samples.labels is not None else None
    return (replace(samples, inputs={k: v[:n] if v.ndim else v for k, v in samples.inputs.items()}, labels=labels),
            {k: v[:n] for k, v in reference.items()})


def _variant_pays_off(base: Artifact, variant: Artifact, staging: Path) -> str:
    """Why a format variant is worth shipping ('' when it is not): smaller or faster to load."""
    reasons = []
    if variant.size_bytes < base.size_bytes:
        reasons.append(f"{variant.size_bytes / base.size_bytes:.2f}x the size")
    base_load = load_seconds(base.format, staging / base.file, base.precision)
    variant_load = load_seconds(variant.format, staging / variant.file, variant.precision)
    if variant_load < base_load:
        reasons.append(f"loads in {variant_load * 1e3:.1f} ms vs {base_load * 1e3:.1f} ms")
    return "; ".join(reasons)
