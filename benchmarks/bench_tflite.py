"""Benchmark: edgekit's TFLite family against calling TFLiteConverter directly, plus MTCNN's O-Net.

Model: Keras MobileNetV2 (96x96 RGB, 10 classes), trained 3 epochs on the digits (see common.py).
Both sides, each in a fresh Python process, start from the saved .keras file and the held-out
calibration split and end with validated TFLite files in five precisions:
  direct   TFLiteConverter.from_keras_model per precision (fp32, fp16, dynamic-range int8, full int8
           with a representative dataset of 300 samples, int16x8), then each file run on ai-edge-litert
           and compared with Keras
  edgekit  edgekit.converters.convert(..., targets=tflite, tflite-fp16, tflite-dynamic-int8,
           tflite-int8, tflite-int16x8)
The wall time of each process is measured (imports included) and the runs alternate, ROUNDS each.

Then MTCNN's O-Net with its real weights (carried by the facenet-pytorch package; install it with
`pip install --no-deps facenet-pytorch==2.6.0`) goes to tflite and tflite-int8 through edgekit,
calibrated on 48x48 crops of scikit-learn's sample photos, with parity recorded per output.

Run: .venv/bin/python benchmarks/bench_tflite.py   (about 6 minutes on 2 cores)
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import alternate, load_mobilenet, prepare_mobilenet, timed  # noqa: E402

ROUNDS = 2
PRECISIONS = ("fp32", "fp16", "dynamic-int8", "int8", "int16x8")
TARGETS = {"tflite": "fp32", "tflite-fp16": "fp16", "tflite-dynamic-int8": "dynamic-int8", "tflite-int8": "int8",
           "tflite-int16x8": "int16x8"}
CALIBRATION_SAMPLES = 300


def run_direct(work: Path) -> None:
    """The pipeline a user would write with TFLiteConverter and the LiteRT interpreter."""
    start = time.perf_counter()
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    model, x, y, reference = load_mobilenet(work)

    def representative():
        for i in range(CALIBRATION_SAMPLES):
            yield [x[i:i + 1]]

    out = work / "direct"
    out.mkdir(exist_ok=True)
    result: dict[str, Any] = {}
    for name in PRECISIONS:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if name != "fp32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if name == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        if name in ("int8", "int16x8"):
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if name == "int8"
                else tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        path = out / f"{name}.tflite"
        path.write_bytes(converter.convert())
        interpreter = Interpreter(model_path=str(path))
        runner = interpreter.get_signature_runner()
        key = next(iter(runner.get_input_details()))
        got = np.concatenate([next(iter(runner(**{key: x[i:i + 64]}).values())) for i in range(0, len(x), 64)])
        result[name] = {
            "size_bytes": path.stat().st_size,
            "max_abs_error": float(np.abs(got - reference).max()),
            "top1_agreement": float((got.argmax(1) == reference.argmax(1)).mean()),
            "top1": float((got.argmax(1) == y).mean()),
        }
    result["seconds_in_process"] = time.perf_counter() - start
    print(json.dumps(result))


def run_edgekit(work: Path) -> None:
    """The same job through edgekit's Python API (validation and bundle included)."""
    start = time.perf_counter()
    from edgekit.converters import convert

    result = convert(work / "model.keras", list(TARGETS), out=work / "bundle", calibration=work / "calibration.npz",
                     overwrite=True)
    out: dict[str, Any] = {}
    for art in result.bundle.manifest.artifacts:
        assert art.parity is not None and art.accuracy is not None
        out[TARGETS[art.target]] = {
            "size_bytes": art.size_bytes,
            "max_abs_error": art.parity.max_abs_error,
            "top1_agreement": art.parity.top1_agreement,
            "top1": art.accuracy.top1,
            "source_top1": art.accuracy.source_top1,
        }
    out["seconds_in_process"] = time.perf_counter() - start
    print(json.dumps(out))


def _onet() -> Any:
    """MTCNN's O-Net with the weights facenet-pytorch ships (its package imports torchvision, so the
    class is rebuilt here with the same layers and the state dict is read from the package's data)."""
    import torch
    from torch import nn

    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("facenet-pytorch is not installed: pip install --no-deps facenet-pytorch==2.6.0")
    weights = Path(next(iter(spec.submodule_search_locations))) / "data" / "onet.pt"

    class ONet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 32, kernel_size=3), nn.PReLU(32)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(32, 64, kernel_size=3), nn.PReLU(64)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(64, 64, kernel_size=3), nn.PReLU(64)
            self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4, self.prelu4 = nn.Conv2d(64, 128, kernel_size=2), nn.PReLU(128)
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1, self.softmax6_1 = nn.Linear(256, 2), nn.Softmax(dim=1)
            self.dense6_2, self.dense6_3 = nn.Linear(256, 4), nn.Linear(256, 10)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x))
            x = x.permute(0, 3, 2, 1).contiguous()
            x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
            return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))

    model = ONet()
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()


def _photo_crops(n: int = 360, size: int = 48) -> np.ndarray:
    """Square crops of scikit-learn's two sample photos at several scales, normalized as MTCNN does."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    crops = []
    for i in range(n):
        image = load_sample_images().images[i % 2]
        side = int(rng.integers(48, 200))
        top, left = int(rng.integers(0, image.shape[0] - side)), int(rng.integers(0, image.shape[1] - side))
        idx = (np.arange(size) * side / size).astype(int)
        crop = image[top:top + side, left:left + side][idx][:, idx]  # nearest-neighbour resize
        crops.append(crop.transpose(2, 0, 1))
    return ((np.stack(crops).astype(np.float32) - 127.5) * 0.0078125).astype(np.float32)


def run_onet(work: Path) -> None:
    """O-Net (real weights) to tflite and tflite-int8 through edgekit; parity per output."""
    import torch

    from edgekit.converters import convert

    model = _onet()
    x = _photo_crops()
    np.savez(work / "onet_calibration.npz", x=x)
    start = time.perf_counter()
    result = convert(model, ["tflite", "tflite-int8"], out=work / "onet", example_inputs=(torch.from_numpy(x[:4]),),
                     calibration=work / "onet_calibration.npz", accept_parity_failure=True, overwrite=True)
    out: dict[str, Any] = {"seconds": time.perf_counter() - start}
    for art in result.bundle.manifest.artifacts:
        assert art.parity is not None
        out[art.target] = {
            "size_bytes": art.size_bytes, "route": art.route, "passed": art.parity.passed,
            "per_output": [{k: e.get(k) for k in ("name", "max_abs_error", "max_rel_error", "top1_agreement")}
                           for e in art.parity.per_output or ()],
            "input": art.inputs[0].to_dict() if art.inputs else None,
        }
    print(json.dumps(out))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        work = Path(tmp)
        results, _ = alternate(__file__, work, ROUNDS)
        print("\n| precision | direct size | edgekit size | size ratio | size vs fp32 | direct top1 agr. "
              "| edgekit top1 agr. | edgekit max abs err | accuracy src -> edgekit |")
        print("|---|---|---|---|---|---|---|---|---|")
        fp32 = results["edgekit"]["fp32"]["size_bytes"]
        for name in PRECISIONS:
            d, e = results["direct"][name], results["edgekit"][name]
            print(f"| {name} | {d['size_bytes']:,} | {e['size_bytes']:,} | {e['size_bytes'] / d['size_bytes']:.3f} "
                  f"| {e['size_bytes'] / fp32:.3f} | {d['top1_agreement']:.4f} | {e['top1_agreement']:.4f} "
                  f"| {e['max_abs_error']:.3g} | {e['source_top1']:.3f} -> {e['top1']:.3f} |")
        seconds, onet = timed(__file__, "onet", work)
        print(f"\nO-Net (facenet-pytorch weights) through edgekit in {seconds:.1f}s:")
        print(json.dumps(onet, indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 3:
        modes = {"prepare": prepare_mobilenet, "direct": run_direct, "edgekit": run_edgekit, "onet": run_onet}
        modes[sys.argv[1]](Path(sys.argv[2]))
    else:
        main()
