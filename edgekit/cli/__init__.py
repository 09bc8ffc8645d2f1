"""The ``edgekit`` command line (typer): one module per command group.

Exit codes: 0 success, 2 a problem the user can fix (bad model or flags, missing extra, no route,
parity failure), 1 an internal error. User errors print one message, never a traceback.

    _app.py     the app, error handling, logging, the table renderer
    convert.py  edgekit convert
    bundles.py  inspect, run, bench, report, web
    check.py    check, targets
    ota.py      serve, publish, pull and edgekit ota ... (the service's operator client is
                edgekit.ota.operator)
"""

from __future__ import annotations

from typing import Annotated

import typer

from edgekit import __version__
from edgekit._progress import VERBOSITY
from edgekit.cli import bundles, check, convert, ota  # noqa: F401  (each registers its commands)
from edgekit.cli._app import app

__all__ = ["app", "main"]


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


@app.command()
def version() -> None:
    """Print edgekit's version."""
    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
