"""The ``edgekit`` command's entry point: the CLI when its extra is installed, else how to get it.

The base install is the device runtime (numpy and onnxruntime, docs/adr/0014); the command comes with
``edgekit[cli]`` and with every extra that converts or serves.
"""

from __future__ import annotations

import sys

CLI_MISSING = ("error: the edgekit command needs its extra: pip install 'edgekit[cli]' (or an extra that converts, "
               "such as 'edgekit[onnx]'); the base install is the on-device runtime (numpy and onnxruntime) only")


def main() -> None:
    """Run the CLI, or say which extra brings it (exit code 2)."""
    try:
        import typer  # noqa: F401
    except ImportError:
        sys.stderr.write(CLI_MISSING + "\n")
        raise SystemExit(2) from None
    from edgekit.cli import main as cli_main

    cli_main()
