"""Parity is measured, and a drift beyond tolerance fails the conversion unless accepted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.bundle import TensorSpec
from edgekit.parity import Tolerance, compare, describe_failure
from tests.conftest import run_cli

OUT = (TensorSpec("logits", ("batch", 3), "float32"),)


def test_compare_measures_error_agreement_and_accuracy() -> None:
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [0.0, 5.0, 1.0], [1.0, 0.0, 0.0]], np.float32)
    act = ref.copy()
    act[3] = [0.0, 1.0, 0.0]  # one decision flips
    parity, acc = compare({"logits": ref}, {"renamed": act}, OUT, Tolerance(1e-3), np.array([2, 0, 1, 1]))
    assert parity.max_abs_error == pytest.approx(1.0) and parity.top1_agreement == pytest.approx(0.75)
    assert not parity.passed and parity.n_samples == 4
    assert acc is not None and acc.source_top1 == pytest.approx(0.75) and acc.top1 == pytest.approx(1.0)
    gated = compare({"logits": ref}, {"logits": act}, OUT, Tolerance(1e-3, min_top1_agreement=0.7))[0]
    assert gated.passed  # quantized targets are judged on decisions, not logits
    message = describe_failure("onnx-web-int8", parity)
    assert "logits" in message and "top-1 agreement 0.7500" in message and "max_rel_error 0.001" in message


def test_integer_outputs_are_compared_exactly_and_kept_out_of_error_statistics() -> None:
    outs = (TensorSpec("embedding", ("batch", 4), "float32"), TensorSpec("shape", (2,), "int64"))
    ref = {"embedding": np.ones((3, 4), np.float32), "shape": np.array([3, 4], np.int64)}
    same = {"embedding": ref["embedding"] + 1e-3, "shape": np.array([3, 4], np.int64)}
    parity = compare(ref, same, outs, Tolerance(0.25))[0]
    assert parity.passed and parity.max_abs_error == pytest.approx(1e-3, rel=1e-3)  # the shape output adds no "error"
    assert parity.per_output[1] == {"name": "shape", "exact": True, "agreement": 1.0, "passed": True}
    off = {"embedding": ref["embedding"], "shape": np.array([3, 5], np.int64)}
    failed = compare(ref, off, outs, Tolerance(0.25))[0]
    assert not failed.passed and failed.max_abs_error == 0.0
    assert "shape: 0.5000 of its integer values equal the source's FAILED" in describe_failure("t", failed)


def test_overflow_never_passes() -> None:
    ref = np.full((2, 3), 7e4, np.float32)
    act = ref.copy()
    act[0, 0] = np.inf
    parity, _ = compare({"logits": ref}, {"logits": act}, OUT, Tolerance(1.0, min_top1_agreement=0.0))
    assert not parity.passed and parity.per_output[0]["non_finite_values"] == 1
    assert np.isfinite(parity.max_abs_error)


@pytest.fixture(scope="module")
def overflowing_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ONNX regression model whose outputs exceed float16's range (max 65504)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((4, 1), 3e4, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "overflow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("models") / "overflow.onnx"
    onnx.save(model, str(path))
    cal = path.with_suffix(".npz")
    np.savez(cal, x=np.abs(np.random.default_rng(0).standard_normal((16, 4))).astype(np.float32) + 1)
    return path


def test_parity_failure_fails_the_conversion(tmp_path: Path, overflowing_model: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("convert", overflowing_model, "--target", "onnx-web-fp16", "--out", out,
                     "--calibration", overflowing_model.with_suffix(".npz"))
    assert result.exit_code == 2, result.output
    assert "drifts from the source model" in result.stderr and "y: max abs error" in result.stderr
    assert "--accept-parity-failure" in result.stderr
    assert not out.exists()


def test_partial_results_and_accepted_parity(tmp_path: Path, overflowing_model: Path) -> None:
    cal = overflowing_model.with_suffix(".npz")
    out = tmp_path / "partial"
    result = run_cli("convert", overflowing_model, "--target", "onnx-web", "--target", "onnx-web-fp16",
                     "--out", out, "--calibration", cal, "--keep-partial")
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "bundle.json").read_text())
    assert {a["target"] for a in doc["artifacts"]} == {"onnx-web"}
    assert doc["failures"][0]["target"] == "onnx-web-fp16" and doc["failures"][0]["kind"] == "ParityError"
    assert "FAILED" in result.stdout
    listed = {a["file"] for a in doc["artifacts"]} | {"bundle.json", "reference.npz", "report.html"}
    assert {p.name for p in out.iterdir()} == listed  # the failed target's file is not left in the bundle

    accepted = tmp_path / "accepted"
    result = run_cli("convert", overflowing_model, "--target", "onnx-web-fp16", "--out", accepted,
                     "--calibration", cal, "--accept-parity-failure")
    assert result.exit_code == 0, result.output
    parity = json.loads((accepted / "bundle.json").read_text())["artifacts"][0]["parity"]
    assert parity["passed"] is False and parity["accepted"] is True
