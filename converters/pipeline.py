"""``convert``: load the source, plan routes, run passes, validate every artifact, write the bundle."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import edgekit.converters.auto as auto
from edgekit import __version__
from edgekit._console import captured_output
from edgekit._deps import require
from edgekit._host import describe_cpu
from edgekit.bundle import Artifact, Bundle, BundleWriter, Failure, Manifest, ReferenceInfo, RuntimeCheck, hash_path
from edgekit.converters.calibration import Samples, generate_samples, load_calibration
from edgekit.converters.isolation import Outcome
from edgekit.converters.passes import Options, PassContext, Value, load_pass
from edgekit.converters.planner import fallback_routes, plan, resolve_targets, usable_passes
from edgekit.converters.registry import RUNTIME_OF_FORMAT, TARGETS, VARIANTS, TargetInfo
from edgekit.converters.sources import Source, load_source
from edgekit.errors import (
    ConversionError,
    MissingDependencyError,
    NotVerifiableError,
    OutputExistsError,
    ParityError,
    PartialConversionError,
    UserError,
)
from edgekit.parity import Tolerance, compare, describe_failure, run_batched
from edgekit.runtimes.adapt import adapt, describe_io

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
LOAD_TIMING_REPEATS = 3
# A format variant holds the same graph as its main artifact, so its parity is measured on a leading
# subset of the samples (recorded as n_samples): a full second pass over large calibration sets
# would cost as much as validating the target again.
VARIANT_SAMPLES = 64
# Reference samples kept in the bundle for on-device smoke tests: a few, and small.
REFERENCE_SAMPLES = 16
REFERENCE_MAX_BYTES = 2 * 1024 * 1024
REFERENCE_NAME = "reference.npz"


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert` produced: the written bundle and the targets that failed (if kept)."""

    bundle: Bundle
    failures: tuple[Failure, ...]
    seconds: float


# Validation runs on the CPU providers, so parity does not depend on the converting machine's GPU.
VALIDATION_PROVIDERS = {"onnx": ("CPUExecutionProvider",), "ort": ("CPUExecutionProvider",), "tflite": ("XNNPACK", "CPU")}
# Formats browsers run: checked on onnxruntime-web (wasm, under Node.js) as well (converters/ortweb.py).
WEB_FORMATS = ("onnx", "ort")


def _open(fmt: str, path: Path) -> Any:
    module, _, cls = RUNTIME_OF_FORMAT[fmt].partition(":")
    return getattr(importlib.import_module(module), cls)().open(path, providers=VALIDATION_PROVIDERS.get(fmt))


def _load_seconds(fmt: str, path: Path) -> float:
    return float(statistics.median(_open(fmt, path).load_seconds for _ in range(LOAD_TIMING_REPEATS)))


def convert(
    model: Any,
    targets: Sequence[str],
    *,
    out: str | Path,
    calibration: str | Path | None = None,
    example_inputs: tuple[Any, ...] | None = None,
    name: str | None = None,
    version: str = "0.1.0",
    labels_key: str = "y",
    overwrite: bool = False,
    accept_parity_failure: bool = False,
    keep_partial: bool = False,
    int8_io: bool = False,
    allow_flex: bool = False,
    min_ios: int = 16,
    via: Sequence[str] = (),
    budget: auto.Budget | None = None,
    report: bool = True,
    progress: Progress | None = None,
    isolate: bool | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
) -> ConversionResult:
    """Convert ``model`` to each target, validate every artifact and write one bundle to ``out``.

    Args:
        model: A model file path (.onnx, .pt2, .keras) or a torch.nn.Module / keras.Model object.
        targets: Target ids, for example ``["onnx-web", "onnx-web-int8"]``.
        out: The bundle directory to create; it is written atomically.
        calibration: A ``.npz`` of input samples (and optional labels) for calibration and parity.
        example_inputs: Example tensors, required for a torch.nn.Module.
        name: The bundle's model name (default: the model file's stem or class name).
        version: The bundle's version string.
        labels_key: The array of ``calibration`` holding labels (unless an input has that name).
        overwrite: Replace ``out`` if it exists.
        accept_parity_failure: Keep artifacts that drift beyond tolerance (recorded as accepted).
        keep_partial: When some targets fail, return normally: the bundle holds the others either way.
        int8_io: Give ``tflite-int8`` int8 inputs and outputs (scale and zero point go in the manifest).
        allow_flex: Accept TFLite models that need TensorFlow Select (Flex) ops (listed in the manifest).
        min_ios: Core ML targets' minimum deployment target (iOS 15 to 18; recorded in the manifest).
        via: Alternative routes to prefer where they reach a target, for example ``["litert-torch"]``.
        report: Write ``report.html`` (the table, the choices and plots; no latency run) into the bundle.
        budget: For ``-auto`` targets: what the chosen precision must keep (default: at most 1 point of
            top-1 accuracy with labels, else top-1 agreement 0.99, else relative error 0.05).
        progress: Called with a short message at each step.
        input_shapes: Fixed shapes for inputs with dynamic dimensions, by input name, for converters that
            need static shapes (onnx2tf); recorded in the artifacts' inputs.
        isolate: Convert each target family in a worker process, so that a converter's crash fails only
            its target (default: for model files; objects are converted in this process).

    Raises:
        PartialConversionError: Some targets failed and ``keep_partial`` is false; the bundle was
            written with the targets that succeeded and records the failures (``.result``).
        UserError: Any other problem the user can fix (bad model or calibration, unknown target, no
            route, missing extra, every target failing); nothing is written then.
    """
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    plain, auto_families = auto.expand(list(targets))
    infos = resolve_targets(plain)
    candidates = {c for f in auto_families for c in auto.CANDIDATES[f]} - {t for t in targets if not t.endswith("-auto")}
    passes = usable_passes(tuple(via))
    if Path(out).exists() and not overwrite:
        BundleWriter(out)  # raises OutputExistsError before any work
    say("loading the source model")
    with captured_output():  # frameworks print banners on import; errors still raise
        source = load_source(model, example_inputs)
    routes = {t.id: plan(source.kind, t, passes) for t in infos}
    with captured_output():  # importing TensorFlow prints C++ banners; the checks below raise clear errors
        for route in routes.values():  # every dependency is checked before the first pass runs
            for step in route:
                for module in step.modules:
                    require(module, purpose=f"run the {step.name} conversion pass")
    samples = (load_calibration(calibration, source.inputs, labels_key=labels_key)
               if calibration is not None else generate_samples(source.inputs))
    say(f"running the source model on {samples.count} samples")
    reference = run_batched(source.run, samples.inputs, source.inputs)

    with tempfile.TemporaryDirectory(prefix="edgekit-") as tmp, BundleWriter(out, overwrite=overwrite) as writer:
        options = Options(int8_io=int8_io, allow_flex=allow_flex, min_ios=min_ios,
                          input_shapes=_checked_shapes(input_shapes or {}, source))
        accept = {t.id for t in infos if accept_parity_failure or t.id in candidates}
        measure = {t for t in candidates}
        if isolate is None:
            isolate = isinstance(model, (str, Path))
        outcomes = (_build_isolated(model, infos, via, options, accept, measure, Path(tmp), writer.staging, samples,
                                    reference, say) if isolate else
                    _build_in_process(infos, routes, options, accept, measure, Path(tmp), writer.staging, source,
                                      samples, reference, say))
        artifacts: list[Artifact] = []
        failures: list[tuple[Failure, UserError]] = []
        candidate_failures: dict[str, str] = {}
        for outcome in outcomes:
            if outcome.error is None:
                artifacts.extend(outcome.artifacts)
                continue
            remove_target_files(writer.staging, TARGETS[outcome.target])  # a crashed worker's partial files
            if outcome.target in candidates:  # a candidate that cannot be built is only passed over
                candidate_failures[outcome.target] = outcome.error
                say(f"{outcome.target}: candidate failed ({outcome.kind})")
                continue
            log.warning("target %s failed: %s", outcome.target, outcome.error)
            say(f"{outcome.target}: failed ({outcome.kind})")
            tried = tuple(step.name for step in routes[outcome.target])
            error = _as_user_error(outcome)
            failures.append((Failure(outcome.target, outcome.error, kind=outcome.kind, route=tried), error))
        if failures and not artifacts:
            if len(failures) == 1:
                raise failures[0][1]
            first = failures[0][1]
            raise type(first)(" | ".join(f"{f.target}: {f.error}" for f, _ in failures))
        artifacts = _with_size_ratios(artifacts)
        selections = []
        if auto_families:
            has_labels = samples.labels is not None
            chosen_budget = budget or auto.Budget()
            if chosen_budget.max_accuracy_drop is None and chosen_budget.min_agreement is None and \
                    chosen_budget.max_error is None and has_labels:  # the default budget: 1 point of top-1
                chosen_budget = replace(chosen_budget, max_accuracy_drop=1.0)
            keep = {a.target for a in artifacts if a.target not in candidates}
            for family in auto_families:
                say(f"{family}-auto: choosing among {len(auto.CANDIDATES[family])} candidates")
                chosen, selection = auto.select(family, artifacts, candidate_failures, chosen_budget, has_labels,
                                                _latency_probe())
                selections.append(selection)
                if chosen is None:
                    failures.append((Failure(f"{family}-auto", selection.reason, kind="BudgetError"),
                                     UserError(selection.reason)))
                else:
                    keep.add(chosen.target)
            artifacts = [replace(a, extra={**a.extra, "chosen_by": f"{TARGETS[a.target].family}-auto"})
                         if a.target in candidates else a for a in auto.discard(writer.staging, artifacts, keep)]
            if not artifacts:
                raise failures[-1][1]
        reference_info = _write_reference(writer.staging, samples, reference, source)
        manifest = Manifest(
            name=name or _default_name(model, source),
            version=version,
            created_by=f"edgekit {__version__}",
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            source=source.info,
            inputs=source.inputs,
            outputs=source.outputs,
            calibration=samples.info,
            reference=reference_info,
            artifacts=tuple(artifacts),
            failures=tuple(f for f, _ in failures) or None,
            selections=tuple(selections) or None,
        )
        if report:
            from edgekit.report import REPORT_NAME, render

            (writer.staging / REPORT_NAME).write_text(render(manifest), encoding="utf-8")
        say("writing the bundle")
        bundle = writer.commit(manifest)
    result = ConversionResult(bundle, tuple(f for f, _ in failures), time.perf_counter() - started)
    if failures and not keep_partial:
        done = ", ".join(a.target for a in artifacts)
        raise PartialConversionError(
            f"{len(failures)} of {len(infos)} targets failed ("
            + "; ".join(f"{f.target}: {f.error}" for f, _ in failures)
            + f"). The bundle at {bundle.path} holds the targets that succeeded ({done}) and records the "
            "failures; pass --keep-partial to accept partial results with exit code 0", result)
    return result


def _checked_shapes(shapes: dict[str, tuple[int, ...]], source: Source) -> dict[str, tuple[int, ...]]:
    """``input_shapes`` checked against the source's inputs: known names, same rank, fixed dims kept.

    Raises:
        CalibrationError: An unknown input, another rank, or a size that contradicts a fixed dimension.
    """
    from edgekit.errors import CalibrationError

    specs = {s.name: s for s in source.inputs}
    for name, dims in shapes.items():
        spec = specs.get(name)
        if spec is None:
            raise CalibrationError(f"--input-shape names {name!r}, which is not an input of the model "
                                   f"(its inputs: {', '.join(specs)})")
        if len(dims) != len(spec.shape) or any(isinstance(d, int) and d >= 0 and d != v
                                               for d, v in zip(spec.shape, dims, strict=True)):
            raise CalibrationError(f"--input-shape {name}:{','.join(map(str, dims))} does not fit the input's shape "
                                   f"{list(spec.shape)}: give one size per dimension, keeping the fixed ones")
    return dict(shapes)


def _default_name(model: Any, source: Source) -> str:
    raw = Path(model).stem if isinstance(model, (str, Path)) else type(model).__name__
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in raw).lstrip("._-")
    return cleaned or source.kind.replace(".", "-")


def _build_isolated(model: Any, infos: list[TargetInfo], via: Sequence[str], options: Options, accept: set[str],
                    measure: set[str], tmp: Path, staging: Path, samples: Samples, reference: dict[str, np.ndarray],
                    say: Progress) -> list[Outcome]:
    """Each target family in worker processes (converters/isolation.py): a crash fails one target."""
    from edgekit.converters.isolation import Job, run_family

    families: dict[str, list[str]] = {}
    for t in infos:
        families.setdefault(t.family, []).append(t.id)
    outcomes: dict[str, Outcome] = {}
    for family, ids in families.items():
        job = Job(model=str(Path(model).resolve()), targets=_fp32_first(ids), via=list(via), options=dataclasses.asdict(options),
                  accept_parity_failure=sorted(accept & set(ids)), measure_latency=sorted(measure & set(ids)),
                  staging=str(staging), has_calibration=samples.info is not None, single=samples.single)
        for outcome in run_family(job, tmp / f"worker-{family}", samples.inputs, samples.labels, reference, say):
            outcomes[outcome.target] = outcome
    return [outcomes[t.id] for t in infos]


def _build_in_process(infos: list[TargetInfo], routes: dict[str, list[Any]], options: Options, accept: set[str],
                      measure: set[str], tmp: Path, staging: Path, source: Source, samples: Samples,
                      reference: dict[str, np.ndarray], say: Progress) -> list[Outcome]:
    """Every target in this process (model objects, which a worker cannot load again)."""
    from edgekit.converters.isolation import build_all

    ctx = PassContext(tmp, source.inputs, source.outputs, samples.inputs,
                      has_calibration=samples.info is not None, example_inputs=source.example_inputs, options=options)
    cache = RouteCache(source)
    by_id = {t.id: t for t in infos}
    outcomes: list[Outcome] = []

    def build(tid: str) -> list[Artifact]:
        target = by_id[tid]
        made = build_target(target, [routes[tid], *fallback_routes(source.kind, target, routes[tid])], cache, ctx,
                            staging, source, samples, reference, tid in accept, say)
        return with_latency(made, staging) if tid in measure else made

    build_all(_fp32_first([t.id for t in infos]), build=build, record=outcomes.append)
    order = {t.id: i for i, t in enumerate(infos)}
    return sorted(outcomes, key=lambda o: order[o.target])


def _fp32_first(ids: list[str]) -> list[str]:
    """fp32 targets first: a route whose fp32 artifact fails parity is then skipped by the family's others."""
    return sorted(ids, key=lambda t: TARGETS[t].precision != "fp32")


def _as_user_error(outcome: Outcome) -> UserError:
    """The outcome's error as the edgekit error class it was (ConversionError for anything else)."""
    import edgekit.errors as errors

    cls = getattr(errors, outcome.kind or "", None)
    if isinstance(cls, type) and issubclass(cls, UserError) and cls is not errors.MissingDependencyError:
        return cls(outcome.error)
    return ConversionError(outcome.error or "")


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
            if isinstance(exc, ParityError) and target.precision == "fp32":  # this route's graph is wrong
                cache.bad[names[:-1]] = f"its fp32 artifact failed parity for {target.id}"
            elif isinstance(exc, ParityError) and i + 1 < len(routes) and \
                    [s.name for s in routes[i + 1][:-1]] == list(names[:-1]):
                pass  # the next route differs only in the precision step (mixed float16): worth a try
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


def judged_as_given(target: TargetInfo, source: Source) -> TargetInfo:
    """The target with the tolerance its artifacts are held to against this source.

    The source is run with ONNX's exact semantics (no graph optimizations), which for an already
    quantized model means float arithmetic around its Quantize/DequantizeLinear nodes; any runtime's
    int8 kernels round differently. So artifacts of a quantized source, which keep its quantized
    weights whatever their target's precision, are held to the int8 tolerance at least.
    """
    if not source.info.extra.get("quantized"):
        return target
    int8 = TARGETS["onnx-web-int8"].tolerance
    tolerance = Tolerance(
        max_rel_error=max(target.tolerance.max_rel_error, int8.max_rel_error),
        min_top1_agreement=min(t for t in (target.tolerance.min_top1_agreement, int8.min_top1_agreement)
                               if t is not None))
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

    made = [_finish(target, target.format, value.file, staging / f"{target.id}{target.suffix}", steps, seconds,
                    value, source, samples, reference, accept_parity_failure, say)]

    subset, subset_reference = _leading_samples(samples, reference, source, VARIANT_SAMPLES)
    for fmt in target.variants:
        impl, suffix = VARIANTS[fmt]
        module, _, func = impl.partition(":")
        dst = staging / f"{target.id}{suffix}"
        start = time.perf_counter()
        try:
            getattr(importlib.import_module(module), func)(value.file, dst)
            variant = _finish(target, fmt, dst, dst, (*steps, f"to-{fmt}"),
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


def _write_reference(staging: Path, samples: Samples, reference: dict[str, np.ndarray],
                     source: Source) -> ReferenceInfo:
    """Write the first few samples and the source's outputs on them as ``reference.npz``."""
    per_sample = sum(v.nbytes if samples.single or not v.ndim else v[:1].nbytes for v in samples.inputs.values()) or 1
    limit = max(1, min(REFERENCE_SAMPLES, REFERENCE_MAX_BYTES // per_sample))
    subset, outputs = _leading_samples(samples, reference, source, limit)
    arrays = {f"in.{k}": v for k, v in subset.inputs.items()}
    arrays.update({f"out.{k}": v for k, v in outputs.items()})
    path = staging / REFERENCE_NAME
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    digest, size = hash_path(path)
    return ReferenceInfo(file=REFERENCE_NAME, sha256=digest, size_bytes=size, n_samples=subset.count)


def _leading_samples(samples: Samples, reference: dict[str, np.ndarray], source: Source,
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
    base_load = _load_seconds(base.format, staging / base.file)
    variant_load = _load_seconds(variant.format, staging / variant.file)
    if variant_load < base_load:
        reasons.append(f"loads in {variant_load * 1e3:.1f} ms vs {base_load * 1e3:.1f} ms")
    return "; ".join(reasons)


def _finish(
    target: TargetInfo, fmt: str, produced: Path, dst: Path, steps: tuple[str, ...], seconds: float,
    value: Value, source: Source, samples: Samples, reference: dict[str, np.ndarray],
    accept_parity_failure: bool, say: Progress,
) -> Artifact:
    """Place one artifact in the bundle, run it on the samples in the source's terms and measure parity.

    The artifact's I/O as the runtime reads it, plus what the pass says of each tensor (source name,
    layout transpose), goes into the manifest; the session that validates it applies exactly that
    record, as an app's session will.
    """
    if produced != dst:
        if produced.is_dir():
            shutil.copytree(produced, dst)
        else:
            shutil.copyfile(produced, dst)
    notes = value.notes
    parity = accuracy = None
    unverified = None
    checks: tuple[RuntimeCheck, ...] | None = None
    flex: list[str] = notes.get("flex_ops") or []
    raw = None
    if flex:
        unverified = (f"uses TensorFlow Select ops ({', '.join(flex)}), which ai-edge-litert cannot run without the "
                      "Flex delegate; parity was not measured")
    else:
        try:
            with captured_output():  # LiteRT announces its delegate on stderr
                raw = _open(fmt, dst)
        except NotVerifiableError as exc:
            unverified = str(exc)
    inputs = describe_io(raw.inputs, {s.name: s for s in value.inputs or ()}) if raw else value.inputs
    outputs = describe_io(raw.outputs, {s.name: s for s in value.outputs or ()}) if raw else value.outputs
    if raw is None:
        say(f"{target.id}: not validated: {unverified}")
    else:
        say(f"{target.id}: validating the {fmt} artifact on {samples.count} samples")
        passed_over = [f"{a.provider}: {a.reason}" for a in raw.attempts if not a.ok]
        actual, raw = _run_with_fallback(fmt, dst, raw, inputs, outputs, samples, passed_over)
        notes = {**notes, "validated_on": raw.provider, **({"passed_over": passed_over} if passed_over else {})}
        parity, accuracy = compare(reference, actual, source.outputs, target.tolerance, samples.labels)
        parity = replace(parity, runtime=_runtime_label(fmt, raw.provider), host=describe_cpu())
        if not parity.passed:
            if not accept_parity_failure:
                raise ParityError(describe_failure(f"{target.id} ({fmt})", parity))
            parity = replace(parity, accepted=True)
        if fmt in WEB_FORMATS:
            checks = (_check_on_web(target, fmt, dst, inputs, outputs, source, samples, reference,
                                    accept_parity_failure, say),)
        if fmt == "mlpackage":
            notes = {**notes, **_coreml_on_this_mac(dst, inputs, outputs, source, samples, reference, target)}
    digest, size = hash_path(dst)
    return Artifact(
        target=target.id, format=fmt, precision=target.precision, file=dst.name, size_bytes=size, sha256=digest,
        inputs=inputs, outputs=outputs, route=steps, parity=parity, accuracy=accuracy,
        convert_seconds=round(seconds, 3), unverified=unverified, runtime_checks=checks,
        extra={"conversion": dict(notes)} if notes else {},
    )


def _run_with_fallback(fmt: str, path: Path, raw: Any, inputs: Any, outputs: Any, samples: Samples,
                       passed_over: list[str]) -> tuple[dict[str, np.ndarray], Any]:
    """Run the samples; when the kernels that loaded fail at run time (XNNPACK failing to prepare a
    reshaped graph), open the artifact again on the next validation provider and run there."""
    providers = list(VALIDATION_PROVIDERS.get(fmt, ()))
    while True:
        session = adapt(raw, inputs, outputs)
        try:
            return run_batched(session.run, samples.inputs, session.inputs), raw
        except Exception as exc:
            later = providers[providers.index(raw.provider) + 1:] if raw.provider in providers else []
            if not later:
                raise
            passed_over.append(f"{raw.provider}: failed at run time: {type(exc).__name__}: {str(exc)[:300]}")
            log.info("%s: %s failed at run time (%s); retrying on %s", path.name, raw.provider, exc, later[0])
            with captured_output():
                module, _, cls = RUNTIME_OF_FORMAT[fmt].partition(":")
                raw = getattr(importlib.import_module(module), cls)().open(path, providers=tuple(later))


def _runtime_label(fmt: str, provider: str) -> str:
    """The validating runtime, its version and the provider that ran, e.g. ``onnxruntime 1.32.0 CPUExecutionProvider``."""
    from importlib.metadata import PackageNotFoundError, version

    package = {"onnx": "onnxruntime", "ort": "onnxruntime", "tflite": "ai-edge-litert"}.get(fmt)
    if package is None:
        return f"edgekit MIL interpreter {__version__} ({provider})" if fmt == "mlpackage" else provider
    try:
        return f"{package} {version(package)} {provider}"
    except PackageNotFoundError:  # tflite_runtime, the fallback import
        return f"{package} {provider}"


def _check_on_web(target: TargetInfo, fmt: str, path: Path, inputs: Any, outputs: Any, source: Source,
                  samples: Samples, reference: dict[str, np.ndarray], accept_parity_failure: bool,
                  say: Progress) -> RuntimeCheck:
    """Run an onnx-web artifact on onnxruntime-web (wasm, Node.js) too: what browsers will compute."""
    from edgekit.converters import ortweb

    say(f"{target.id}: checking the {fmt} artifact on onnxruntime-web (wasm) on {samples.count} samples")
    check = ortweb.check(path, inputs, outputs, samples.inputs, reference, source.outputs, target.tolerance,
                         samples.labels)
    if check.parity is None:
        log.warning("%s (%s): %s", target.id, fmt, check.not_checked)
        return check
    if not check.parity.passed:
        if not accept_parity_failure:
            raise ParityError(describe_failure(f"{target.id} ({fmt}) on {check.runtime}", check.parity))
        check = replace(check, parity=replace(check.parity, accepted=True))
    return check


def with_latency(artifacts: list[Artifact], staging: Path) -> list[Artifact]:
    """Record each artifact's median batch-1 latency where it will run, for the -auto choice (``extra.latency``).

    onnx-web artifacts take their figure from onnxruntime-web (wasm), measured when they were
    checked there: int8 and fp16 rank differently in browsers than in native onnxruntime. Other
    formats (and onnx-web where onnxruntime-web is missing) are timed here on their validating
    runtime. Artifacts that cannot run on this host get no figure.
    """
    from edgekit.runtimes import host_formats
    from edgekit.runtimes.bench import bench_session

    out = []
    for art in artifacts:
        web = next((c for c in art.runtime_checks or () if c.latency_p50_ms is not None), None)
        if web is not None:
            host = web.parity.host if web.parity else ""
            figure: dict[str, Any] | None = {"p50_ms": web.latency_p50_ms, "runtime": f"{web.runtime} ({host})"}
        elif host_formats().get(art.format) != "" or art.format not in VALIDATION_PROVIDERS:
            figure = None
        else:
            session, _ = bench_session(
                lambda art=art: adapt(_open(art.format, staging / art.file), art.inputs, art.outputs),
                runs=auto.LATENCY_RUNS, warmup=5, batch=1)
            figure = {"p50_ms": round(session.stats().p50_ms, 4),
                      "runtime": f"{_runtime_label(art.format, session.provider)} ({describe_cpu()})"}
        out.append(replace(art, extra={**art.extra, "latency": figure}) if figure else art)
    return out


def _latency_probe() -> Callable[[Artifact], tuple[float, str] | None]:
    """The latency figure each candidate got while it was converted (:func:`with_latency`), if any."""

    def probe(art: Artifact) -> tuple[float, str] | None:
        figure = art.extra.get("latency")
        return (float(figure["p50_ms"]), str(figure["runtime"])) if figure else None

    return probe


def _coreml_on_this_mac(path: Path, inputs: Any, outputs: Any, source: Source, samples: Samples,
                        reference: dict[str, np.ndarray], target: TargetInfo) -> dict[str, Any]:
    """On macOS, Core ML's own prediction as well as the interpreter's: recorded as ``macos_parity``."""
    from edgekit.runtimes.coreml import CoreMlRuntime, host_can_run_coreml

    if not host_can_run_coreml():
        return {}
    try:
        session = adapt(CoreMlRuntime().open(path), inputs, outputs)
        actual = run_batched(session.run, samples.inputs, session.inputs)
    except Exception as exc:  # Core ML's own failure is worth recording, not fatal: the interpreter passed
        return {"macos_parity": {"error": f"{type(exc).__name__}: {exc}"}}
    parity, _ = compare(reference, actual, source.outputs, target.tolerance)
    return {"macos_parity": {"max_abs_error": parity.max_abs_error, "top1_agreement": parity.top1_agreement,
                             "passed": parity.passed, "provider": session.provider}}


def _with_size_ratios(artifacts: list[Artifact]) -> list[Artifact]:
    """Fill ``size_ratio``: size over the fp32 artifact of the same format; else keep the ratio to the
    fp32 intermediate that the conversion measured; else, for a format variant whose fp32 copy was not
    kept, the family's fp32 artifact."""
    fp32 = {(a.format, TARGETS[a.target].family): a.size_bytes for a in artifacts if a.precision == "fp32"}
    out = []
    for art in artifacts:
        info = TARGETS[art.target]
        base = fp32.get((art.format, info.family))
        if base is None and art.size_ratio is not None:
            out.append(art)
            continue
        if base is None:
            base = fp32.get((info.format, info.family))
        out.append(replace(art, size_ratio=round(art.size_bytes / base, 4) if base else None))
    return out
