"""int8 that computes the same on every CPU of this kind and in the browser's wasm build.

onnxruntime's x86 int8 kernels without VNNI multiply through 16-bit intermediates that saturate; the
recipe edgekit uses (docs/adr/0009) keeps them from saturating. Whatever this host is, the artifact
is run here, on an AVX2-only CPU (QEMU as a Haswell: no AVX-512, no VNNI; it reproduces an AVX2
host's int8 outputs exactly) and on onnxruntime-web's wasm backend (Node.js), and the three must
agree with each other and with the source.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.bundle import read_bundle
from edgekit.converters import ortweb
from tests.conftest import DIGITS

pytestmark = pytest.mark.slow
QEMU = shutil.which("qemu-x86_64")
RUN_ON_CPU = """
import sys, numpy as np, onnxruntime as ort
model, data, out = sys.argv[1:4]
s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
x = np.load(data)["x"]
np.save(out, np.concatenate([s.run(None, {"x": x[i:i + 64]})[0] for i in range(0, len(x), 64)]))
"""


def _on_haswell(model: Path, tmp_path: Path) -> np.ndarray:
    if QEMU is None:
        pytest.fail("qemu-x86_64 is missing: apt-get install qemu-user (make test installs it)")
    out = tmp_path / "avx2.npy"
    proc = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, "-c", RUN_ON_CPU, str(model),
                           str(DIGITS / "digits.npz"), str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return np.load(out)


def test_int8_agrees_on_vnni_avx2_and_wasm(digits_bundle: Path, tmp_path: Path) -> None:
    manifest = read_bundle(digits_bundle).manifest
    art = manifest.artifact("onnx-web-int8")
    assert art.parity is not None and art.parity.host and art.parity.runtime.startswith("onnxruntime ")
    model = digits_bundle / art.file
    x = np.load(DIGITS / "digits.npz")["x"]
    import onnxruntime as ort

    native = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    avx2 = _on_haswell(model, tmp_path)
    wasm = ortweb.run(model, {"x": x}, chunk=64).outputs["logits"]
    source = ort.InferenceSession(str(DIGITS / "digits.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    scale = float(np.abs(source).max())
    errors = {name: float(np.abs(out - source).max()) for name, out in
              (("native", native), ("avx2", avx2), ("wasm", wasm))}
    spread = max(float(np.abs(a - b).max()) for a, b in ((native, avx2), (native, wasm), (avx2, wasm)))
    print(json.dumps({"max_abs_error_vs_source": errors, "max_diff_between_runtimes": spread, "scale": scale}))
    # No saturation anywhere: the runtimes differ by float rounding of the requantization at most, far
    # below the quantization error itself (one int8 step of the logits is about scale / 127).
    assert spread <= scale / 127
    for out in (native, avx2, wasm):
        assert float(np.mean(out.argmax(1) == source.argmax(1))) >= 0.99
        assert float(np.abs(out - source).max()) <= art.parity.tolerance["max_rel_error"] * scale  # type: ignore[index]
