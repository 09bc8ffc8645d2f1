"""int8 from models exported at old opsets: per-channel QDQ needs opset 13, so edgekit converts first."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.converters import convert


def _conv_model(path: Path, opset: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((8 * 6 * 6, 4)).astype(np.float32) * 0.1, "fc")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["logits"])]
    graph = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 6
    onnx.save(model, str(path))
    return path


def test_an_opset_11_model_gets_per_channel_int8_that_loads(tmp_path: Path) -> None:
    import onnx

    model = _conv_model(tmp_path / "old.onnx", 11)
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(1).random((64, 1, 8, 8), dtype=np.float32))
    result = convert(model, ["onnx-web-int8"], out=tmp_path / "b", calibration=tmp_path / "cal.npz", report=False)
    art = result.bundle.manifest.artifacts[0]
    assert art.parity is not None and art.parity.passed  # onnxruntime loaded and ran it
    assert "opset 11 to 13" in art.extra["conversion"]["opset"]
    assert "per-channel" in art.extra["conversion"]["method"]
    written = onnx.load(str(result.bundle.path / art.file))
    assert next(o.version for o in written.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert any(n.op_type == "DequantizeLinear" for n in written.graph.node)


def test_a_quantized_source_stays_quantized_and_is_judged_as_given(tmp_path: Path, digits_bundle: Path) -> None:
    """An int8 QDQ model as the source: its onnx-web artifacts keep the int8 weights (no larger than the
    source) and pass against the source run with ONNX's exact semantics, at the int8 tolerance."""
    from tests.conftest import DIGITS

    source = digits_bundle / "onnx-web-int8.onnx"
    result = convert(source, ["onnx-web", "onnx-web-fp16"], out=tmp_path / "b", calibration=DIGITS / "digits.npz",
                     report=False)
    manifest = result.bundle.manifest
    assert "DequantizeLinear" in manifest.source.extra["quantized"]
    for art in manifest.artifacts:
        assert art.parity is not None and art.parity.passed, art.target
        assert art.parity.tolerance == {"max_rel_error": 0.25, "min_top1_agreement": 0.95}
        assert art.size_bytes <= source.stat().st_size, (art.target, art.format, art.size_bytes)
