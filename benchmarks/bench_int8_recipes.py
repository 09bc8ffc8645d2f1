"""Benchmark: ONNX int8 recipes on three runtimes, to choose one that computes the same everywhere.

onnxruntime's x86 int8 kernels multiply uint8 activations by int8 weights with an instruction
(VPMADDUBSW) whose 16-bit sums saturate on CPUs without VNNI; CPUs with VNNI and the wasm build do
not saturate. So the same int8 file gives different outputs on different hosts. This script
quantizes three models with each candidate recipe and runs every file on:
  native   onnxruntime on this host (with or without VNNI: printed)
  avx2     the same onnxruntime under QEMU as a Haswell CPU (AVX2, no AVX-512, no VNNI)
  wasm     onnxruntime-web's wasm backend under Node.js (what browsers run)
and reports size, max abs error and top-1 agreement against the fp32 source on each, the largest
difference between runtimes, and native and wasm latency (batch 1, p50).

Models: the digits CNN (examples/digits), a Keras MobileNetV2 96x96 trained 3 epochs on the digits
(benchmarks/common.py), and a small transformer encoder (2 layers, LayerNorm, GELU, attention)
trained on the digits' rows as tokens.

Run: .venv/bin/python benchmarks/bench_int8_recipes.py [WORK_DIR]   (needs apt-get install qemu-user
and npm ci --prefix web). Everything but the AVX2 step takes about 10 minutes; under QEMU the U8
recipes run in about a minute per model, but S8S8 QDQ models crawl (MobileNetV2 had not finished
after an hour): set EDGEKIT_BENCH_SKIP_S8S8_AVX2=1 to leave them out of the AVX2 step. All runs use
batches of 64, since dynamic int8 measures its activation ranges per run and so depends on the batch.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

# name -> (static?, quantize keyword arguments as strings, resolved in quantize())
RECIPES: dict[str, dict[str, Any]] = {
    "qdq-s8s8-perchannel (0.1)": {"static": True, "format": "QDQ", "act": "QInt8", "weight": "QInt8", "per_channel": True},
    "qdq-s8s8-perchannel-7bit": {"static": True, "format": "QDQ", "act": "QInt8", "weight": "QInt8", "per_channel": True,
                                 "reduce_range": True},
    "qdq-u8s8-perchannel-7bit": {"static": True, "format": "QDQ", "act": "QUInt8", "weight": "QInt8", "per_channel": True,
                                 "reduce_range": True},
    "qdq-u8u8-perchannel": {"static": True, "format": "QDQ", "act": "QUInt8", "weight": "QUInt8", "per_channel": True},
    "qop-u8s8-perchannel-7bit": {"static": True, "format": "QOperator", "act": "QUInt8", "weight": "QInt8",
                                 "per_channel": True, "reduce_range": True},
    "qdq-s8s8-pertensor-7bit": {"static": True, "format": "QDQ", "act": "QInt8", "weight": "QInt8", "per_channel": False,
                                "reduce_range": True},
    "dynamic-u8 (0.1)": {"static": False, "weight": "QUInt8"},
    "dynamic-s8-7bit": {"static": False, "weight": "QInt8", "reduce_range": True},
}


def prepare(work: Path) -> None:
    """Write each model's fp32 onnx-web artifact (edgekit's optimizer) and its samples."""
    from edgekit.converters import convert

    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    # digits CNN
    convert(ROOT / "examples/digits/digits.onnx", ["onnx-web"], out=work / "b-digits", overwrite=True,
            calibration=ROOT / "examples/digits/digits.npz", report=False)
    _take(work / "b-digits", models / "digits", ROOT / "examples/digits/digits.npz")
    # MobileNetV2
    from common import prepare_mobilenet

    mnet = work / "mobilenet-src"
    mnet.mkdir(exist_ok=True)
    if not (mnet / "model.keras").exists():
        prepare_mobilenet(mnet)
    convert(mnet / "model.keras", ["onnx-web"], out=work / "b-mobilenet", overwrite=True,
            calibration=mnet / "calibration.npz", report=False)
    _take(work / "b-mobilenet", models / "mobilenet", mnet / "calibration.npz")
    # transformer encoder
    path, data = _train_transformer(work)
    convert(path, ["onnx-web"], out=work / "b-transformer", overwrite=True, calibration=data, report=False)
    _take(work / "b-transformer", models / "transformer", data)


def _take(bundle: Path, dst: Path, data: Path) -> None:
    import shutil

    dst.mkdir(exist_ok=True)
    shutil.copyfile(bundle / "onnx-web.onnx", dst / "fp32.onnx")
    shutil.copyfile(data, dst / "data.npz")


def _train_transformer(work: Path) -> tuple[Path, Path]:
    import torch
    from torch import nn

    from examples.digits.data import load_split

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(8, 64)
            self.pos = nn.Parameter(torch.randn(1, 8, 64) * 0.02)
            layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, activation="gelu", batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(64)
            self.head = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.embed(x.reshape(x.shape[0], 8, 8)) + self.pos
            return self.head(self.norm(self.encoder(tokens)).mean(dim=1))

    x_train, x_test, y_train, y_test = load_split()
    torch.manual_seed(0)
    model = Encoder()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(40):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    print(f"transformer encoder: held-out accuracy {acc:.3f}")
    path = work / "transformer.onnx"
    torch.onnx.export(model, (torch.from_numpy(x_test[:4]),), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}}, dynamo=False, opset_version=17)
    data = work / "transformer.npz"
    np.savez(data, x=x_test, y=y_test)
    return path, data


def _input_name(path: Path) -> str:
    import onnxruntime as ort

    return str(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].name)


class _Reader:
    def __init__(self, name: str, x: np.ndarray) -> None:
        self.chunks = iter([{name: x[i:i + 32]} for i in range(0, len(x), 32)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.chunks, None)


def quantize(work: Path) -> None:
    """Quantize every model with every recipe into models/<model>/<recipe>.onnx."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgekit.converters.passes.onnx_web import save_for_web

    for model_dir in sorted((work / "models").iterdir()):
        x = np.load(model_dir / "data.npz")["x"]
        pre = model_dir / "pre.onnx"
        os.chdir(model_dir)  # quant_pre_process writes into the current directory
        quant_pre_process(str(model_dir / "fp32.onnx"), str(pre), skip_symbolic_shape=False)
        for name, r in RECIPES.items():
            out = model_dir / f"{_slug(name)}.onnx"
            if r["static"]:
                quantize_static(str(pre), str(out), _Reader(_input_name(pre), x), quant_format=getattr(QuantFormat, r["format"]),
                                activation_type=getattr(QuantType, r["act"]), weight_type=getattr(QuantType, r["weight"]),
                                per_channel=r["per_channel"], reduce_range=r.get("reduce_range", False))
            else:
                quantize_dynamic(str(pre), str(out), weight_type=getattr(QuantType, r["weight"]),
                                 reduce_range=r.get("reduce_range", False))
            save_for_web(onnx.load(str(out)), out)


def _slug(name: str) -> str:
    return name.split(" ")[0]


def run_native(work: Path, tag: str) -> None:
    """Run every file on this process's onnxruntime; write outputs-<tag>.npz and latency per model."""
    import onnxruntime as ort

    for model_dir in sorted((work / "models").iterdir()):
        x = np.load(model_dir / "data.npz")["x"]
        outs: dict[str, np.ndarray] = {}
        lat: dict[str, float] = {}
        for f in sorted(model_dir.glob("*.onnx")):
            if f.name == "pre.onnx" or (tag == "avx2" and "s8s8" in f.name and os.environ.get("EDGEKIT_BENCH_SKIP_S8S8_AVX2")):
                continue
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            s = ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"])
            name = s.get_inputs()[0].name
            outs[f.stem] = np.concatenate([s.run(None, {name: x[i:i + 64]})[0] for i in range(0, len(x), 64)])
            if tag == "native":
                one = x[:1]
                for _ in range(10):
                    s.run(None, {name: one})
                times = []
                for _ in range(50):
                    t = time.perf_counter()
                    s.run(None, {name: one})
                    times.append((time.perf_counter() - t) * 1e3)
                lat[f.stem] = statistics.median(times)
        np.savez(model_dir / f"outputs-{tag}.npz", **outs)
        if lat:
            (model_dir / "latency-native.json").write_text(json.dumps(lat))


def run_wasm(work: Path) -> None:
    from edgekit.converters import ortweb

    for model_dir in sorted((work / "models").iterdir()):
        x = np.load(model_dir / "data.npz")["x"]
        outs, lat = {}, {}
        for f in sorted(model_dir.glob("*.onnx")):
            if f.name == "pre.onnx":
                continue
            name = _input_name(f)
            r = ortweb.run(f, {name: x}, chunk=64)
            outs[f.stem] = next(iter(r.outputs.values()))
            one = ortweb.run(f, {name: x[:1]}, chunk=1, bench_runs=50, bench_warmup=10)
            lat[f.stem] = statistics.median(one.latency_ms)
        np.savez(model_dir / "outputs-wasm.npz", **outs)
        (model_dir / "latency-wasm.json").write_text(json.dumps(lat))


def report(work: Path) -> None:
    flags = sorted(set(open("/proc/cpuinfo").read().split()) & {"avx2", "avx512f", "avx512_vnni", "avx_vnni"})
    print(f"\nnative host CPU flags: {', '.join(flags)}; avx2 = qemu-x86_64 -cpu Haswell; wasm = onnxruntime-web "
          "1.30.0 under Node.js, 1 thread")
    print("\n| model | recipe | size | vs fp32 | native: max err / top1 | AVX2: max err / top1 | wasm: max err / top1 "
          "| max diff between runtimes | native ms | wasm ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model_dir in sorted((work / "models").iterdir()):
        runs = {t: np.load(model_dir / f"outputs-{t}.npz") for t in ("native", "avx2", "wasm")}
        lat_n = json.loads((model_dir / "latency-native.json").read_text())
        lat_w = json.loads((model_dir / "latency-wasm.json").read_text())
        ref = runs["native"]["fp32"]
        fp32_size = (model_dir / "fp32.onnx").stat().st_size
        for name in ["fp32", *(_slug(r) for r in RECIPES)]:
            size = (model_dir / f"{name}.onnx").stat().st_size
            cells = []
            for t in ("native", "avx2", "wasm"):
                if name not in runs[t].files:
                    cells.append("(skipped)")
                    continue
                out = runs[t][name]
                cells.append(f"{np.abs(out - ref).max():.3g} / {(out.argmax(1) == ref.argmax(1)).mean():.3f}")
            ran = [t for t in ("native", "avx2", "wasm") if name in runs[t].files]
            diff = max(float(np.abs(runs[a][name] - runs[b][name]).max()) for i, a in enumerate(ran) for b in ran[i + 1:])
            label = next((r for r in RECIPES if _slug(r) == name), name)
            print(f"| {model_dir.name} | {label} | {size / 1024:.1f} KB | {size / fp32_size:.2f}x | {' | '.join(cells)} "
                  f"| {diff:.3g} | {lat_n[name]:.3f} | {lat_w[name]:.3f} |")


def main() -> None:
    if len(sys.argv) > 2:  # a step in a child process: STEP WORK
        step, work = sys.argv[1], Path(sys.argv[2])
        if step == "native":
            run_native(work, sys.argv[3] if len(sys.argv) > 3 else "native")
        return
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="int8-recipes-"))
    start = time.perf_counter()
    if not (work / "models" / "transformer" / "fp32.onnx").exists():
        prepare(work)
    quantize(work)
    os.chdir(ROOT)
    subprocess.run([sys.executable, __file__, "native", str(work), "native"], check=True)
    subprocess.run(["qemu-x86_64", "-cpu", "Haswell", sys.executable, __file__, "native", str(work), "avx2"], check=True)
    run_wasm(work)
    report(work)
    print(f"\n({time.perf_counter() - start:.0f} s; work files in {work})")


if __name__ == "__main__":
    main()
