"""The TFLite family: every route and precision converted for real, run on LiteRT and checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgekit.runtimes as rt
from edgekit.bundle import read_bundle
from edgekit.converters import convert
from edgekit.errors import CalibrationError, InvalidInputError, PartialConversionError, UnsupportedModelError
from tests.conftest import DIGITS, run_cli

pytestmark = [pytest.mark.tensorflow, pytest.mark.slow]

TFLITE_TARGETS = ["tflite", "tflite-fp16", "tflite-dynamic-int8", "tflite-int8", "tflite-int16x8"]
SOURCES = {"keras": DIGITS / "digits.keras", "onnx": DIGITS / "digits.onnx", "torch": DIGITS / "digits.pt2"}


@pytest.fixture(scope="module", params=["keras", pytest.param("torch", marks=pytest.mark.torch)])
def tflite_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The Keras and the PyTorch digits CNN, each converted to all five TFLite targets through the CLI."""
    out = tmp_path_factory.mktemp("tflite") / request.param
    args = ["convert", SOURCES[request.param], "--calibration", DIGITS / "digits.npz", "--out", out]
    for t in TFLITE_TARGETS:
        args += ["--target", t]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    return request.param, out


def test_all_five_precisions_meet_the_bar(tflite_bundle: tuple[str, Path]) -> None:
    source, path = tflite_bundle
    manifest = read_bundle(path).manifest
    arts = {a.target: a for a in manifest.artifacts}
    assert set(arts) == set(TFLITE_TARGETS)
    for art in arts.values():
        assert art.format == "tflite" and art.file.endswith(".tflite")
        assert art.parity is not None and art.parity.passed and art.parity.n_samples == 360, art.target
        assert art.accuracy is not None
    int8 = arts["tflite-int8"]
    assert int8.size_bytes <= 0.30 * arts["tflite"].size_bytes
    assert int8.accuracy is not None and int8.accuracy.top1 >= int8.accuracy.source_top1 - 0.01
    assert arts["tflite"].parity is not None and arts["tflite"].parity.max_abs_error < 1e-3
    assert arts["tflite-fp16"].size_bytes < 0.6 * arts["tflite"].size_bytes
    first = arts["tflite"].route or ()
    # PyTorch's direct route goes first for fp32; the other precisions go through ONNX and onnx2tf
    assert first[0] == ("keras-tf" if source == "keras" else "litert-torch-program")
    assert (arts["tflite-int8"].route or ())[0] == ("keras-tf" if source == "keras" else "torch-program-onnx")
    for art in arts.values():  # what a device does after installing: the reference samples, in the source layout
        assert rt.smoke_test(rt.open(path, target=art.target)).passed, art.target


def test_onnx_route_records_the_nhwc_transpose_and_the_runtime_applies_it(tflite_bundle: tuple[str, Path]) -> None:
    source, path = tflite_bundle
    manifest = read_bundle(path).manifest
    art = manifest.artifact("tflite-int8")
    assert art.inputs is not None
    (spec,) = art.inputs
    if source == "torch":  # through ONNX and onnx2tf: NCHW became NHWC
        assert spec.shape == (None, 8, 8, 1) and spec.layout == "NHWC" and spec.source_transpose == (0, 2, 3, 1)
    else:  # the Keras model permutes inside; its input is unchanged
        assert spec.shape == (None, 1, 8, 8) and spec.source_transpose is None
    data = np.load(DIGITS / "digits.npz")
    session = rt.open(path, target="tflite-int8")
    assert session.provider == "XNNPACK"
    assert session.inputs[0].shape == (None, 1, 8, 8)  # the caller sees the source layout
    logits = session.run({"x": data["x"]})[manifest.outputs[0].name]
    assert logits.shape == (360, 10) and (logits.argmax(1) == data["y"]).mean() > 0.96
    with pytest.raises(InvalidInputError, match="takes"):
        session.run({"x": data["x"][:, 0]})


def test_int8_io_records_scale_and_zero_point_and_runs_on_float_feeds(tmp_path: Path) -> None:
    result = convert(SOURCES["keras"], ["tflite-int8"], out=tmp_path / "b", calibration=DIGITS / "digits.npz",
                     int8_io=True)
    art = result.bundle.manifest.artifact("tflite-int8")
    assert art.inputs is not None and art.outputs is not None
    assert art.inputs[0].dtype == "int8" and art.outputs[0].dtype == "int8"
    q = art.inputs[0].quantization
    assert q is not None and 0 < q["scale"] < 0.01 and -128 <= q["zero_point"] <= 127
    assert art.accuracy is not None and art.accuracy.top1 >= art.accuracy.source_top1 - 0.01
    data = np.load(DIGITS / "digits.npz")
    session = rt.open(result.bundle.path, target="tflite-int8")
    logits = session.run({"x": data["x"][:50]})["logits"]
    assert logits.dtype == np.float32 and (logits.argmax(1) == data["y"][:50]).mean() > 0.9
    raw = rt.open(result.bundle.artifact_path(art))  # the bare file takes int8
    assert raw.inputs[0].dtype == "int8"
    assert rt.smoke_test(session).passed


def test_onnx_source_converts_with_the_manifest_naming_onnx2tf(tmp_path: Path) -> None:
    result = convert(SOURCES["onnx"], ["tflite"], out=tmp_path / "b", calibration=DIGITS / "digits.npz")
    art = result.bundle.manifest.artifact("tflite")
    assert art.route == ("onnx2tf", "tflite-fp32")
    assert art.extra["conversion"]["frontend"].startswith("onnx2tf ")


@pytest.mark.torch
def test_litert_torch_route_is_offered_and_named(tmp_path: Path) -> None:
    result = convert(SOURCES["torch"], ["tflite"], out=tmp_path / "b", calibration=DIGITS / "digits.npz",
                     via=["litert-torch"])
    art = result.bundle.manifest.artifact("tflite")
    assert art.route == ("litert-torch-program",)
    assert art.extra["conversion"]["converter"].startswith("litert-torch")
    assert art.inputs is not None and art.inputs[0].shape == (1, 1, 8, 8)  # NCHW kept, batch 1
    assert art.inputs[0].source_name == "x"
    assert art.parity is not None and art.parity.passed and art.parity.max_abs_error < 1e-3
    assert rt.smoke_test(rt.open(result.bundle.path)).passed  # batch 1 artifact: reference run one by one


def test_int8_without_calibration_data_is_refused_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="--calibration"):
        convert(SOURCES["keras"], ["tflite-int8"], out=tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def lp_pool_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONNX model onnxruntime runs but onnx2tf cannot convert (LpPool)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 2, 2])
    node = helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], p=2)
    model = helper.make_model(helper.make_graph([node], "lp", [x], [y]), opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp_path_factory.mktemp("models") / "lp.onnx"
    onnx.save(model, str(path))
    return path


def test_unsupported_op_names_the_op_and_route_and_keeps_the_other_targets(lp_pool_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    result = run_cli("convert", lp_pool_onnx, "-t", "onnx-web", "-t", "tflite", "--out", out)
    assert result.exit_code == 2
    assert "LpPool" in result.output and "onnx2tf" in result.output and "Traceback" not in result.output
    manifest = json.loads((out / "bundle.json").read_text())
    assert {a["target"] for a in manifest["artifacts"]} == {"onnx-web"}
    (failure,) = manifest["failures"]
    assert failure["target"] == "tflite" and failure["kind"] == "UnsupportedModelError"
    assert failure["route"] == ["onnx2tf", "tflite-fp32"] and "LpPool" in failure["error"]
    kept = run_cli("convert", lp_pool_onnx, "-t", "onnx-web", "-t", "tflite", "--out", out, "--overwrite",
                   "--keep-partial")
    assert kept.exit_code == 0, kept.output
    with pytest.raises(PartialConversionError) as info:
        convert(lp_pool_onnx, ["tflite", "onnx-web"], out=tmp_path / "api")
    assert [f.target for f in info.value.result.failures] == ["tflite"]  # type: ignore[attr-defined]
    only = run_cli("convert", lp_pool_onnx, "-t", "tflite", "--out", tmp_path / "none")
    assert only.exit_code == 2 and not (tmp_path / "none").exists()


@pytest.fixture(scope="module")
def flex_keras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Keras model whose matrix inverse has no TFLite builtin (it needs the Flex delegate)."""
    import keras

    x = keras.Input((4, 4), name="a")
    y = keras.layers.Dense(4, name="mix")(keras.ops.linalg.inv(x + keras.ops.eye(4) * 4.0))
    path = tmp_path_factory.mktemp("models") / "flex.keras"
    keras.Model(x, y).save(path)
    return path


def test_flex_ops_are_refused_by_default_and_recorded_when_allowed(flex_keras: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="MatrixInverse.*--allow-flex") as info:
        convert(flex_keras, ["tflite"], out=tmp_path / "refused")
    assert "tens of MB" in str(info.value)
    result = convert(flex_keras, ["tflite"], out=tmp_path / "b", allow_flex=True)
    art = result.bundle.manifest.artifact("tflite")
    assert art.extra["conversion"]["flex_ops"] == ["MatrixInverse"]
    assert art.parity is None and art.unverified and "Flex" in art.unverified
    shown = run_cli("inspect", result.bundle.path)
    assert "unverified" in shown.output


@pytest.mark.torch
def test_ceil_mode_max_pool_keeps_int8_accuracy(tmp_path: Path) -> None:
    """onnx2tf pads ceil-mode pools with float32's minimum, which wrecks int8 ranges; edgekit rewrites them."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.PReLU(8), nn.MaxPool2d(3, 2, ceil_mode=True), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 4)).eval()
    x = np.random.default_rng(0).normal(size=(128, 3, 14, 14)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x)
    result = convert(model, ["tflite", "tflite-int8"], out=tmp_path / "b", example_inputs=(torch.from_numpy(x[:2]),),
                     calibration=tmp_path / "cal.npz")
    for art in result.bundle.manifest.artifacts:
        assert art.parity is not None and art.parity.passed
        if "onnx2tf" in (art.route or ()):  # fp32 takes PyTorch's direct route, which needs no rewrite
            assert any("ceil-mode MaxPool" in r for r in art.extra["conversion"]["rewrites"])
    assert "onnx2tf" in (result.bundle.manifest.artifact("tflite-int8").route or ())
    int8 = result.bundle.manifest.artifact("tflite-int8").parity
    assert int8 is not None and int8.per_output is not None and int8.per_output[0]["max_rel_error"] < 0.25


def test_saved_model_directory_converts_through_its_signature(tmp_path: Path) -> None:
    import keras

    saved = tmp_path / "digits_saved_model"
    keras.saving.load_model(SOURCES["keras"], compile=False).export(str(saved), verbose=False)
    result = convert(saved, ["tflite-dynamic-int8"], out=tmp_path / "b", calibration=DIGITS / "digits.npz")
    manifest = result.bundle.manifest
    assert manifest.source.format == "tf.savedmodel" and manifest.inputs[0].shape == ("batch", 1, 8, 8)
    art = manifest.artifact("tflite-dynamic-int8")
    assert art.route == ("saved-model-tf", "tflite-dynamic-int8")
    assert art.parity is not None and art.parity.passed and art.accuracy is not None and art.accuracy.top1 > 0.96
    web = convert(saved, ["onnx-web"], out=tmp_path / "web", calibration=DIGITS / "digits.npz")  # through tf2onnx
    art = web.bundle.manifest.artifact("onnx-web")
    assert art.route is not None and art.route[:2] == ("saved-model-onnx", "onnx-web-optimize")
    assert art.parity is not None and art.parity.passed


def test_litert_tries_the_gpu_delegate_and_falls_back(tflite_bundle: tuple[str, Path]) -> None:
    from edgekit.errors import ProviderError

    _, path = tflite_bundle
    session = rt.open(path, target="tflite", providers=("GPU", "XNNPACK"))
    assert session.provider == "XNNPACK"
    assert session.attempts[0].provider == "GPU" and "no GPU delegate" in session.attempts[0].reason
    with pytest.raises(ProviderError, match="strict"):
        rt.open(path, target="tflite", providers=("GPU", "XNNPACK"), policy="strict")
    chosen = rt.open(path)  # this CPU host: the full-integer artifact
    assert any(n.startswith("chose tflite-int8 (tflite, int8)") for n in chosen.notes)
    assert chosen.stats().count == 0


def test_edgekit_run_keeps_litert_log_lines_off_the_terminal(tflite_bundle: tuple[str, Path], tmp_path: Path) -> None:
    """LiteRT's C++ "INFO: Created TensorFlow Lite XNNPACK delegate" reaches the terminal with -v only."""
    import subprocess
    import sys

    _, path = tflite_bundle
    x = tmp_path / "x.npy"
    np.save(x, np.load(DIGITS / "digits.npz")["x"][:1])
    for flags, shown in (([], False), (["-v"], True)):
        done = subprocess.run([sys.executable, "-m", "edgekit", *flags, "run", str(path), "-i", str(x), "--target",
                               "tflite"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "provider: XNNPACK" in done.stdout
        assert ("XNNPACK delegate" in done.stderr) == shown, done.stderr


def test_dynamic_range_that_loses_the_signal_falls_back_to_int8_weights_with_float_compute(tmp_path: Path) -> None:
    """Zero-sum filters of -1, 0 and 1 (exact in int8) over inputs with an offset of 1000: dynamic range
    quantizes each input to 8 bits at run time (a step of about 8) and loses the signal, so the target
    falls back to int8 weights with float32 compute, which keeps it; the manifest says which and why."""
    import keras

    rng = np.random.default_rng(4)
    kernel = np.zeros((3, 3, 4, 32), np.float32)
    for f in range(32):
        cells = rng.permutation(36)[:6]
        kernel.reshape(36, 32)[cells[:3], f], kernel.reshape(36, 32)[cells[3:], f] = 1.0, -1.0
    model = keras.Sequential([keras.Input((8, 8, 4)), keras.layers.Conv2D(32, 3, use_bias=False, name="edges")])
    model.layers[0].set_weights([kernel])
    source = tmp_path / "edges.keras"
    model.save(source)
    np.savez(tmp_path / "cal.npz", x=1000 + rng.random((16, 8, 8, 4), dtype=np.float32))
    result = convert(source, ["tflite-dynamic-int8"], out=tmp_path / "b", calibration=tmp_path / "cal.npz",
                     report=False)
    art = result.bundle.manifest.artifact("tflite-dynamic-int8")
    assert art.route is not None and art.route[-1] == "tflite-weight-int8", art.extra.get("routes_tried")
    assert art.parity is not None and art.parity.passed and art.parity.per_output[0]["max_rel_error"] < 0.01
    assert "weight-only" in art.extra["conversion"]["method"]
    tried = art.extra["routes_tried"]
    assert tried[0]["route"].endswith("tflite-dynamic-int8") and tried[0]["error"].startswith("ParityError")
    fp32 = convert(source, ["tflite"], out=tmp_path / "fp32", calibration=tmp_path / "cal.npz", report=False)
    assert art.size_bytes < 0.6 * fp32.bundle.manifest.artifact("tflite").size_bytes  # 4.6 KB of weights in 1.2 KB
