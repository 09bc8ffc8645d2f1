"""A model's installed slots on the device: ``state.json``, the slot folders, the switch between them.

Invariants, whatever step a crash or SIGKILL interrupts: ``state.json`` names only complete,
smoke-tested slots; it changes by an atomic rename after the new slot is written, fsynced and
tested; the previous slot is kept. So the previously active model always loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit._files import fsync_dir, hash_path, write_atomic
from edgekit.errors import EdgekitError, VerificationError
from edgekit.ota import contract

STAGING_PREFIX = ".tmp-"


@dataclass
class SlotState:
    """``state.json`` of one model."""

    channel: str | None = None
    active: int | None = None
    active_version: str | None = None
    previous: int | None = None
    previous_version: str | None = None
    highest: int = 0  # the highest release ever installed: older ones are refused
    failed: list[int] = field(default_factory=list)
    # the downloads the last switch installed: removed after the switch, and again by the next update
    # when a crash came between the switch and their removal
    installed_downloads: list[str] = field(default_factory=list)


class Slots:
    """The slots of every model under ``root`` (``models/`` of the device's cache)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"*/slots/{STAGING_PREFIX}*"):  # an install a crash interrupted
            shutil.rmtree(stale, ignore_errors=True)

    def _state_path(self, model: str) -> Path:
        return self.root / contract.check_name(model) / "state.json"

    def state(self, model: str) -> SlotState:
        path = self._state_path(model)
        return SlotState(**json.loads(path.read_text())) if path.exists() else SlotState()

    def save(self, model: str, state: SlotState) -> None:
        """Write ``state.json``: the switch, one atomic rename."""
        write_atomic(self._state_path(model), json.dumps(dataclasses.asdict(state), indent=1).encode())

    def path(self, model: str, release: int) -> Path:
        return self.root / model / "slots" / str(release)

    def active(self, model: str) -> Path | None:
        state = self.state(model)
        return self.path(model, state.active) if state.active is not None else None

    def install(self, model: str, release: int, parts: dict[str, Path], packed: dict[str, Any] | None = None) -> Path:
        """Copy the verified downloads into a new slot folder (fsynced), renamed into place whole.

        ``packed`` names the downloads that are a directory artifact's tar (``contract.pack_directory``),
        with the manifest's artifact: each is unpacked into its directory, whose hash must be the
        artifact's sha256 in the manifest.

        Raises:
            VerificationError: A tar breaks the packing rules, or its directory differs from the manifest.
        """
        slots = self.root / model / "slots"
        slots.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=slots, prefix=f"{STAGING_PREFIX}{release}-"))
        try:
            for name, part in parts.items():
                if packed and name in packed:
                    _unpack_artifact(part, staging, packed[name])
                    continue
                dst = staging / name
                shutil.copyfile(part, dst)
                with dst.open("rb") as f:
                    os.fsync(f.fileno())
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(staging)
        slot = self.path(model, release)
        if slot.exists():  # a slot a failed attempt left behind (never the active one)
            shutil.rmtree(slot)
        os.replace(staging, slot)
        fsync_dir(slots)
        return slot

    def prune(self, model: str, state: SlotState) -> None:
        """Remove every slot but the active and the previous one."""
        keep = {str(state.active), str(state.previous)}
        for slot in (self.root / model / "slots").iterdir():
            if slot.name not in keep and not slot.name.startswith(STAGING_PREFIX):
                shutil.rmtree(slot, ignore_errors=True)


def smoke(slot: Path, target: str, providers: Any) -> str:
    """'' when the slot loads and reproduces its reference outputs, else why not."""
    from edgekit.runtimes import open as open_session
    from edgekit.runtimes import smoke_test

    try:
        session = open_session(slot, target=target, providers=providers)
        parity = smoke_test(session)
    except EdgekitError as exc:
        return f"the new model failed to load or run: {exc}"
    except Exception as exc:  # a runtime crash on a bad model must not take the device's update loop down
        return f"the new model failed to load or run: {type(exc).__name__}: {exc}"
    if not parity.passed:
        return f"the new model's outputs differ from its reference (max abs error {parity.max_abs_error:.3g})"
    return ""


def _unpack_artifact(archive: Path, staging: Path, artifact: Any) -> None:
    """Unpack a directory artifact's tar into ``staging`` and check it against the manifest's hash."""
    directory = staging / artifact.file
    contract.unpack_directory(archive, directory, max_bytes=artifact.size_bytes)
    digest, size = hash_path(directory)
    if (digest, size) != (artifact.sha256, artifact.size_bytes):
        raise VerificationError(f"{artifact.file} unpacked from its signed archive differs from the manifest's sha256 "
                                "or size; nothing was installed")
    folders = {directory}
    for file in directory.rglob("*"):
        if file.is_dir():
            folders.add(file)
        else:
            with file.open("rb") as f:
                os.fsync(f.fileno())
    for folder in folders:
        fsync_dir(folder)


def runs_here(fmt: str) -> str | None:
    """None when this host can run ``fmt``, else why not."""
    from edgekit.runtimes import host_formats

    return host_formats().get(fmt, f"no runtime for {fmt}") or None


def installed_for_another_host(slot: Path) -> str:
    """Why this host cannot run the artifact installed in ``slot`` ('' when it can)."""
    from edgekit.bundle import read_bundle

    try:
        manifest = read_bundle(slot, verify=False).manifest
    except EdgekitError:
        return ""  # the runtime says what is wrong with it
    here = [a for a in manifest.artifacts if (slot / a.file).exists()]
    reasons = [runs_here(a.format) for a in here]
    return f"{here[0].target} ({here[0].format}): {reasons[0]}" if here and all(reasons) else ""
