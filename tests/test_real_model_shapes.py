"""Classes of real-model failures: recurrent state whose batch axis is not the first (stacked feeds),
declared output shapes the graph does not compute, and node names TensorFlow rejects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.converters import convert
from edgekit.errors import CalibrationError


def _stateful_model(path: Path) -> Path:
    """y = Softmax(x @ w) (node named 'Softmax@0', output declared as rank 1: both wrong for TensorFlow),
    state_out = tanh(state + mean(x)): a state laid out (layers, batch, hidden), as RNN exports have it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["logits"], name="MatMul@0"),
        helper.make_node("Softmax", ["logits"], ["y"], name="Softmax@0", axis=1),
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1),  # (batch, 1)
        helper.make_node("Transpose", ["m"], ["mt"], perm=[1, 0]),  # (1, batch)
        helper.make_node("Unsqueeze", ["mt", "axes2"], ["m3"]),  # (1, batch, 1)
        helper.make_node("Add", ["state", "m3"], ["s"]),
        helper.make_node("Tanh", ["s"], ["state_out"]),
    ]
    graph = helper.make_graph(
        nodes, "stateful",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"]),  # wrong: the graph computes [batch, 5]
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, "batch", 3])],
        [w, axes, numpy_helper.from_array(np.array([2], np.int64), "axes2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _stacked_samples(path: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(1)
    np.savez(path, x=rng.standard_normal((n, 1, 4)).astype(np.float32),  # n feeds of x (1, 4)
             state=rng.standard_normal((n, 2, 1, 3)).astype(np.float32))  # and of state (2, 1, 3)
    return path


@pytest.mark.tensorflow
def test_stacked_feeds_wrong_output_shapes_and_odd_names_convert(tmp_path: Path) -> None:
    pytest.importorskip("onnx2tf")
    model = _stateful_model(tmp_path / "stateful.onnx")
    calibration = _stacked_samples(tmp_path / "feeds.npz")
    result = convert(model, ["onnx-web", "tflite"], out=tmp_path / "b", calibration=calibration)
    manifest = result.bundle.manifest
    assert manifest.calibration is not None and manifest.calibration.n_samples == 6
    web = manifest.artifact("onnx-web")
    assert web.parity is not None and web.parity.passed and web.parity.n_samples == 6
    checks = [c for c in web.runtime_checks or () if c.parity is not None]
    assert not checks or all(c.parity.passed for c in checks if c.parity)  # the same stacked feeds on wasm
    tflite = manifest.artifact("tflite")
    assert tflite.parity is not None and tflite.parity.passed, tflite.parity
    rewrites = " ".join(tflite.extra["conversion"].get("rewrites", []))
    assert "renamed" in rewrites and "declared shapes of 1 outputs dropped" in rewrites


def test_feeds_must_all_be_stacked_or_none(tmp_path: Path) -> None:
    model = _stateful_model(tmp_path / "stateful.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "mixed.npz", x=rng.standard_normal((6, 1, 4)).astype(np.float32),
             state=rng.standard_normal((2, 6, 3)).astype(np.float32))
    with pytest.raises(CalibrationError, match="lists whole feeds"):
        convert(model, ["onnx-web"], out=tmp_path / "b", calibration=tmp_path / "mixed.npz")


@pytest.mark.torch
def test_integer_ops_of_a_quantized_model_become_float_ops_for_onnx2tf(tmp_path: Path) -> None:
    """onnxruntime's dynamic quantization writes ConvInteger and DynamicQuantizeLSTM (com.microsoft),
    which onnx2tf cannot take: the rewrite computes them in float on the dequantized weights."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgekit.converters.passes.onnx_integer import integer_ops_to_float

    class ConvLstm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.lstm = torch.nn.LSTM(8 * 4, 16, bidirectional=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.conv(x))  # (1, 8, 4, W)
            seq = y.permute(3, 0, 1, 2).reshape(y.shape[3], 1, -1)  # (W, 1, 32)
            return self.lstm(seq)[0]

    torch.manual_seed(0)
    float_path, int8_path = tmp_path / "f.onnx", tmp_path / "q.onnx"
    torch.onnx.export(ConvLstm().eval(), (torch.rand(1, 1, 4, 10),), str(float_path), input_names=["x"],
                      dynamo=False, opset_version=13)
    quantize_dynamic(str(float_path), str(int8_path), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["Conv", "LSTM"])
    model = onnx.load(str(int8_path))
    assert {"ConvInteger", "DynamicQuantizeLSTM"} <= {n.op_type for n in model.graph.node}
    assert integer_ops_to_float(model) == 2
    assert not {"ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM"} & {n.op_type for n in model.graph.node}
    assert all(o.domain in ("", "ai.onnx") for o in model.opset_import)
    x = np.random.default_rng(0).random((1, 1, 4, 10), dtype=np.float32)
    want = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()  # activations now float: int8-level difference


def test_ops_onnx2tf_lacks_are_expanded_into_their_onnx_functions() -> None:
    """CastLike (a function op onnx2tf lacks) and a Constant given as value_float (which onnx2tf reads as a
    Python float) become primitive ops and an initializer computing the same."""
    pytest.importorskip("onnx2tf")
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgekit.converters.passes.onnx_rewrites import constants_to_initializers, expand_function_ops

    nodes = [helper.make_node("Constant", [], ["half"], value_float=0.5),
             helper.make_node("CastLike", ["half", "x"], ["half_like"]),
             helper.make_node("Mul", ["x", "half_like"], ["y"])]
    graph = helper.make_graph(nodes, "castlike", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert expand_function_ops(model) == {"CastLike": 1}
    assert constants_to_initializers(model) == 1
    assert {n.op_type for n in model.graph.node} == {"Cast", "Mul"}
    onnx.checker.check_model(model)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
