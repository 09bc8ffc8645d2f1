"""What the OTA service and every device client must agree on, bit for bit (no dependencies).

- Names: models and channels are lowercase slugs; a target path is ``MODEL/CHANNEL/RELEASE/FILE``.
- The rollout rule: a device is in a release's rollout when the bucket of its id, a number in
  ``[0, 10000)`` from SHA-256 over ``"<seed>:<device id>"``, is below the rule's ``basis_points``
  (5000 = 50%) and the release is not halted. The seed names the release, so each release samples
  its own share of the fleet. The Kotlin client computes the same (the shared test vectors: ``tests/kotlin_vectors.py`` writes
  ``android-demo/ota-client/src/test/resources/vectors.json``).
- The descriptor: the ``custom`` field of every TUF target edgekit publishes.
- The channel state: the ``custom`` field of ``MODEL/CHANNEL/channel.json``: the current release,
  its rollout rule, and the stable release devices outside the rollout keep or get.

TUF signs canonical JSON, which has no floats: shares are integer basis points.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from edgekit.errors import InvalidNameError, VerificationError
from edgekit.formats import FORMATS

DESCRIPTOR_VERSION = 1
BUCKETS = 10_000
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# NAME without "..", written without look-arounds (JSON Schema and pydantic's regex engine have none):
# what the API documents; check_name() applies both rules.
NAME_SCHEMA = r"^[a-z0-9](?:[a-z0-9_-]|\.[a-z0-9_-])*\.?$"
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CHANNEL_FILE = "channel.json"


def check_name(value: str, what: str = "model name") -> str:
    """A model or channel name: 1-64 of a-z 0-9 . _ - starting with a letter or digit (no path tricks).

    Raises:
        InvalidNameError: Anything else, with the rule.
    """
    if not isinstance(value, str) or not NAME.match(value) or ".." in value:
        raise InvalidNameError(f"{what} {value!r} is not allowed: use 1-64 characters of a-z, 0-9, '.', '_', '-', "
                              "starting with a letter or digit, and no '..'")
    return value


def check_device_id(value: str) -> str:
    """A device id: 1-128 of A-Z a-z 0-9 . _ : - starting with a letter or digit."""
    if not isinstance(value, str) or not DEVICE_ID.match(value):
        raise InvalidNameError(f"device id {value!r} is not allowed: use 1-128 characters of A-Z, a-z, 0-9, '.', '_', "
                              "':', '-', starting with a letter or digit")
    return value


def check_file_name(value: str) -> str:
    """A bundle file name (no directories)."""
    if not isinstance(value, str) or not FILE.match(value) or ".." in value:
        raise InvalidNameError(f"file name {value!r} is not allowed in a published bundle: plain names only "
                              "(letters, digits, '.', '_', '-'), no directories")
    return value


def target_path(model: str, channel: str, release: int, file: str) -> str:
    """The TUF target path of one file of a release."""
    return f"{check_name(model)}/{check_name(channel, 'channel name')}/{int(release)}/{check_file_name(file)}"


def channel_path(model: str, channel: str) -> str:
    """The TUF target path whose ``custom`` holds the channel state."""
    return f"{check_name(model)}/{check_name(channel, 'channel name')}/{CHANNEL_FILE}"


def bucket(device_id: str, seed: str) -> int:
    """The device's bucket in ``[0, 10000)`` for a rollout seeded with ``seed``."""
    digest = hashlib.sha256(f"{seed}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True)
class Rollout:
    """Which share of the fleet gets a release: ``basis_points`` of 10000, unless ``halted``."""

    basis_points: int
    seed: str
    halted: bool = False

    def includes(self, device_id: str) -> bool:
        """Whether ``device_id`` is in this rollout."""
        return not self.halted and bucket(device_id, self.seed) < self.basis_points

    @classmethod
    def from_dict(cls, data: Any) -> Rollout:
        try:
            points = data["basis_points"]
            if not isinstance(points, int) or isinstance(points, bool) or not 0 <= points <= BUCKETS:
                raise ValueError(f"basis_points {points!r} is not an integer in 0..{BUCKETS}")
            return cls(points, str(data["seed"]), bool(data.get("halted", False)))
        except (KeyError, TypeError, ValueError) as exc:
            raise VerificationError(f"a signed rollout rule is malformed ({exc}); the server's metadata is wrong") from exc


@dataclass(frozen=True)
class ReleaseRef:
    """A release of a channel: its counter and the bundle version it delivers."""

    release: int
    version: str


@dataclass(frozen=True)
class ChannelState:
    """The signed state of one channel of one model."""

    model: str
    channel: str
    current: ReleaseRef
    rollout: Rollout
    stable: ReleaseRef | None = None  # what devices outside the rollout get (None: nothing yet)
    rollback_of: int | None = None  # the current release undoes this one (a signed rollback)
    files: dict[str, list[str]] = field(default_factory=dict)  # release counter -> its file names

    def release_for(self, device_id: str) -> ReleaseRef | None:
        """The release this device should run (None: none yet)."""
        return self.current if self.rollout.includes(device_id) else self.stable

    def to_custom(self) -> dict[str, Any]:
        data = asdict(self)
        data["edgekit"] = DESCRIPTOR_VERSION
        return data

    @classmethod
    def from_custom(cls, data: Any) -> ChannelState:
        try:
            if data.get("edgekit") != DESCRIPTOR_VERSION:
                raise ValueError(f"descriptor version {data.get('edgekit')!r}, this client reads {DESCRIPTOR_VERSION}")
            stable = data.get("stable")
            return cls(
                model=str(data["model"]), channel=str(data["channel"]),
                current=ReleaseRef(int(data["current"]["release"]), str(data["current"]["version"])),
                rollout=Rollout.from_dict(data["rollout"]),
                stable=ReleaseRef(int(stable["release"]), str(stable["version"])) if stable else None,
                rollback_of=int(data["rollback_of"]) if data.get("rollback_of") is not None else None,
                files={str(k): [str(f) for f in v] for k, v in dict(data.get("files") or {}).items()},
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise VerificationError(f"the signed channel state is malformed ({exc}); the server's metadata is wrong") from exc


def descriptor(*, model: str, channel: str, version: str, release: int, file: str, kind: str, size: int,
               rollout: Rollout, rollback_of: int | None = None,
               artifact: dict[str, Any] | None = None, delta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``custom`` field of a release file's TUF target.

    ``kind`` is ``manifest`` (bundle.json), ``reference`` (reference.npz), ``artifact`` or ``delta``
    (``edgekit.ota.delta``: ``{"of", "from_release", "from_sha256", "format"}``, the file it rebuilds
    and the base it needs); artifacts
    (``{"target", "format", "precision"}``) add those and the runtime they need; a directory artifact
    delivered as its tar also names the directory (``packed_from``) and its own hash and size.
    """
    out: dict[str, Any] = {
        "edgekit": DESCRIPTOR_VERSION, "model": model, "channel": channel, "version": version, "release": release,
        "file": file, "kind": kind, "size": size, "rollout": asdict(rollout), "rollback_of": rollback_of,
    }
    if artifact is not None:
        out.update(target=artifact["target"], format=artifact["format"], precision=artifact["precision"],
                   runtime=FORMATS[artifact["format"]].device_runtime if artifact["format"] in FORMATS
                   else artifact["format"])
        if artifact.get("packed_from"):  # a directory artifact delivered as its tar (pack_directory)
            out.update(packed_from=artifact["packed_from"], directory_sha256=artifact["directory_sha256"],
                       directory_size=int(artifact["directory_size"]))
    if delta is not None:
        out["delta"] = {"of": delta["of"], "from_release": int(delta["from_release"]),
                        "from_sha256": delta["from_sha256"], "format": delta["format"]}
    return out


def target_key(path: str, sha256: str) -> str:
    """Where a target file lives under the repository's base: its hash-prefixed name, as TUF's
    consistent snapshots want (``targets/<dir>/<sha256>.<name>``). The service stores it there and
    the device downloads it from there."""
    directory, _, base = path.rpartition("/")
    return f"targets/{directory}/{sha256}.{base}" if directory else f"targets/{sha256}.{base}"


# -- directory artifacts (Core ML's .mlpackage) ---------------------------------------------------
# A directory is delivered as one file: a tar whose bytes depend only on the names and contents of the
# files in it (sorted, mtime 0, owner 0, modes 0644/0755, no compression), so its sha256 is stable and
# TUF signs it like any target. The descriptor records the directory's own hash as well (the manifest's
# sha256 of the artifact: edgekit._files.hash_path), which the device checks after unpacking.
PACKED_SUFFIX = ".tar"
PACK_MAX_MEMBERS = 10_000


def packed_name(file: str) -> str:
    """The delivered file of a directory artifact: ``coreml.mlpackage`` -> ``coreml.mlpackage.tar``."""
    return file + PACKED_SUFFIX


def pack_directory(path: Any) -> bytes:
    """The deterministic tar of the directory ``path`` (regular files and folders only).

    Raises:
        VerificationError: The directory holds a link or another kind of file, which no device unpacks.
    """
    import io
    import tarfile
    from pathlib import Path

    root = Path(path)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
            name = item.relative_to(root).as_posix()
            if item.is_symlink() or not (item.is_file() or item.is_dir()):
                raise VerificationError(f"{root.name} holds {name}, which is not a regular file or folder; "
                                        "a directory artifact must hold only files and folders to be delivered")
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if item.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = item.stat().st_size, 0o644
                with item.open("rb") as fh:
                    tar.addfile(info, fh)
    return out.getvalue()


def unpack_directory(archive: Any, dst: Any, *, max_bytes: int) -> None:
    """Unpack a :func:`pack_directory` tar into the new folder ``dst``: relative names without ``..``,
    regular files and folders only, at most ``max_bytes`` of files (the artifact's size from its
    signed descriptor) and :data:`PACK_MAX_MEMBERS` entries.

    Raises:
        VerificationError: Not such a tar, or an entry that breaks a rule (nothing is left in ``dst``).
    """
    import shutil
    import tarfile
    from pathlib import Path, PurePosixPath

    root = Path(dst)
    root.mkdir()
    written = 0
    try:
        with tarfile.open(archive, "r:") as tar:
            for count, member in enumerate(tar, start=1):
                name = PurePosixPath(member.name)
                if count > PACK_MAX_MEMBERS or name.is_absolute() or ".." in name.parts or not name.parts \
                        or "\\" in member.name:
                    raise VerificationError(f"the archive holds {member.name!r}: names must be relative and stay inside "
                                            "the folder")
                target = root.joinpath(*name.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise VerificationError(f"the archive holds {member.name!r}, which is not a regular file or folder")
                written += member.size
                if written > max_bytes:
                    raise VerificationError(f"the archive unpacks to more than the {max_bytes} bytes its descriptor signs")
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise VerificationError(f"cannot read {member.name!r} from the archive")
                with source, target.open("wb") as out:
                    shutil.copyfileobj(source, out)
    except (tarfile.TarError, OSError, VerificationError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        if isinstance(exc, VerificationError):
            raise
        raise VerificationError(f"the directory archive cannot be unpacked: {type(exc).__name__}: {exc}") from exc
