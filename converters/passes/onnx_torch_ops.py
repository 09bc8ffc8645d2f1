"""ONNX tensor operators as PyTorch calls, for the ONNX-to-PyTorch route (:mod:`onnx_torch`); the
network layers (convolutions, pooling, normalization, resizing, reductions, LSTM) are in :mod:`onnx_torch_nn`.

Each function takes an :class:`Args` (the node, its inputs, its attributes) and returns the node's
outputs. Inputs that shape a computation (Reshape's shape, Slice's starts, Resize's sizes, TopK's k)
must be known when the module is traced: edgekit fixes input shapes first, so shape computations are
numpy values by then (:meth:`Args.static`). Semantics follow the ONNX operator specification; the
route's parity check compares every artifact made from it with the source model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edgekit.errors import UnsupportedModelError


class Args:
    """One node's inputs and attributes, as the op functions read them."""

    def __init__(self, node: Any, values: list[Any], attrs: dict[str, Any], opset: int,
                 as_tensor: Callable[[str, Any], Any]) -> None:
        self.node, self.values, self.attrs, self.opset = node, values, attrs, opset
        self._as_tensor = as_tensor  # (input name, value) -> a torch tensor

    def __len__(self) -> int:
        return len(self.values)

    def has(self, i: int) -> bool:
        return i < len(self.values) and self.values[i] is not None

    def t(self, i: int) -> Any:
        """Input ``i`` as a torch tensor (None when absent)."""
        return self._as_tensor(self.node.input[i], self.values[i]) if self.has(i) else None

    def static(self, i: int) -> np.ndarray | None:
        """Input ``i`` as a numpy array known at trace time (None when absent).

        Raises:
            UnsupportedModelError: The input is computed from the model's inputs at run time.
        """
        if not self.has(i):
            return None
        v = self.values[i]
        if not isinstance(v, np.ndarray):
            raise UnsupportedModelError(
                f"{self.node.op_type} node {self.node.name!r}: its input {self.node.input[i]!r} is computed at run "
                "time, and the ONNX-to-PyTorch route needs it known when the model is traced (input shapes are "
                "fixed from the calibration data first); give --input-shape for every dynamic input")
        return v

    def get(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def list_or_input(self, name: str, i: int) -> list[int] | None:
        """An attribute that later opsets moved to an input (axes, split, pads)."""
        if self.has(i):
            return [int(x) for x in np.ravel(self.static(i))]  # type: ignore[arg-type]
        value = self.attrs.get(name)
        return None if value is None else [int(x) for x in value]


def torch_module() -> Any:
    """torch, imported when an op runs."""
    import torch

    return torch


def torch_nn_functional() -> Any:
    """torch.nn.functional, imported when an op runs."""
    import torch.nn.functional

    return torch.nn.functional


TORCH_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
                11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}


def torch_dtype(onnx_type: int) -> Any:
    name = TORCH_DTYPES.get(onnx_type)
    if name is None:
        raise UnsupportedModelError(f"ONNX tensor type {onnx_type} has no PyTorch equivalent on this route")
    return getattr(torch_module(), name)


def _unary(fn: Callable[[Any], Any]) -> Callable[[Args], Any]:
    return lambda a: fn(a.t(0))


def _binary(fn: Callable[[Any, Any], Any]) -> Callable[[Args], Any]:
    return lambda a: fn(a.t(0), a.t(1))


def _variadic(fn: Callable[[Any, Any], Any]) -> Callable[[Args], Any]:
    def run(a: Args) -> Any:
        out = a.t(0)
        for i in range(1, len(a)):
            out = fn(out, a.t(i))
        return out
    return run


def _div(a: Args) -> Any:
    x, y = a.t(0), a.t(1)
    if x.dtype.is_floating_point:
        return x / y
    return torch_module().div(x, y, rounding_mode="trunc")


def _pow(a: Args) -> Any:
    x, y = a.t(0), a.t(1)
    if a.has(1) and isinstance(a.values[1], np.ndarray) and a.values[1].size == 1:
        e = float(a.values[1].ravel()[0])
        if e == 2.0:
            return x * x
        if e == 0.5:
            return torch_module().sqrt(x)
        return x ** e
    return torch_module().pow(x, y.to(x.dtype))


def _mod(a: Args) -> Any:
    torch = torch_module()
    return torch.fmod(a.t(0), a.t(1)) if a.get("fmod", 0) else torch.remainder(a.t(0), a.t(1))


def _clip(a: Args) -> Any:
    x = a.t(0)
    low = a.t(1) if a.has(1) else a.get("min")
    high = a.t(2) if a.has(2) else a.get("max")
    if low is not None:
        x = torch_module().maximum(x, low.to(x.dtype)) if hasattr(low, "dtype") else x.clamp(min=low)
    if high is not None:
        x = torch_module().minimum(x, high.to(x.dtype)) if hasattr(high, "dtype") else x.clamp(max=high)
    return x


def _hard_sigmoid(a: Args) -> Any:
    return (a.t(0) * a.get("alpha", 0.2) + a.get("beta", 0.5)).clamp(0.0, 1.0)


def _hard_swish(a: Args) -> Any:
    x = a.t(0)
    return x * (x / 6.0 + 0.5).clamp(0.0, 1.0)


def _where(a: Args) -> Any:
    torch = torch_module()
    cond = a.t(0).to(torch.bool)
    # A constant branch of one value (Where(x == 0, 0.0, x)) as masked_fill: coremltools broadcasts both branches
    # of a where to the output's shape and folds the constant into a tensor that large
    for const, other, mask in ((1, 2, cond), (2, 1, ~cond)):
        value = a.values[const]
        if isinstance(value, np.ndarray) and value.size and (value == value.flat[0]).all():
            x = a.t(other)
            if tuple(torch.broadcast_shapes(cond.shape, value.shape, x.shape)) == tuple(x.shape):
                return x.masked_fill(mask, value.flat[0].item())
    return torch.where(cond, a.t(1), a.t(2))


def _cast(a: Args) -> Any:
    return a.t(0).to(torch_dtype(a.get("to")))


def _matmul(a: Args) -> Any:
    return torch_module().matmul(a.t(0), a.t(1))


def _gemm(a: Args) -> Any:
    x, w = a.t(0), a.t(1)
    x = x.transpose(0, 1) if a.get("transA", 0) else x
    w = w.transpose(0, 1) if a.get("transB", 0) else w
    out = torch_module().matmul(x, w) * a.get("alpha", 1.0)
    if a.has(2):
        out = out + a.t(2) * a.get("beta", 1.0)
    return out


def _reshape(a: Args) -> Any:
    x = a.t(0)
    shape = [int(d) for d in a.static(1)]  # type: ignore[union-attr]
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _flatten(a: Args) -> Any:
    x = a.t(0)
    axis = a.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))


def _transpose(a: Args) -> Any:
    x = a.t(0)
    perm = a.get("perm", list(range(x.ndim))[::-1])
    return x.permute(*perm)


def _squeeze(a: Args) -> Any:
    x = a.t(0)
    axes = a.list_or_input("axes", 1)
    if axes is None:
        return x.squeeze()
    for d in sorted((int(d) % x.ndim for d in axes), reverse=True):
        x = x.squeeze(d)
    return x


def _unsqueeze(a: Args) -> Any:
    x = a.t(0)
    axes = a.list_or_input("axes", 1) or []
    rank = x.ndim + len(axes)
    for d in sorted(int(d) % rank for d in axes):
        x = x.unsqueeze(d)
    return x


def _concat(a: Args) -> Any:
    parts = [a.t(i) for i in range(len(a)) if a.has(i)]
    dtype = next((p.dtype for p in parts if p.numel()), parts[0].dtype)
    return torch_module().cat([p if p.dtype == dtype else p.to(dtype) for p in parts if p.numel() or p.ndim > 1],
                        dim=a.get("axis"))


def _split(a: Args) -> Any:
    x = a.t(0)
    axis = a.get("axis", 0) % x.ndim
    sizes = a.list_or_input("split", 1)
    count = len(a.node.output)
    if not sizes:
        size = x.shape[axis]
        part = -(-size // count)
        sizes = [min(part, size - i * part) for i in range(count)]
    return list(torch_module().split(x, sizes, dim=axis))


def _slice(a: Args) -> Any:
    x = a.t(0)
    if a.opset < 10:
        starts, ends = list(a.get("starts")), list(a.get("ends"))
        axes, steps = list(a.get("axes", range(len(starts)))), [1] * len(starts)
    else:
        starts = [int(v) for v in a.static(1)]  # type: ignore[union-attr]
        ends = [int(v) for v in a.static(2)]  # type: ignore[union-attr]
        axes = a.list_or_input("axes", 3) or list(range(len(starts)))
        steps = a.list_or_input("steps", 4) or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= x.ndim
        size = x.shape[axis]
        begin, stop, _ = slice(start, end, step).indices(size)
        if step == 1 and begin == 0 and stop >= size:
            continue  # the whole axis: a view would export as an alias op, which converters reject
        if step > 0:
            index = [slice(None)] * axis + [slice(begin, stop, step)]
            x = x[tuple(index)]
        else:  # reversed, then a forward slice (an index list would be a constant as long as the axis)
            last = size - 1
            index = [slice(None)] * axis + [slice(last - begin, last - stop, -step)]
            x = x.flip(axis)[tuple(index)]
    return x


def _gather(a: Args) -> Any:
    torch = torch_module()
    x = a.t(0)
    axis = a.get("axis", 0) % x.ndim
    if isinstance(a.values[1], np.ndarray):
        idx = np.where(a.values[1] < 0, a.values[1] + x.shape[axis], a.values[1]).astype(np.int64)
        if idx.ndim == 0:
            return x.select(axis, int(idx))
        picked = x.index_select(axis, torch.from_numpy(idx.ravel().copy()))
    else:
        raw = a.t(1).to(torch.int64)
        idx = torch.where(raw < 0, raw + x.shape[axis], raw)
        picked = x.index_select(axis, idx.reshape(-1))
    return picked.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1:])


def _gather_elements(a: Args) -> Any:
    x = a.t(0)
    axis = a.get("axis", 0) % x.ndim
    raw = a.t(1).to(torch_module().int64)
    return torch_module().gather(x, axis, torch_module().where(raw < 0, raw + x.shape[axis], raw))


def _expand(a: Args) -> Any:
    x = a.t(0)
    shape = tuple(int(d) for d in a.static(1))  # type: ignore[union-attr]
    return x.expand(np.broadcast_shapes(tuple(x.shape), shape))


def _tile(a: Args) -> Any:
    return a.t(0).repeat(*[int(r) for r in a.static(1)])  # type: ignore[union-attr]


def _topk(a: Args) -> Any:
    k = int(a.static(1).ravel()[0]) if a.opset >= 10 else int(a.get("k"))  # type: ignore[union-attr]
    values, indices = torch_module().topk(a.t(0), k, dim=a.get("axis", -1), largest=bool(a.get("largest", 1)),
                                    sorted=bool(a.get("sorted", 1)))
    return [values, indices]


def _cumsum(a: Args) -> Any:
    x = a.t(0)
    axis = int(a.static(1).ravel()[0]) % x.ndim  # type: ignore[union-attr]
    if a.get("reverse", 0):
        x = x.flip(axis)
    out = x.cumsum(axis)
    if a.get("exclusive", 0):
        out = out - x
    return out.flip(axis) if a.get("reverse", 0) else out


def _selu(a: Args) -> Any:
    return a.get("gamma", 1.0507009873554805) * torch_nn_functional().elu(a.t(0), a.get("alpha", 1.6732632423543772))


def _gelu(a: Args) -> Any:
    approx = a.get("approximate", b"none")
    return torch_nn_functional().gelu(a.t(0), approximate="tanh" if approx in (b"tanh", "tanh") else "none")


def _prelu(a: Args) -> Any:
    x, slope = a.t(0), a.t(1)
    return torch_module().where(x >= 0, x, x * slope)


def _einsum(a: Args) -> Any:
    equation = a.get("equation")
    equation = equation.decode() if isinstance(equation, bytes) else equation
    return torch_module().einsum(equation, *[a.t(i) for i in range(len(a))])


def _identity(a: Args) -> Any:
    return a.t(0)


def _lazy(path: str) -> Callable[[Args], Any]:
    def run(a: Args) -> Any:
        return _torch_attr(path)(a.t(0))
    return run


def _torch_attr(path: str) -> Any:
    out: Any = torch_module()
    for part in path.split("."):
        out = getattr(out, part)
    return out


def _binary_torch(path: str) -> Callable[[Args], Any]:
    def run(a: Args) -> Any:
        return _torch_attr(path)(a.t(0), a.t(1))
    return run


TENSOR_OPS: dict[str, Callable[[Args], Any]] = {
    "Identity": _identity, "Dropout": _identity,
    "Add": _binary(lambda x, y: x + y), "Sub": _binary(lambda x, y: x - y), "Mul": _binary(lambda x, y: x * y),
    "Div": _div, "Pow": _pow, "Mod": _mod,
    "Max": _variadic(lambda x, y: torch_module().maximum(x, y)), "Min": _variadic(lambda x, y: torch_module().minimum(x, y)),
    "Sum": _variadic(lambda x, y: x + y),
    "Equal": _binary_torch("eq"), "Less": _binary_torch("lt"), "Greater": _binary_torch("gt"),
    "LessOrEqual": _binary_torch("le"), "GreaterOrEqual": _binary_torch("ge"),
    "And": _binary_torch("logical_and"), "Or": _binary_torch("logical_or"), "Xor": _binary_torch("logical_xor"),
    "Not": _lazy("logical_not"), "Where": _where, "Cast": _cast,
    "Neg": _unary(lambda x: -x), "Abs": _lazy("abs"), "Sqrt": _lazy("sqrt"), "Exp": _lazy("exp"), "Log": _lazy("log"),
    "Reciprocal": _lazy("reciprocal"), "Floor": _lazy("floor"), "Ceil": _lazy("ceil"), "Round": _lazy("round"),
    "Sign": _lazy("sign"), "Erf": _lazy("erf"), "Sin": _lazy("sin"), "Cos": _lazy("cos"), "Tanh": _lazy("tanh"),
    "Sigmoid": _lazy("sigmoid"), "Relu": _lazy("relu"), "Softplus": _lazy("nn.functional.softplus"),
    "Softsign": _lazy("nn.functional.softsign"), "Selu": _selu,
    "LeakyRelu": lambda a: torch_nn_functional().leaky_relu(a.t(0), a.get("alpha", 0.01)),
    "Elu": lambda a: torch_nn_functional().elu(a.t(0), a.get("alpha", 1.0)),
    "Clip": _clip, "HardSigmoid": _hard_sigmoid, "HardSwish": _hard_swish, "Gelu": _gelu, "PRelu": _prelu,
    "MatMul": _matmul, "Gemm": _gemm, "Einsum": _einsum,
    "Reshape": _reshape, "Flatten": _flatten, "Transpose": _transpose, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "Concat": _concat, "Split": _split, "Slice": _slice, "Gather": _gather, "GatherElements": _gather_elements,
    "Expand": _expand, "Tile": _tile, "TopK": _topk,
    "CumSum": _cumsum,
}
