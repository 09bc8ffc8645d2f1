"""The thin runtime: open bundles (verified) or model files, provider chains that are never silent, stats."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

import edgekit.runtimes as rt
from edgekit.bundle import read_bundle
from edgekit.errors import BundleError, IntegrityError, InvalidInputError, ProviderError
from edgekit.runtimes.stats import LatencyHistogram

AZURE = "AzureExecutionProvider"  # offered by the CPU wheel; runs no node itself, so every node lands on CPU
CPU = "CPUExecutionProvider"


def test_open_bundle_by_target_and_format_runs_the_held_out_split(digits_bundle: Path, digits_npz: Path) -> None:
    data = np.load(digits_npz)
    # the .ort copy is kept only when it loads faster or is smaller, which timing noise can flip
    formats = [a.format for a in read_bundle(digits_bundle).manifest.artifacts if a.target == "onnx-web-int8"]
    assert "onnx" in formats
    for fmt in formats:
        session = rt.open(digits_bundle, target="onnx-web-int8", format=fmt)
        logits = session.run({"x": data["x"]})["logits"]
        assert logits.shape == (360, 10)
        assert (logits.argmax(1) == data["y"]).mean() > 0.95
        assert session.provider == CPU and session.load_seconds > 0
        assert session.inputs[0].name == "x" and session.outputs[0].dtype == "float32"


def test_unavailable_provider_is_recorded_not_silent(digits_onnx: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        session = rt.open(digits_onnx, providers=("NoSuchExecutionProvider", "cpu"))
    assert [(a.provider, a.ok) for a in session.attempts] == [("NoSuchExecutionProvider", False), (CPU, True)]
    assert "not offered" in session.attempts[0].reason
    assert any("NoSuchExecutionProvider passed over" in r.message for r in caplog.records)
    with pytest.raises(ProviderError, match="could not load"):
        rt.open(digits_onnx, providers=("NoSuchExecutionProvider",))
    with pytest.raises(ProviderError, match="strict"):
        rt.open(digits_onnx, providers=("cuda", "cpu"), policy="strict")


def test_provider_options_that_fail_session_creation_fall_back(digits_onnx: Path) -> None:
    # a real onnxruntime failure: this provider would leave nodes on CPU, which the option forbids
    refusing = (AZURE, {"session.disable_cpu_ep_fallback": "1"})
    session = rt.open(digits_onnx, providers=(refusing, CPU))
    assert session.provider == CPU
    first = session.attempts[0]
    assert first.provider == AZURE and not first.ok and "session creation failed" in first.reason
    assert "fallback to CPU EP has been explicitly disabled" in first.reason
    with pytest.raises(ProviderError, match="session creation failed"):
        rt.open(digits_onnx, providers=(refusing, CPU), policy="strict")


def test_partial_placement_is_reported(digits_onnx: Path) -> None:
    session = rt.open(digits_onnx, providers=("azure",))
    assert session.provider == AZURE
    assert isinstance(session, rt.OrtSession) and session.placement is not None
    assert session.placement.get(CPU, 0) == sum(session.placement.values()) > 0
    assert any("partial placement" in n and "Conv" in n for n in session.notes)
    out = session.run({"x": np.zeros((3, 1, 8, 8), np.float32)})["logits"]
    assert out.shape == (3, 10)
    with pytest.raises(ProviderError, match="strict"):  # strict refuses an accelerator that leaves nodes on CPU
        rt.open(digits_onnx, providers=("azure", "cpu"), policy="strict")


@pytest.fixture(scope="module")
def fails_at_batch_one(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model that loads everywhere but fails on a batch of one (Reshape [n, 3] -> [2, -1])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, None])
    shape = numpy_helper.from_array(np.array([2, -1], np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g", [x], [y], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = tmp_path_factory.mktemp("models") / "reshape.onnx"
    onnx.save(model, str(path))
    return path


def test_a_provider_failing_its_first_run_is_passed_over(fails_at_batch_one: Path) -> None:
    session = rt.open(fails_at_batch_one, providers=("azure", "cpu"))
    assert session.provider == CPU
    assert "first run failed" in session.attempts[0].reason
    assert session.run({"x": np.ones((2, 3), np.float32)})["y"].shape == (2, 3)
    with pytest.raises(InvalidInputError, match="refused the inputs"):
        session.run({"x": np.ones((1, 3), np.float32)})
    stats = session.stats()
    assert stats.count == 1 and stats.errors == 1


def test_stats_percentiles_in_fixed_memory(digits_onnx: Path) -> None:
    session = rt.open(digits_onnx)
    x = np.zeros((1, 1, 8, 8), np.float32)
    for _ in range(200):
        session.run({"x": x})
    stats = session.stats()
    assert stats.count == 200 and stats.errors == 0 and stats.load_seconds > 0
    assert 0 < stats.min_ms <= stats.p50_ms <= stats.p95_ms <= stats.p99_ms <= stats.max_ms
    hist = LatencyHistogram()
    size = len(hist.counts)
    for ns in range(1, 2_000_000, 97):
        hist.add(ns)
    assert len(hist.counts) == size
    assert hist.percentile(50) == pytest.approx(1.0, rel=0.13)  # 1 ms, within a bucket's width


def test_target_none_chooses_for_this_host_and_says_why(digits_bundle: Path) -> None:
    manifest = read_bundle(digits_bundle).manifest
    ranked, reason = rt.choose(manifest, providers=("cpu",))
    int8 = [("onnx-web-int8", a.format) for a in manifest.artifacts if a.target == "onnx-web-int8"]
    assert [(a.target, a.format) for a in ranked[:len(int8) + 1]] == [*int8, ("onnx-web", "onnx")]
    assert "CPU-only" in reason
    session = rt.open(digits_bundle)
    assert any(n.startswith("chose onnx-web-int8 (onnx") for n in session.notes)
    # a GPU host prefers fp16; a Core ML artifact is passed over on Linux, with the reason
    coreml = dataclasses.replace(manifest.artifacts[0], format="mlpackage", file="m.mlpackage")
    mixed = dataclasses.replace(manifest, artifacts=(*manifest.artifacts, coreml))
    ranked, reason = rt.choose(mixed, providers=("CUDAExecutionProvider", "cpu"))
    assert ranked[0].precision == "fp16" and "macOS" in reason


def test_core_ml_needs_macos(tmp_path: Path) -> None:
    package = tmp_path / "model.mlpackage"
    package.mkdir()
    with pytest.raises(ProviderError, match="cannot run Core ML.*onnx or tflite"):
        rt.open(package)


def test_open_refuses_tampered_and_unknown(bundle_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no target 'tflite'"):
        rt.open(bundle_copy, target="tflite")
    (bundle_copy / "onnx-web.onnx").write_bytes(b"garbage")
    with pytest.raises(IntegrityError):
        rt.open(bundle_copy, target="onnx-web", format="onnx")  # the artifact that runs is hashed first
    rt.open(bundle_copy, target="onnx-web-int8", format="onnx")  # the others are not read at all
    (bundle_copy / "onnx-web-int8.onnx").unlink()  # a device may hold only some artifacts
    assert rt.open(bundle_copy, target="onnx-web-fp16", format="onnx").artifact.target == "onnx-web-fp16"
    with pytest.raises(BundleError, match="neither a bundle"):
        rt.open(tmp_path)
    with pytest.raises(BundleError, match="policy"):
        rt.open(bundle_copy, policy="yolo")


def test_every_artifact_passes_its_smoke_test_on_the_bundled_reference(bundle_copy: Path) -> None:
    manifest = read_bundle(bundle_copy).manifest
    assert manifest.reference is not None and manifest.reference.n_samples == 16
    for art in manifest.artifacts:
        session = rt.open(bundle_copy, target=art.target, format=art.format)
        parity = rt.smoke_test(session)
        assert parity.passed and parity.n_samples == 16, (art.target, art.format)
        assert session.stats().count >= 1
    with pytest.raises(BundleError, match="opened from a bundle"):
        rt.smoke_test(rt.open(bundle_copy / manifest.artifacts[0].file))
    (bundle_copy / "reference.npz").write_bytes(b"changed")
    with pytest.raises(IntegrityError, match="reference samples"):
        rt.smoke_test(rt.open(bundle_copy))


def test_null_session_returns_declared_shapes(digits_bundle: Path) -> None:
    m = read_bundle(digits_bundle).manifest
    session = rt.NullSession(m.inputs, m.outputs)
    out = session.run({"x": np.zeros((5, 1, 8, 8), np.float32)})
    assert out["logits"].shape == (5, 10) and out["logits"].dtype == np.float32
    assert session.stats().count == 1
