"""The bundle: a directory with ``bundle.json`` (:mod:`edgekit.manifest`) and one file (or directory) per
artifact; read and verified (:func:`read_bundle`), written whole or not at all (:class:`BundleWriter`).

The manifest types are defined in :mod:`edgekit.manifest` and re-exported here, where most code
meets them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgekit._files import hash_path, make_temp_dir, write_atomic
from edgekit.errors import BundleError, IntegrityError, OutputExistsError
from edgekit.manifest import (
    GENERATED_DIM,
    MANIFEST_NAME,
    SCHEMA_FILE,
    SCHEMA_ID,
    Accuracy,
    Artifact,
    CalibrationInfo,
    Dim,
    Failure,
    Manifest,
    Parity,
    ReferenceInfo,
    RuntimeCheck,
    Selection,
    SourceInfo,
    TensorSpec,
    check_manifest_dict,
    shown_dim,
)

__all__ = [
    "GENERATED_DIM", "MANIFEST_NAME", "SCHEMA_FILE", "SCHEMA_ID", "Accuracy", "Artifact", "Bundle", "BundleWriter",
    "CalibrationInfo", "Dim", "Failure", "Manifest", "Parity", "ReferenceInfo", "RuntimeCheck", "Selection",
    "SourceInfo", "TensorSpec", "check_manifest_dict", "read_bundle", "shown_dim", "verify_artifact", "verify_file",
]


@dataclass(frozen=True)
class Bundle:
    """A bundle directory on disk and its verified manifest."""

    path: Path
    manifest: Manifest

    def artifact_path(self, artifact: Artifact) -> Path:
        """Where ``artifact`` lies on disk."""
        return self.path / artifact.file


def read_bundle(path: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
    """Read a bundle directory and, by default, verify every artifact's size and sha256.

    Raises:
        BundleError: ``path`` is not a bundle or its ``bundle.json`` is invalid.
        IntegrityError: An artifact is missing or its size or sha256 does not match.
    """
    root = Path(path)
    manifest_path = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleError(f"{root} is not a bundle: no such directory (make one with: edgekit convert MODEL --out {root})")
    if not manifest_path.is_file():
        raise BundleError(f"{root} is not a bundle: it has no {MANIFEST_NAME} (make one with edgekit convert)")
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read {manifest_path}: {exc}") from exc
    manifest = Manifest.from_json(text, where=str(manifest_path))
    bundle = Bundle(root, manifest)
    if verify:
        for art in manifest.artifacts:
            verify_artifact(bundle, art)
        if manifest.reference is not None:
            verify_file(root / manifest.reference.file, manifest.reference.size_bytes, manifest.reference.sha256,
                         "the reference samples")
    return bundle


def verify_file(path: Path, size_bytes: int, sha256: str, what: str) -> None:
    fix = "the file was changed or damaged after conversion; download or convert the bundle again"
    if not path.exists():
        raise IntegrityError(f"{what} ({path.name}) are missing from {path.parent}; {fix}")
    digest, size = hash_path(path)
    if size != size_bytes or digest != sha256:
        raise IntegrityError(f"{what} ({path.name}) differ from the manifest's size or sha256; {fix}")


def verify_artifact(bundle: Bundle, artifact: Artifact) -> None:
    """Check one artifact's size and sha256 against the manifest.

    Raises:
        IntegrityError: The artifact is missing, or its size or sha256 differs.
    """
    file = bundle.artifact_path(artifact)
    fix = "the file was changed or damaged after conversion; download or convert the bundle again"
    if not file.exists():
        raise IntegrityError(f"artifact {artifact.file} ({artifact.target}) is missing from {bundle.path}; {fix}")
    digest, size = hash_path(file)
    if size != artifact.size_bytes:
        raise IntegrityError(
            f"artifact {artifact.file} ({artifact.target}) is {size} bytes, the manifest says "
            f"{artifact.size_bytes}; {fix}"
        )
    if digest != artifact.sha256:
        raise IntegrityError(
            f"artifact {artifact.file} ({artifact.target}) has sha256 {digest[:16]}..., the manifest "
            f"says {artifact.sha256[:16]}...; {fix}"
        )


class BundleWriter:
    """Builds a bundle in a temporary sibling directory and renames it into place on commit.

    Use as a context manager: artifacts are written under :attr:`staging`, then :meth:`commit`
    writes ``bundle.json`` and moves the directory to its final path. Leaving the block without a
    commit (an error, an interrupt) removes the staging directory, so no half bundle is left.
    """

    def __init__(self, out: str | os.PathLike[str], *, overwrite: bool = False):
        self.out = Path(out)
        self.overwrite = overwrite
        if self.out.exists() and not self.out.is_dir():
            raise OutputExistsError(f"{self.out} is a file, not a bundle directory; choose another --out (--overwrite "
                                    "replaces an earlier bundle, never another file)")
        if self.out.exists() and not overwrite:
            raise OutputExistsError(f"{self.out} already exists; choose another --out or pass --overwrite")
        self.staging: Path = Path()
        self.committed = False

    def __enter__(self) -> BundleWriter:
        parent = self.out.absolute().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.staging = make_temp_dir(parent, f".{self.out.name}.tmp-")
        except OSError as exc:
            raise OutputExistsError(f"cannot create the output directory next to {self.out}: {exc}") from exc
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.committed:
            shutil.rmtree(self.staging, ignore_errors=True)

    def commit(self, manifest: Manifest) -> Bundle:
        """Write ``bundle.json`` and move the finished bundle to its final path.

        Raises:
            BundleError: The manifest is invalid or an artifact it names is not in staging.
            OutputExistsError: The output appeared meanwhile and overwriting was not asked.
        """
        text = manifest.to_json()
        staged = Bundle(self.staging, manifest)
        for art in manifest.artifacts:
            verify_artifact(staged, art)
        write_atomic(self.staging / MANIFEST_NAME, text)
        final = self.out
        if final.exists():
            if not self.overwrite:
                raise OutputExistsError(f"{final} appeared while converting; choose another --out or pass --overwrite")
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.absolute().parent))
            os.replace(final, trash / final.name)
            os.replace(self.staging, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.staging, final)
        self.committed = True
        return Bundle(final, manifest)
