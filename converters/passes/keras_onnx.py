"""Keras to ONNX with tf2onnx, through a tf.function (tf2onnx's from_keras breaks on Keras 3 models)."""

from __future__ import annotations

from typing import Any

from edgekit.bundle import TensorSpec
from edgekit.converters.passes import Pass, PassContext, Value
from edgekit.converters.registry import Kind

OPSET = 17  # tf2onnx 1.17 is tested up to opset 18; 17 loads everywhere onnxruntime-web runs


def keras_function(model: Any, inputs: tuple[TensorSpec, ...], in_names: list[str], out_names: list[str]) -> Any:
    """A ``tf.function`` calling ``model`` in inference mode, with named inputs and a dict of named outputs.

    Both tf2onnx and TFLiteConverter take it; its names become the converted model's I/O names.
    """
    import tensorflow as tf

    signature = [
        tf.TensorSpec([d if isinstance(d, int) and d >= 0 else None for d in s.shape], tf.dtypes.as_dtype(s.dtype),
                      name=name)
        for s, name in zip(inputs, in_names, strict=True)
    ]

    @tf.function(input_signature=signature)  # type: ignore[untyped-decorator]
    def forward(*args: tf.Tensor) -> dict[str, tf.Tensor]:
        result = model(args[0] if len(args) == 1 else list(args), training=False)
        values = list(result.values()) if isinstance(result, dict) else (
            list(result) if isinstance(result, (list, tuple)) else [result])
        return dict(zip(out_names, values, strict=True))

    return forward


class KerasToOnnx(Pass):
    """Convert a Keras model with ``tf2onnx.convert.from_function``, keeping input and output names."""


    def _run(self, value: Value, ctx: PassContext) -> Value:
        import tf2onnx

        forward = keras_function(value.obj, ctx.inputs, [s.name for s in ctx.inputs], [s.name for s in ctx.outputs])
        return _export(forward, forward.input_signature, ctx, f"tf2onnx {tf2onnx.__version__}, opset {OPSET}")


class SavedModelToOnnx(Pass):
    """Convert a SavedModel's serving signature with ``tf2onnx.convert.from_function``."""


    def _run(self, value: Value, ctx: PassContext) -> Value:
        import tensorflow as tf
        import tf2onnx

        _, function = value.obj
        structured = function.structured_outputs
        names = sorted(structured) if isinstance(structured, dict) else [s.name for s in ctx.outputs]
        signature = [tf.TensorSpec([d if isinstance(d, int) and d >= 0 else None for d in s.shape],
                                   tf.dtypes.as_dtype(s.dtype), name=s.name) for s in ctx.inputs]

        @tf.function(input_signature=signature)  # type: ignore[untyped-decorator]
        def forward(*args: tf.Tensor) -> dict[str, tf.Tensor]:
            result = function(**{s.name: a for s, a in zip(ctx.inputs, args, strict=True)})
            return {n: result[n] for n in names} if isinstance(result, dict) else dict(zip(names, result, strict=True))

        return _export(forward, signature, ctx, f"tf2onnx {tf2onnx.__version__}, opset {OPSET} (SavedModel signature)")


def _export(forward: Any, signature: Any, ctx: PassContext, exporter: str) -> Value:
    """tf2onnx on ``forward``, with the rewrites its output needs; the ONNX file as a Value."""
    import onnx
    import tf2onnx

    proto, _ = tf2onnx.convert.from_function(forward, input_signature=signature, opset=OPSET)
    captured = embed_captured_constants(proto, forward.get_concrete_function(), ctx.inputs)
    erfc = erfc_to_erf(proto)
    out = ctx.scratch("exported.onnx")
    onnx.save(proto, str(out))
    notes: dict[str, Any] = {"exporter": exporter}
    rewrites = [f"{erfc} Erfc (not an ONNX op; tf2onnx writes it for Keras 3's gelu) -> 1 - Erf"] if erfc else []
    if captured:
        rewrites.append(f"{captured} constant tensors the model captured (tf2onnx made them inputs) embedded")
    if rewrites:
        notes["rewrites"] = rewrites
    return Value(Kind.ONNX, path=out, notes=notes)


def embed_captured_constants(model: Any, function: Any, inputs: tuple[TensorSpec, ...]) -> int:
    """Make initializers of the ONNX inputs that are tensors the tf.function captured (a Keras 3 functional
    model's constant, such as position embeddings of ``arange``): tf2onnx leaves them as graph inputs."""
    import numpy as np
    from onnx import numpy_helper

    wanted = {s.name for s in inputs}
    extra = {v.name for v in model.graph.input} - wanted - {i.name for i in model.graph.initializer}
    if not extra:
        return 0
    values = {}
    for external, internal in function.graph.captures:
        name = internal.name
        if name in extra and getattr(external, "dtype", None) is not None and external.dtype.name != "resource":
            try:
                values[name] = np.asarray(external.numpy())
            except Exception:  # noqa: BLE001 - not a concrete tensor (a variable handle): left as it is
                continue
    kept = [v for v in model.graph.input if v.name not in values]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in values.items())
    return len(values)


def erfc_to_erf(model: Any) -> int:
    """Replace tf2onnx's ``Erfc`` nodes (no such ONNX operator) by ``1 - Erf(x)``, in place; the count."""
    import numpy as np
    from onnx import helper, numpy_helper

    nodes, count = [], 0
    for node in model.graph.node:
        if node.op_type != "Erfc" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        one, erf = f"{node.output[0]}__one", f"{node.output[0]}__erf"
        model.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), one))
        nodes.append(helper.make_node("Erf", [node.input[0]], [erf]))
        nodes.append(helper.make_node("Sub", [one, erf], list(node.output), name=node.name))
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return count
