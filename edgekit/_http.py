"""What edgekit's two file servers share (``edgekit web`` and ``edgekit serve``): HTTP Range parsing."""

from __future__ import annotations

import re
from typing import Literal

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None | Literal[False]:
    """The inclusive ``(start, end)`` a single-range ``Range`` header asks of a ``size``-byte file.

    None: no usable Range (serve the whole file, 200). False: the range cannot be satisfied (416).
    """
    match = _RANGE.match(header.strip()) if header else None
    if not match or not (match.group(1) or match.group(2)):
        return None
    if match.group(1):
        start = int(match.group(1))
        end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
    else:
        start, end = max(0, size - int(match.group(2))), size - 1
    if start >= size or start > end:
        return False
    return start, end
