"""PyTorch straight to TFLite with litert-torch (``--via litert-torch``): fp32, NCHW kept, batch fixed to 1.

The default PyTorch route to TFLite goes through ONNX and onnx2tf (NHWC, dynamic batch, every
precision); this one skips ONNX and keeps the model's own layout.
"""

from __future__ import annotations

from typing import Any

from edgekit._console import captured_output
from edgekit.bundle import TensorSpec
from edgekit.converters.passes import Pass, PassContext, Value, carried_notes
from edgekit.converters.registry import Kind
from edgekit.errors import ConversionError


def _convert(module: Any, args: tuple[Any, ...], ctx: PassContext, name: str, earlier: dict[str, Any]) -> Value:
    import litert_torch
    import torch
    from ai_edge_litert.interpreter import Interpreter

    # one sample: the batch (a dynamic first dimension) cut to 1; a fixed first dimension (an RNN state's layers) kept
    def first(i: int) -> Any:
        return ctx.inputs[i].shape[0] if i < len(ctx.inputs) and ctx.inputs[i].shape else None

    sample = tuple(a[:1] if isinstance(a, torch.Tensor) and a.ndim and not (isinstance(first(i), int) and first(i) > 1)
                   else a for i, a in enumerate(args))
    out = ctx.scratch(f"{name}.tflite")
    with captured_output(), torch.no_grad():
        litert_torch.convert(module, sample).export(str(out))
    signatures = Interpreter(model_path=str(out)).get_signature_list()
    if not signatures:
        raise ConversionError("litert-torch wrote a model without a signature; edgekit cannot name its tensors")
    sig = next(iter(signatures.values()))
    if len(sig["inputs"]) != len(ctx.inputs) or len(sig["outputs"]) != len(ctx.outputs):
        raise ConversionError(f"litert-torch produced {len(sig['inputs'])} inputs and {len(sig['outputs'])} outputs "
                              f"for a model with {len(ctx.inputs)} and {len(ctx.outputs)}")
    inputs = tuple(TensorSpec(n, s.shape, s.dtype, source_name=s.name) for n, s in zip(sig["inputs"], ctx.inputs, strict=True))
    outputs = tuple(TensorSpec(n, s.shape, s.dtype, source_name=s.name)
                    for n, s in zip(sig["outputs"], ctx.outputs, strict=True))
    notes = {"converter": f"litert-torch {getattr(litert_torch, '__version__', '')}".strip(), "batch": "fixed to 1"}
    return Value(Kind.TFLITE, path=out, notes=carried_notes(earlier, notes), inputs=inputs, outputs=outputs)


class TorchModuleToTflite(Pass):
    """An nn.Module to fp32 TFLite with litert-torch."""


    def _run(self, value: Value, ctx: PassContext) -> Value:
        if ctx.example_inputs is None:
            raise ConversionError("litert-torch needs example inputs to trace the module")
        return _convert(value.obj.eval(), tuple(ctx.example_inputs), ctx, self.name, value.notes)


class TorchProgramToTflite(Pass):
    """A saved torch.export program to fp32 TFLite with litert-torch."""


    def _run(self, value: Value, ctx: PassContext) -> Value:
        program = value.obj
        args, _ = program.example_inputs
        return _convert(program.module(), tuple(args), ctx, self.name, value.notes)
