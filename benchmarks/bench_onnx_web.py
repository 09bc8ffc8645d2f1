"""Benchmark: edgekit's ONNX-web family against calling tf2onnx and onnxruntime's tools directly.

Model: Keras MobileNetV2 (96x96 RGB, 10 classes, weights=None), trained for 3 epochs on
scikit-learn's digits scaled to 96x96 RGB, so that its outputs depend on the input (a random
MobileNetV2 outputs a constant 0.1 and makes any parity claim empty).

Both sides, each in a fresh Python process, start from the saved .keras file and the held-out
calibration split and end with validated fp32, fp16 and int8 ONNX files:
  direct   tf2onnx (from_function) -> onnxconverter-common float16 -> onnxruntime quant_pre_process +
           quantize_static (QDQ, per-channel) -> run each file on onnxruntime and compare with Keras
  edgekit  edgekit.converters.convert(..., targets=onnx-web, onnx-web-fp16, onnx-web-int8)
The wall time of each process is measured (imports included) and the runs alternate, ROUNDS each.

Run: .venv/bin/python benchmarks/bench_onnx_web.py   (about 5 minutes on 2 cores)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SIZE, alternate, load_mobilenet, prepare_mobilenet  # noqa: E402

ROUNDS = 2


def run_direct(work: Path) -> None:
    """The hand-stitched pipeline a user would write without edgekit."""
    start = time.perf_counter()
    import onnx
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx
    from onnxconverter_common import float16
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model, x, y, reference = load_mobilenet(work)
    spec = [tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="x")]

    @tf.function(input_signature=spec)
    def forward(t):
        return {"output": model(t, training=False)}

    out = work / "direct"
    out.mkdir(exist_ok=True)
    proto, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=17)
    onnx.save(proto, str(out / "fp32.onnx"))
    onnx.save(float16.convert_float_to_float16(proto, keep_io_types=True), str(out / "fp16.onnx"))
    quant_pre_process(str(out / "fp32.onnx"), str(out / "pre.onnx"))

    class Reader:
        def __init__(self) -> None:
            self.chunks = iter([{"x": x[i:i + 32]} for i in range(0, len(x), 32)])

        def get_next(self):
            return next(self.chunks, None)

    quantize_static(str(out / "pre.onnx"), str(out / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    result = {}
    for name in ("fp32", "fp16", "int8"):
        session = ort.InferenceSession(str(out / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        got = np.concatenate([session.run(None, {"x": x[i:i + 64]})[0] for i in range(0, len(x), 64)])
        result[name] = {
            "size_bytes": (out / f"{name}.onnx").stat().st_size,
            "max_abs_error": float(np.abs(got - reference).max()),
            "top1_agreement": float((got.argmax(1) == reference.argmax(1)).mean()),
            "top1": float((got.argmax(1) == y).mean()),
        }
    result["seconds_in_process"] = time.perf_counter() - start
    print(json.dumps(result))


def run_edgekit(work: Path) -> None:
    """The same job through edgekit's Python API (validation and ORT variants included)."""
    start = time.perf_counter()
    from edgekit.converters import convert

    result = convert(work / "model.keras", ["onnx-web", "onnx-web-fp16", "onnx-web-int8"], out=work / "bundle",
                     calibration=work / "calibration.npz", overwrite=True)
    names = {"onnx-web": "fp32", "onnx-web-fp16": "fp16", "onnx-web-int8": "int8"}
    out: dict[str, object] = {}
    for art in result.bundle.manifest.artifacts:
        if art.format != "onnx":
            out[f"{names[art.target]}-ort"] = {"size_bytes": art.size_bytes}
            continue
        assert art.parity is not None and art.accuracy is not None
        out[names[art.target]] = {
            "size_bytes": art.size_bytes,
            "max_abs_error": art.parity.max_abs_error,
            "top1_agreement": art.parity.top1_agreement,
            "top1": art.accuracy.top1,
            "source_top1": art.accuracy.source_top1,
        }
    out["seconds_in_process"] = time.perf_counter() - start
    print(json.dumps(out))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        work = Path(tmp)
        results, _ = alternate(__file__, work, ROUNDS)
        print("\n| precision | direct size | edgekit size | size ratio | direct top1 agr. | edgekit top1 agr. "
              "| edgekit max abs err | accuracy src -> edgekit |")
        print("|---|---|---|---|---|---|---|---|")
        for name in ("fp32", "fp16", "int8"):
            d, e = results["direct"][name], results["edgekit"][name]
            print(f"| {name} | {d['size_bytes']:,} | {e['size_bytes']:,} | {e['size_bytes'] / d['size_bytes']:.3f} "
                  f"| {d['top1_agreement']:.4f} | {e['top1_agreement']:.4f} | {e['max_abs_error']:.3g} "
                  f"| {e['source_top1']:.3f} -> {e['top1']:.3f} |")
        ort_sizes = {k: v["size_bytes"] for k, v in results["edgekit"].items() if k.endswith("-ort")}
        print(f"\nedgekit ORT-format variants kept: {ort_sizes or 'none'}")


if __name__ == "__main__":
    if len(sys.argv) == 3:
        {"prepare": prepare_mobilenet, "direct": run_direct, "edgekit": run_edgekit}[sys.argv[1]](Path(sys.argv[2]))
    else:
        main()
