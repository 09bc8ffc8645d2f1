"""One artifact placed in the bundle and run on the runtimes that will run it: parity, accuracy, the
check on onnxruntime-web for web formats, Core ML's own prediction on macOS, and latency for -auto.

The artifact's I/O as the runtime reads it, plus what the pass says of each tensor (source name,
layout transpose), goes into the manifest; the session that validates it applies exactly that
record, as an app's session will. :mod:`edgekit.converters.artifacts` calls it for each artifact a
route makes.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import statistics
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
from edgekit.converters.passes import Value
from edgekit.converters.registry import TargetInfo
from edgekit.converters.sources import Source
from edgekit.errors import NotVerifiableError, ParityError
from edgekit.formats import FORMATS
from edgekit.parity import attention_mask, compare, describe_failure, run_batched
from edgekit.runtimes.adapt import adapt, describe_io

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
LOAD_TIMING_REPEATS = 3
# Validation runs on the CPU providers, so parity does not depend on the converting machine's GPU.
VALIDATION_PROVIDERS = {"onnx": ("CPUExecutionProvider",), "ort": ("CPUExecutionProvider",), "tflite": ("XNNPACK", "CPU")}
# Formats browsers run: checked on onnxruntime-web (wasm, under Node.js) as well (converters/ortweb.py).
WEB_FORMATS = ("onnx", "ort")



def open_artifact(fmt: str, path: Path, precision: str = "") -> Any:
    from edgekit.runtimes import precision_option

    module, _, cls = FORMATS[fmt].checker.partition(":")
    return getattr(importlib.import_module(module), cls)().open(path, providers=VALIDATION_PROVIDERS.get(fmt),
                                                                **precision_option(fmt, precision))


def load_seconds(fmt: str, path: Path, precision: str = "") -> float:
    return float(statistics.median(open_artifact(fmt, path, precision).load_seconds for _ in range(LOAD_TIMING_REPEATS)))


def place_and_validate(
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
                raw = open_artifact(fmt, dst, target.precision)
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
                lambda art=art: adapt(open_artifact(art.format, staging / art.file, art.precision), art.inputs, art.outputs),
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
