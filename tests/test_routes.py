"""Route fallback: when a route fails to convert or fails fp32 parity, the next one is tried and recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.bundle import read_bundle
from edgekit.converters.planner import fallback_routes, ordered_routes, plan, usable_passes
from edgekit.converters.registry import TARGETS, Kind
from tests.conftest import run_cli


def test_fallback_routes_replace_onnx2tf_then_take_alternatives() -> None:
    first = plan(Kind.ONNX, TARGETS["tflite"], usable_passes())
    names = [[s.name for s in r] for r in fallback_routes(Kind.ONNX, TARGETS["tflite"], first)]
    assert [s.name for s in first] == ["onnx2tf", "tflite-fp32"]
    assert names[:2] == [["onnx2tf-fixed-shapes", "tflite-fp32"], ["onnx2tf-keep-layout", "tflite-fp32"]]
    assert names[2:] == [["onnx-torch", "litert-torch-program"]]  # edgekit's ONNX interpreter into PyTorch's route
    torch_first = plan(Kind.TORCH_EXPORT, TARGETS["tflite"], usable_passes())
    torch_names = [[s.name for s in r] for r in fallback_routes(Kind.TORCH_EXPORT, TARGETS["tflite"], torch_first)]
    assert torch_names[-1] == ["litert-torch-program"]  # PyTorch's direct route, among the fallbacks
    assert fallback_routes(Kind.ONNX, TARGETS["onnx-web"], plan(Kind.ONNX, TARGETS["onnx-web"])) == []


def test_a_direct_route_goes_before_any_route_through_onnx() -> None:
    pytest.importorskip("litert_torch")
    first = plan(Kind.TORCH_EXPORT, TARGETS["tflite"], usable_passes())
    names = [[s.name for s in r] for r in ordered_routes(Kind.TORCH_EXPORT, TARGETS["tflite"], first)]
    assert names[0] == ["litert-torch-program"]
    assert names[1] == ["torch-program-onnx", "onnx2tf", "tflite-fp32"]
    onnx_first = plan(Kind.ONNX, TARGETS["tflite"], usable_passes())  # an ONNX source keeps its order
    assert ordered_routes(Kind.ONNX, TARGETS["tflite"], onnx_first)[0] == onnx_first


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small segmentation-style model with dynamic batch, height and width (an OCR detector's shape)."""
    import torch
    from torch import nn

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1)
            self.head = nn.Conv2d(8, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.c1(x))
            z = nn.functional.interpolate(torch.relu(self.c2(y)), size=y.shape[2:], mode="nearest")
            return torch.sigmoid(self.head(y + z))

    folder = tmp_path_factory.mktemp("detector")
    torch.manual_seed(0)
    torch.onnx.export(Detector().eval(), (torch.rand(2, 3, 32, 48),), str(folder / "det.onnx"), input_names=["x"],
                      output_names=["prob"], dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "prob": {0: "b", 2: "h", 3: "w"}},
                      dynamo=False, opset_version=17)
    np.savez(folder / "cal.npz", x=np.random.default_rng(0).random((4, 3, 32, 48), dtype=np.float32))
    return folder / "det.onnx", folder / "cal.npz"


@pytest.mark.slow
@pytest.mark.tensorflow
@pytest.mark.torch
def test_dynamic_spatial_dims_fall_back_to_fixed_shapes(tmp_path: Path, detector: tuple[Path, Path]) -> None:
    model, calibration = detector
    out = tmp_path / "b"
    result = run_cli("convert", model, "--calibration", calibration, "-t", "tflite", "-t", "tflite-fp16", "--out", out)
    assert result.exit_code == 0, result.output
    manifest = read_bundle(out).manifest
    fp32, fp16 = manifest.artifact("tflite"), manifest.artifact("tflite-fp16")
    for art in (fp32, fp16):
        # onnx2tf on dynamic dims gave an output whose layout could not be told (NHWC vs NCHW): its fp32
        # parity failed, so every target of the family took onnx2tf with the calibration's shapes
        assert art.route is not None and art.route[0] == "onnx2tf-fixed-shapes"
        assert art.parity is not None and art.parity.passed
        assert art.inputs is not None and art.inputs[0].shape == (1, 32, 48, 3)  # what was fixed is recorded
        assert art.extra["conversion"]["fixed_shapes"] == {"x": [1, 3, 32, 48]}
    assert fp32.extra["routes_tried"][0]["route"] == "onnx2tf -> tflite-fp32"
    assert "ParityError" in fp32.extra["routes_tried"][0]["error"]
    assert "routes_tried" not in fp16.extra  # the route that failed fp32 parity went last: fp16 never needed it
    assert fp32.parity is not None and fp32.parity.max_abs_error < 1e-5


def _large_range_model(path: Path) -> Path:
    """(x + 1000 - 1000) @ w: float16's spacing at 1000 is 0.5, so plain float16 rounds x to halves; kept
    in float32, the sum and difference are exact."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(1000.0, np.float32), "up"),
             numpy_helper.from_array(np.array(1000.0, np.float32), "down"),
             numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w")]
    nodes = [helper.make_node("Add", ["x", "up"], ["shifted"]),
             helper.make_node("Sub", ["shifted", "down"], ["moved"]),
             helper.make_node("MatMul", ["moved", "w"], ["y"])]
    graph = helper.make_graph(nodes, "ranged", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_float16_that_fails_parity_falls_back_to_mixed_precision(tmp_path: Path) -> None:
    from edgekit.converters import convert

    model = _large_range_model(tmp_path / "ranged.onnx")
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32))
    result = convert(model, ["onnx-web-fp16"], out=tmp_path / "b", calibration=tmp_path / "cal.npz", report=False)
    art = result.bundle.manifest.artifacts[0]
    assert art.route == ("onnx-web-optimize", "onnx-fp16-mixed")
    assert art.parity is not None and art.parity.passed
    assert "ParityError" in art.extra["routes_tried"][0]["error"]  # plain float16 was tried first and drifted
    assert {"Add", "Sub"} <= set(art.extra["conversion"]["kept_float32_ops"])
    assert "mixed precision" in art.extra["conversion"]["method"]


def test_mixed_float16_measures_which_nodes_stay_float32_beyond_the_fixed_list(tmp_path: Path) -> None:
    """(x + 1000) @ w1 - 1000 * colsum(w1), then @ w2: keeping the sum and difference float32 (the fixed list)
    is not enough, because the matrix product's float16 input rounds x + 1000 to halves; the search finds
    that the first MatMul must stay float32 and keeps the second, four times larger, in float16."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.converters import convert

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 64)).astype(np.float32)
    inits = [numpy_helper.from_array(np.array(1000.0, np.float32), "up"), numpy_helper.from_array(w1, "w1"),
             numpy_helper.from_array((1000.0 * w1.sum(0)).astype(np.float32), "shift"),
             numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32) / 8, "w2")]
    nodes = [helper.make_node("Add", ["x", "up"], ["a"]), helper.make_node("MatMul", ["a", "w1"], ["b"]),
             helper.make_node("Sub", ["b", "shift"], ["d"]), helper.make_node("MatMul", ["d", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "offset", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "offset.onnx"))
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((32, 16)).astype(np.float32))
    result = convert(tmp_path / "offset.onnx", ["onnx-web-fp16"], out=tmp_path / "b", calibration=tmp_path / "cal.npz",
                     report=False)
    art = result.bundle.manifest.artifacts[0]
    notes = art.extra["conversion"]
    assert art.route == ("onnx-web-optimize", "onnx-fp16-mixed") and art.parity is not None and art.parity.passed
    assert "measured" in notes["method"] and "MatMul" in notes["kept_float32_ops"]
    assert 0.1 < notes["float32_weight_share"] < 0.4  # of the bytes: w1 (1024 values) float32, w2 (4096) float16
    assert notes["float16_emulated"]["passed"] is True
    written = onnx.load(str(result.bundle.path / art.file))
    assert sorted(i.data_type for i in written.graph.initializer if len(i.dims) == 2) == [TensorProto.FLOAT,
                                                                                          TensorProto.FLOAT16]
