"""``python -m edgekit``: the CLI."""

from edgekit.cli import main

main()
