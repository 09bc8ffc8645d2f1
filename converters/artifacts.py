"""One target: its routes, passes and artifacts, validated on the runtimes that will run them.

:func:`build_target` tries a target's routes in order (planner.fallback_routes) and, on the first
that works, places the artifact (and its format variants) in the bundle being built, runs it on the
samples in the source's terms (native runtime, then onnxruntime-web for web formats) and describes
it for the manifest. ``convert`` calls it in a worker process per family (isolation.py) or in its
own process.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import edgekit.converters.auto as auto
from edgekit import __version__
from edgekit._console import captured_output
from edgekit._files import hash_path
from edgekit._host import describe_cpu
from edgekit.bundle import Artifact, RuntimeCheck, TensorSpec
from edgekit.converters.calibration import Samples
from edgekit.converters.passes import PassContext, Value, load_pass
from edgekit.converters.registry import TARGETS, VARIANTS, TargetInfo
from edgekit.converters.sources import Source
from edgekit.errors import (
    ConversionError,
    MissingDependencyError,
    NotVerifiableError,
    OutputExistsError,
    ParityError,
    UserError,
    WrongGraphError,
)
from edgekit.formats import FORMATS
from edgekit.parity import Tolerance, attention_mask, compare, describe_failure, run_batched
from edgekit.runtimes.adapt import adapt, describe_io

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
LOAD_TIMING_REPEATS = 3
# A format variant holds the same graph as its main artifact, so its parity is measured on a leading
# subset of the samples (recorded as n_samples): a full second pass over large calibration sets
# would cost as much as validating the target again.
VARIANT_SAMPLES = 64
# Validation runs on the CPU providers, so parity does not depend on the converting machine's GPU.
VALIDATION_PROVIDERS = {"onnx": ("CPUExecutionProvider",), "ort": ("CPUExecutionProvider",), "tflite": ("XNNPACK", "CPU")}
# Formats browsers run: checked on onnxruntime-web (wasm, under Node.js) as well (converters/ortweb.py).
WEB_FORMATS = ("onnx", "ort")


EIGHT_BIT = ("int8", "dynamic-int8")  # precisions an int8 source's artifacts may not grow beyond it in


def _open(fmt: str, path: Path, precision: str = "") -> Any:
    from edgekit.runtimes import precision_option

    module, _, cls = FORMATS[fmt].checker.partition(":")
    return getattr(importlib.import_module(module), cls)().open(path, providers=VALIDATION_PROVIDERS.get(fmt),
                                                                **precision_option(fmt, precision))


def _load_seconds(fmt: str, path: Path, precision: str = "") -> float:
    return float(statistics.median(_open(fmt, path, precision).load_seconds for _ in range(LOAD_TIMING_REPEATS)))


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
            elif isinstance(exc, ParityError) and any(_prefix(r) == names[:-1] for r in routes[i + 1:]):
                # routes on the same graph with another precision step (mixed float16) come next
                later = routes[i + 1:]
                routes[i + 1:] = [r for r in later if _prefix(r) == names[:-1]] + \
                    [r for r in later if _prefix(r) != names[:-1]]
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

    made = [_finish(target, target.format, value.file, staging / f"{target.id}{target.suffix}", steps, seconds,
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
    base_load = _load_seconds(base.format, staging / base.file, base.precision)
    variant_load = _load_seconds(variant.format, staging / variant.file, variant.precision)
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
                raw = _open(fmt, dst, target.precision)
        except NotVerifiableError as exc:
            unverified = str(exc)
    inputs = describe_io(raw.inputs, {s.name: s for s in value.inputs or ()}) if raw else value.inputs
    outputs = describe_io(raw.outputs, {s.name: s for s in value.outputs or ()}) if raw else value.outputs
    if raw is None:
        say(f"{target.id}: not validated: {unverified}")
    else:
        stage = f"{target.id}: validating the {fmt} artifact on {samples.count} samples"
        say(stage)
        passed_over = [f"{a.provider}: {a.reason}" for a in raw.attempts if not a.ok]
        actual, raw = _run_with_fallback(fmt, dst, raw, inputs, outputs, samples, passed_over, source.inputs,
                                         counting(say, stage, samples))
        notes = {**notes, "validated_on": raw.provider, **({"passed_over": passed_over} if passed_over else {})}
        parity, accuracy = compare(reference, actual, source.outputs, target.tolerance, samples.labels,
                                   mask=attention_mask(samples.inputs, source.inputs))
        parity = replace(parity, runtime=_runtime_label(fmt, raw.provider), host=describe_cpu())
        emulated = notes.get("float16_emulated") or {}
        if parity.passed and emulated.get("passed") is False:  # float16 as a GPU stores it drifts (onnx_web.py)
            if not accept_parity_failure:
                raise ParityError(emulated["failure"])
            parity = replace(parity, passed=False)
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


def counting(say: Callable[[str], None], stage: str, samples: Samples) -> Callable[[Any], Any]:
    """Wrap a run function so that each chunk it runs says ``STAGE [done/total]`` (samples): the progress
    protocol a terminal draws as a bar (edgekit._progress)."""
    done = [0]

    def wrap(run: Any) -> Any:
        def counted(feeds: dict[str, np.ndarray]) -> Any:
            out = run(feeds)
            first = 1 if samples.single or samples.stacked else next(
                (int(np.shape(v)[0]) for v in feeds.values() if np.ndim(v)), 1)
            done[0] = min(samples.count, done[0] + first)
            say(f"{stage} [{done[0]}/{samples.count}]")
            return out
        return counted

    return wrap


def _run_with_fallback(fmt: str, path: Path, raw: Any, inputs: Any, outputs: Any, samples: Samples,
                       passed_over: list[str], like: tuple[TensorSpec, ...],
                       step: Callable[[Any], Any] | None = None) -> tuple[dict[str, np.ndarray], Any]:
    """Run the samples (each chunk through ``step``, which counts them); when the kernels that loaded fail
    at run time (XNNPACK failing to prepare a reshaped graph), open the artifact again on the next
    validation provider and run there."""
    providers = list(VALIDATION_PROVIDERS.get(fmt, ()))
    while True:
        session = adapt(raw, inputs, outputs)
        try:
            return run_batched(step(session.run) if step else session.run, samples.inputs, session.inputs, like), raw
        except Exception as exc:
            later = providers[providers.index(raw.provider) + 1:] if raw.provider in providers else []
            if not later:
                raise
            passed_over.append(f"{raw.provider}: failed at run time: {type(exc).__name__}: {str(exc)[:300]}")
            log.info("%s: %s failed at run time (%s); retrying on %s", path.name, raw.provider, exc, later[0])
            with captured_output():
                module, _, cls = FORMATS[fmt].checker.partition(":")
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
                         samples.labels, source.inputs)
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
                lambda art=art: adapt(_open(art.format, staging / art.file, art.precision), art.inputs, art.outputs),
                runs=auto.LATENCY_RUNS, warmup=5, batch=1)
            figure = {"p50_ms": round(session.stats().p50_ms, 4),
                      "runtime": f"{_runtime_label(art.format, session.provider)} ({describe_cpu()})"}
        out.append(replace(art, extra={**art.extra, "latency": figure}) if figure else art)
    return out


def _coreml_on_this_mac(path: Path, inputs: Any, outputs: Any, source: Source, samples: Samples,
                        reference: dict[str, np.ndarray], target: TargetInfo) -> dict[str, Any]:
    """On macOS, Core ML's own prediction as well as the interpreter's: recorded as ``macos_parity``."""
    from edgekit.runtimes.coreml import CoreMlRuntime, host_can_run_coreml

    if not host_can_run_coreml():
        return {}
    try:
        session = adapt(CoreMlRuntime().open(path), inputs, outputs)
        actual = run_batched(session.run, samples.inputs, session.inputs, source.inputs)
    except Exception as exc:  # Core ML's own failure is worth recording, not fatal: the interpreter passed
        return {"macos_parity": {"error": f"{type(exc).__name__}: {exc}"}}
    parity, _ = compare(reference, actual, source.outputs, target.tolerance,
                        mask=attention_mask(samples.inputs, source.inputs))
    return {"macos_parity": {"max_abs_error": parity.max_abs_error, "top1_agreement": parity.top1_agreement,
                             "passed": parity.passed, "provider": session.provider}}
