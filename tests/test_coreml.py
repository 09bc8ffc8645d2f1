"""The Core ML family, checked on Linux by edgekit's MIL reference interpreter: op by op and whole models."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekit.bundle import read_bundle
from edgekit.converters import convert
from tests.conftest import DIGITS, run_cli

pytestmark = [pytest.mark.slow]

COREML_TARGETS = ["coreml-fp16", "coreml", "coreml-int8", "coreml-palettize4", "coreml-palettize6"]
SOURCES = {"torch": DIGITS / "digits.pt2", "keras": DIGITS / "digits.keras", "onnx": DIGITS / "digits.onnx"}


@pytest.fixture(scope="module", params=[pytest.param("torch", marks=pytest.mark.torch),
                                        pytest.param("keras", marks=pytest.mark.tensorflow),
                                        pytest.param("onnx", marks=pytest.mark.tensorflow)])
def coreml_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The digits CNN from each source, converted to all five Core ML targets through the CLI."""
    pytest.importorskip("coremltools")
    out = tmp_path_factory.mktemp("coreml") / request.param
    args = ["convert", SOURCES[request.param], "--calibration", DIGITS / "digits.npz", "--out", out, "--min-ios", "16"]
    for t in COREML_TARGETS:
        args += ["--target", t]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    return request.param, out


def test_five_targets_verified_by_the_interpreter(coreml_bundle: tuple[str, Path]) -> None:
    source, path = coreml_bundle
    manifest = read_bundle(path).manifest  # verifies each package's deterministic directory hash
    arts = {a.target: a for a in manifest.artifacts}
    assert set(arts) == set(COREML_TARGETS)
    for art in arts.values():
        assert art.format == "mlpackage" and (path / art.file).is_dir()
        assert art.parity is not None and art.parity.passed and art.parity.n_samples == 360, art.target
        conversion = art.extra["conversion"]
        assert conversion["validated_on"] == "mil-reference"
        assert conversion["minimum_deployment_target"] == "iOS16"
    for name in ("coreml-fp16", "coreml-int8"):
        assert arts[name].parity is not None and (arts[name].parity.top1_agreement or 0) >= 0.99
    assert arts["coreml-palettize4"].size_bytes <= 0.20 * arts["coreml"].size_bytes
    assert arts["coreml"].parity is not None and arts["coreml"].parity.max_abs_error < 1e-3
    route = arts["coreml"].route or ()
    assert route[0] == {"torch": "torch-program-coreml-fp32", "keras": "keras-tf", "onnx": "onnx2tf"}[source]
    if source == "onnx":  # onnx2tf made the input NHWC; the manifest says so
        assert arts["coreml"].inputs is not None and arts["coreml"].inputs[0].source_transpose == (0, 2, 3, 1)


def test_the_runtime_refuses_core_ml_off_macos(coreml_bundle: tuple[str, Path]) -> None:
    """Linux cannot run Core ML: the runtime says so and names what it can run instead."""
    import edgekit.runtimes as rt
    from edgekit.errors import BundleError

    _, path = coreml_bundle
    with pytest.raises(BundleError, match="Core ML runs only on macOS"):
        rt.open(path, target="coreml-fp16")


def _convert_pair(module: Any, x: np.ndarray, tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The interpreter's output for ``module`` as an fp32 ML Program, and onnxruntime's for its ONNX export."""
    import coremltools as ct
    import onnxruntime as ort
    import torch

    from edgekit._console import captured_output
    from edgekit.converters.mil import MilRuntime

    module = module.eval()
    example = torch.from_numpy(x)
    with torch.no_grad(), captured_output():
        traced = torch.jit.trace(module, example)
        model = ct.convert(traced, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                           compute_precision=ct.precision.FLOAT32,
                           inputs=[ct.TensorType(name="x", shape=x.shape, dtype=np.float32)],
                           outputs=[ct.TensorType(name="y", dtype=np.float32)])
        model.save(str(tmp_path / "m.mlpackage"))
        if getattr(model, "is_temp_package", False):  # ct.convert wrote one in the system temp dir first
            shutil.rmtree(model.package_path, ignore_errors=True)
        torch.onnx.export(module, (example,), str(tmp_path / "m.onnx"), input_names=["x"], output_names=["y"],
                          dynamo=False)
    ours = MilRuntime().open(tmp_path / "m.mlpackage").run({"x": x})["y"]
    theirs = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return np.asarray(ours, np.float32), np.asarray(theirs, np.float32)


def _modules() -> dict[str, Any]:
    from torch import nn

    class Elementwise(nn.Module):
        def forward(self, x: Any) -> Any:
            return (x.sigmoid() * 2 + x.tanh() - x.clamp(-0.5, 0.5)) / (x.abs() + 1)

    class Shapes(nn.Module):
        def forward(self, x: Any) -> Any:
            y = x.permute(0, 2, 3, 1).reshape(2, -1, 3)
            return torch_cat([y, y * 2], dim=1).softmax(dim=-1)

    class Reduce(nn.Module):
        def forward(self, x: Any) -> Any:
            return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))

    def torch_cat(values: list[Any], dim: int) -> Any:
        import torch

        return torch.cat(values, dim=dim)

    return {
        "conv stride/pad/dilation": nn.Conv2d(3, 8, 3, stride=2, padding=2, dilation=2),
        "depthwise conv + relu6": nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, groups=3), nn.ReLU6()),
        "grouped conv + prelu": nn.Sequential(nn.Conv2d(3, 6, 3, groups=3), nn.PReLU(6)),
        "max pool ceil mode": nn.MaxPool2d(3, 2, ceil_mode=True),
        "avg pool padded": nn.AvgPool2d(3, 2, padding=1),
        "linear + softmax": nn.Sequential(nn.Flatten(), nn.Linear(3 * 9 * 9, 5), nn.Softmax(dim=1)),
        "batch norm + leaky relu": nn.Sequential(nn.BatchNorm2d(3).eval(), nn.LeakyReLU(0.1)),
        "elementwise": Elementwise(),
        "transpose, reshape, concat, softmax": Shapes(),
        "mean and max reductions": Reduce(),
    }


@pytest.mark.torch
@pytest.mark.parametrize("name", list(_modules()))
def test_each_op_matches_onnxruntime(name: str, tmp_path: Path) -> None:
    pytest.importorskip("coremltools")
    import torch

    torch.manual_seed(0)
    module = _modules()[name]
    for param in module.parameters():  # random, not default, weights and statistics
        param.data.normal_()
    for buffer_name, buffer in module.named_buffers():
        if "running_var" in buffer_name:
            buffer.data.uniform_(0.5, 2.0)
        elif "running_mean" in buffer_name:
            buffer.data.normal_()
    x = np.random.default_rng(0).normal(size=(2, 3, 9, 9)).astype(np.float32)
    ours, theirs = _convert_pair(module, x, tmp_path)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def _check_decompression(package_dir: Path, targets: tuple[str, ...]) -> set[str]:
    from edgekit.converters.mil import OPS, load_program

    checked = set()
    for target in targets:
        function = load_program(package_dir / f"{target}.mlpackage")
        for op in function.operations:
            if not op.op_type.startswith("constexpr_"):
                continue
            mine = OPS[op.op_type](op, lambda n, default=None, op=op: op.inputs[n].val if n in op.inputs else default)[0]
            theirs = op.materialized_val_inference() if hasattr(op, "materialized_val_inference") else op.value_inference()
            np.testing.assert_array_equal(mine.astype(np.float16), np.asarray(theirs, np.float16))
            checked.add(op.op_type)
    return checked


def test_weight_decompression_matches_coremltools(coreml_bundle: tuple[str, Path]) -> None:
    """edgekit's own unpacking of int8 and palettized weights (iOS16 forms), against coremltools' materialization."""
    _, path = coreml_bundle
    checked = _check_decompression(path, ("coreml-int8", "coreml-palettize4", "coreml-palettize6"))
    assert checked == {"constexpr_affine_dequantize", "constexpr_lut_to_dense"}


@pytest.mark.torch
def test_ios18_compression_forms_are_interpreted(tmp_path: Path) -> None:
    pytest.importorskip("coremltools")
    targets = ("coreml-int8", "coreml-palettize4")
    result = convert(SOURCES["torch"], list(targets), out=tmp_path / "b", calibration=DIGITS / "digits.npz", min_ios=18)
    for art in result.bundle.manifest.artifacts:
        assert art.extra["conversion"]["minimum_deployment_target"] == "iOS18"
        assert art.parity is not None and art.parity.passed, art.target
    assert _check_decompression(result.bundle.path, targets) == {"constexpr_blockwise_shift_scale",
                                                                 "constexpr_lut_to_dense"}


@pytest.mark.torch
def test_an_op_the_interpreter_lacks_leaves_the_artifact_unverified(tmp_path: Path) -> None:
    pytest.importorskip("coremltools")
    import torch
    from torch import nn

    class Normalized(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.grid = nn.Parameter(torch.rand(1, 4, 4, 2) * 2 - 1)

        def forward(self, x: Any) -> Any:  # cumsum is interpreted, resample (grid_sample) is not
            return nn.functional.grid_sample(x, self.grid.expand(x.shape[0], -1, -1, -1), align_corners=False) + \
                torch.cumsum(x, dim=1)

    x = torch.randn(2, 3, 4, 4)
    result = convert(Normalized(), ["coreml", "onnx-web"], out=tmp_path / "b", example_inputs=(x,))
    art = result.bundle.manifest.artifact("coreml")
    assert art.parity is None and art.unverified is not None
    assert art.unverified.startswith("unverified: op resample")
    assert result.bundle.manifest.artifact("onnx-web").parity is not None
    shown = run_cli("inspect", result.bundle.path)
    assert "unverified: op resample" in shown.output


@pytest.mark.torch
def test_prelu_after_a_linear_layer_is_rewritten_and_verified(tmp_path: Path) -> None:
    """coremltools' prelu takes rank-4 inputs only (MTCNN's O-Net has one after a linear layer)."""
    pytest.importorskip("coremltools")
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.act1 = nn.Conv2d(3, 4, 3), nn.PReLU(4)
            self.dense, self.act2 = nn.Linear(4 * 5 * 5, 8), nn.PReLU(8)

        def forward(self, x: Any) -> Any:
            x = self.act1(self.conv(x))
            return self.act2(self.dense(x.view(x.shape[0], -1)))  # shape, gather, concat, reshape in MIL

    torch.manual_seed(0)
    model = Head().eval()
    for act in (model.act1, model.act2):
        act.weight.data.uniform_(-0.5, 0.5)
    x = np.random.default_rng(0).normal(size=(32, 3, 7, 7)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x)
    result = convert(model, ["coreml", "coreml-fp16"], out=tmp_path / "b", example_inputs=(torch.from_numpy(x[:2]),),
                     calibration=tmp_path / "cal.npz")
    for art in result.bundle.manifest.artifacts:
        assert "2 PReLU" in art.extra["conversion"]["rewrites"][0]
        assert art.parity is not None and art.parity.passed, art.target
    assert model.act2.__class__ is nn.PReLU  # the caller's module is untouched


@pytest.mark.torch
def test_an_fp16_program_that_fails_parity_falls_back_to_mixed_precision(tmp_path: Path) -> None:
    """(x + 3000) - 3000: float16 steps are 2 at 3000, so plain fp16 loses x; mixed keeps add/sub in fp32."""
    pytest.importorskip("coremltools")
    import torch
    from torch import nn

    class Offset(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(8, 4)

        def forward(self, x: Any) -> Any:
            return self.linear((x + 3000.0) - 3000.0)

    torch.manual_seed(0)
    x = torch.rand(16, 8)
    result = convert(Offset().eval(), ["coreml-fp16"], out=tmp_path / "b", example_inputs=(x,))
    art = result.bundle.manifest.artifact("coreml-fp16")
    assert art.route == ("torch-coreml-fp16-mixed",)
    assert art.parity is not None and art.parity.passed
    assert art.extra["conversion"]["compute_precision"] == "fp16, mixed" and "add" in art.extra["conversion"]["fp32_ops"]
    assert "ParityError" in art.extra["routes_tried"][0]["error"]


@pytest.mark.torch
def test_mixed_precision_measures_which_ops_stay_float32(tmp_path: Path) -> None:
    """A projection whose sums pass float16's 65504 (before a scale brings them back): the fixed list of
    range-sensitive op types leaves the linear in float16 (inf), so the search measures that the linear
    must stay float32, and nothing else that holds weights."""
    pytest.importorskip("coremltools")
    import torch
    from torch import nn

    class Projection(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
            self.proj = nn.Linear(256, 8)
            with torch.no_grad():
                self.body[2].weight *= 400.0  # activations in the hundreds: fine in float16
                self.proj.weight *= 3000.0  # sums near 1e5: inf in float16

        def forward(self, x: Any) -> Any:
            return torch.tanh(self.proj(self.body(x)) / 200000.0)

    torch.manual_seed(0)
    x = torch.randn(32, 16)
    result = convert(Projection().eval(), ["coreml-fp16"], out=tmp_path / "b", example_inputs=(x,))
    art = result.bundle.manifest.artifact("coreml-fp16")
    assert art.route == ("torch-coreml-fp16-mixed",)
    assert art.parity is not None and art.parity.passed
    conversion = art.extra["conversion"]
    assert conversion["mixed_method"].startswith("measured")
    assert conversion["fp32_ops"].get("linear") == 1  # the projection, not the 256x256 body
    assert 0 < conversion["fp32_weight_share"] < 0.1
