"""edgekit check: routes, blocking operators, dynamic dimensions and expected sizes, without converting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DIGITS, run_cli


def test_the_digits_model_reaches_every_target(tmp_path: Path) -> None:
    result = run_cli("check", DIGITS / "digits.onnx", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["target"]: r for r in json.loads(result.stdout)}
    assert all(r["reachable"] and not r["problems"] for r in rows.values())
    assert rows["tflite-int8"]["route"] == ["onnx2tf", "tflite-int8"]
    fp32 = rows["onnx-web"]["expected_bytes"]
    assert 500_000 < fp32 < 700_000  # the converted file is 592 KB
    assert rows["onnx-web-int8"]["expected_bytes"] == fp32 // 4
    assert "x[0] (batch) in coreml: batch becomes a range 1..64" in rows["coreml"]["dynamic"]
    assert "Flex" in rows["tflite"]["after_conversion"] and "--min-ios" in rows["coreml"]["after_conversion"]
    assert not list(tmp_path.iterdir())  # nothing was written


def test_an_operator_onnx2tf_lacks_is_named(tmp_path: Path) -> None:
    pytest.importorskip("onnx2tf")
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 2, 2])
    node = helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], p=2)
    model = helper.make_model(helper.make_graph([node], "lp", [x], [y]), opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "lp.onnx"))
    result = run_cli("check", tmp_path / "lp.onnx", "-t", "onnx-web", "-t", "tflite", "-t", "coreml-fp16")
    assert result.exit_code == 2, result.output
    assert "tflite: onnx2tf (route onnx2tf -> tflite-fp32) does not convert the ONNX operator(s) LpPool" in result.stdout
    assert "coreml-fp16: onnx2tf" in result.stdout and "LpPool" in result.stdout
    web = next(line for line in result.stdout.splitlines() if line.startswith("onnx-web "))
    assert " yes " in web


def test_check_refuses_a_bad_model_and_an_unknown_target(tmp_path: Path) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    bad = run_cli("check", tmp_path / "broken.onnx")
    assert bad.exit_code == 2 and "not a valid ONNX model" in bad.stderr
    unknown = run_cli("check", DIGITS / "digits.onnx", "-t", "tflite-int3")
    assert unknown.exit_code == 2 and "unknown target" in unknown.stderr


@pytest.mark.tensorflow
def test_probe_names_flex_ops_and_a_core_ml_op_coremltools_lacks(tmp_path: Path) -> None:
    pytest.importorskip("onnx2tf")
    pytest.importorskip("coremltools")
    import keras

    x = keras.Input((4, 4), name="a")
    y = keras.layers.Dense(4, name="mix")(keras.ops.linalg.inv(x + keras.ops.eye(4) * 4.0))
    keras.Model(x, y).save(tmp_path / "inv.keras")
    plain = run_cli("check", tmp_path / "inv.keras", "-t", "tflite", "-t", "coreml")
    assert plain.exit_code == 0 and "--probe converts to find out" in plain.stdout  # static check cannot see it
    result = run_cli("check", tmp_path / "inv.keras", "-t", "tflite", "-t", "tflite-fp16", "-t", "coreml",
                     "--probe", "--json")
    assert result.exit_code == 2, result.output
    rows = {r["target"]: r for r in json.loads(result.stdout)}
    assert rows["tflite"]["reachable"] and rows["tflite-fp16"]["reachable"]  # --allow-flex reaches them
    assert "Flex) ops MatrixInverse" in rows["tflite-fp16"]["problems"][0]
    assert not rows["coreml"]["reachable"] and "'MatrixInverse' not implemented" in rows["coreml"]["problems"][0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inv.keras"]  # the probes kept nothing
