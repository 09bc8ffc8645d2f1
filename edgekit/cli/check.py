"""``edgekit check`` (what a model can reach before converting) and ``edgekit targets``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit._files import human_size
from edgekit._progress import LiveProgress
from edgekit.cli._app import _handled, _setup_logging, app, table


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
        from edgekit.converters.preflight import check as run_check

        with LiveProgress(live=False if not probe else None) as say, captured_output():
            results = run_check(model, target, probe=probe, min_ios=min_ios, progress=say)
        if json_:
            typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
        else:
            rows = [("target", "reachable", "expected size", "route")]
            for r in results:
                rows.append((r.target, "yes" if r.reachable else "NO",
                             human_size(r.expected_bytes) if r.expected_bytes is not None else "-",
                             " -> ".join(r.route) or "-"))
            typer.echo(table(rows))
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
        typer.echo(table(rows, last_free=True, rule=False))

        typer.echo("\nAutomatic (the smallest candidate within --max-accuracy-drop / --min-agreement / --max-error):")
        for auto_id, families in AUTO_TARGETS.items():
            typer.echo(f"  {auto_id}: " + "; ".join(", ".join(CANDIDATES[f]) for f in families))
        typer.echo("\nSources: .onnx (extra onnx), .pt2 or nn.Module (extra torch), .keras/.h5 or a SavedModel "
                   "directory (extra tensorflow). Core ML from PyTorch needs the coreml and torch extras only.")
