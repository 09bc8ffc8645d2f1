"""The ``edgekit`` command line (typer).

Exit codes: 0 success, 2 a problem the user can fix (bad model or flags, missing extra, no route,
parity failure), 1 an internal error. User errors print one message, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from edgekit import __version__
from edgekit._progress import VERBOSITY, LiveProgress
from edgekit.errors import EdgekitError

app = typer.Typer(
    name="edgekit",
    help="Convert trained models to verified on-device bundles: ONNX-web, TFLite and Core ML.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish and PowerShell
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help, wrapped to the terminal: rich's tables cut flag names at 80 columns
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


class _EdgekitLevel(logging.Filter):
    """Third-party log records (the root logger's included: onnxruntime's quantizer writes there) reach the
    terminal only at ERROR, unless -v asked for everything; edgekit's own follow the chosen level."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return self.verbose or record.name.startswith("edgekit") or record.levelno >= logging.ERROR


def _setup_logging(verbose: bool) -> None:
    verbose = verbose or VERBOSITY["level"] == "verbose"
    quiet = VERBOSITY["level"] == "quiet" and not verbose
    level = logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "edgekit", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_EdgekitLevel(verbose))
    handler.edgekit = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ banner lines on stderr
    for noisy in ("tensorflow", "absl", "tf2onnx", "onnxruntime", "onnx2tf", "litert_torch", "torch"):
        logging.getLogger(noisy).setLevel(logging.ERROR if not verbose else logging.INFO)


def _native_lines_hidden() -> contextlib.AbstractContextManager[Any]:
    """Keep runtimes' C++ log lines ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.") off the
    terminal unless -v asked for everything; what goes wrong still raises with its message."""
    from edgekit._console import captured_output

    return contextlib.nullcontext() if VERBOSITY["level"] == "verbose" else captured_output()


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"edgekit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step, third-party libraries' too")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print results and errors only: no progress, "
                                        "no warnings")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Print edgekit's version and exit")] = False,
) -> None:
    """Convert trained models to verified on-device bundles: ONNX-web, TFLite and Core ML."""
    VERBOSITY["level"] = "verbose" if verbose else "quiet" if quiet else ""


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
        rows.append((a.target, a.format, _size(a.size_bytes), f"{a.size_ratio:.2f}x" if a.size_ratio else "-",
                     _parity_text(a, n_total), *wasm, acc,
                     f"{a.convert_seconds:.1f}s" if a.convert_seconds is not None else "-"))
    for f in manifest.failures or ():
        rows.append((f.target, "-", "-", "-", f"FAILED: {f.kind or 'error'}", *(("-",) if has_web else ()), "-", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, *_measured_on(manifest)])


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
        help="How parity judges an output: NAME=embedding|scores|map|exact (default: inferred)")] = None,
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
        from edgekit.converters.auto import Budget
        from edgekit.errors import PartialConversionError

        budget = None
        if max_accuracy_drop is not None or min_agreement is not None or max_error is not None or optimize != "balanced":
            budget = Budget(max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement, max_error=max_error,
                            optimize=optimize)

        try:
            with LiveProgress() as say:  # drawn on a terminal unless -q
                result = run_convert(
                    model, target, out=out, calibration=calibration, name=name, version=version, labels_key=labels_key,
                    overwrite=overwrite, accept_parity_failure=accept_parity_failure, keep_partial=keep_partial,
                    int8_io=int8_io, allow_flex=allow_flex, min_ios=min_ios, via=tuple(via or ()), budget=budget,
                    report=write_report, input_shapes=_input_shapes(input_shape or []), isolate=isolate,
                    output_kinds=_output_kinds(output_kind or []), progress=say,
                )
        except PartialConversionError as partial:
            written: Any = partial.result
            _report(written, json_)
            _err(f"\nerror: {len(written.failures)} target(s) failed; the bundle holds the others "
                 "(pass --keep-partial to exit 0 in this case)")
            raise typer.Exit(partial.exit_code) from None
        _report(result, json_)


def _input_shapes(specs: list[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``--input-shape NAME:D0,D1,...`` flags."""
    from edgekit.errors import UserError

    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition(":")
        try:
            values = tuple(int(d) for d in dims.split(","))
        except ValueError:
            values = ()
        if not sep or not name or not values or any(v < 1 for v in values):
            raise UserError(f"--input-shape {spec!r}: write NAME:D0,D1,... with positive sizes, e.g. input_ids:1,128")
        shapes[name] = values
    return shapes


def _output_kinds(specs: list[str]) -> dict[str, str]:
    """Parse ``--output-kind NAME=KIND`` flags (the kinds are checked against the model later)."""
    from edgekit.errors import UserError

    kinds: dict[str, str] = {}
    for spec in specs:
        name, sep, kind = spec.rpartition("=")
        if not sep or not name or not kind:
            raise UserError(f"--output-kind {spec!r}: write NAME=KIND, e.g. sentence_embedding=embedding")
        kinds[name] = kind
    return kinds


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
            typer.echo(f"{label}: " + ", ".join(f"{s.name} {s.shown_shape()} {s.dtype}" for s in specs))
        if m.calibration:
            typer.echo(f"calibration: {m.calibration.file}, {m.calibration.n_samples} samples"
                       + (", labelled" if m.calibration.has_labels else ""))
        typer.echo("all artifacts verified (size and sha256)\n")
        typer.echo(artifact_table(m))
        _explain(m)


def _load_feeds(path: Path, inputs: Any) -> dict[str, Any]:
    """Feeds from a .npy (the only input) or .npz (arrays named like the inputs, or a single array)."""
    import numpy as np

    from edgekit.errors import InvalidInputError

    if not path.is_file():
        raise InvalidInputError(f"input file {path} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path} is not a .npy or .npz file numpy can read: {exc}") from None
    names = [s.name for s in inputs]
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise InvalidInputError(f"the model has {len(names)} inputs ({', '.join(names)}); give a .npz with one "
                                    "array per input name")
        arrays = {names[0]: loaded}
    else:
        keys = list(loaded.keys())
        if len(names) == 1 and names[0] not in keys and len(keys) >= 1:
            arrays = {names[0]: loaded["x" if "x" in keys else keys[0]]}
        else:
            missing = [n for n in names if n not in keys]
            if missing:
                raise InvalidInputError(f"{path} has no array for input(s) {', '.join(missing)}; it has: "
                                        f"{', '.join(keys)}")
            arrays = {n: loaded[n] for n in names}
    feeds = {}
    for spec in inputs:  # float64 from numpy defaults to the model's float type
        value = arrays[spec.name]
        if value.dtype.kind == "f" and np.dtype(spec.dtype).kind == "f":
            value = value.astype(spec.dtype)
        feeds[spec.name] = value
    return feeds


def _summary(name: str, value: Any) -> str:
    import numpy as np

    text = f"  {name}: shape {list(value.shape)} {value.dtype}"
    if value.size and np.issubdtype(value.dtype, np.number):
        text += f", min {value.min():.4g}, max {value.max():.4g}, mean {value.mean():.4g}"
        if value.ndim == 2 and value.shape[1] >= 2:
            top = value.argmax(axis=1)[:8].tolist()
            text += f"; arg-max of the first rows: {top}"
    return text


@app.command()
def run(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory or an .onnx/.ort/.tflite file")],
    input: Annotated[Path, typer.Option("--input", "-i", help=".npy (one input) or .npz (arrays named like inputs)")],
    target: Annotated[str | None, typer.Option(help="Target to run (default: the best for this host)")] = None,
    providers: Annotated[str, typer.Option(help="auto, or a comma list such as cuda,cpu or GPU,XNNPACK")] = "auto",
    policy: Annotated[str, typer.Option(help="fallback (try the next provider) or strict (fail)")] = "fallback",
    json_: Annotated[bool, typer.Option("--json", help="Print outputs and the provider report as JSON")] = False,
) -> None:
    """Run a bundle's artifact on inputs from a file; print the outputs and which provider ran."""
    _setup_logging(False)
    with _handled():
        import json

        import edgekit.runtimes as rt

        with _native_lines_hidden():
            session = rt.open(bundle, target=target, providers=providers, policy=policy)
            outputs = session.run(_load_feeds(input, session.inputs))
        stats = session.stats()
        if json_:
            typer.echo(json.dumps({
                "provider": session.provider,
                "attempts": [a.__dict__ for a in session.attempts],
                "notes": list(session.notes),
                "load_ms": round(stats.load_seconds * 1e3, 3),
                "run_ms": round(stats.max_ms, 3),
                "outputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype), "values": v.tolist()}
                            for k, v in outputs.items()},
            }))
            return
        typer.echo(f"provider: {session.provider} (load {stats.load_seconds * 1e3:.1f} ms, run {stats.max_ms:.2f} ms)")
        for attempt in session.attempts:
            if not attempt.ok:
                typer.echo(f"  passed over {attempt.provider}: {attempt.reason}")
        for note in session.notes:
            typer.echo(f"  note: {note}")
        typer.echo("outputs:")
        for name, value in outputs.items():
            typer.echo(_summary(name, value))


@app.command()
def bench(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory")],
    target: Annotated[list[str] | None, typer.Option("--target", "-t", help="Target to measure; repeat (default: all)")] = None,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per artifact")] = 100,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs first")] = 10,
    batch: Annotated[int, typer.Option(min=1, help="Batch size (for a dynamic first dimension)")] = 1,
    providers: Annotated[str, typer.Option(help="auto, or a comma list of providers to try")] = "auto",
    json_: Annotated[bool, typer.Option("--json", help="Print the results as JSON")] = False,
) -> None:
    """Measure every artifact this host can run: load time, latency P50/P95/P99, throughput, peak memory."""
    _setup_logging(False)
    with _handled():
        import json

        from edgekit.runtimes.bench import bench_bundle

        with _native_lines_hidden():
            results = bench_bundle(bundle, targets=target, runs=runs, warmup=warmup, batch=batch, providers=providers)
        if json_:
            typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
            return
        rows = [("target", "format", "provider", "load ms", "p50 ms", "p95 ms", "p99 ms", "samples/s", "peak MB")]
        for r in results:
            if r.error:
                rows.append((r.target, r.format, "-", "-", "-", "-", "-", "-", "-"))
                continue
            rows.append((r.target, r.format, r.provider, f"{r.load_ms:.1f}", f"{r.p50_ms:.3f}", f"{r.p95_ms:.3f}",
                         f"{r.p99_ms:.3f}", f"{r.throughput:.0f}",
                         f"{r.peak_memory_mb:.1f}" if r.peak_memory_mb is not None else "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for i, row in enumerate(rows):
            typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            if i == 0:
                typer.echo("  ".join("-" * w for w in widths))
        typer.echo(f"\n{runs} timed runs after {warmup} warm-up runs, batch {batch}, random inputs.")
        for r in results:
            if r.error:
                typer.echo(f"{r.target} ({r.format}) not measured: {r.error}")


@app.command()
def report(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory")],
    out: Annotated[Path | None, typer.Option(help="Where to write the page (default: BUNDLE/report.html)")] = None,
    bench: Annotated[bool, typer.Option(help="Measure latency of every artifact this host can run first")] = True,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per artifact when measuring")] = 50,
) -> None:
    """Write one self-contained HTML page: the per-target table, the precision choices, and plots."""
    _setup_logging(False)
    with _handled():
        from edgekit.report import write_report

        target = write_report(bundle, out, bench=bench, runs=runs)
        typer.echo(f"report written to {target}")


@app.command()
def check(
    model: Annotated[Path, typer.Argument(help="Model: .onnx, .pt2, .keras, .h5, or a SavedModel dir")],
    target: Annotated[list[str] | None, typer.Option("--target", "-t", help="Target to check; repeat (default: all)")] = None,
    probe: Annotated[bool, typer.Option("--probe", help="Also convert each family's float target in a temporary "
                                        "directory, to find Flex ops and Core ML ops newer than --min-ios")] = False,
    min_ios: Annotated[int, typer.Option("--min-ios", help="Core ML minimum iOS the probe converts for")] = 16,
    json_: Annotated[bool, typer.Option("--json", help="Print the findings as JSON")] = False,
) -> None:
    """Without converting: can MODEL reach each target, which operators block it, expected sizes. Exit 0 if all can.

    With --probe, what only a conversion can tell as well (one float conversion per family, nothing kept)."""
    _setup_logging(False)
    with _handled():
        import json

        from edgekit._console import captured_output
        from edgekit.converters.check import check as run_check

        with LiveProgress(live=False if not probe else None) as say, captured_output():
            results = run_check(model, target, probe=probe, min_ios=min_ios, progress=say)
        if json_:
            typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
        else:
            rows = [("target", "reachable", "expected size", "route")]
            for r in results:
                rows.append((r.target, "yes" if r.reachable else "NO",
                             _size(r.expected_bytes) if r.expected_bytes is not None else "-",
                             " -> ".join(r.route) or "-"))
            widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
            for i, row in enumerate(rows):
                typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
                if i == 0:
                    typer.echo("  ".join("-" * w for w in widths))
            for r in results:
                for problem in r.problems:
                    typer.echo(f"\n{r.target}: {problem}")
            sections = (("probe conversions", "probed"),
                        ("only a conversion can tell (edgekit check --probe converts to find out)", "after_conversion"),
                        ("dynamic dimensions, by what the targets do with them", "dynamic"))
            for title, attr in sections:
                lines = list(dict.fromkeys(getattr(r, attr) for r in results if getattr(r, attr)))
                if lines:
                    typer.echo(f"\n{title}:")
                    for line in lines:
                        typer.echo(f"  {line}")
        if not all(r.reachable for r in results):
            raise typer.Exit(2)


@app.command()
def targets(
    json_: Annotated[bool, typer.Option("--json", help="Print the targets as JSON")] = False,
) -> None:
    """List target ids, the extra each needs and whether it is installed here."""
    with _handled():
        import json

        from edgekit._deps import OPTIONAL_MODULES, is_available, minimal_extras
        from edgekit.converters.auto import AUTO_TARGETS, CANDIDATES
        from edgekit.converters.registry import TARGETS, target_modules

        rows = [("target", "precision", "extra", "installed", "description")]
        listed = []
        for t in TARGETS.values():
            modules = target_modules(t)
            extras = minimal_extras({OPTIONAL_MODULES.get(m, (m, m))[1] for m in modules} - {"(base install)"})
            ok = all(is_available(m) for m in modules)
            rows.append((t.id, t.precision, ",".join(extras) or "-", "yes" if ok else "no", t.description))
            listed.append({"target": t.id, "format": t.format, "precision": t.precision, "family": t.family,
                           "extras": sorted(extras), "installed": ok, "description": t.description,
                           "tolerance": t.tolerance.to_dict()})
        if json_:
            automatic = {a: [c for f in families for c in CANDIDATES[f]] for a, families in AUTO_TARGETS.items()}
            typer.echo(json.dumps({"targets": listed, "automatic": automatic}, indent=2))
            return
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            typer.echo("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4])

        typer.echo("\nAutomatic (the smallest candidate within --max-accuracy-drop / --min-agreement / --max-error):")
        for auto_id, families in AUTO_TARGETS.items():
            typer.echo(f"  {auto_id}: " + "; ".join(", ".join(CANDIDATES[f]) for f in families))
        typer.echo("\nSources: .onnx (extra onnx), .pt2 or nn.Module (extra torch), .keras/.h5 or a SavedModel "
                   "directory (extra tensorflow). Core ML from PyTorch needs the coreml and torch extras only.")


@app.command()
def web(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory with an onnx-web artifact")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port)")] = 8000,
    ort_dir: Annotated[Path | None, typer.Option("--ort-dir", help="onnxruntime-web's dist folder "
                                                 "(default: web/node_modules, or $EDGEKIT_ORT_WEB_DIR)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every request")] = False,
) -> None:
    """Serve the browser demo for BUNDLE: draw a digit, classify it with onnxruntime-web in the page."""
    _setup_logging(verbose)
    with _handled():
        from edgekit.web.server import make_server

        server = make_server(bundle, host=host, port=port, ort_dir=ort_dir)
        typer.echo(f"serving {server.bundle_dir} at {server.url}/demo/ (onnxruntime-web from {server.ort_dir}); "
                   "Ctrl-C stops")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            typer.echo("stopped")
        finally:
            server.server_close()


def _wrapped(fn: Any) -> Any:
    """A command from another module, with the CLI's error handling (exit codes, no tracebacks)."""
    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        _setup_logging(False)
        with _handled():
            return fn(*args, **kwargs)
    return command


def _add_ota_commands() -> None:
    from edgekit.ota import cli as ota

    for registered in ota.ota_app.registered_commands:
        registered.callback = _wrapped(registered.callback)
    app.add_typer(ota.ota_app, name="ota")
    for fn in (ota.serve, ota.publish, ota.pull):
        app.command(fn.__name__)(_wrapped(fn))


_add_ota_commands()


@app.command()
def version() -> None:
    """Print edgekit's version."""
    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
