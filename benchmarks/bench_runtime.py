"""Benchmark: edgekit's Session.run against the raw runtime calls, and the import cost of the runtime.

Models: the digits CNN (Keras, examples/digits) and MobileNetV2 96x96 (trained as in common.py),
each converted by edgekit to onnx-web and tflite (fp32, batch 1 feeds). For each artifact, in one
process, alternating rounds of N calls:
  raw ORT      onnxruntime.InferenceSession(...).run(None, feeds) with the same session options
  raw LiteRT   ai_edge_litert Interpreter: set_tensor, invoke, get_tensor
  edgekit      edgekit.runtimes.open(bundle, target=...).run(feeds) (timing and stats included)
The figure is the median over rounds of the mean time per call; the aim is at most 1.05x raw.
Then `python -c "import edgekit.runtimes"` against `python -c "import onnxruntime"` (aim: at most
1.2x), and the same with a session opened and run once.

Run: .venv/bin/python benchmarks/bench_runtime.py   (about 3 minutes on 2 cores)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

ROUNDS = 9
IMPORT_RUNS = 15


def _per_call(fn: Any, calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls / 1e3  # microseconds


def compare(bundle: Path, target: str, calls: int) -> dict[str, Any]:
    """Median per-call time of the raw runtime and of edgekit's session on one artifact (batch 1)."""
    import edgekit.runtimes as rt
    from edgekit.bundle import read_bundle

    manifest = read_bundle(bundle).manifest
    art = manifest.artifact(target, "onnx" if target.startswith("onnx") else None)
    session = rt.open(bundle, target=target, format=art.format)
    spec = session.inputs[0]
    x = np.random.default_rng(0).random([1 if not isinstance(d, int) else d for d in spec.shape]).astype(np.float32)
    feeds = {spec.name: x}
    if art.format == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        raw_session = ort.InferenceSession(str(bundle / art.file), options, providers=["CPUExecutionProvider"])

        def raw() -> Any:
            return raw_session.run(None, feeds)
    else:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(bundle / art.file))
        interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], x.shape)
        interpreter.allocate_tensors()
        index_in = interpreter.get_input_details()[0]["index"]
        index_out = interpreter.get_output_details()[0]["index"]

        def raw() -> Any:
            interpreter.set_tensor(index_in, x)
            interpreter.invoke()
            return interpreter.get_tensor(index_out)

    def ours() -> Any:
        return session.run(feeds)

    assert np.allclose(np.asarray(ours()[manifest.outputs[0].name]).ravel(), np.asarray(
        raw()[0] if isinstance(raw(), list) else raw()).ravel(), atol=1e-4)
    for fn in (raw, ours):  # warm up
        _per_call(fn, max(calls // 10, 5))
    raw_times, our_times = [], []
    for _ in range(ROUNDS):
        raw_times.append(_per_call(raw, calls))
        our_times.append(_per_call(ours, calls))
    r, o = statistics.median(raw_times), statistics.median(our_times)
    return {"target": target, "format": art.format, "raw_us": r, "edgekit_us": o, "ratio": o / r,
            "provider": session.provider}


def _import_time(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def import_times() -> dict[str, float]:
    model = str(ROOT / "examples" / "digits" / "digits.onnx")
    codes = {
        "import edgekit.runtimes": "import edgekit.runtimes",
        "import onnxruntime": "import onnxruntime",
        "edgekit: import, open, run": (
            "import numpy as np, edgekit.runtimes as rt; "
            f"rt.open({model!r}).run({{'x': np.zeros((1, 1, 8, 8), np.float32)}})"),
        "onnxruntime: import, open, run": (
            "import numpy as np, onnxruntime as ort; "
            f"ort.InferenceSession({model!r}, providers=['CPUExecutionProvider'])"
            ".run(None, {'x': np.zeros((1, 1, 8, 8), np.float32)})"),
    }
    samples: dict[str, list[float]] = {k: [] for k in codes}
    for _ in range(IMPORT_RUNS):
        for name, code in codes.items():
            samples[name].append(_import_time(code))
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    from edgekit.converters import convert

    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, str(Path(__file__).parent / "common.py"), str(work)], check=True,
                       capture_output=True)
        digits = convert(ROOT / "examples" / "digits" / "digits.keras", ["onnx-web", "tflite"], out=work / "digits",
                         calibration=ROOT / "examples" / "digits" / "digits.npz").bundle.path
        mobilenet = convert(work / "model.keras", ["onnx-web", "tflite"], out=work / "mobilenet",
                            calibration=work / "calibration.npz").bundle.path
        rows = []
        for name, bundle, calls in (("digits", digits, 3000), ("MobileNetV2 96x96", mobilenet, 200)):
            for target in ("onnx-web", "tflite"):
                row = compare(bundle, target, calls)
                rows.append({"model": name, **row})
        print("| model | artifact | raw call (us) | edgekit Session.run (us) | ratio | provider |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['target']} ({r['format']}) | {r['raw_us']:.1f} | {r['edgekit_us']:.1f} "
                  f"| {r['ratio']:.3f} | {r['provider']} |")
        times = import_times()
        print(f"\nmedian of {IMPORT_RUNS} fresh interpreters (python -c ...), seconds:")
        for k, v in times.items():
            print(f"  {k}: {v:.3f}")
        print(f"  import ratio: {times['import edgekit.runtimes'] / times['import onnxruntime']:.2f}x; "
              f"import+open+run ratio: {times['edgekit: import, open, run'] / times['onnxruntime: import, open, run']:.2f}x")
        print(json.dumps({"rows": rows, "imports": times}))


if __name__ == "__main__":
    main()
