"""Parity is measured, and a drift beyond tolerance fails the conversion unless accepted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekit.bundle import TensorSpec
from edgekit.parity import Tolerance, compare, describe_failure, infer_kind
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
    assert parity.per_output[1] == {"name": "shape", "kind": "exact", "exact": True, "agreement": 1.0, "passed": True}
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
    """A real ONNX regression model whose weights are below float16's range (smallest subnormal 6e-8):
    no float16 form computes what it does, plain or mixed (matrix products stay float16)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((4, 1), 1e-9, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    onnx.save(model, str(path))
    cal = path.with_suffix(".npz")
    np.savez(cal, x=np.abs(np.random.default_rng(0).standard_normal((16, 4))).astype(np.float32) + 1)
    return path


def test_float16_keeps_the_nodes_whose_activations_overflow_in_float32(tmp_path: Path) -> None:
    """x @ w1 reaches 1e5 (beyond float16's 65504) before a scale brings it back: onnxruntime's CPU provider
    hides the overflow (it computes float16 MatMul in float32), so the range is measured on the fp32 graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.converters import convert

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.full((4, 8), 3e4, np.float32), "w1"),
             numpy_helper.from_array(np.array(1e-4, np.float32), "scale"),
             numpy_helper.from_array(rng.standard_normal((8, 64)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["big"]), helper.make_node("Mul", ["big", "scale"], ["small"]),
             helper.make_node("MatMul", ["small", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "wide.onnx"))
    np.savez(tmp_path / "cal.npz", x=np.abs(rng.standard_normal((32, 4))).astype(np.float32) + 1)
    result = convert(tmp_path / "wide.onnx", ["onnx-web-fp16"], out=tmp_path / "b", calibration=tmp_path / "cal.npz",
                     report=False)
    art = result.bundle.manifest.artifacts[0]
    assert art.route == ("onnx-web-optimize", "onnx-fp16") and art.parity is not None and art.parity.passed
    notes = art.extra["conversion"]
    assert notes["float32_for_range"] == "2 nodes (MatMul, Mul)" and "1 tensors beyond 32752" in notes["activation_range"]
    assert 0 < notes["float32_weight_share"] < 0.2  # w1 (32 values) kept float32, w2 (512) float16
    written = onnx.load(str(result.bundle.path / art.file))
    types = {i.data_type for i in written.graph.initializer if len(i.dims) == 2}
    assert types == {TensorProto.FLOAT, TensorProto.FLOAT16}
    assert [n.op_type for n in written.graph.node if "x" in n.input] == ["MatMul"]  # no fp16 round trip on the way in


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


def test_embeddings_are_judged_by_cosine_similarity_outside_the_attention_mask() -> None:
    from edgekit.parity import attention_mask

    rng = np.random.default_rng(0)
    outs = (TensorSpec("last_hidden_state", ("batch", 5, 32), "float32"),)
    ref = rng.standard_normal((4, 5, 32)).astype(np.float32)
    drift = ref + 0.08 * rng.standard_normal(ref.shape).astype(np.float32)  # cosine ~0.997, max error ~0.3 of 3
    int8 = Tolerance(0.05, min_top1_agreement=0.95, min_cosine=0.98)
    parity = compare({"last_hidden_state": ref}, {"last_hidden_state": drift}, outs, int8)[0]
    entry = parity.per_output[0]
    assert entry["kind"] == "embedding" and entry["max_rel_error"] > 0.05
    assert parity.passed and 0.98 < entry["min_cosine"] < 0.9999
    padded = drift.copy()
    padded[:, 4] = -ref[:, 4]  # the last token of every sample points the other way...
    failed = compare({"last_hidden_state": ref}, {"last_hidden_state": padded}, outs, int8)[0]
    assert not failed.passed and failed.per_output[0]["min_cosine"] == pytest.approx(-1.0, abs=0.05)
    assert "least cosine similarity -1" in describe_failure("t", failed)
    specs = (TensorSpec("input_ids", ("batch", 5), "int64"), TensorSpec("attention_mask", ("batch", 5), "int64"))
    mask = attention_mask({"input_ids": np.ones((4, 5), np.int64), "attention_mask": np.array([[1, 1, 1, 1, 0]] * 4)},
                          specs)
    assert mask is not None and mask.shape == (4, 5)
    masked = compare({"last_hidden_state": ref}, {"last_hidden_state": padded}, outs, int8, mask=mask)[0]
    assert masked.passed  # ...but it is padding, which the model's consumers never read
    fp32 = compare({"last_hidden_state": ref}, {"last_hidden_state": drift}, outs, Tolerance(1e-3))[0]
    assert not fp32.passed  # without a cosine floor the error bound holds


def test_output_kinds_are_inferred_and_can_be_set() -> None:
    rng = np.random.default_rng(0)
    pooled = rng.standard_normal((3, 384)).astype(np.float32)
    spec = TensorSpec("output", ("batch", 384), "float32")
    assert infer_kind(spec, pooled, 1, token_inputs=True) == "embedding"  # a sentence encoder's pooled output
    assert infer_kind(spec, pooled, 1) == "scores"  # the only (samples, k) output of an image model
    probabilities = np.exp(pooled) / np.exp(pooled).sum(-1, keepdims=True)
    assert infer_kind(spec, probabilities, 1, token_inputs=True) == "scores"  # a classifier of byte sequences
    assert infer_kind(TensorSpec("sentence_embedding", ("batch", 384), "float32"), pooled, 2) == "embedding"
    probs = rng.random((3, 7, 10))
    assert infer_kind(TensorSpec("softmax_0", ("b", 7, 10), "float32"), probs / probs.sum(-1, keepdims=True), 1) == "scores"
    assert infer_kind(TensorSpec("map", ("b", 1, 8, 8), "float32"), rng.random((3, 1, 8, 8)), 1) == "map"
    assert infer_kind(TensorSpec("idx", ("b",), "int64"), np.arange(3), 1) == "exact"
    assert infer_kind(TensorSpec("output", ("batch", 384), "float32", kind="map"), pooled, 1, True) == "map"
    # set by the user: a float output compared exactly, the scores of a recognizer per time step
    steps = rng.standard_normal((3, 7, 10)).astype(np.float32)
    moved = steps * 1.5  # logits scaled: every arg-max stays, the error is large
    by_step = (TensorSpec("logits", ("b", 7, 10), "float32", kind="scores"),)
    held = compare({"logits": steps}, {"logits": moved}, by_step, Tolerance(0.25, min_top1_agreement=0.95))[0]
    assert held.passed and held.top1_agreement == 1.0 and held.per_output[0]["max_rel_error"] > 0.25
    exact = (TensorSpec("logits", ("b", 7, 10), "float32", kind="exact"),)
    assert not compare({"logits": steps}, {"logits": steps + 1e-6}, exact, Tolerance(0.25))[0].passed


def test_a_probability_is_judged_against_its_range_not_the_samples_largest_value() -> None:
    """A voice detector on silent samples: speech probabilities near 0.003, int8 off by 0.002. As a map
    that is 67% of the largest value and fails; as a probability it is 0.2% of the range and passes."""
    ref = np.array([[0.003], [0.0021], [0.0008]], dtype=np.float32)
    act = ref + np.float32(0.002)
    tolerance = Tolerance(0.25, min_top1_agreement=0.95)
    as_map = compare({"p": ref}, {"p": act}, (TensorSpec("p", ("b", 1), "float32", kind="map"),), tolerance)[0]
    assert not as_map.passed and as_map.per_output[0]["max_rel_error"] > 0.6
    spec = TensorSpec("p", ("b", 1), "float32", extra={"range": [0, 1]})
    assert infer_kind(spec, ref, 2) == "probability" and infer_kind(TensorSpec("p", ("b", 1), "float32"), ref, 2) == "map"
    held = compare({"p": ref}, {"p": act}, (spec,), tolerance)[0]
    assert held.passed and held.per_output[0]["kind"] == "probability"
    assert held.per_output[0]["max_rel_error"] == pytest.approx(0.002, rel=1e-3)
    off = compare({"p": ref}, {"p": ref + np.float32(0.3)}, (spec,), tolerance)[0]  # 30% of the range: fails
    assert not off.passed


def test_a_probability_map_is_judged_by_its_decisions_where_the_target_allows_drift() -> None:
    """A text detector's map: regions of 1 on a background of 0 with steep edges. 8 bits flip a few edge pixels
    from 0.4 to 0.6 (max error 1): the regions overlap by 0.99, so an int8 target passes, while an fp32 target,
    which has no agreement floor, still holds every pixel to the bound. A map whose regions shrink fails."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:32, :32]
    logits = np.stack([8.0 * (6.0 - np.hypot(yy - cy, xx - cx)) for cy, cx in rng.integers(8, 24, (4, 2))])
    ref = (1 / (1 + np.exp(-logits)))[:, None].astype(np.float32)  # (4, 1, 32, 32)
    edge = np.flatnonzero((np.abs(ref - 0.5) < 0.45).ravel())
    moved = ref.copy().ravel()
    flip = edge[:: max(1, len(edge) // 6)]
    moved[flip] = 1.0 - moved[flip]
    moved = moved.reshape(ref.shape)
    spec = (TensorSpec("maps", ("b", 1, 32, 32), "float32", extra={"range": [0, 1]}),)
    int8 = Tolerance(0.25, min_top1_agreement=0.95)
    held, _ = compare({"maps": ref}, {"maps": moved}, spec, int8)
    entry = held.per_output[0]
    assert entry["kind"] == "probability" and entry["max_abs_error"] > 0.5
    assert held.passed and 0.95 <= entry["decision_iou"] < 1.0 and entry["quantile_abs_error"]["0.99"] < 0.25
    assert not compare({"maps": ref}, {"maps": moved}, spec, Tolerance(1e-3))[0].passed
    shrunk = np.clip(ref - 0.3, 0, 1)  # every region loses its rim: IoU well under 0.95
    failed, _ = compare({"maps": ref}, {"maps": shrunk}, spec, int8)
    assert not failed.passed and failed.per_output[0]["decision_iou"] < 0.95
    assert "overlap" in describe_failure("onnx-web-int8", failed)
    scalar = (TensorSpec("p", ("b", 1), "float32", extra={"range": [0, 1]}),)  # one probability per sample:
    flipped = compare({"p": np.float32([[0.4]] * 4)}, {"p": np.float32([[0.6]] * 4)}, scalar, int8)[0]
    assert "decision_iou" not in flipped.per_output[0] and flipped.passed  # the error bound, 0.2 of 1


def test_the_graph_says_which_outputs_are_probabilities() -> None:
    from onnx import TensorProto, helper

    from edgekit.converters.ranges import unit_range_values

    then = helper.make_graph([helper.make_node("Squeeze", ["sig"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Sigmoid", ["x"], ["sig"]), helper.make_node("ReduceMean", ["sig"], ["mean"]),
             helper.make_node("Softmax", ["x"], ["soft"]), helper.make_node("Mul", ["mean", "soft"], ["both"]),
             helper.make_node("Add", ["sig", "x"], ["shifted"]), helper.make_node("Concat", ["sig", "x"], ["mixed"], axis=0),
             helper.make_node("If", ["cond"], ["branch"], then_branch=then, else_branch=other),
             helper.make_node("If", ["cond"], ["both_bounded"], then_branch=then, else_branch=then)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], [])
    found = unit_range_values(graph)
    assert {"sig", "mean", "soft", "both", "both_bounded"} <= found
    assert not found & {"shifted", "mixed", "branch", "x"}  # a sum, an unbounded input, one unbounded branch


@pytest.mark.torch
def test_pytorch_sources_say_which_outputs_are_probabilities(tmp_path: Path) -> None:
    """A module (read from one autograd pass) and its torch.export program (read from its ATen graph)."""
    import torch

    from edgekit.converters.sources import load_source, with_output_kinds

    class Heads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(8, 4)

        def forward(self, x: Any) -> Any:
            z = self.linear(x)
            return (torch.sigmoid(z).mean(dim=1, keepdim=True), z, torch.softmax(z, -1).reshape(-1, 2, 2),
                    torch.sigmoid(z) + 1)

    x = torch.randn(3, 8)
    torch.export.save(torch.export.export(Heads(), (x,)), str(tmp_path / "heads.pt2"))
    for source in (load_source(Heads(), (x,)), load_source(tmp_path / "heads.pt2")):
        reference = source.run({source.inputs[0].name: x.numpy()})
        kinds = [o.kind for o in with_output_kinds(source, reference).outputs]
        assert kinds == ["probability", "map", "probability", "map"], (source.kind, kinds)  # sigmoid + 1 is not


@pytest.mark.tensorflow
def test_keras_sources_say_which_outputs_are_probabilities() -> None:
    import keras

    from edgekit.converters.sources import load_source, with_output_kinds

    inp = keras.Input((8,))
    logits = keras.layers.Dense(3)(inp)
    model = keras.Model(inp, [keras.layers.Dense(1, activation="sigmoid")(inp), logits, keras.layers.Softmax()(logits)])
    source = load_source(model)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    reference = source.run({source.inputs[0].name: x})
    kinds = [o.kind for o in with_output_kinds(source, reference).outputs]
    assert kinds == ["probability", "map", "scores"]  # softmax rows are class scores; a sigmoid a probability


def _voice_detector(path: Path) -> Path:
    """frames (batch, 16) -> a linear layer -> sigmoid -> the mean over 4 windows: a speech probability
    (batch, 1), near 0 on these samples (a strongly negative bias), and the pre-activation (batch, 4)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32) * 0.5, "w")
    b = numpy_helper.from_array(np.full(4, -7.0, np.float32), "b")
    nodes = [helper.make_node("Gemm", ["frames", "w", "b"], ["logits"]), helper.make_node("Sigmoid", ["logits"], ["p"]),
             helper.make_node("ReduceMean", ["p"], ["speech"], axes=[1], keepdims=1)]
    graph = helper.make_graph(nodes, "vad", [helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("speech", TensorProto.FLOAT, ["batch", 1]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_sigmoid_output_is_recorded_and_judged_as_a_probability(tmp_path: Path) -> None:
    model = _voice_detector(tmp_path / "vad.onnx")
    frames = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", frames=frames)
    result = run_cli("convert", model, "-t", "onnx-web-int8", "--calibration", tmp_path / "calib.npz",
                     "-o", tmp_path / "b", "--no-report", "--accept-parity-failure")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "bundle.json").read_text())
    outputs = {o["name"]: o for o in manifest["outputs"]}
    assert outputs["speech"]["kind"] == "probability" and outputs["speech"]["range"] == [0, 1]
    assert outputs["logits"]["kind"] == "map" and "range" not in outputs["logits"]
    judged = {e["name"]: e for e in manifest["artifacts"][0]["parity"]["per_output"]}
    speech = judged["speech"]
    assert speech["kind"] == "probability" and speech["max_rel_error"] == pytest.approx(speech["max_abs_error"])
    reference = np.load(tmp_path / "b" / "reference.npz")
    assert float(reference["out.speech"].max()) < 0.05  # near 0: as a map its error would be judged against that


def _token_encoder(path: Path) -> Path:
    """input_ids (batch, 6) -> embedding lookup -> mean over tokens: pooled (batch, 64) and the ids' shape."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(0).standard_normal((10, 64)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["tokens"]),
             helper.make_node("ReduceMean", ["tokens"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("Shape", ["input_ids"], ["ids_shape"])]
    graph = helper.make_graph(
        nodes, "enc", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", 6])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 64]),
         helper.make_tensor_value_info("ids_shape", TensorProto.INT64, [2])],
        [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_the_manifest_records_each_outputs_kind_and_the_cli_sets_them(tmp_path: Path) -> None:
    model = _token_encoder(tmp_path / "enc.onnx")
    result = run_cli("convert", model, "-t", "onnx-web", "-o", tmp_path / "b", "--no-report")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert {o["name"]: o["kind"] for o in manifest["outputs"]} == {"pooled": "embedding", "ids_shape": "exact"}
    cosine = manifest["artifacts"][0]["parity"]["per_output"][0]
    assert cosine["kind"] == "embedding" and cosine["min_cosine"] > 0.9999
    set_kind = run_cli("convert", model, "-t", "onnx-web", "-o", tmp_path / "c", "--no-report",
                       "--output-kind", "pooled=map")
    assert set_kind.exit_code == 0, set_kind.output
    assert json.loads((tmp_path / "c" / "bundle.json").read_text())["outputs"][0]["kind"] == "map"
    for bad, says in (("nope=map", "not an output of the model"), ("pooled=vector", "must be one of"),
                      ("pooled", "write NAME=KIND")):
        refused = run_cli("convert", model, "-t", "onnx-web", "-o", tmp_path / "d", "--output-kind", bad)
        assert refused.exit_code != 0 and says in refused.output and "Traceback" not in refused.output
        assert not (tmp_path / "d").exists()
