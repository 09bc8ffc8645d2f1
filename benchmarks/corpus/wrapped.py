"""The converters edgekit wraps, called alone on a corpus model as a user would, and checked the same way.

``run(tool, entry, work)`` runs ``python -m benchmarks.corpus.wrapped TOOL ENTRY.json OUT.json`` in a
fresh process (a crash is that tool's failure) and returns its verdict: passed, failed (and why) or
n/a. Parity is measured one sample at a time against the source run by its own framework:
max abs error over the largest reference magnitude, within 1e-3 (fp32), 5e-2 (Core ML fp16) or 0.25
(int8); integer outputs must match exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = {"onnx2tf": 1e-3, "coremltools": 5e-2, "ort-quant": 0.25, "fp16-converter": 5e-2}
TIMEOUT = 1800


def run(tool: str, entry: Any, work: Path) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"{tool}-", dir=work))
    (tmp / "entry.json").write_text(json.dumps(entry.__dict__))
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.corpus.wrapped", tool, str(tmp / "entry.json"),
                               str(tmp / "result.json")], cwd=tmp, capture_output=True, text=True, timeout=TIMEOUT,
                              env={**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}, check=False)
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired:
        rc, err = -1, f"timed out after {TIMEOUT}s"
    seconds = round(time.perf_counter() - start, 1)
    result_file = tmp / "result.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else {
        "status": "failed", "error": f"crashed (exit {rc}): " + (err.strip().splitlines() or [""])[-1][:300]}
    shutil.rmtree(tmp, ignore_errors=True)
    return {**result, "seconds": seconds}


def _feeds(calibration: str, names: list[str], ranks: list[int]) -> list[dict[str, np.ndarray]]:
    """One feed per sample: arrays of the input's rank give ``[i:i+1]``, rank + 1 give ``[i]``, scalars stay."""
    data = dict(np.load(calibration))
    arrays = {n: data[n] if n in data else data["x"] for n in names}
    count = max((a.shape[0] for a in arrays.values() if a.ndim), default=1)
    feeds = []
    for i in range(count):
        feed = {}
        for name, rank in zip(names, ranks, strict=True):
            a = arrays[name]
            feed[name] = a if a.ndim == 0 else (a[i] if a.ndim == rank + 1 else a[i:i + 1])
        feeds.append(feed)
    return feeds


def _rel_error(ref: np.ndarray, act: np.ndarray) -> float:
    if not np.issubdtype(ref.dtype, np.floating):
        return 0.0 if np.array_equal(ref, act) else float("inf")
    scale = float(np.max(np.abs(ref))) or 1.0
    return float(np.max(np.abs(ref.astype(np.float64) - act.astype(np.float64)))) / scale if ref.size else 0.0


def _match(ref: np.ndarray, act: np.ndarray) -> np.ndarray | None:
    """``act`` in the reference's layout: as it is, or channels-last moved back to axis 1."""
    act = np.asarray(act)
    if act.shape == ref.shape:
        return act
    if act.ndim == ref.ndim >= 3:
        back = np.moveaxis(act, -1, 1)
        if back.shape == ref.shape:
            return back
    if act.size == ref.size:
        return act.reshape(ref.shape)
    return None


def _verdict(refs: list[list[np.ndarray]], acts: list[list[np.ndarray]], tolerance: float) -> dict[str, Any]:
    worst = 0.0
    for ref_outs, act_outs in zip(refs, acts, strict=True):
        if len(ref_outs) != len(act_outs):
            return {"status": "failed", "error": f"{len(act_outs)} outputs for the source's {len(ref_outs)}"}
        for ref, act in zip(ref_outs, act_outs, strict=True):
            matched = _match(ref, act)
            if matched is None:
                return {"status": "failed", "error": f"output shape {list(np.shape(act))} for {list(ref.shape)}"}
            worst = max(worst, _rel_error(ref, matched))
    ok = worst <= tolerance
    return {"status": "passed" if ok else "failed", "max_rel_error": worst,
            **({} if ok else {"error": f"parity: max rel error {worst:.3g} > {tolerance}"})}


def _onnx_reference(path: str, calibration: str) -> tuple[list[dict[str, np.ndarray]], list[list[np.ndarray]]]:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = _feeds(calibration, names, [len(i.shape) for i in session.get_inputs()])
    return feeds, [session.run(None, f) for f in feeds]


def onnx2tf_alone(entry: dict[str, Any], out: Path) -> dict[str, Any]:
    if not entry["source"].endswith(".onnx"):
        return {"status": "n/a", "error": "onnx2tf takes ONNX only"}
    from ai_edge_litert.interpreter import Interpreter

    feeds, refs = _onnx_reference(entry["source"], entry["calibration"])
    shutil.copy(entry["source"], out / "model.onnx")  # onnx2tf rewrites its input in place
    onnx2tf = Path(sys.executable).with_name("onnx2tf")
    proc = subprocess.run([str(onnx2tf), "-i", "model.onnx", "-o", "saved_model"], cwd=out, capture_output=True,
                          text=True, check=False, timeout=TIMEOUT)
    tflite = out / "saved_model" / "model_float32.tflite"
    if not tflite.is_file():
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "Error" in ln or "error" in ln]
        return {"status": "failed", "error": "onnx2tf: " + (lines[-1] if lines else f"exit {proc.returncode}")[:300]}
    acts = []
    for feed in feeds:
        interp = Interpreter(model_path=str(tflite))
        details = interp.get_input_details()
        if len(details) != len(feed):
            return {"status": "failed", "error": f"the tflite has {len(details)} inputs for the source's {len(feed)}"}
        values = list(feed.values())
        for d, v in zip(details, values, strict=True):
            v = np.asarray(v)
            if v.ndim >= 3 and tuple(d["shape"]) != v.shape:
                v = np.moveaxis(v, 1, -1)
            interp.resize_tensor_input(d["index"], list(v.shape) if v.ndim else [])
        interp.allocate_tensors()
        for d, v in zip(interp.get_input_details(), values, strict=True):
            v = np.asarray(v)
            if v.ndim >= 3 and tuple(d["shape"]) != v.shape:
                v = np.moveaxis(v, 1, -1)
            interp.set_tensor(d["index"], v.astype(d["dtype"]))
        interp.invoke()
        acts.append([interp.get_tensor(d["index"]) for d in interp.get_output_details()])
    return _verdict(refs, acts, TOLERANCE["onnx2tf"])


def coremltools_alone(entry: dict[str, Any], out: Path) -> dict[str, Any]:
    import coremltools as ct

    from edgekit.converters.mil import MilRuntime

    source = entry["source"]
    if source.endswith(".onnx"):
        return {"status": "n/a", "error": "coremltools has no ONNX frontend"}
    data = dict(np.load(entry["calibration"]))
    if source.endswith(".pt2"):
        import torch

        program = torch.export.load(source)
        names = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
        feeds = _feeds(entry["calibration"], names, [data[n].ndim if n in data else data["x"].ndim for n in names])
        refs = [[t.detach().numpy() for t in _as_list(program.module()(*[torch.from_numpy(f[n]) for n in names]))]
                for f in feeds]
        model = ct.convert(program.run_decompositions({}), minimum_deployment_target=ct.target.iOS16)
    else:
        import tensorflow as tf

        if source.endswith(".keras"):
            import keras

            fn = keras.saving.load_model(source, compile=False)
            names = [i.name for i in fn.inputs]
            model_in: Any = fn
        else:
            fn = tf.saved_model.load(source).signatures["serving_default"]
            names = list(fn.structured_input_signature[1])
            model_in = source
        feeds = _feeds(entry["calibration"], names, [data[n].ndim if n in data else data["x"].ndim for n in names])
        refs = []
        for f in feeds:
            result = fn(**{n: tf.constant(v) for n, v in f.items()}) if not source.endswith(".keras") else fn(list(f.values()))
            values = [result[k] for k in sorted(result)] if isinstance(result, dict) else _as_list(result)
            refs.append([np.asarray(v) for v in values])
        model = ct.convert(model_in, source="tensorflow", minimum_deployment_target=ct.target.iOS16)
    path = out / "model.mlpackage"
    model.save(str(path))
    session = MilRuntime().open(path)
    acts = []
    spec_inputs = [i.name for i in model.get_spec().description.input]
    for f in feeds:
        result = session.run(dict(zip(spec_inputs, f.values(), strict=True)))
        acts.append([result[k] for k in sorted(result)] if not source.endswith(".pt2") else list(result.values()))
    return _verdict(refs, acts, TOLERANCE["coremltools"])


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def ort_quant_alone(entry: dict[str, Any], out: Path) -> dict[str, Any]:
    if not entry["source"].endswith(".onnx"):
        return {"status": "n/a", "error": "onnxruntime's quantizer takes ONNX only"}
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    feeds, refs = _onnx_reference(entry["source"], entry["calibration"])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantize_static(entry["source"], str(out / "int8.onnx"), Reader())
    session = ort.InferenceSession(str(out / "int8.onnx"), providers=["CPUExecutionProvider"])
    acts = [session.run(None, f) for f in feeds]
    return _verdict(refs, acts, TOLERANCE["ort-quant"])


def fp16_converter_alone(entry: dict[str, Any], out: Path) -> dict[str, Any]:
    """onnxconverter-common's ``convert_float_to_float16`` with float32 I/O, as its README shows, run by
    onnxruntime (whose CPU provider computes most float16 ops in float32, so this is its best case)."""
    if not entry["source"].endswith(".onnx"):
        return {"status": "n/a", "error": "onnxconverter-common takes ONNX only"}
    import onnx
    import onnxruntime as ort
    from onnxconverter_common import float16

    feeds, refs = _onnx_reference(entry["source"], entry["calibration"])
    model = float16.convert_float_to_float16(onnx.load(entry["source"]), keep_io_types=True)
    onnx.save(model, str(out / "fp16.onnx"))
    session = ort.InferenceSession(str(out / "fp16.onnx"), providers=["CPUExecutionProvider"])
    acts = [session.run(None, f) for f in feeds]
    return _verdict(refs, acts, TOLERANCE["fp16-converter"])


def main() -> None:
    tool, entry_file, result_file = sys.argv[1:4]
    entry = json.loads(Path(entry_file).read_text())
    out = Path(result_file).parent
    fn = {"onnx2tf": onnx2tf_alone, "coremltools": coremltools_alone, "ort-quant": ort_quant_alone,
          "fp16-converter": fp16_converter_alone}[tool]
    try:
        result = fn(entry, out)
    except Exception as exc:  # noqa: BLE001 - any failure of the wrapped tool is its verdict
        tb = traceback.extract_tb(exc.__traceback__)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        result = {"status": "failed", "error": f"{type(exc).__name__}: {first}",
                  "where": f"{tb[-1].filename.split('site-packages/')[-1]}:{tb[-1].lineno}" if tb else None}
    Path(result_file).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
