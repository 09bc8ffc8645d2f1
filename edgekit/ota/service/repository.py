"""The service's TUF repository (python-tuf's metadata API; edgekit does no signing of its own).

Roles and keys (ed25519):

- ``root`` and ``targets``: offline in production. Needed only by ``edgekit ota init`` (and key
  rotation). ``targets`` delegates every path to 16 hashed bins (TUF succinct roles, TAP 15), once.
- ``bins``, ``snapshot``, ``timestamp``: online, held by the service. Publishing a release or
  changing a rollout re-signs only the bins that hold the changed targets, then snapshot, then
  timestamp.

Metadata is written with consistent snapshots (``metadata/<version>.<role>.json``, and
``metadata/timestamp.json``), target files under hash-prefixed names
(``targets/<dir>/<sha256>.<name>``), so every file a device reads is immutable but the timestamp.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from edgekit.errors import OtaRequestError, UserError
from edgekit.ota import contract
from edgekit.ota.service.storage import Storage

ONLINE_ROLES = ("bins", "snapshot", "timestamp")
ALL_ROLES = ("root", "targets", *ONLINE_ROLES)
BIN_BITS = 4  # 16 bins


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata stays valid after it is signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=365)
    bins: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=30)
    timestamp: timedelta = timedelta(days=1)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def generate_keys(keys_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Write one ed25519 key per role into ``keys_dir`` (``<role>.pem``, mode 0600); their key ids.

    Raises:
        UserError: ``keys_dir`` already holds keys (never overwritten).
    """
    from cryptography.hazmat.primitives import serialization
    from securesystemslib.signer import CryptoSigner

    folder = Path(keys_dir)
    if any((folder / f"{role}.pem").exists() for role in ALL_ROLES):
        raise UserError(f"{folder} already holds OTA keys; move them away first (keys are never overwritten)")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    ids = {}
    for role in ALL_ROLES:
        signer = CryptoSigner.generate_ed25519()
        pem = signer._private_key.private_bytes(  # noqa: SLF001 (the documented way to export a CryptoSigner key)
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        path = folder / f"{role}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        ids[role] = signer.public_key.keyid
    return ids


def load_signers(keys_dir: str | os.PathLike[str], roles: Iterable[str] = ONLINE_ROLES) -> dict[str, Any]:
    """CryptoSigners for ``roles`` from ``keys_dir``.

    Raises:
        UserError: A key file is missing or unreadable.
    """
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner

    signers = {}
    for role in roles:
        path = Path(keys_dir) / f"{role}.pem"
        try:
            key = load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read the {role} key {path} ({exc}); create keys with `edgekit ota keygen DIR`") from exc
        signers[role] = CryptoSigner(key)
    return signers


class Repository:
    """TUF metadata in a :class:`Storage`, signed with the online keys."""

    def __init__(self, storage: Storage, signers: dict[str, Any], expiry: Expiry | None = None) -> None:
        self.storage = storage
        self.signers = signers
        self.expiry = expiry or Expiry()

    # -- creation ------------------------------------------------------------------------------

    @classmethod
    def create(cls, storage: Storage, keys_dir: str | os.PathLike[str], expiry: Expiry | None = None) -> Repository:
        """Write version 1 of every role (root, targets delegating to 16 bins, the bins, snapshot, timestamp).

        Raises:
            UserError: The storage already holds a repository.
        """
        from tuf.api.metadata import (
            Delegations,
            Metadata,
            MetaFile,
            Root,
            Snapshot,
            SuccinctRoles,
            Targets,
            Timestamp,
        )

        if storage.stat("metadata/timestamp.json") is not None:
            raise UserError("this storage already holds a TUF repository; serve it, or start from an empty one")
        signers = load_signers(keys_dir, ALL_ROLES)
        expiry = expiry or Expiry()
        now = _now()
        root = Metadata(Root(expires=now + expiry.root, consistent_snapshot=True))
        for role in ("root", "targets", "snapshot", "timestamp"):
            root.signed.add_key(signers[role].public_key, role)
        root.sign(signers["root"])
        targets = Metadata(Targets(expires=now + expiry.targets))
        bins_key = signers["bins"].public_key
        succinct = SuccinctRoles([bins_key.keyid], 1, BIN_BITS, "bins")
        targets.signed.delegations = Delegations(keys={bins_key.keyid: bins_key}, succinct_roles=succinct)
        targets.sign(signers["targets"])
        repo = cls(storage, {r: signers[r] for r in ONLINE_ROLES}, expiry)
        storage.put("metadata/1.root.json", repo._bytes(root))
        storage.put("metadata/root.json", repo._bytes(root))
        storage.put("metadata/1.targets.json", repo._bytes(targets))
        snapshot = Metadata(Snapshot(expires=now + expiry.snapshot))
        snapshot.signed.meta = {"targets.json": MetaFile(1)}
        for bin_name in succinct.get_roles():
            bin_role = Metadata(Targets(expires=now + expiry.bins))
            bin_role.sign(signers["bins"])
            storage.put(f"metadata/1.{bin_name}.json", repo._bytes(bin_role))
            snapshot.signed.meta[f"{bin_name}.json"] = MetaFile(1)
        snapshot.sign(signers["snapshot"])
        storage.put("metadata/1.snapshot.json", repo._bytes(snapshot))
        timestamp = Metadata(Timestamp(expires=now + expiry.timestamp))
        timestamp.signed.snapshot_meta = MetaFile(1)
        timestamp.sign(signers["timestamp"])
        storage.put("metadata/timestamp.json", repo._bytes(timestamp))
        return repo

    # -- reading -------------------------------------------------------------------------------

    @staticmethod
    def _bytes(md: Any) -> bytes:
        from tuf.api.serialization.json import JSONSerializer

        return bytes(md.to_bytes(JSONSerializer(compact=True)))

    def _load(self, key: str) -> Any:
        from tuf.api.metadata import Metadata

        try:
            return Metadata.from_bytes(self.storage.get(key))
        except KeyError:
            raise UserError(f"the OTA storage has no {key}: create the repository with `edgekit ota init`") from None

    def root_bytes(self) -> bytes:
        """The current root metadata (what a device is built with as its trusted root)."""
        return self.storage.get("metadata/root.json")

    def _snapshot(self) -> Any:
        timestamp = self._load("metadata/timestamp.json")
        return timestamp, self._load(f"metadata/{timestamp.signed.snapshot_meta.version}.snapshot.json")

    def _succinct(self) -> Any:
        _, snapshot = self._snapshot()
        targets = self._load(f"metadata/{snapshot.signed.meta['targets.json'].version}.targets.json")
        return targets.signed.delegations.succinct_roles

    def all_targets(self) -> dict[str, Any]:
        """Every signed target (path -> TargetFile), each bin read once."""
        _, snapshot = self._snapshot()
        out: dict[str, Any] = {}
        for name in self._succinct().get_roles():
            role = self._load(f"metadata/{snapshot.signed.meta[f'{name}.json'].version}.{name}.json")
            out.update(role.signed.targets)
        return out

    # -- writing -------------------------------------------------------------------------------

    def update(self, changes: dict[str, tuple[bytes, dict[str, Any]] | Any | None]) -> int:
        """Set, replace or remove targets, then re-sign the bins touched, snapshot and timestamp.

        ``changes`` maps a target path to ``(content bytes, custom)`` (a new file: stored under its
        hash-prefixed name), to a ``TargetFile`` (metadata only: same bytes, new custom), or to None
        (removed). The caller serializes updates (one writer at a time). Returns the new timestamp
        version.
        """
        from tuf.api.metadata import TargetFile

        timestamp, snapshot = self._snapshot()
        succinct = self._succinct()
        by_bin: dict[str, dict[str, Any]] = {}
        for path, change in changes.items():
            by_bin.setdefault(succinct.get_role_for_target(path), {})[path] = change
        now = _now()
        for name, items in by_bin.items():
            role = self._load(f"metadata/{snapshot.signed.meta[f'{name}.json'].version}.{name}.json")
            for path, change in items.items():
                if change is None:
                    role.signed.targets.pop(path, None)
                elif isinstance(change, tuple):
                    data, custom = change
                    info = TargetFile.from_data(path, data, ["sha256"])
                    info.unrecognized_fields["custom"] = custom
                    key = contract.target_key(path, info.hashes["sha256"])
                    if self.storage.stat(key) is None:
                        self.storage.put(key, data)
                    role.signed.targets[path] = info
                else:
                    role.signed.targets[path] = change
            self._sign_bin(role, name, snapshot, now)
        return self._publish_snapshot(timestamp, snapshot, now)

    def _sign_bin(self, role: Any, name: str, snapshot: Any, now: datetime) -> None:
        """Bump, re-sign and store one bin; point the (unsigned yet) snapshot at the new version."""
        from tuf.api.metadata import MetaFile

        role.signed.version = self._next_version(name, role.signed.version)
        role.signed.expires = now + self.expiry.bins
        role.signatures.clear()
        role.sign(self.signers["bins"])
        self.storage.put(f"metadata/{role.signed.version}.{name}.json", self._bytes(role))
        snapshot.signed.meta[f"{name}.json"] = MetaFile(role.signed.version)

    def _next_version(self, role: str, current: int) -> int:
        """The version after ``current`` whose file does not exist yet. A crash can leave a versioned file
        that nothing signed points to; its number is skipped, never written again with other bytes
        (devices and caches keep versioned names as immutable)."""
        version = current + 1
        while self.storage.stat(f"metadata/{version}.{role}.json") is not None:
            version += 1
        return version

    def _publish_snapshot(self, timestamp: Any, snapshot: Any, now: datetime) -> int:
        snapshot.signed.version = self._next_version("snapshot", snapshot.signed.version)
        snapshot.signed.expires = now + self.expiry.snapshot
        snapshot.signatures.clear()
        snapshot.sign(self.signers["snapshot"])
        self.storage.put(f"metadata/{snapshot.signed.version}.snapshot.json", self._bytes(snapshot))
        return self._sign_timestamp(timestamp, snapshot, now)

    def _sign_timestamp(self, timestamp: Any, snapshot: Any, now: datetime) -> int:
        from tuf.api.metadata import MetaFile

        timestamp.signed.version += 1
        timestamp.signed.expires = now + self.expiry.timestamp
        timestamp.signed.snapshot_meta = MetaFile(snapshot.signed.version)
        timestamp.signatures.clear()
        timestamp.sign(self.signers["timestamp"])
        self.storage.put("metadata/timestamp.json", self._bytes(timestamp))
        return int(timestamp.signed.version)

    def refresh(self, margin: float = 0.5) -> bool:
        """Re-sign timestamp (and snapshot, bins) whose remaining validity is under ``margin`` of its
        lifetime, so devices never see expired metadata while the service runs. True if it did."""
        timestamp, snapshot = self._snapshot()
        now = _now()
        stale_bins = []
        for name in self._succinct().get_roles():
            role = self._load(f"metadata/{snapshot.signed.meta[f'{name}.json'].version}.{name}.json")
            if role.signed.expires - now < self.expiry.bins * margin:
                stale_bins.append(name)
        if stale_bins:  # re-signing the bins re-signs snapshot and timestamp too
            for name in stale_bins:
                role = self._load(f"metadata/{snapshot.signed.meta[f'{name}.json'].version}.{name}.json")
                self._sign_bin(role, name, snapshot, now)
            self._publish_snapshot(timestamp, snapshot, now)
            return True
        if snapshot.signed.expires - now < self.expiry.snapshot * margin:
            self._publish_snapshot(timestamp, snapshot, now)
            return True
        if timestamp.signed.expires - now < self.expiry.timestamp * margin:
            self._sign_timestamp(timestamp, snapshot, now)
            return True
        return False


def custom_of(info: Any) -> dict[str, Any]:
    """A TargetFile's ``custom`` field."""
    custom = info.unrecognized_fields.get("custom")
    if not isinstance(custom, dict):
        raise OtaRequestError(f"target {info.path} has no edgekit descriptor", status=500)
    return custom


def canonical(data: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces): the channel file's content."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
