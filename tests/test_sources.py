"""Each source kind goes to the ONNX-web family by its own exporter, with parity measured."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.bundle import read_bundle
from edgekit.errors import UnsupportedModelError
from tests.conftest import DIGITS, run_cli


def _check(bundle_path: Path, source_format: str, min_agreement: float = 0.99) -> dict:
    manifest = read_bundle(bundle_path).manifest
    assert manifest.source.format == source_format
    for art in manifest.artifacts:
        assert art.parity is not None and art.parity.passed
        if art.parity.top1_agreement is not None:
            assert art.parity.top1_agreement >= min_agreement, art.target
    return json.loads((bundle_path / "bundle.json").read_text())


def _convert_fp32_and_int8(model: Path, calibration: Path, out: Path, source_format: str) -> dict:
    result = run_cli("convert", model, "--target", "onnx-web", "--target", "onnx-web-int8",
                     "--calibration", calibration, "--out", out)
    assert result.exit_code == 0, result.output
    return _check(out, source_format)


@pytest.mark.torch
def test_torch_export_program_via_cli(tmp_path: Path) -> None:
    doc = _convert_fp32_and_int8(DIGITS / "digits.pt2", DIGITS / "digits.npz", tmp_path / "pt2", "torch.export")
    assert doc["artifacts"][0]["route"][0] == "torch-program-onnx"
    assert doc["inputs"][0]["name"] == "x" and doc["inputs"][0]["shape"][1:] == [1, 8, 8]
    assert doc["artifacts"][-1]["accuracy"]["top1"] > 0.95


@pytest.mark.torch
def test_torch_module_via_python_api(tmp_path: Path) -> None:
    import torch

    from edgekit.converters import convert

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    result = convert(model, ["onnx-web", "onnx-web-fp16"], out=tmp_path / "b", example_inputs=(torch.randn(3, 16),))
    doc = _check(result.bundle.path, "torch.nn.Module", min_agreement=0.9)
    assert doc["inputs"][0]["shape"] == ["batch", 16]
    assert doc["artifacts"][0]["parity"]["max_abs_error"] < 1e-4
    with pytest.raises(UnsupportedModelError, match="example inputs"):
        convert(model, ["onnx-web"], out=tmp_path / "c")


def _keras_digits_model():
    import keras

    from examples.digits.make_digits import load_split

    x_train, x_test, y_train, y_test = load_split()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train.transpose(0, 2, 3, 1), y_train, epochs=8, batch_size=64, verbose=0)
    return model, x_test.transpose(0, 2, 3, 1), y_test


@pytest.fixture(scope="module")
def keras_digits():
    pytest.importorskip("tensorflow")
    return _keras_digits_model()


@pytest.mark.tensorflow
def test_keras_file_via_cli(tmp_path: Path, keras_digits) -> None:
    model, x_test, y_test = keras_digits
    model.save(tmp_path / "digits.keras")
    np.savez(tmp_path / "cal.npz", x=x_test, y=y_test)
    doc = _convert_fp32_and_int8(tmp_path / "digits.keras", tmp_path / "cal.npz", tmp_path / "keras", "keras")
    assert doc["artifacts"][0]["route"][0] == "tf2onnx"
    assert doc["inputs"][0]["shape"] == ["batch", 8, 8, 1]
    assert doc["artifacts"][-1]["accuracy"]["top1"] > 0.9
    # `edgekit check` predicts the size from the weights: the file also holds Adam's two slots per weight
    checked = run_cli("check", tmp_path / "digits.keras", "-t", "onnx-web", "--json")
    assert checked.exit_code == 0, checked.output
    predicted = json.loads(checked.stdout)[0]["expected_bytes"]
    actual = next(a["size_bytes"] for a in doc["artifacts"] if a["target"] == "onnx-web")
    assert predicted == 4 * model.count_params() and 0.8 < predicted / actual < 1.25, (predicted, actual)
    assert (tmp_path / "digits.keras").stat().st_size > 2 * actual  # what dividing the file by 4 predicted


@pytest.mark.tensorflow
def test_keras_object_via_python_api(tmp_path: Path, keras_digits) -> None:
    from edgekit.converters import convert

    model, _, _ = keras_digits
    result = convert(model, ["onnx-web-fp16"], out=tmp_path / "b")
    _check(result.bundle.path, "keras.Model")


def test_object_of_unknown_kind_is_refused(tmp_path: Path) -> None:
    from edgekit.converters import convert

    with pytest.raises(UnsupportedModelError, match="cannot convert a dict"):
        convert({"not": "a model"}, ["onnx-web"], out=tmp_path / "b")
    assert not (tmp_path / "b").exists()
