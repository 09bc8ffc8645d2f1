"""int8 from models exported at old opsets: per-channel QDQ needs opset 13, so edgekit converts first."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.converters import convert


def _conv_model(path: Path, opset: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((8 * 6 * 6, 4)).astype(np.float32) * 0.1, "fc")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["logits"])]
    graph = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 6
    onnx.save(model, str(path))
    return path


def test_an_opset_11_model_gets_per_channel_int8_that_loads(tmp_path: Path) -> None:
    import onnx

    model = _conv_model(tmp_path / "old.onnx", 11)
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(1).random((64, 1, 8, 8), dtype=np.float32))
    result = convert(model, ["onnx-web-int8"], out=tmp_path / "b", calibration=tmp_path / "cal.npz", report=False)
    art = result.bundle.manifest.artifacts[0]
    assert art.parity is not None and art.parity.passed  # onnxruntime loaded and ran it
    assert "opset 11 to 13" in art.extra["conversion"]["opset"]
    assert "per-channel" in art.extra["conversion"]["method"]
    written = onnx.load(str(result.bundle.path / art.file))
    assert next(o.version for o in written.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert any(n.op_type == "DequantizeLinear" for n in written.graph.node)


def test_a_quantized_source_stays_quantized_and_is_judged_as_given(tmp_path: Path, digits_bundle: Path) -> None:
    """An int8 QDQ model as the source: its onnx-web artifacts keep the int8 weights (no larger than the
    source) and pass against the source run with ONNX's exact semantics, at the int8 tolerance."""
    from tests.conftest import DIGITS

    source = digits_bundle / "onnx-web-int8.onnx"
    result = convert(source, ["onnx-web", "onnx-web-fp16"], out=tmp_path / "b", calibration=DIGITS / "digits.npz",
                     report=False)
    manifest = result.bundle.manifest
    assert "DequantizeLinear" in manifest.source.extra["quantized"]
    for art in manifest.artifacts:
        assert art.parity is not None and art.parity.passed, art.target
        assert art.parity.tolerance == {"max_rel_error": 0.25, "min_top1_agreement": 0.95, "min_cosine": 0.98}
        assert art.size_bytes <= source.stat().st_size, (art.target, art.format, art.size_bytes)


def _tiny_encoder(path: Path) -> Path:
    """A one-block attention encoder in ONNX: token embedding, LayerNorm, single-head attention with a
    residual, an output projection and mean pooling to (batch, 64)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = {n: rng.standard_normal((64, 64)).astype(np.float32) / 8 for n in ("wq", "wk", "wv", "wo")}
    inits = [numpy_helper.from_array(rng.standard_normal((32, 64)).astype(np.float32), "table"),
             numpy_helper.from_array(np.ones(64, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(64, np.float32), "beta"),
             numpy_helper.from_array(np.array(0.125, np.float32), "scale"),
             *(numpy_helper.from_array(v, k) for k, v in w.items())]
    mk = helper.make_node
    nodes = [mk("Gather", ["table", "input_ids"], ["x"]),
             mk("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1),
             mk("MatMul", ["h", "wq"], ["q"]), mk("MatMul", ["h", "wk"], ["k"]), mk("MatMul", ["h", "wv"], ["v"]),
             mk("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), mk("MatMul", ["q", "kt"], ["s"]),
             mk("Mul", ["s", "scale"], ["s2"]), mk("Softmax", ["s2"], ["a"], axis=-1),
             mk("MatMul", ["a", "v"], ["c"]), mk("Add", ["c", "x"], ["r"]), mk("MatMul", ["r", "wo"], ["o"]),
             mk("ReduceMean", ["o"], ["pooled"], axes=[1], keepdims=0)]
    graph = helper.make_graph(nodes, "enc", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", 8])],
                              [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["n", 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_transformer_gets_the_matmul_only_recipe_and_keeps_its_embeddings_float(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto

    from edgekit.converters.passes.onnx_int8 import model_family

    model = _tiny_encoder(tmp_path / "enc.onnx")
    assert model_family(onnx.load(str(model))) == "transformer"
    np.savez(tmp_path / "cal.npz", input_ids=np.random.default_rng(1).integers(0, 32, (64, 8)))
    result = convert(model, ["onnx-web-int8"], out=tmp_path / "b", calibration=tmp_path / "cal.npz", report=False)
    art = result.bundle.manifest.artifacts[0]
    notes = art.extra["conversion"]
    assert notes["family"] == "transformer" and notes["recipe"]["name"] == "matmul"
    assert notes["recipe"]["op_types"] == ["MatMul", "Gemm"] and notes["quantized_weight_share"] > 0.8
    assert result.bundle.manifest.outputs[0].kind == "embedding"  # judged by cosine similarity
    entry = art.parity.per_output[0]
    assert art.parity.passed and entry["min_cosine"] >= 0.98
    written = onnx.load(str(result.bundle.path / art.file))
    embedding = [i for i in written.graph.initializer if list(i.dims) == [32, 64]]
    assert len(embedding) == 1 and embedding[0].data_type == TensorProto.FLOAT  # the table is not quantized
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= {n.op_type for n in written.graph.node}
    assert "QuantizeLinear" not in {n.op_type for n in written.graph.node}  # no static QDQ on activations


def _offset_difference_model(path: Path) -> Path:
    """Zero-sum 3x3 filters (values -1, 0, 1: exact in int8) over inputs that carry a large offset: the output
    is the small signal, which 8-bit activations (a step of about 4 over the offset) cannot hold."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((4, 1, 3, 3), np.float32)
    for k, (a, b) in enumerate([((1, 0), (1, 2)), ((0, 1), (2, 1)), ((0, 0), (2, 2)), ((0, 2), (2, 0))]):
        w[k, 0, a[0], a[1]], w[k, 0, b[0], b[1]] = 1.0, -1.0
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["edges"])]
    graph = helper.make_graph(nodes, "edges", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("edges", TensorProto.FLOAT, ["n", 4, 6, 6])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(4, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_model_whose_activations_cannot_be_8_bit_gets_int8_weights_with_float_compute(tmp_path: Path) -> None:
    """Static and dynamic int8 quantize the activations and lose the signal (they fail parity); the last recipe
    keeps int8 weights behind DequantizeLinear and computes in float32, so the artifact passes and says so."""
    import onnx
    from onnx import TensorProto

    model = _offset_difference_model(tmp_path / "edges.onnx")
    x = 1000.0 + np.random.default_rng(2).random((32, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "cal.npz", x=x)
    result = convert(model, ["onnx-web-int8"], out=tmp_path / "b", calibration=tmp_path / "cal.npz", report=False)
    art = result.bundle.manifest.artifacts[0]
    assert art.parity is not None and art.parity.passed and art.parity.max_abs_error < 0.01
    notes = art.extra["conversion"]
    assert notes["recipe"]["name"] == "weights" and notes["recipe"]["weight_only"] and notes["quantized_weight_share"] > 0.8
    tried = art.extra["routes_tried"]  # static and dynamic failed parity, MatMul-only found no MatMul
    assert [t["route"].split(" -> ")[-1] for t in tried] == ["onnx-int8", "onnx-int8-second", "onnx-int8-third"]
    assert all(t["error"].startswith("ParityError") for t in tried[:2])
    written = onnx.load(str(result.bundle.path / art.file))
    ops = [n.op_type for n in written.graph.node]
    assert "DequantizeLinear" in ops and "QuantizeLinear" not in ops and "ConvInteger" not in ops
    weight = next(i for i in written.graph.initializer if list(i.dims) == [4, 1, 3, 3])
    assert weight.data_type == TensorProto.INT8


def test_quantize_weights_uses_each_ops_output_channel_axis_and_quantizes_a_shared_weight_once() -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.converters.passes.onnx_int8 import quantize_weights

    rng = np.random.default_rng(3)
    wt = rng.standard_normal((6, 5)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)[:, None]  # rows differ in scale
    nodes = [helper.make_node("Gemm", ["x", "w"], ["a"], transB=1), helper.make_node("Gemm", ["x", "w"], ["b"], transB=1),
             helper.make_node("Add", ["a", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])],
                              [numpy_helper.from_array(wt, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert quantize_weights(model) == 1
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 1 and next(a.i for a in dq[0].attribute if a.name == "axis") == 0  # transB: rows are outputs
    assert [i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT and list(i.dims) == [6, 5]] == []
    onnx.checker.check_model(model)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = 2 * x @ wt.T
    assert np.abs(got - want).max() <= 0.01 * np.abs(want).max()


def _outlier_model(path: Path) -> Path:
    """Three matrix products; the first weight's row for an input that is always 0 holds 100s, so int8 per
    output channel (scale 100/127) rounds every other value of that weight to 0: 8 bits cannot hold it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w1 = (rng.standard_normal((64, 64)) * 0.05).astype(np.float32)
    w1[0] = 100.0
    weights = {"w1": w1, "w2": (rng.standard_normal((64, 128)) * 0.1).astype(np.float32),
               "w3": (rng.standard_normal((128, 32)) * 0.1).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("MatMul", ["ra", "w2"], ["b"]), helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("MatMul", ["rb", "w3"], ["scores"])]
    graph = helper.make_graph(nodes, "outlier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 32])],
                              [numpy_helper.from_array(w, name) for name, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_weight_8_bits_cannot_hold_is_found_by_measurement_and_kept_in_float16(tmp_path: Path) -> None:
    """Every int8 recipe, weight-only too, rounds the outlier weight's other values to 0 and fails parity;
    the mixed recipe measures the weights, keeps the one that breaks the model in float16 and the others
    in int8, passes, and records which weight stayed float and the bytes it cost."""
    import onnx
    from onnx import TensorProto

    model = _outlier_model(tmp_path / "outlier.onnx")
    x = np.random.default_rng(6).standard_normal((64, 64)).astype(np.float32)
    x[:, 0] = 0.0
    np.savez(tmp_path / "cal.npz", x=x)
    result = convert(model, ["onnx-web-int8"], out=tmp_path / "b", calibration=tmp_path / "cal.npz", report=False)
    art = result.bundle.manifest.artifacts[0]
    assert art.parity is not None and art.parity.passed
    recipe = art.extra["conversion"]["recipe"]
    assert recipe["name"] == "weights-mixed" and recipe["float16_weight_count"] == 1, recipe  # w1 (renamed by onnxslim)
    assert recipe["weight_bytes_ratio"] <= 0.4 and recipe["float16_weight_share"] == 0.25  # 4096 of 16384
    tried = art.extra["routes_tried"]
    assert tried[-1]["route"].endswith("onnx-int8-fourth") and tried[-1]["error"].startswith("ParityError")
    written = onnx.load(str(result.bundle.path / art.file))
    types = {tuple(i.dims): i.data_type for i in written.graph.initializer if len(i.dims) == 2}
    assert types == {(64, 64): TensorProto.FLOAT16, (64, 128): TensorProto.INT8, (128, 32): TensorProto.INT8}
