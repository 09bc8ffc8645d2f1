"""Benchmark: the real-model corpus through edgekit, and through the converters it wraps called alone.

For each corpus model (benchmarks/corpus/models.toml, fetched by ``python -m benchmarks.corpus.fetch``)
this runs ``edgekit convert`` once with every target, in a fresh empty working directory and a fresh
TMPDIR, and records per target: passed (parity measured and within tolerance), or the failure and the
routes tried; the size ratio against the source; the parity figures; the exit code; and anything left
behind in the working directory, the temp dir or beside --out. Then the same models go through the
wrapped tools alone, as a user would call them:

  onnx2tf     ``onnx2tf -i model.onnx`` (ONNX sources), its float32 .tflite run by LiteRT on the samples
  coremltools ``ct.convert`` on the PyTorch and TensorFlow sources (it has no ONNX frontend), run by
              edgekit's MIL interpreter (Core ML itself needs macOS)
  ort-quant   onnxruntime's ``quantize_static`` with its defaults, run by onnxruntime on the samples
  fp16-converter  onnxconverter-common's ``convert_float_to_float16`` (float32 I/O), run by onnxruntime

Each result is kept in WORK/results.json; a second run redoes only what is missing (``--redo`` redoes
all). ``--table`` prints the markdown tables for benchmarks/RESULTS.md.

Run: .venv/bin/python benchmarks/bench_corpus.py [--only ID ...] [--targets T,...] [--tools edgekit,onnx2tf,...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

FP32 = ("onnx-web", "tflite", "coreml-fp16")
REDUCED = ("onnx-web-fp16", "onnx-web-int8", "tflite-fp16", "tflite-int8")
TOOLS = ("edgekit", "onnx2tf", "coremltools", "ort-quant", "fp16-converter")
TIMEOUT = 1800


def _leftovers(cwd: Path, tmpdir: Path, out: Path) -> list[str]:
    found = [f"cwd:{p.name}" for p in cwd.iterdir()]
    found += [f"tmp:{p.name}" for p in tmpdir.iterdir() if p.name != ".ses"]  # onnxruntime's own session marker
    found += [f"beside-out:{p.name}" for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return found


def run_edgekit(entry: Any, targets: tuple[str, ...], work: Path) -> dict[str, Any]:
    """``edgekit convert`` with every target; the manifest's verdict per target."""
    out = work / "bundles" / entry.id
    cwd, tmpdir = Path(tempfile.mkdtemp(prefix="cwd-", dir=work)), Path(tempfile.mkdtemp(prefix="tmp-", dir=work))
    cmd = [sys.executable, "-m", "edgekit", "convert", entry.source, "--calibration", entry.calibration,
           "--out", str(out), "--overwrite", "--keep-partial", "--name", entry.id]
    for t in targets:
        cmd += ["--target", t]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, "TMPDIR": str(tmpdir)}, capture_output=True,
                              text=True, timeout=TIMEOUT, check=False)
        rc, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stderr = -1, f"timed out after {TIMEOUT}s: {exc.stderr!r}"[-2000:]
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {"rc": rc, "seconds": round(seconds, 1), "leftovers": _leftovers(cwd, tmpdir, out),
                              "targets": {}}
    shutil.rmtree(cwd, ignore_errors=True)
    shutil.rmtree(tmpdir, ignore_errors=True)
    manifest_path = out / "bundle.json"
    if not manifest_path.is_file():
        result["error"] = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {rc}, no bundle"
        return result
    result["targets"] = verdicts(json.loads(manifest_path.read_text()))
    for t in targets:
        result["targets"].setdefault(t, {"status": "missing", "error": stderr.strip()[-400:]})
    return result


def verdicts(manifest: dict[str, Any]) -> dict[str, Any]:
    """Per target: its main artifact's verdict (a format variant, such as ORT, aside), or its failure."""
    out: dict[str, Any] = {}
    source_size = manifest["source"]["size_bytes"]
    for art in manifest.get("artifacts", []):
        if art["target"] in out:  # the target's own artifact comes first; variants follow
            continue
        parity = art.get("parity") or {}
        out[art["target"]] = {
            "status": "passed" if parity.get("passed") else ("unverified" if art.get("unverified") else "accepted"),
            "route": art.get("route"), "size_ratio": round(art["size_bytes"] / source_size, 3) if source_size else None,
            "max_abs_error": parity.get("max_abs_error"), "top1": parity.get("top1_agreement"),
            "unverified": art.get("unverified"), "routes_tried": art.get("routes_tried"),
        }
    for fail in manifest.get("failures") or []:
        out[fail["target"]] = {"status": "failed", "error": fail["error"][:400], "kind": fail.get("kind"),
                               "route": fail.get("route"), "routes_tried": fail.get("routes_tried")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--targets", default=",".join(FP32 + REDUCED))
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "corpus-bench")
    parser.add_argument("--redo", action="store_true")
    parser.add_argument("--table", action="store_true", help="only print the tables from WORK/results.json")
    parser.add_argument("--merge", type=Path, nargs="*", default=[], help="more results.json files for --table")
    args = parser.parse_args()
    from benchmarks.corpus import wrapped
    from benchmarks.corpus.fetch import fetch
    from benchmarks.corpus.report import tables

    args.work = args.work.resolve()  # the tools run in their own working directories
    args.work.mkdir(parents=True, exist_ok=True)
    results_path = args.work / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if args.table:
        for extra in args.merge:
            results.update(json.loads(extra.read_text()))
        print(tables(results))
        return
    targets = tuple(t for t in args.targets.split(",") if t)
    for entry in fetch(args.only):
        for tool in args.tools.split(","):
            key = f"{entry.id}/{tool}"
            if key in results and not args.redo and (tool != "edgekit" or set(targets) <= set(results[key]["targets"])):
                continue
            print(f"{key} ...", flush=True)
            if tool == "edgekit":
                results[key] = run_edgekit(entry, targets, args.work)
            else:
                results[key] = wrapped.run(tool, entry, args.work)
            results_path.write_text(json.dumps(results, indent=1, sort_keys=True))
            print(f"  {json.dumps(results[key])[:600]}", flush=True)
    print(tables(results))


if __name__ == "__main__":
    main()
