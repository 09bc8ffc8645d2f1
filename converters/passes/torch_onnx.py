"""PyTorch to ONNX with the torch.onnx (dynamo) exporter."""

from __future__ import annotations

from typing import Any

from edgekit._console import captured_output
from edgekit.converters.passes import Pass, PassContext, Value
from edgekit.converters.registry import Kind


def _export(model: Any, args: tuple[Any, ...], ctx: PassContext, dynamic_shapes: Any) -> Value:
    import torch

    out = ctx.scratch("exported.onnx")
    with captured_output():  # the exporter logs each torchvision op it skips
        _run_export(model, args, out, ctx, dynamic_shapes)
    return Value(Kind.ONNX, path=out, notes={"exporter": f"torch.onnx (dynamo) {torch.__version__}"})


def _run_export(model: Any, args: tuple[Any, ...], out: Any, ctx: PassContext, dynamic_shapes: Any) -> None:
    import torch

    torch.onnx.export(
        model,
        args,
        str(out),
        input_names=[s.name for s in ctx.inputs],
        output_names=[s.name for s in ctx.outputs],
        dynamo=True,
        external_data=False,  # one self-contained file: web artifacts cannot fetch side files
        dynamic_shapes=dynamic_shapes,
        verbose=False,
    )


class TorchModuleToOnnx(Pass):
    """Export an ``nn.Module`` with its example inputs; the first axis of each input stays dynamic."""


    def _run(self, value: Value, ctx: PassContext) -> Value:
        import torch

        args = ctx.example_inputs or ()
        dynamic = tuple({0: torch.export.Dim.AUTO} if getattr(a, "ndim", 0) else None for a in args)
        return _export(value.obj, args, ctx, dynamic)


class TorchProgramToOnnx(Pass):
    """Export a saved ``torch.export`` program (.pt2); its dynamic dimensions carry over."""


    def _run(self, value: Value, ctx: PassContext) -> Value:
        return _export(value.obj, ctx.example_inputs or (), ctx, None)
