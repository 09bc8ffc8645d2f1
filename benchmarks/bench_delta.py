"""Benchmark: tensor-level delta updates (edgekit.ota.delta) against bsdiff and zstd --patch-from.

One run, on the artifacts `edgekit convert` writes (onnx-web .onnx and tflite .tflite) for:
  retrained head   MobileNetV2 (examples/retrained_head): release N's 10-class head trained 1 epoch,
                   release N+1 the same model with the head trained 3 more (every other tensor equal)
  all moved        release N with every weight scaled by (1 + 1e-3 noise): fine-tuning everything,
                   (the service publishes deltas up to 80 % of the file)
For each pair: the full file's size, each delta's size (and its share of the full file), the time to
make it and to apply it (rebuilt bytes checked equal to the new file).
Run: .venv/bin/python benchmarks/bench_delta.py   (about 3 minutes; needs the tensorflow extra,
bsdiff4 (`make bench` installs it) and Debian's zstd)
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

ARTIFACTS = {"onnx-web.onnx": "onnx", "tflite.tflite": "tflite"}


def _convert(model: Path, out: Path, version: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "edgekit"), "-q", "convert", str(model), "-t", "onnx-web", "-t",
                    "tflite", "--name", "head", "--version", version, "--out", str(out), "--no-report"],
                   check=True, capture_output=True)


def _all_moved(src: Path, dst: Path) -> None:
    import keras
    import numpy as np

    model = keras.models.load_model(src)
    rng = np.random.default_rng(1)
    model.set_weights([w * (1 + 1e-3 * rng.standard_normal(w.shape)).astype(w.dtype) for w in model.get_weights()])
    model.save(dst)


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _compare(old: Path, new: Path, fmt: str, tmp: Path) -> dict[str, Any]:
    import bsdiff4

    from edgekit.ota import delta

    a, b = old.read_bytes(), new.read_bytes()
    row: dict[str, Any] = {"full_bytes": len(b)}
    made, t_make = _timed(lambda: delta.make(a, b, fmt))
    out = io.BytesIO()
    _, t_apply = _timed(lambda: delta.apply(a, made, out, max_size=len(b)))
    row["edgekit"] = {"bytes": len(made), "share": round(len(made) / len(b), 4), "make_s": round(t_make, 3),
                      "apply_s": round(t_apply, 3), "rebuilt_equal": out.getvalue() == b}
    patch, t_make = _timed(lambda: bsdiff4.diff(a, b))
    rebuilt, t_apply = _timed(lambda: bsdiff4.patch(a, patch))
    row["bsdiff4"] = {"bytes": len(patch), "share": round(len(patch) / len(b), 4), "make_s": round(t_make, 3),
                      "apply_s": round(t_apply, 3), "rebuilt_equal": rebuilt == b}
    zst, back = tmp / "patch.zst", tmp / "rebuilt"
    _, t_make = _timed(lambda: subprocess.run(["zstd", "-q", "-f", "-19", "--long=27", "--patch-from", str(old), str(new),
                                               "-o", str(zst)], check=True))
    _, t_apply = _timed(lambda: subprocess.run(["zstd", "-q", "-f", "-d", "--long=27", "--patch-from", str(old), str(zst),
                                                "-o", str(back)], check=True))
    size = zst.stat().st_size
    row["zstd_patch_from_19"] = {"bytes": size, "share": round(size / len(b), 4), "make_s": round(t_make, 3),
                                 "apply_s": round(t_apply, 3), "rebuilt_equal": back.read_bytes() == b}
    return row


def main() -> None:
    if not shutil.which("zstd"):
        raise SystemExit("zstd is missing: apt-get install -y zstd")
    sys.path.insert(0, str(ROOT))
    from examples.retrained_head.make_releases import build_releases

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        first, second = build_releases(tmp / "models")
        _all_moved(first, tmp / "models" / "moved.keras")
        moved = tmp / "models" / "moved.keras"
        for model, out, version in ((first, "n", "1.0.0"), (second, "n1", "1.0.1"), (moved, "moved", "1.0.2")):
            _convert(model, tmp / out, version)
        for case, new in (("retrained head", "n1"), ("all moved", "moved")):
            for name, fmt in ARTIFACTS.items():
                results.setdefault(case, {})[name] = _compare(tmp / "n" / name, tmp / new / name, fmt, tmp)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
