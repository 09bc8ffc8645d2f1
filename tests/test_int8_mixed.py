"""int8 weights where 8 bits hold them, float16 where they do not, chosen by measurement (docs/adr/0019),
in the TFLite and Core ML families (the ONNX recipe: tests/test_int8_opsets.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.converters import convert
from tests.test_int8_opsets import _outlier_model

pytestmark = [pytest.mark.tensorflow, pytest.mark.slow]


@pytest.fixture(scope="module")
def outlier_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The outlier model (one weight whose other values int8 per output channel rounds to 0) to TFLite and
    Core ML int8: one conversion shared by the tests."""
    tmp = tmp_path_factory.mktemp("outlier")
    model = _outlier_model(tmp / "outlier.onnx")
    x = np.random.default_rng(6).standard_normal((64, 64)).astype(np.float32)
    x[:, 0] = 0.0
    np.savez(tmp / "cal.npz", x=x)
    return convert(model, ["tflite-dynamic-int8", "coreml-int8"], out=tmp / "b", calibration=tmp / "cal.npz",
                   report=False).bundle.path


def _artifact(bundle: Path, target: str) -> dict:
    import json

    manifest = json.loads((bundle / "bundle.json").read_text())
    return next(a for a in manifest["artifacts"] if a["target"] == target)


def test_tflite_int8_keeps_the_weight_8_bits_cannot_hold_in_float16(outlier_bundle: Path) -> None:
    art = _artifact(outlier_bundle, "tflite-dynamic-int8")
    assert art["parity"]["passed"]
    assert art["route"][-1] == "tflite-weight-int8-mixed", art["route"]
    notes = art["conversion"]
    assert notes["float16_weight_count"] == 1 and notes["float16_weight_share"] == 0.25, notes  # 4096 of 16384
    tried = [t["route"].split(" -> ")[-1] for t in art["routes_tried"]]  # dynamic range and weight-only failed
    assert "tflite-dynamic-int8" in tried and "tflite-weight-int8" in tried
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(outlier_bundle / art["file"]))
    types = sorted(str(d["dtype"].__name__) for d in interpreter.get_tensor_details()
                   if len(d["shape"]) == 2 and int(np.prod(d["shape"])) >= 4096 and d["name"].count(";") == 0
                   and d["dtype"] != np.float32)
    assert "float16" in types and types.count("int8") >= 2, types


def test_coreml_int8_keeps_the_weight_8_bits_cannot_hold_in_float16(outlier_bundle: Path) -> None:
    art = _artifact(outlier_bundle, "coreml-int8")
    assert art["parity"]["passed"]
    assert art["route"][-1] == "coreml-int8-mixed", art["route"]
    notes = art["conversion"]
    assert notes["float16_weight_count"] == 1 and notes["float16_weight_share"] == 0.25, notes
    assert any(t["error"].startswith("ParityError") for t in art["routes_tried"])
    from edgekit.converters.mil import load_program

    ops = [op.op_type for op in load_program(outlier_bundle / art["file"]).operations]
    assert ops.count("constexpr_affine_dequantize") + ops.count("constexpr_blockwise_shift_scale") == 2, ops
