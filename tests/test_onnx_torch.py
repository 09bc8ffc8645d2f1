"""The ONNX-to-PyTorch route (``--via onnx-torch``, and a fallback after onnx2tf): edgekit's interpreter of
ONNX in PyTorch, checked against ONNX's own node tests, and the TFLite and Core ML artifacts made from it."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekit.bundle import read_bundle
from edgekit.converters.planner import fallback_routes, plan, usable_passes
from edgekit.converters.registry import TARGETS, Kind
from tests.conftest import run_cli

pytestmark = pytest.mark.torch


def _node_cases() -> list[Any]:
    import onnx
    from onnx.backend.test.case import node

    from edgekit.converters.passes.onnx_torch import OPS, SHAPE_OPS

    def ops(graph: Any) -> set[str]:
        found = set()
        for n in graph.node:
            found.add(n.op_type)
            for attr in n.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    found |= ops(attr.g)
        return found

    known = set(OPS) | SHAPE_OPS | {"If"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node.collect_testcases(None)
    out = []
    for case in cases:
        if case.model is None or not case.data_sets:
            continue
        inputs, outputs = case.data_sets[0]
        if all(isinstance(v, np.ndarray) for v in (*inputs, *outputs)) and ops(case.model.graph) <= known:
            out.append(case)
    return out


def _as_constants(model: Any, inputs: list[np.ndarray]) -> tuple[Any, dict[str, np.ndarray]]:
    """The node test's integer inputs (shapes, axes, sizes) made initializers, as exported models have them."""
    import onnx
    from onnx import numpy_helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    feeds = dict(zip([v.name for v in copy.graph.input], inputs, strict=False))
    for value in list(copy.graph.input):
        if feeds[value.name].dtype == np.int64 and len(copy.graph.input) > 1:
            copy.graph.initializer.append(numpy_helper.from_array(feeds.pop(value.name), value.name))
            copy.graph.input.remove(value)
    return copy, feeds


def test_interpreter_matches_onnx_node_tests_or_refuses() -> None:
    """On every ONNX backend node test whose ops the interpreter knows, it gives ONNX's expected outputs or
    raises: never a different answer (the route's parity check is the second line, not the first)."""
    import torch

    from edgekit.converters.passes.onnx_torch import OnnxModule

    passed, wrong, refused = 0, [], 0
    for case in _node_cases():
        inputs, expected = case.data_sets[0]
        model, feeds = _as_constants(case.model, inputs)
        try:
            module, example = OnnxModule.build(model, feeds)
            with torch.no_grad():
                got = [np.asarray(g) for g in module(*example)]
        except Exception:  # noqa: BLE001 - a refusal (an unsupported attribute or dtype) is allowed
            refused += 1
            continue
        same = len(got) == len(expected) and all(
            g.shape == e.shape and (np.allclose(g.astype(np.float64), e.astype(np.float64), rtol=1e-3, atol=1e-4,
                                                equal_nan=True) if e.dtype.kind in "fc" else np.array_equal(g, e))
            for g, e in zip(got, expected, strict=False))
        if same:
            passed += 1
        else:
            wrong.append(case.name)
    assert wrong == []
    assert passed >= 650, (passed, refused)  # 682 on onnx 1.20's cases


def test_onnx_torch_routes_come_after_onnx2tf_and_only_for_non_torch_sources() -> None:
    first = plan(Kind.ONNX, TARGETS["tflite"], usable_passes())
    names = [[s.name for s in r] for r in fallback_routes(Kind.ONNX, TARGETS["tflite"], first)]
    assert names[-1] == ["onnx-torch", "litert-torch-program"]
    coreml = fallback_routes(Kind.ONNX, TARGETS["coreml-fp16"], plan(Kind.ONNX, TARGETS["coreml-fp16"]))
    coreml_names = [[s.name for s in r] for r in coreml]
    assert ["onnx-torch", "torch-program-coreml-fp16"] in coreml_names
    assert ["onnx-torch", "torch-program-coreml-fp16-mixed"] in coreml_names
    assert [s.name for s in plan(Kind.ONNX, TARGETS["tflite"], usable_passes(("onnx-torch",)))] == \
        ["onnx-torch", "litert-torch-program"]  # --via onnx-torch takes it
    torch_routes = fallback_routes(Kind.TORCH_EXPORT, TARGETS["tflite"], plan(Kind.TORCH_EXPORT, TARGETS["tflite"]))
    assert not any(s.name == "onnx-torch" for r in torch_routes for s in r)  # never torch -> ONNX -> torch


def _recurrent_model(path: Path) -> Path:
    """An audio-style model: reflect-padded 1-D convolution, an LSTM carrying (layers, batch, hidden) state,
    and a head chosen by an If on a scalar sample-rate input (both heads computed, one selected)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> Any:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    def head(name: str, weight: str) -> Any:
        nodes = [helper.make_node("MatMul", ["h", weight], [f"{name}_z"]),
                 helper.make_node("Sigmoid", [f"{name}_z"], [f"{name}_y"])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)])

    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (
        ("ax1", [1]), ("pads", [0, 0, 3, 0, 0, 4]), ("s0", [0]), ("s1", [1]), ("s2", [2]), ("ax0", [0]),
        ("rate", 16000))]
    nodes = [
        helper.make_node("Unsqueeze", ["x", "ax1"], ["x3"]),
        helper.make_node("Pad", ["x3", "pads"], ["xp"], mode="reflect"),
        helper.make_node("Conv", ["xp", "cw", "cb"], ["c"], strides=[4]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Transpose", ["r"], ["seq"], perm=[2, 0, 1]),
        helper.make_node("Slice", ["state", "s0", "s1", "ax0"], ["h0"]),
        helper.make_node("Slice", ["state", "s1", "s2", "ax0"], ["c0"]),
        helper.make_node("LSTM", ["seq", "W", "R", "B", "", "h0", "c0"], ["Y", "Yh", "Yc"], hidden_size=16),
        helper.make_node("Concat", ["Yh", "Yc"], ["state_out"], axis=0),
        helper.make_node("Squeeze", ["Yh", "ax0"], ["h"]),
        helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
        helper.make_node("If", ["is16k"], ["prob"], then_branch=head("a", "wa"), else_branch=head("b", "wb")),
    ]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 16]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, "batch", 16])],
        [*consts, init("cw", 8, 1, 8), init("cb", 8), init("W", 1, 64, 8), init("R", 1, 64, 16), init("B", 1, 128),
         init("wa", 16, 1), init("wb", 16, 1)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.mark.slow
@pytest.mark.tensorflow
def test_recurrent_model_reaches_tflite_and_coreml_through_pytorch(tmp_path: Path) -> None:
    pytest.importorskip("litert_torch")
    import onnxruntime as ort

    model = _recurrent_model(tmp_path / "vad.onnx")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 1, 64)).astype(np.float32)
    state = rng.standard_normal((6, 2, 1, 16)).astype(np.float32) * 0.1
    np.savez(tmp_path / "cal.npz", x=x, state=state, sr=np.array(16000, np.int64))
    out = tmp_path / "b"
    result = run_cli("convert", model, "--calibration", tmp_path / "cal.npz", "-t", "tflite", "-t", "coreml",
                     "-t", "tflite-fp16", "-t", "tflite-dynamic-int8", "--via", "onnx-torch", "--out", out)
    assert result.exit_code == 0, result.output
    manifest = read_bundle(out).manifest
    coreml = manifest.artifact("coreml")  # the scalar input given to Core ML as shape [1]
    assert coreml.route == ("onnx-torch", "torch-program-coreml-fp32")
    assert coreml.parity is not None and coreml.parity.passed and coreml.parity.max_abs_error < 1e-4
    assert any("scalar inputs sr" in r for r in coreml.extra["conversion"]["rewrites"])
    art = manifest.artifact("tflite")
    assert art.route == ("onnx-torch", "litert-torch-program")
    assert art.parity is not None and art.parity.passed and art.parity.max_abs_error < 1e-4
    assert art.extra["conversion"]["fixed_shapes"] == {"x": [1, 64], "state": [2, 1, 16]}
    # reduced precision from that fp32 .tflite, by ai-edge-quantizer (no TensorFlow graph to quantize)
    for target, step in (("tflite-fp16", "tflite-aeq-fp16"), ("tflite-dynamic-int8", "tflite-aeq-dynamic-int8")):
        small = manifest.artifact(target)
        assert small.route == ("onnx-torch", "litert-torch-program", step)
        assert small.parity is not None and small.parity.passed, (target, small.parity)
        assert small.size_bytes < art.size_bytes and "ai-edge-quantizer" in small.extra["conversion"]["quantizer"]
        assert small.extra["conversion"]["fixed_shapes"] == {"x": [1, 64], "state": [2, 1, 16]}
    # the If was computed both ways and selected by the input: the other sample rate takes the other head
    import edgekit.runtimes

    session = edgekit.runtimes.open(out, target="tflite")
    feed = {"x": x[0], "state": state[0], "sr": np.array(8000, np.int64)}  # not in the calibration data
    want = ort.InferenceSession(str(model)).run(None, feed)
    got = session.run(feed)
    np.testing.assert_allclose(got["prob"], want[0], atol=1e-4)
    np.testing.assert_allclose(got["state_out"], want[1], atol=1e-4)


@pytest.mark.tensorflow
def test_pads_and_reversals_along_a_long_axis_stay_small(tmp_path: Path) -> None:
    """A reflect pad and a reversed slice on a 4096-sample axis: gathered as index lists they would add
    16 KB constants each; only the pads are gathered and the reversal is a flip."""
    pytest.importorskip("litert_torch")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (
        ("pads", [0, 3, 0, 4]), ("start", [-1]), ("end", [-(2**62)]), ("axis", [1]), ("step", [-1]))]
    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads"], ["xp"], mode="reflect"),
         helper.make_node("Slice", ["xp", "start", "end", "axis", "step"], ["y"])],
        "long", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4096])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4103])], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "long.onnx"))
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).standard_normal((1, 4096)).astype(np.float32))
    out = tmp_path / "b"
    result = run_cli("convert", tmp_path / "long.onnx", "--calibration", tmp_path / "cal.npz", "-t", "tflite",
                     "--via", "onnx-torch", "--out", out)
    assert result.exit_code == 0, result.output
    art = read_bundle(out).manifest.artifact("tflite")
    assert art.parity is not None and art.parity.passed and art.parity.max_abs_error == 0.0
    assert art.size_bytes < 8000, art.size_bytes  # an index list as long as the axis alone is 16 KB


@pytest.mark.tensorflow
def test_tflite_float16_keeps_the_weights_it_measures_to_need_float32(tmp_path: Path) -> None:
    """relu(tanh(x @ w1) * 1e9) @ w2 with w1 at 1e-9, from PyTorch (litert-torch's direct route, then ai-edge-quantizer):
    float16 flushes w1 to zero, so every weight in float16 fails; the search keeps w1's op in float32 and
    w2's, four times larger, in float16."""
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_quantizer")
    import torch

    from edgekit.converters import convert

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            gen = torch.Generator().manual_seed(0)
            self.w1 = torch.nn.Parameter(torch.randn(16, 32, generator=gen) * 1e-9)
            self.w2 = torch.nn.Parameter(torch.randn(32, 64, generator=gen) / 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(torch.tanh(x @ self.w1) * 1e9) @ self.w2  # tanh, relu: no scale folded into w1, w2

    x = torch.randn(1, 16, generator=torch.Generator().manual_seed(1))
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32))
    result = convert(Tiny().eval(), ["tflite-fp16"], example_inputs=(x,), out=tmp_path / "b",
                     calibration=tmp_path / "cal.npz", report=False)
    art = result.bundle.manifest.artifact("tflite-fp16")
    assert art.route == ("litert-torch", "tflite-aeq-fp16-mixed")
    assert "ParityError" in art.extra["routes_tried"][0]["error"]  # every weight in float16 was tried first
    notes = art.extra["conversion"]
    assert art.parity is not None and art.parity.passed
    assert 0 < notes["fp32_weight_share"] < 0.3 and "measured" in notes["mixed_method"]
