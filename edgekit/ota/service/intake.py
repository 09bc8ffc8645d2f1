"""What ``publish`` takes in: an uploaded bundle folder, its packed directories unpacked, compared with a
release already published (a retried upload is the same release, not a new one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.errors import BundleError
from edgekit.ota import contract


def same_files(published: list[dict[str, Any]], folder: Path, files: list[dict[str, Any]],
                packed: dict[str, bytes]) -> bool:
    """Whether ``folder``'s ``files`` are, name for name and byte for byte, a release's ``published`` files
    (its deltas aside: the service made them)."""
    import hashlib

    from edgekit._files import hash_path

    published = [f for f in published if f["kind"] != "delta"]
    if sorted(f["file"] for f in published) != sorted(f["file"] for f in files):
        return False
    return all((hashlib.sha256(packed[f["file"]]).hexdigest() if f["file"] in packed else
                hash_path(folder / f["file"])[0]) == f.get("sha256") for f in published)


def unpack_directories(folder: Path) -> None:
    """An upload carries a directory artifact as its tar (``coreml.mlpackage.tar``, what ``edgekit publish``
    sends): unpack it beside it, so the bundle reads and verifies as ``edgekit convert`` wrote it.

    Raises:
        BundleError: The tar breaks the packing rules (a link, a path outside the folder, not a tar).
    """
    from edgekit.errors import VerificationError

    for archive in sorted(folder.glob(f"*{contract.PACKED_SUFFIX}")):
        directory = folder / archive.name.removesuffix(contract.PACKED_SUFFIX)
        if directory.exists():
            continue
        try:  # an uncompressed tar holds at most its own size in files
            contract.unpack_directory(archive, directory, max_bytes=archive.stat().st_size)
        except VerificationError as exc:
            raise BundleError(f"{archive.name} in the upload: {exc}") from exc
        archive.unlink()
