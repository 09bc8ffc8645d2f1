"""TFLite: a TensorFlow graph (:mod:`edgekit.converters.passes.tf_graph`: from Keras, a SavedModel, or
ONNX by onnx2tf) to LiteRT flatbuffers in five precisions, each with TFLiteConverter.

Every precision starts from the same in-memory graph (kind ``tf.function``), so a bundle with several
TFLite targets converts the source to TensorFlow once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from edgekit._console import captured_output
from edgekit.converters.passes import Pass, PassContext, Value
from edgekit.converters.passes.tf_graph import TfGraph
from edgekit.converters.registry import Kind
from edgekit.errors import CalibrationError, UnsupportedModelError
from edgekit.parity import iter_feeds

# Representative samples for full-integer calibration: more adds time, not accuracy, past a few hundred.
MAX_CALIBRATION_SAMPLES = 300
FLEX_COST = (
    "TensorFlow Select (Flex) ops need the Flex delegate in the app, which adds tens of MB to its "
    "size (about 20-30 MB per ABI on Android) and is not available in every LiteRT runtime"
)


def _select_ops(text: str) -> list[str]:
    """The TF Select ops a TFLiteConverter error names (empty when it names none)."""
    ops: list[str] = []
    for match in re.finditer(r"(?:TF Select ops|Flex ops):\s*([^\n]+)", text):
        for op in match.group(1).split(","):
            op = op.strip().removeprefix("Flex")
            if op and op not in ops:
                ops.append(op)
    return ops


def _unsupported_ops(text: str) -> list[str]:
    """Ops a TFLiteConverter error says it cannot convert at all."""
    found = re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text)
    found += re.findall(r"failed to legalize operation '(?:tf|tfl)\.(\w+)'", text)
    return list(dict.fromkeys(found))


class _ToTflite(Pass):
    """Base of the TFLite precisions: configure TFLiteConverter, convert, refuse Flex ops unless allowed."""

    consumes = Kind.TF
    modules = ("tensorflow", "ai_edge_litert")
    needs_calibration: ClassVar[bool] = False

    def _configure(self, converter: Any, graph: TfGraph, ctx: PassContext) -> list[Any]:
        """Set precision options on ``converter``; return the op sets the model may use."""
        import tensorflow as tf

        return [tf.lite.OpsSet.TFLITE_BUILTINS]

    def _run(self, value: Value, ctx: PassContext) -> Value:
        import tensorflow as tf

        graph: TfGraph = value.obj
        if self.needs_calibration and not ctx.has_calibration:
            raise CalibrationError(
                f"{self.name} quantizes activations with ranges measured on real inputs: pass --calibration FILE.npz "
                f"with a few hundred representative samples (random inputs give useless ranges), or choose "
                f"tflite-dynamic-int8, which needs none")
        flex: list[str] = []
        try:
            data = self._convert(graph, ctx, select_ops=False)
        except Exception as exc:
            text = str(exc)
            flex = _select_ops(text)
            if not flex:
                self._raise_unsupported(text, value)
                raise
            if not ctx.options.allow_flex:
                raise UnsupportedModelError(
                    f"{self.name}: the model needs TensorFlow ops that TFLite has no builtin kernel for: "
                    f"{', '.join(flex)}. {FLEX_COST}. Replace these ops in the model, or accept them with "
                    f"--allow-flex (the manifest then lists them)") from None
            try:  # a converter that failed once cannot convert again: _convert makes a fresh one
                data = self._convert(graph, ctx, select_ops=True)
            except Exception as again:
                self._raise_unsupported(str(again), value)
                raise
        out = ctx.scratch(f"{self.name}.tflite")
        out.write_bytes(data)
        notes: dict[str, Any] = {"converter": f"TFLiteConverter (tensorflow {tf.__version__})",
                                 **value.notes}
        if flex:
            notes["flex_ops"] = flex
        return Value(self.produces, path=out, notes=notes, inputs=graph.inputs, outputs=graph.outputs)

    def _convert(self, graph: TfGraph, ctx: PassContext, *, select_ops: bool) -> bytes:
        """Run a fresh TFLiteConverter; the converter's console output is kept out of the user's terminal."""
        import tensorflow as tf

        converter = tf.lite.TFLiteConverter.from_concrete_functions([graph.function], graph.trackable)
        op_sets = self._configure(converter, graph, ctx)
        if select_ops:
            op_sets.append(tf.lite.OpsSet.SELECT_TF_OPS)
        converter.target_spec.supported_ops = set(op_sets)
        with captured_output():
            data: bytes = converter.convert()
        return data

    def _raise_unsupported(self, text: str, value: Value) -> None:
        ops = _unsupported_ops(text)
        if ops:
            route = f"{value.notes.get('frontend', 'tf')} -> TFLiteConverter"
            raise UnsupportedModelError(
                f"{self.name}: TFLite cannot convert the op(s) {', '.join(ops)}, not even as TensorFlow Select ops "
                f"(route tried: {route}); replace them in the model or choose another target family") from None

    @staticmethod
    def representative(graph: TfGraph, ctx: PassContext) -> Any:
        """A generator of single samples in the artifact's layout, for the converter's calibration."""
        by_source = {s.source_name or s.name: s for s in graph.inputs}

        def gen() -> Iterator[list[np.ndarray]]:
            for feed in iter_feeds(ctx.samples, ctx.inputs, 1, limit=MAX_CALIBRATION_SAMPLES):
                sample = []
                for src in ctx.inputs:
                    spec = by_source[src.name]
                    x = feed[src.name]
                    if spec.source_transpose:
                        x = np.transpose(x, spec.source_transpose)
                    sample.append(np.require(x, dtype=np.dtype(spec.dtype), requirements="C"))
                yield sample

        return gen


class TfliteFp32(_ToTflite):
    """fp32 TFLite."""


class TfliteFp16(_ToTflite):
    """float16 weights (dequantized to fp32 on CPU; GPU delegates compute in fp16)."""


    def _configure(self, converter: Any, graph: TfGraph, ctx: PassContext) -> list[Any]:
        import tensorflow as tf

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
        return [tf.lite.OpsSet.TFLITE_BUILTINS]


class TfliteDynamicInt8(_ToTflite):
    """Dynamic-range quantization: int8 weights, activations quantized at run time."""


    def _configure(self, converter: Any, graph: TfGraph, ctx: PassContext) -> list[Any]:
        import tensorflow as tf

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return [tf.lite.OpsSet.TFLITE_BUILTINS]


class TfliteWeightInt8(_ToTflite):
    """int8 weights per channel with float32 activations and compute (the fp32 TFLite, its weights quantized
    by ai-edge-quantizer): the fallback when dynamic range quantization fails parity."""

    def _run(self, value: Value, ctx: PassContext) -> Value:
        from edgekit.converters.passes.tflite_quantize import TfliteWeightInt8 as Weights
        from edgekit.converters.passes.tflite_quantize import _version, weight_only_int8

        fp32 = super()._run(value, ctx)
        fp32.file.write_bytes(weight_only_int8(fp32.file))
        notes = {**fp32.notes, "method": Weights.method, "quantizer": _version()}
        return Value(self.produces, path=fp32.file, notes=notes, inputs=fp32.inputs, outputs=fp32.outputs)


class TfliteInt8(_ToTflite):
    """Full-integer int8 from the calibration samples; float I/O unless ``--int8-io``."""

    needs_calibration = True

    def _configure(self, converter: Any, graph: TfGraph, ctx: PassContext) -> list[Any]:
        import tensorflow as tf

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = self.representative(graph, ctx)
        if ctx.options.int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        return [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


class TfliteInt16x8(_ToTflite):
    """16-bit activations with 8-bit weights, for models whose activations lose too much in int8."""

    needs_calibration = True

    def _configure(self, converter: Any, graph: TfGraph, ctx: PassContext) -> list[Any]:
        import tensorflow as tf

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = self.representative(graph, ctx)
        return [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
