"""Reduced-precision TFLite from a finished fp32 ``.tflite``, with Google's AI Edge Quantizer.

TFLiteConverter quantizes while it converts from TensorFlow, so a model whose fp32 TFLite came another
way (edgekit's ONNX-to-PyTorch interpreter and litert-torch, for graphs onnx2tf gets wrong) had no
float16 or int8 form. ``ai-edge-quantizer`` rewrites a ``.tflite`` file itself: float16 weights
(dequantized to float32 at load, as TFLiteConverter's float16 does) and dynamic-range int8 (int8
weights per channel, activations quantized at run time). The artifact keeps the fp32 model's
tensors and signature, so the fp32 artifact's I/O record carries over.
"""

from __future__ import annotations

from typing import Any

from edgekit._console import captured_output
from edgekit.converters.passes import Pass, PassContext, Value, carried_notes
from edgekit.converters.registry import Kind


class _Quantize(Pass):
    consumes = Kind.TFLITE
    modules = ("ai_edge_quantizer",)
    method = ""

    def _recipe(self, quantizer: Any) -> None:
        raise NotImplementedError

    def _run(self, value: Value, ctx: PassContext) -> Value:
        from ai_edge_quantizer import quantizer

        q = quantizer.Quantizer(str(value.file))
        self._recipe(q)
        with captured_output():  # it prints its timing
            result = q.quantize()
        out = ctx.scratch(f"{self.name}.tflite")
        out.write_bytes(result.quantized_model)
        notes = carried_notes(value.notes, {"method": self.method, "quantizer": _version()})
        return Value(self.produces, path=out, notes=notes, inputs=value.inputs, outputs=value.outputs)


def _version() -> str:
    from importlib.metadata import version

    return f"ai-edge-quantizer {version('ai-edge-quantizer')}"


class TfliteFloat16Weights(_Quantize):
    """float16 weights of every op that has weights, dequantized to float32 at load."""

    name = "tflite-aeq-fp16"
    produces = Kind.TFLITE_FP16
    method = "float16 weights (ai-edge-quantizer float casting), float32 compute and I/O"

    def _recipe(self, q: Any) -> None:
        from ai_edge_quantizer import qtyping
        from ai_edge_quantizer.quantizer import AlgorithmName

        q.update_quantization_recipe(
            regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            algorithm_key=AlgorithmName.FLOAT_CASTING,
            op_config=qtyping.OpQuantizationConfig(
                weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
                compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True))


class TfliteDynamicInt8Weights(_Quantize):
    """int8 weights per channel, activations quantized at run time (dynamic range)."""

    name = "tflite-aeq-dynamic-int8"
    produces = Kind.TFLITE_DYNAMIC_INT8
    method = "dynamic range: int8 weights per channel (ai-edge-quantizer), activations quantized at run time"

    def _recipe(self, q: Any) -> None:
        from ai_edge_quantizer import recipe

        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
