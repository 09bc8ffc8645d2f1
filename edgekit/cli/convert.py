"""``edgekit convert``: a model to a verified bundle, and the table it prints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgekit._files import human_size
from edgekit._progress import LiveProgress
from edgekit.cli._app import _err, _handled, _setup_logging, app, table


def _parity_text(art: Any, n_total: int) -> str:
    p = art.parity
    if p is None:
        return "unverified" if art.unverified else "-"
    return _parity_figures(p, n_total)


def _wasm_text(art: Any, n_total: int) -> str:
    """Parity on onnxruntime-web (wasm), for onnx-web artifacts."""
    check = next((c for c in art.runtime_checks or () if c.runtime.startswith("onnxruntime-web")), None)
    if check is None:
        return "-"
    return _parity_figures(check.parity, n_total) if check.parity else "not checked"


def _parity_figures(p: Any, n_total: int) -> str:
    text = f"max {p.max_abs_error:.2g}"
    if p.top1_agreement is not None:
        text += f", top1 {p.top1_agreement:.3f}"
    if p.n_samples < n_total:
        text += f" (first {p.n_samples})"
    if not p.passed:
        text += " (ACCEPTED)" if p.accepted else " (FAILED)"
    return text


def artifact_table(manifest: Any) -> str:
    """A plain-text table of the bundle's artifacts (what `convert` and `inspect` print)."""
    has_web = any(a.runtime_checks for a in manifest.artifacts)
    rows = [("target", "format", "size", "ratio", "parity", *(("on wasm",) if has_web else ()), "accuracy", "time")]
    n_total = max((a.parity.n_samples for a in manifest.artifacts if a.parity), default=0)
    for a in manifest.artifacts:
        acc = f"{a.accuracy.top1:.3f} (src {a.accuracy.source_top1:.3f})" if a.accuracy else "-"
        wasm = (_wasm_text(a, n_total),) if has_web else ()
        rows.append((a.target, a.format, human_size(a.size_bytes), f"{a.size_ratio:.2f}x" if a.size_ratio else "-",
                     _parity_text(a, n_total), *wasm, acc,
                     f"{a.convert_seconds:.1f}s" if a.convert_seconds is not None else "-"))
    for f in manifest.failures or ():
        rows.append((f.target, "-", "-", "-", f"FAILED: {f.kind or 'error'}", *(("-",) if has_web else ()), "-", "-"))
    return "\n".join([table(rows), *_measured_on(manifest)])


def _measured_on(manifest: Any) -> list[str]:
    """Where the parity figures come from: int8 results depend on the runtime and the CPU."""
    native = sorted({(a.parity.runtime.rsplit(" ", 1)[0], a.parity.host) for a in manifest.artifacts
                     if a.parity and a.parity.runtime and a.parity.host})
    lines = [f"parity: {runtime} on {host}" for runtime, host in native]
    web = sorted({(c.runtime, c.parity.host) for a in manifest.artifacts for c in a.runtime_checks or ()
                  if c.parity and c.parity.host})
    lines += [f"parity on wasm: {runtime} ({host})" for runtime, host in web]
    lines += sorted({f"not checked on onnxruntime-web: {c.not_checked.removeprefix('not checked on onnxruntime-web: ')}"
                     for a in manifest.artifacts for c in a.runtime_checks or () if c.not_checked})
    return ["", *lines] if lines else []


@app.command()
def convert(
    model: Annotated[Path, typer.Argument(help="Model: .onnx, .pt2 (torch.export), .keras, .h5, or a SavedModel dir")],
    target: Annotated[list[str], typer.Option("--target", "-t", help="Target id; repeat for several (see `edgekit targets`)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to create")],
    calibration: Annotated[Path | None, typer.Option(help=".npz with arrays named like the inputs (or 'x'), labels 'y'")] = None,
    name: Annotated[str | None, typer.Option(help="Model name in the bundle (default: file stem)")] = None,
    version: Annotated[str, typer.Option(help="Version string of the bundle")] = "0.1.0",
    labels_key: Annotated[str, typer.Option(help="Array of the calibration file holding integer labels")] = "y",
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists")] = False,
    accept_parity_failure: Annotated[bool, typer.Option(help="Keep artifacts that drift beyond tolerance")] = False,
    keep_partial: Annotated[bool, typer.Option(
        help="Exit 0 when some targets fail (the bundle holds the others either way)")] = False,
    int8_io: Annotated[bool, typer.Option(
        help="tflite-int8: int8 inputs and outputs (scale, zero point in the manifest)")] = False,
    allow_flex: Annotated[bool, typer.Option(
        help="TFLite: accept TensorFlow Select (Flex) ops; adds tens of MB to apps")] = False,
    min_ios: Annotated[int, typer.Option(help="Core ML: minimum iOS version (deployment target)")] = 16,
    max_accuracy_drop: Annotated[float | None, typer.Option(
        help="-auto targets: most points of top-1 accuracy to lose (needs labels; default 1.0)")] = None,
    min_agreement: Annotated[float | None, typer.Option(
        help="-auto targets: least top-1 agreement with the source (default 0.99 without labels)")] = None,
    max_error: Annotated[float | None, typer.Option(
        help="-auto targets: largest relative output error, for regression outputs (default 0.05)")] = None,
    optimize: Annotated[str, typer.Option(
        help="-auto targets: balanced (int8 only if not slower here) or size")] = "balanced",
    via: Annotated[list[str] | None, typer.Option(help="Prefer an alternative route where it applies: litert-torch")] = None,
    input_shape: Annotated[list[str] | None, typer.Option(
        help="Fix an input's dynamic dimensions for converters that need static shapes: NAME:D0,D1,...")] = None,
    output_kind: Annotated[list[str] | None, typer.Option(
        help="How parity judges an output: NAME=embedding|scores|probability|map|exact (default: inferred)")] = None,
    write_report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html into the bundle")] = True,
    isolate: Annotated[bool, typer.Option(
        "--isolate/--no-isolate", help="Convert each target family in a worker process (a converter crash fails "
        "only its target)")] = True,
    json_: Annotated[bool, typer.Option("--json", help="Print the written bundle.json instead of the table")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each pass")] = False,
) -> None:
    """Convert MODEL to each --target, validate every artifact against MODEL, and write one bundle."""
    _setup_logging(verbose)
    with _handled():
        from edgekit.converters import convert as run_convert
        from edgekit.converters.options import ConvertOptions
        from edgekit.errors import PartialConversionError

        options = ConvertOptions.from_flags(
            calibration=calibration, name=name, version=version, labels_key=labels_key, overwrite=overwrite,
            accept_parity_failure=accept_parity_failure, keep_partial=keep_partial, int8_io=int8_io,
            allow_flex=allow_flex, min_ios=min_ios, via=tuple(via or ()), report=write_report, isolate=isolate,
            max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement, max_error=max_error, optimize=optimize,
            input_shape=input_shape or (), output_kind=output_kind or ())
        try:
            with LiveProgress() as say:  # drawn on a terminal unless -q
                result = run_convert(model, target, out=out, options=options, progress=say)
        except PartialConversionError as partial:
            written: Any = partial.result
            _report(written, json_)
            _err(f"\nerror: {len(written.failures)} target(s) failed; the bundle holds the others "
                 "(pass --keep-partial to exit 0 in this case)")
            raise typer.Exit(partial.exit_code) from None
        _report(result, json_)


def _explain(manifest: Any) -> None:
    """Why an automatic target chose its artifact, and why an artifact has no parity."""
    for selection in manifest.selections or ():
        typer.echo(f"\n{selection.family}-auto: {selection.reason}")
    for a in manifest.artifacts:
        if a.unverified:
            text = a.unverified if a.unverified.startswith("unverified") else f"unverified: {a.unverified}"
            typer.echo(f"\n{a.target} ({a.format}): {text}")


def _report(result: Any, as_json: bool = False) -> None:
    manifest = result.bundle.manifest
    if as_json:
        typer.echo(manifest.to_json(), nl=False)
        return
    typer.echo(f"\nbundle {manifest.name} {manifest.version} written to {result.bundle.path} "
               f"in {result.seconds:.1f}s\n")
    typer.echo(artifact_table(manifest))
    _explain(manifest)
    if result.failures:
        typer.echo("\nfailed targets (kept out of the bundle; recorded in bundle.json):")
        for f in result.failures:
            route = f" [route: {' -> '.join(f.route)}]" if f.route else ""
            typer.echo(f"  {f.target}: {f.error}{route}")
