"""Calibration files: inputs by name or as a single 'x', labels by key, clear errors otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.bundle import TensorSpec
from edgekit.converters.calibration import generate_samples, load_calibration
from edgekit.errors import CalibrationError

TWO = (TensorSpec("x", ("batch", 2), "float32"), TensorSpec("y", ("batch", 2), "float32"))


def test_an_input_named_y_is_an_input_and_labels_come_from_labels_key(tmp_path: Path) -> None:
    path = tmp_path / "cal.npz"
    np.savez(path, x=np.zeros((3, 2)), y=np.ones((3, 2)), labels=np.array([0, 1, 1]))
    plain = load_calibration(path, TWO)
    assert plain.labels is None and plain.inputs["y"].dtype == np.float32  # float64 cast to the model's dtype
    keyed = load_calibration(path, TWO, labels_key="labels")
    assert keyed.labels is not None and list(keyed.labels) == [0, 1, 1]
    assert keyed.info is not None and keyed.info.has_labels and keyed.info.n_samples == 3


def test_mismatches_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "cal.npz"
    np.savez(path, x=np.zeros((3, 2)), y=np.zeros((4, 2)))
    with pytest.raises(CalibrationError, match="different sample counts"):
        load_calibration(path, TWO)
    np.savez(path, x=np.zeros((3, 2), np.float32), y=np.array([0, 1]))
    with pytest.raises(CalibrationError, match="3 samples but 2 labels"):
        load_calibration(path, (TWO[0],))
    np.savez(path, x=np.zeros((3, 2), np.int32))
    with pytest.raises(CalibrationError, match="needs float32, got int32"):
        load_calibration(path, (TWO[0],))
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(CalibrationError, match="cannot read"):
        load_calibration(tmp_path / "bad.npz", (TWO[0],))
    with pytest.raises(CalibrationError, match="does not exist"):
        load_calibration(tmp_path / "none.npz", (TWO[0],))


def test_generated_inputs_need_static_inner_dims() -> None:
    samples = generate_samples((TensorSpec("x", (1, 3), "float32"), TensorSpec("ids", (1, 3), "int64")))
    assert samples.inputs["x"].shape == (1, 3) and samples.inputs["ids"].dtype == np.int64
    with pytest.raises(CalibrationError, match="pass --calibration"):
        generate_samples((TensorSpec("x", ("batch", "seq"), "float32"),))


def _static_model(path: Path) -> Path:
    """A fully static model with no shared batch axis: a [2, 3] matrix, a [5] vector and a scalar."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "w")
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["m"]),
        helper.make_node("ReduceSum", ["b"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "scale"], ["t"]),
        helper.make_node("Add", ["m", "t"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "static",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [5]),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_a_fully_static_model_takes_one_feed_of_its_exact_shapes(tmp_path: Path) -> None:
    """Arrays equal to a fully static model's input shapes are one sample, not batches of 2, 5 and 0."""
    from edgekit.converters import convert

    model = _static_model(tmp_path / "static.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", a=rng.standard_normal((2, 3)), b=rng.standard_normal(5),
             scale=np.array(0.5, np.float32))
    for calibration in (tmp_path / "cal.npz", None):  # given, and generated
        out = tmp_path / ("given" if calibration else "generated")
        result = convert(model, ["onnx-web", "onnx-web-fp16"], out=out, calibration=calibration, report=False)
        for art in result.bundle.manifest.artifacts:
            assert art.parity is not None and art.parity.passed, art
            assert art.parity.max_abs_error < 1e-2
            wasm = (art.runtime_checks or ())[0]
            assert wasm.parity is not None and wasm.parity.passed  # the same feed on onnxruntime-web
        reference = np.load(out / "reference.npz")
        assert reference["in.scale"].shape == () and reference["out.out"].shape == (2, 4)
    samples = generate_samples(result.bundle.manifest.inputs)
    assert samples.single and samples.count == 1 and samples.inputs["b"].shape == (5,)


def test_a_scalar_input_is_shared_by_every_sample_of_a_batch(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from edgekit.converters import convert

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "temperature"], ["y"])], "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("temperature", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "scaled.onnx"))
    np.savez(tmp_path / "cal.npz", x=np.arange(300, dtype=np.float32).reshape(100, 3), temperature=np.float32(0.5))
    result = convert(tmp_path / "scaled.onnx", ["onnx-web"], out=tmp_path / "b", calibration=tmp_path / "cal.npz",
                     report=False)
    art = result.bundle.manifest.artifacts[0]
    assert art.parity is not None and art.parity.passed and art.parity.n_samples == 100
    assert result.bundle.manifest.calibration is not None and result.bundle.manifest.calibration.n_samples == 100
    wasm = (art.runtime_checks or ())[0].parity
    assert wasm is not None and wasm.passed and wasm.max_abs_error == 0
    assert generate_samples(result.bundle.manifest.inputs).inputs["temperature"].shape == ()
