"""The ``edgekit`` command line (typer).

Exit codes: 0 success, 2 a problem the user can fix (bad model or flags, missing extra, no route,
parity failure), 1 an internal error. User errors print one message, never a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from edgekit import __version__
from edgekit.errors import EdgekitError

app = typer.Typer(
    name="edgekit",
    help="Convert trained models to verified on-device bundles (ONNX-web and TFLite; Core ML to come).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _err(message: str) -> None:
    typer.echo(message, err=True)


@contextlib.contextmanager
def _handled() -> Iterator[None]:
    """Turn edgekit errors into a message and an exit code; hide tracebacks of user errors."""
    try:
        yield
    except EdgekitError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(exc.exit_code) from None
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        _err("interrupted; nothing was written")
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug: say so, and show the traceback only on request
        if os.environ.get("EDGEKIT_DEBUG"):
            traceback.print_exc()
        _err(f"internal error: {type(exc).__name__}: {exc}\nThis is a bug in edgekit {__version__}; please "
             "report it with the command you ran (set EDGEKIT_DEBUG=1 to see the traceback).")
        raise typer.Exit(1) from None


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ banner lines on stderr
    for noisy in ("tensorflow", "absl", "tf2onnx", "onnxruntime", "onnx2tf", "litert_torch", "torch"):
        logging.getLogger(noisy).setLevel(logging.ERROR if not verbose else logging.INFO)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _parity_text(art: Any, n_total: int) -> str:
    p = art.parity
    if p is None:
        return "unverified" if art.unverified else "-"
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
    rows = [("target", "format", "size", "ratio", "parity", "accuracy", "time")]
    n_total = max((a.parity.n_samples for a in manifest.artifacts if a.parity), default=0)
    for a in manifest.artifacts:
        acc = f"{a.accuracy.top1:.3f} (src {a.accuracy.source_top1:.3f})" if a.accuracy else "-"
        rows.append((a.target, a.format, _size(a.size_bytes), f"{a.size_ratio:.2f}x" if a.size_ratio else "-",
                     _parity_text(a, n_total), acc, f"{a.convert_seconds:.1f}s" if a.convert_seconds is not None else "-"))
    for f in manifest.failures or ():
        rows.append((f.target, "-", "-", "-", f"FAILED: {f.kind or 'error'}", "-", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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
    via: Annotated[list[str] | None, typer.Option(help="Prefer an alternative route where it applies: litert-torch")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each pass")] = False,
) -> None:
    """Convert MODEL to each --target, validate every artifact against MODEL, and write one bundle."""
    _setup_logging(verbose)
    with _handled():
        from edgekit.converters import convert as run_convert
        from edgekit.errors import PartialConversionError

        try:
            result = run_convert(
                model, target, out=out, calibration=calibration, name=name, version=version, labels_key=labels_key,
                overwrite=overwrite, accept_parity_failure=accept_parity_failure, keep_partial=keep_partial,
                int8_io=int8_io, allow_flex=allow_flex, via=tuple(via or ()), progress=lambda msg: _err(f"  - {msg}"),
            )
        except PartialConversionError as partial:
            written: Any = partial.result
            _report(written)
            _err(f"\nerror: {len(written.failures)} target(s) failed; the bundle holds the others "
                 "(pass --keep-partial to exit 0 in this case)")
            raise typer.Exit(partial.exit_code) from None
        _report(result)


def _report(result: Any) -> None:
    manifest = result.bundle.manifest
    typer.echo(f"\nbundle {manifest.name} {manifest.version} written to {result.bundle.path} "
               f"in {result.seconds:.1f}s\n")
    typer.echo(artifact_table(manifest))
    for a in manifest.artifacts:
        if a.unverified:
            typer.echo(f"\n{a.target}: unverified: {a.unverified}")
    if result.failures:
        typer.echo("\nfailed targets (kept out of the bundle; recorded in bundle.json):")
        for f in result.failures:
            route = f" [route: {' -> '.join(f.route)}]" if f.route else ""
            typer.echo(f"  {f.target}: {f.error}{route}")


@app.command()
def inspect(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory")],
    json_: Annotated[bool, typer.Option("--json", help="Print bundle.json as verified")] = False,
) -> None:
    """Verify a bundle (schema, sizes, sha256) and show its contents."""
    with _handled():
        from edgekit.bundle import read_bundle

        b = read_bundle(bundle)
        m = b.manifest
        if json_:
            typer.echo(m.to_json(), nl=False)
            return
        typer.echo(f"{m.name} {m.version}  ({m.schema}, {m.created_by})")
        typer.echo(f"source: {m.source.file} ({m.source.format}, {_size(m.source.size_bytes)})")
        for label, specs in (("inputs", m.inputs), ("outputs", m.outputs)):
            typer.echo(f"{label}: " + ", ".join(f"{s.name} {list(s.shape)} {s.dtype}" for s in specs))
        if m.calibration:
            typer.echo(f"calibration: {m.calibration.file}, {m.calibration.n_samples} samples"
                       + (", labelled" if m.calibration.has_labels else ""))
        typer.echo("all artifacts verified (size and sha256)\n")
        typer.echo(artifact_table(m))


@app.command()
def targets() -> None:
    """List target ids, the extra each needs and whether it is installed here."""
    with _handled():
        from edgekit._deps import OPTIONAL_MODULES, is_available, minimal_extras
        from edgekit.converters.registry import TARGETS, target_modules

        rows = [("target", "precision", "extra", "installed", "description")]
        for t in TARGETS.values():
            modules = target_modules(t)
            extras = minimal_extras({OPTIONAL_MODULES.get(m, (m, m))[1] for m in modules} - {"(base install)"})
            ok = all(is_available(m) for m in modules)
            rows.append((t.id, t.precision, ",".join(extras) or "-", "yes" if ok else "no", t.description))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            typer.echo("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
        typer.echo("\nSources: .onnx (extra onnx), .pt2 or nn.Module (extra torch), .keras/.h5 (extra tensorflow).")


@app.command()
def version() -> None:
    """Print edgekit's version."""
    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
