"""Keras to ONNX with tf2onnx, through a tf.function (tf2onnx's from_keras breaks on Keras 3 models)."""

from __future__ import annotations

from edgekit.converters.passes import Pass, PassContext, Value
from edgekit.converters.registry import Kind

OPSET = 17  # tf2onnx 1.17 is tested up to opset 18; 17 loads everywhere onnxruntime-web runs


class KerasToOnnx(Pass):
    """Convert a Keras model with ``tf2onnx.convert.from_function``, keeping input and output names."""

    name = "tf2onnx"
    consumes = Kind.KERAS
    produces = Kind.ONNX
    modules = ("tensorflow", "tf2onnx", "onnx")

    def _run(self, value: Value, ctx: PassContext) -> Value:
        import onnx
        import tensorflow as tf
        import tf2onnx

        model = value.obj
        signature = [
            tf.TensorSpec([d if isinstance(d, int) and d >= 0 else None for d in s.shape], tf.dtypes.as_dtype(s.dtype),
                          name=s.name)
            for s in ctx.inputs
        ]
        out_names = [s.name for s in ctx.outputs]

        @tf.function(input_signature=signature)  # type: ignore[untyped-decorator]
        def forward(*args: tf.Tensor) -> dict[str, tf.Tensor]:
            result = model(args[0] if len(args) == 1 else list(args), training=False)
            values = list(result.values()) if isinstance(result, dict) else (
                list(result) if isinstance(result, (list, tuple)) else [result])
            return dict(zip(out_names, values, strict=True))

        proto, _ = tf2onnx.convert.from_function(forward, input_signature=signature, opset=OPSET)
        out = ctx.scratch("exported.onnx")
        onnx.save(proto, str(out))
        return Value(Kind.ONNX, path=out, notes={"exporter": f"tf2onnx {tf2onnx.__version__}, opset {OPSET}"})
