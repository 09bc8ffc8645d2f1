"""Benchmark: edgekit's Core ML family against calling coremltools directly, plus MTCNN's O-Net.

Model: Keras MobileNetV2 (96x96 RGB, trained 3 epochs on the digits, see common.py). Both sides, each
in a fresh Python process, start from the saved .keras file and end with an fp16 ML Program and an
int8-weight copy of it, saved as .mlpackage:
  direct   coremltools.convert(keras model, fp16) + optimize.coreml.linear_quantize_weights (int8)
  edgekit  edgekit.converters.convert(..., targets=coreml-fp16, coreml-int8), which also measures
           parity of both on the 360 held-out samples with edgekit's MIL reference interpreter (on
           Linux coremltools cannot predict, so the direct side has no parity figure at all)
Then O-Net (facenet-pytorch weights, `pip install --no-deps facenet-pytorch==2.6.0`) to coreml-fp16
and coreml-int8 through edgekit, parity by the interpreter on 360 photo crops.

Run: .venv/bin/python benchmarks/bench_coreml.py   (about 5 minutes on 2 cores)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SIZE, alternate, prepare_mobilenet, timed  # noqa: E402

ROUNDS = 2


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_direct(work: Path) -> None:
    """coremltools called by hand: fp16 program, then int8 weights."""
    start = time.perf_counter()
    import coremltools as ct
    import coremltools.optimize.coreml as cto
    import keras

    model = keras.saving.load_model(str(work / "model.keras"), compile=False)
    out = work / "direct"
    out.mkdir(exist_ok=True)
    fp16 = ct.convert(model, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                      compute_precision=ct.precision.FLOAT16,
                      inputs=[ct.TensorType(shape=(1, SIZE, SIZE, 3), dtype=np.float32)])
    fp16.save(str(out / "fp16.mlpackage"))
    int8 = cto.linear_quantize_weights(fp16, cto.OptimizationConfig(
        global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=64)))
    int8.save(str(out / "int8.mlpackage"))
    print(json.dumps({"fp16": {"size_bytes": _dir_size(out / "fp16.mlpackage")},
                      "int8": {"size_bytes": _dir_size(out / "int8.mlpackage")},
                      "seconds_in_process": time.perf_counter() - start}))


def run_edgekit(work: Path) -> None:
    start = time.perf_counter()
    from edgekit.converters import convert

    result = convert(work / "model.keras", ["coreml-fp16", "coreml-int8"], out=work / "bundle",
                     calibration=work / "calibration.npz", overwrite=True, accept_parity_failure=True)
    out: dict[str, Any] = {"seconds_in_process": time.perf_counter() - start}
    for art in result.bundle.manifest.artifacts:
        name = art.target.removeprefix("coreml-")
        out[name] = {"size_bytes": art.size_bytes, "unverified": art.unverified}
        if art.parity is not None:
            out[name].update(max_abs_error=art.parity.max_abs_error, top1_agreement=art.parity.top1_agreement,
                             passed=art.parity.passed)
        if art.accuracy is not None:
            out[name].update(top1=art.accuracy.top1, source_top1=art.accuracy.source_top1)
    print(json.dumps(out))


def run_onet(work: Path) -> None:
    import torch
    from bench_tflite import _onet, _photo_crops

    from edgekit.converters import convert

    x = _photo_crops()
    np.savez(work / "onet_calibration.npz", x=x)
    start = time.perf_counter()
    result = convert(_onet(), ["coreml-fp16", "coreml-int8"], out=work / "onet",
                     example_inputs=(torch.from_numpy(x[:4]),), calibration=work / "onet_calibration.npz",
                     accept_parity_failure=True, overwrite=True)
    out: dict[str, Any] = {"seconds": time.perf_counter() - start}
    for art in result.bundle.manifest.artifacts:
        out[art.target] = {"size_bytes": art.size_bytes, "unverified": art.unverified,
                           "passed": art.parity.passed if art.parity else None,
                           "per_output": [{k: e.get(k) for k in ("name", "max_abs_error", "max_rel_error",
                                                                  "top1_agreement")}
                                          for e in ((art.parity.per_output or ()) if art.parity else ())]}
    print(json.dumps(out))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        work = Path(tmp)
        results, _ = alternate(__file__, work, ROUNDS, ' (with parity of both artifacts on 360 samples)')
        for name in ("fp16", "int8"):
            d, e = results["direct"][name], results["edgekit"][name]
            print(f"{name}: direct {d['size_bytes']:,} B, edgekit {e['size_bytes']:,} B "
                  f"({e['size_bytes'] / d['size_bytes']:.3f}); edgekit parity: {json.dumps(e)}")
        seconds, onet = timed(__file__, "onet", work)
        print(f"\nO-Net through edgekit in {seconds:.1f}s:\n{json.dumps(onet, indent=1)}")


if __name__ == "__main__":
    if len(sys.argv) == 3:
        {"prepare": prepare_mobilenet, "direct": run_direct, "edgekit": run_edgekit,
         "onet": run_onet}[sys.argv[1]](Path(sys.argv[2]))
    else:
        main()
