"""Converter functions coremltools lacks for ops real models use, registered once before converting.

- TensorFlow ``Erfc`` (Keras 3's exact gelu is ``0.5 * x * erfc(-x / sqrt(2))``): ``1 - erf(x)``.
- PyTorch ``new_ones`` (transformers' BERT builds its attention mask with it): a fill with 1, as
  coremltools' own ``new_zeros`` fills with 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_registered = False


def register() -> None:
    """Add the converters to coremltools' registries (idempotent)."""
    global _registered
    if _registered:
        return
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.tensorflow.tf_op_registry import _TF_OPS_REGISTRY, register_tf_op
    from coremltools.converters.mil.mil import types

    if "Erfc" not in _TF_OPS_REGISTRY:
        def Erfc(context: Any, node: Any) -> None:  # noqa: N802 - coremltools names converters after the op
            x = context[node.inputs[0]]
            context.add(node.name, mb.sub(x=1.0, y=mb.erf(x=x), name=node.name))

        register_tf_op(Erfc)
    try:
        from coremltools.converters.mil.frontend.torch.ops import _get_inputs
        from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY, register_torch_op
        from coremltools.converters.mil.frontend.torch.utils import NUM_TO_NUMPY_DTYPE
    except ImportError:  # coremltools without its PyTorch frontend (no torch)
        _registered = True
        return
    if "new_ones" not in _TORCH_OPS_REGISTRY.name_to_func_mapping:
        def new_ones(context: Any, node: Any) -> None:
            inputs = _get_inputs(context, node)
            shape = inputs[1]
            if isinstance(shape, list):  # a dynamic size: pymil scalars to concatenate
                shape = mb.concat(values=shape, axis=0)
            if shape.dtype != types.int32:
                shape = mb.cast(x=shape, dtype="int32")
            dtype = inputs[2].val if len(inputs) > 2 and inputs[2] is not None else None
            kind = np.dtype(NUM_TO_NUMPY_DTYPE[dtype]).kind if isinstance(dtype, (int, np.integer)) else "f"
            value: Any = True if kind == "b" else (1 if kind in "iu" else 1.0)  # bool masks, int32, else float
            context.add(mb.fill(shape=shape, value=value, name=node.name))

        register_torch_op(new_ones)
    _registered = True
