"""The device's side of delta updates: rebuild a release's artifact from the copy in the active slot
and a signed delta target (``edgekit.ota.delta``), or say why not, so the caller downloads the file.

The delta is a TUF target like any other (its length and sha256 checked on download); the rebuilt
file is checked against the full file's signed length and sha256 before anything uses it. Any
failure (no delta for this base, a delta that does not apply, a rebuilt file that differs) removes
what was written and falls back to the full download: a delta can save bytes, never break an update.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit._files import hash_path
from edgekit.ota import delta

log = logging.getLogger("edgekit.ota")
Download = Callable[[Any], tuple[Path, int, int]]  # a target -> (verified file, bytes fetched, bytes resumed)


def deltas_for(targets: dict[str, Any], name: str) -> list[Any]:
    """The delta targets of an offer that rebuild the file ``name``."""
    return [t for t in targets.values() if (t.custom or {}).get("kind") == "delta"
            and ((t.custom or {}).get("delta") or {}).get("of") == name]


def rebuild(targets: dict[str, Any], name: str, slot: Path | None, downloads: Path,
            download: Download) -> tuple[Path, int, int] | None:
    """``name``'s file rebuilt from ``slot``'s copy by a delta of the offer ``targets``: (the file, bytes
    fetched, the release the base came from), or None when no delta applies or it failed."""
    full = targets[name]
    base = slot / name if slot is not None else None
    candidates = deltas_for(targets, name)
    if base is None or not base.is_file() or not candidates:
        return None
    base_sha = hash_path(base)[0]
    usable = [t for t in candidates if t.custom["delta"].get("from_sha256") == base_sha
              and t.custom["delta"].get("format") == delta.FORMAT]
    if not usable:
        return None
    target, info = usable[0], usable[0].custom["delta"]
    out = downloads / f"{full.hashes['sha256']}.part"
    patch: Path | None = None
    try:
        patch, fetched, _ = download(target)
        with out.open("wb") as f:
            delta.apply(base.read_bytes(), patch.read_bytes(), f, max_size=full.length)
            f.flush()
            os.fsync(f.fileno())
        with out.open("rb") as f:
            full.verify_length_and_hashes(f)
    except Exception as exc:  # noqa: BLE001 - any failure (EdgekitError, OSError, a hash mismatch): the whole file
        log.warning("the delta %s did not rebuild %s (%s); downloading the whole file", target.path, name, exc)
        out.unlink(missing_ok=True)
        if patch is not None:
            patch.unlink(missing_ok=True)
        return None
    patch.unlink(missing_ok=True)
    return out, fetched, int(info.get("from_release", 0))
