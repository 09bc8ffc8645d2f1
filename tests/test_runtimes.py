"""The thin runtime: open bundles (verified) or model files, with every provider attempt recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgekit.runtimes as rt
from edgekit.bundle import read_bundle
from edgekit.errors import BundleError, IntegrityError


def test_open_bundle_by_target_and_format_runs_the_held_out_split(digits_bundle: Path, digits_npz: Path) -> None:
    data = np.load(digits_npz)
    for fmt in ("onnx", "ort"):
        session = rt.open(digits_bundle, target="onnx-web-int8", format=fmt)
        logits = session.run({"x": data["x"]})["logits"]
        assert logits.shape == (360, 10)
        assert (logits.argmax(1) == data["y"]).mean() > 0.95
        assert session.provider == "CPUExecutionProvider" and session.load_seconds > 0
        assert session.inputs[0].name == "x" and session.outputs[0].dtype == "float32"


def test_unavailable_provider_is_recorded_not_silent(digits_onnx: Path) -> None:
    session = rt.open(digits_onnx, providers=("NoSuchExecutionProvider", "CPUExecutionProvider"))
    assert [(a.provider, a.ok) for a in session.attempts] == [("NoSuchExecutionProvider", False),
                                                             ("CPUExecutionProvider", True)]
    assert "not offered" in session.attempts[0].reason
    with pytest.raises(BundleError, match="could not load"):
        rt.open(digits_onnx, providers=("NoSuchExecutionProvider",))


def test_open_refuses_tampered_and_unknown(bundle_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no target 'tflite'"):
        rt.open(bundle_copy, target="tflite")
    (bundle_copy / "onnx-web.onnx").write_bytes(b"garbage")
    with pytest.raises(IntegrityError):
        rt.open(bundle_copy)
    with pytest.raises(BundleError, match="neither a bundle"):
        rt.open(tmp_path)


def test_null_session_returns_declared_shapes(digits_bundle: Path) -> None:
    m = read_bundle(digits_bundle).manifest
    session = rt.NullSession(m.inputs, m.outputs)
    out = session.run({"x": np.zeros((5, 1, 8, 8), np.float32)})
    assert out["logits"].shape == (5, 10) and out["logits"].dtype == np.float32
