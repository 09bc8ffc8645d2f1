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
