"""Commands on a bundle: ``inspect``, ``run``, ``bench``, ``report`` and ``web``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgekit._files import human_size
from edgekit.cli._app import _handled, _native_lines_hidden, _setup_logging, app, table
from edgekit.cli.convert import _explain, artifact_table


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
        typer.echo(f"source: {m.source.file} ({m.source.format}, {human_size(m.source.size_bytes)})")
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
        typer.echo(table(rows))
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
        from edgekit.runtimes.bench import report_latency

        target = write_report(bundle, out, latency=report_latency(bundle, runs=runs) if bench else None)
        typer.echo(f"report written to {target}")


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
