"""``python -m edgekit``: the CLI."""

from edgekit._entry import main

main()
