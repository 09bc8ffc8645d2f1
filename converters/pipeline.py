"""``convert``: load the source, plan routes, run passes, validate every artifact, write the bundle."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import edgekit.converters.auto as auto
from edgekit import __version__
from edgekit._console import captured_output
from edgekit._deps import require
from edgekit._files import hash_path
from edgekit.bundle import Artifact, Bundle, BundleWriter, Failure, Manifest, ReferenceInfo
from edgekit.converters.artifacts import RouteCache, build_target, leading_samples, remove_target_files
from edgekit.converters.calibration import Samples, generate_samples, load_calibration
from edgekit.converters.isolation import Outcome, contains_tempfiles
from edgekit.converters.options import Budget, ConvertOptions
from edgekit.converters.passes import PassContext
from edgekit.converters.planner import ordered_routes, plan, resolve_targets, usable_passes
from edgekit.converters.registry import TARGETS, TargetInfo
from edgekit.converters.sources import Source, load_source, with_computed_outputs, with_output_kinds
from edgekit.converters.validation import Progress, with_latency
from edgekit.errors import (
    ConversionError,
    PartialConversionError,
    UserError,
)
from edgekit.parity import run_batched

log = logging.getLogger(__name__)
# Reference samples kept in the bundle for on-device smoke tests: a few, and small.
REFERENCE_SAMPLES = 16
REPORT_RUNS = 20  # timed runs per artifact for the report convert writes (edgekit report takes more)
REFERENCE_MAX_BYTES = 2 * 1024 * 1024
REFERENCE_NAME = "reference.npz"


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert` produced: the written bundle and the targets that failed (if kept)."""

    bundle: Bundle
    failures: tuple[Failure, ...]
    seconds: float


@contains_tempfiles
def convert(
    model: Any,
    targets: Sequence[str],
    *,
    out: str | Path,
    options: ConvertOptions | None = None,
    example_inputs: tuple[Any, ...] | None = None,
    progress: Progress | None = None,
    **choices: Any,
) -> ConversionResult:
    """Convert ``model`` to each target, validate every artifact and write one bundle to ``out``.

    Args:
        model: A model file path (.onnx, .pt2, .keras) or a torch.nn.Module / keras.Model object.
        targets: Target ids, for example ``["onnx-web", "onnx-web-int8"]``.
        out: The bundle directory to create; it is written atomically.
        options: How to convert (:class:`~edgekit.converters.options.ConvertOptions`: calibration data,
            name and version, budgets, Core ML's minimum iOS, ...); the defaults when omitted.
        example_inputs: Example tensors, required for a torch.nn.Module.
        progress: Called with a short message at each step.
        **choices: Fields of :class:`~edgekit.converters.options.ConvertOptions` by name, replacing those of
            ``options``: ``convert(m, ["tflite"], out=o, calibration="cal.npz", min_ios=17)``.

    Raises:
        PartialConversionError: Some targets failed and ``keep_partial`` is false; the bundle was
            written with the targets that succeeded and records the failures (``.result``).
        UserError: Any other problem the user can fix (bad model or calibration, unknown target, no
            route, missing extra, every target failing); nothing is written then.
        TypeError: A keyword that is not an option.
    """
    opts = ConvertOptions.from_choices(options, **choices)
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    plain, auto_families = auto.expand(list(targets))
    infos = resolve_targets(plain)
    candidates = {c for f in auto_families for c in auto.CANDIDATES[f]} - {t for t in targets if not t.endswith("-auto")}
    passes = usable_passes(opts.via)
    BundleWriter(out, overwrite=opts.overwrite)  # raises OutputExistsError before any work
    say("loading the source model")
    with captured_output():  # frameworks print banners on import; errors still raise
        source = load_source(model, example_inputs)
    routes = {t.id: plan(source.kind, t, passes) for t in infos}
    with captured_output():  # importing TensorFlow prints C++ banners; the checks below raise clear errors
        for route in routes.values():  # every dependency is checked before the first pass runs
            for step in route:
                for module in step.modules:
                    require(module, purpose=f"run the {step.name} conversion pass")
    samples = (load_calibration(opts.calibration, source.inputs, labels_key=opts.labels_key)
               if opts.calibration is not None else generate_samples(source.inputs))
    budget = opts.budget
    if budget is not None and not auto_families:
        raise UserError("the budget flags (--max-accuracy-drop, --min-agreement, --max-error, --optimize) choose "
                        "among -auto targets' candidates; add an -auto target, e.g. --target onnx-web-auto")
    if budget is not None and budget.max_accuracy_drop is not None and samples.labels is None:
        raise UserError(f"--max-accuracy-drop measures top-1 accuracy against labels, and the calibration data has "
                        f"none; store integer labels as '{opts.labels_key}' in the .npz, or use --min-agreement instead")
    say(f"running the source model on {samples.count} samples")
    reference = run_batched(source.run, samples.inputs, source.inputs)
    source = with_computed_outputs(source, reference, single=samples.single, stacked=samples.stacked)
    source = with_output_kinds(source, reference, opts.output_kinds)

    with tempfile.TemporaryDirectory(prefix="edgekit-") as tmp, BundleWriter(out, overwrite=opts.overwrite) as writer:
        _check_shapes(opts.input_shapes, source)
        accept = {t.id for t in infos if opts.accept_parity_failure or t.id in candidates}
        measure = {t for t in candidates}
        isolate = opts.isolate if opts.isolate is not None else isinstance(model, (str, Path))
        outcomes = (_build_isolated(model, infos, opts, accept, measure, Path(tmp), writer.staging, samples,
                                    reference, say, {o.name: o.kind for o in source.outputs if o.kind}) if isolate else
                    _build_in_process(infos, routes, opts, accept, measure, Path(tmp), writer.staging, source,
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
            chosen_budget = (budget or Budget()).for_samples(has_labels)
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
            name=opts.name or _default_name(model, source),
            version=opts.version,
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
        say("writing the bundle")
        bundle = writer.commit(manifest)
    if opts.report:
        from edgekit.report import write_report
        from edgekit.runtimes.bench import report_latency

        say("timing each artifact on this host for report.html")
        write_report(bundle.path, latency=report_latency(bundle.path, runs=REPORT_RUNS, warmup=3))
    result = ConversionResult(bundle, tuple(f for f, _ in failures), time.perf_counter() - started)
    if failures and not opts.keep_partial:
        done = ", ".join(a.target for a in artifacts)
        raise PartialConversionError(
            f"{len(failures)} of {len(infos)} targets failed ("
            + "; ".join(f"{f.target}: {f.error}" for f, _ in failures)
            + f"). The bundle at {bundle.path} holds the targets that succeeded ({done}) and records the "
            "failures; pass --keep-partial to accept partial results with exit code 0", result)
    return result


def _check_shapes(shapes: Mapping[str, tuple[int, ...]], source: Source) -> None:
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


def _default_name(model: Any, source: Source) -> str:
    raw = Path(model).stem if isinstance(model, (str, Path)) else type(model).__name__
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in raw).lstrip("._-")
    return cleaned or source.kind.replace(".", "-")


def _build_isolated(model: Any, infos: list[TargetInfo], options: ConvertOptions, accept: set[str],
                    measure: set[str], tmp: Path, staging: Path, samples: Samples, reference: dict[str, np.ndarray],
                    say: Progress, kinds: dict[str, str]) -> list[Outcome]:
    """Each target family in worker processes (converters/isolation.py): a crash fails one target."""
    from edgekit.converters.isolation import Job, run_family

    families: dict[str, list[str]] = {}
    for t in infos:
        families.setdefault(t.family, []).append(t.id)
    outcomes: dict[str, Outcome] = {}
    for family, ids in families.items():
        job = Job(model=str(Path(model).resolve()), targets=_fp32_first(ids), options=options.to_dict(),
                  accept_parity_failure=sorted(accept & set(ids)), measure_latency=sorted(measure & set(ids)),
                  staging=str(staging), has_calibration=samples.info is not None, single=samples.single,
                  stacked=samples.stacked, output_kinds=kinds)
        for outcome in run_family(job, tmp / f"worker-{family}", samples.inputs, samples.labels, reference, say):
            outcomes[outcome.target] = outcome
    return [outcomes[t.id] for t in infos]


def _build_in_process(infos: list[TargetInfo], routes: dict[str, list[Any]], options: ConvertOptions, accept: set[str],
                      measure: set[str], tmp: Path, staging: Path, source: Source, samples: Samples,
                      reference: dict[str, np.ndarray], say: Progress) -> list[Outcome]:
    """Every target in this process (model objects, which a worker cannot load again)."""
    from edgekit.converters.isolation import build_all

    ctx = PassContext(tmp, source.inputs, source.outputs, samples.inputs,
                      has_calibration=samples.info is not None, example_inputs=source.example_inputs, options=options,
                      quantized_source=bool(source.info.extra.get("quantized")), reference=reference)
    cache = RouteCache(source)
    by_id = {t.id: t for t in infos}
    outcomes: list[Outcome] = []

    def build(tid: str) -> list[Artifact]:
        target = by_id[tid]
        made = build_target(target, ordered_routes(source.kind, target, routes[tid]), cache, ctx,
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


def _write_reference(staging: Path, samples: Samples, reference: dict[str, np.ndarray],
                     source: Source) -> ReferenceInfo:
    """Write the first few samples and the source's outputs on them as ``reference.npz``."""
    per_sample = sum(v.nbytes if samples.single or not v.ndim else v[:1].nbytes for v in samples.inputs.values()) or 1
    limit = max(1, min(REFERENCE_SAMPLES, REFERENCE_MAX_BYTES // per_sample))
    subset, outputs = leading_samples(samples, reference, source, limit)
    arrays = {f"in.{k}": v for k, v in subset.inputs.items()}
    arrays.update({f"out.{k}": v for k, v in outputs.items()})
    path = staging / REFERENCE_NAME
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    digest, size = hash_path(path)
    return ReferenceInfo(file=REFERENCE_NAME, sha256=digest, size_bytes=size, n_samples=subset.count)


def _latency_probe() -> Callable[[Artifact], tuple[float, str] | None]:
    """The latency figure each candidate got while it was converted (:func:`with_latency`), if any."""

    def probe(art: Artifact) -> tuple[float, str] | None:
        figure = art.extra.get("latency")
        return (float(figure["p50_ms"]), str(figure["runtime"])) if figure else None

    return probe


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
