"""What every command of the ``edgekit`` command line shares: the typer app, error handling
(exit codes, no tracebacks for user errors), logging and the one table renderer."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

import typer

from edgekit import __version__
from edgekit._progress import VERBOSITY
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


def _wrapped(fn: Any) -> Any:
    """A command from another module, with the CLI's error handling (exit codes, no tracebacks)."""
    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        _setup_logging(False)
        with _handled():
            return fn(*args, **kwargs)
    return command


def table(rows: Sequence[Sequence[str]], *, last_free: bool = False, rule: bool = True) -> str:
    """Rows (the first is the header) as aligned columns, with a rule under the header; with
    ``last_free`` the last column is not padded (free text that may be long)."""
    fixed = [r[:-1] for r in rows] if last_free else rows
    widths = [max(len(r[i]) for r in fixed) for i in range(len(fixed[0]))]
    out = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)] + (list(row[len(widths):]) if last_free else [])
        out.append("  ".join(cells).rstrip())
        if n == 0 and rule:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
