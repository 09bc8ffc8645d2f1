"""MIL ops in numpy: elementwise, activations, linear algebra, convolution, pooling, shapes, reductions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edgekit.converters.mil.table import DTYPES, OPS, Getter, Op, f32, not_verifiable, register

# ---------------------------------------------------------------- elementwise and activations

_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0), "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "tanh": np.tanh,
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "rsqrt": lambda x: 1 / np.sqrt(x), "abs": np.abs,
    "neg": np.negative, "square": np.square, "floor": np.floor, "ceil": np.ceil, "sign": np.sign,
    "relu6": lambda x: np.clip(x, 0, 6), "silu": lambda x: x / (1 + np.exp(-x)),
    "identity": lambda x: x, "inverse": lambda x: 1 / x, "sin": np.sin, "cos": np.cos,
}
_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide, "maximum": np.maximum,
    "minimum": np.minimum, "pow": np.power, "floor_div": np.floor_divide, "mod": np.mod,
    "equal": np.equal, "not_equal": np.not_equal, "greater": np.greater, "greater_equal": np.greater_equal,
    "less": np.less, "less_equal": np.less_equal,
}


def _unary(f: Callable[[np.ndarray], np.ndarray]) -> Callable[[Op, Getter], list[np.ndarray]]:
    return lambda op, get: [f(f32(get("x")))]


def _binary(f: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[Op, Getter], list[np.ndarray]]:
    return lambda op, get: [f(f32(get("x")), f32(get("y")))]


for _name, _unary_fn in _UNARY.items():
    OPS[_name] = _unary(_unary_fn)
for _name, _binary_fn in _BINARY.items():
    OPS[_name] = _binary(_binary_fn)


@register("clip")
def _clip(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.clip(f32(get("x")), get("alpha"), get("beta"))]


@register("leaky_relu")
def _leaky_relu(op: Op, get: Getter) -> list[np.ndarray]:
    x = f32(get("x"))
    return [np.where(x >= 0, x, x * get("alpha"))]


@register("prelu")
def _prelu(op: Op, get: Getter) -> list[np.ndarray]:
    x, alpha = f32(get("x")), f32(get("alpha"))
    shape = [1, alpha.shape[0]] + [1] * (x.ndim - 2)  # one slope per channel (axis 1)
    return [np.where(x >= 0, x, x * alpha.reshape(shape))]


@register("softmax")
def _softmax(op: Op, get: Getter) -> list[np.ndarray]:
    x, axis = f32(get("x")), int(get("axis"))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return [e / e.sum(axis=axis, keepdims=True)]


@register("cast")
def _cast(op: Op, get: Getter) -> list[np.ndarray]:
    return [get("x").astype(DTYPES[str(get("dtype"))])]


# ---------------------------------------------------------------- linear algebra

@register("linear")
def _linear(op: Op, get: Getter) -> list[np.ndarray]:
    x, w = f32(get("x")), f32(get("weight"))
    out = x @ w.T
    bias = get("bias", None)
    return [out + f32(bias) if bias is not None else out]


@register("matmul")
def _matmul(op: Op, get: Getter) -> list[np.ndarray]:
    x, y = f32(get("x")), f32(get("y"))
    if get("transpose_x", False):
        x = np.swapaxes(x, -1, -2)
    if get("transpose_y", False):
        y = np.swapaxes(y, -1, -2)
    return [np.matmul(x, y)]


def _pads(op: Op, get: Getter, spatial: tuple[int, ...], kernel: tuple[int, ...],
          strides: tuple[int, ...], dilations: tuple[int, ...]) -> list[tuple[int, int]]:
    pad_type = str(get("pad_type", "valid"))
    n = len(spatial)
    if pad_type == "custom":
        pad = [int(p) for p in get("pad")]
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(n)]
    if pad_type in ("same", "same_lower"):
        out = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            low = total // 2 if pad_type == "same" else total - total // 2
            out.append((low, total - low))
        return out
    return [(0, 0)] * n


@register("conv")
def _conv(op: Op, get: Getter) -> list[np.ndarray]:
    x, w = f32(get("x")), f32(get("weight"))
    n_spatial = x.ndim - 2
    strides = tuple(int(s) for s in get("strides", [1] * n_spatial))
    dilations = tuple(int(d) for d in get("dilations", [1] * n_spatial))
    groups = int(get("groups", 1))
    kernel = tuple(w.shape[2:])
    pads = _pads(op, get, x.shape[2:], kernel, strides, dilations)
    x = np.pad(x, [(0, 0), (0, 0), *pads])
    span = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True))
    windows = np.lib.stride_tricks.sliding_window_view(x, span, axis=tuple(range(2, x.ndim)))
    step = (slice(None), slice(None), *(slice(None, None, s) for s in strides),
            *(slice(None, None, d) for d in dilations))
    windows = windows[step]  # (N, C, *out, *kernel)
    batch, channels = x.shape[:2]
    out_spatial = windows.shape[2:2 + n_spatial]
    windows = windows.reshape(batch, groups, channels // groups, *out_spatial, *kernel)
    w = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])
    letters = "hwd"[:n_spatial]
    kern = "ijk"[:n_spatial]
    out = np.einsum(f"ngc{letters}{kern},goc{kern}->ngo{letters}", windows, w, optimize=True)
    out = out.reshape(batch, -1, *out_spatial)
    bias = get("bias", None)
    if bias is not None:
        out = out + f32(bias).reshape(1, -1, *([1] * n_spatial))
    return [out]


def _pool(op: Op, get: Getter, reduce: str) -> np.ndarray:
    x = f32(get("x"))
    n_spatial = x.ndim - 2
    kernel = tuple(int(k) for k in get("kernel_sizes"))
    strides = tuple(int(s) for s in get("strides", [1] * n_spatial))
    pads = _pads(op, get, x.shape[2:], kernel, strides, (1,) * n_spatial)
    if get("ceil_mode", False):  # extend the end so the last partial window exists
        pads = [(lo, hi + max(0, (-(-(size + lo + hi - k) // s)) * s + k - (size + lo + hi)))
                for (lo, hi), size, k, s in zip(pads, x.shape[2:], kernel, strides, strict=True)]
    fill = -np.inf if reduce == "max" else np.nan
    x = np.pad(x, [(0, 0), (0, 0), *pads], constant_values=fill)
    windows = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=tuple(range(2, x.ndim)))
    windows = windows[(slice(None), slice(None), *(slice(None, None, s) for s in strides))]
    axes = tuple(range(-n_spatial, 0))
    if reduce == "max":
        return np.asarray(windows.max(axis=axes))
    if get("exclude_padding_from_average", False):
        return np.asarray(np.nanmean(windows, axis=axes))
    return np.asarray(np.nan_to_num(windows, nan=0.0).sum(axis=axes) / float(np.prod(kernel)))


@register("max_pool")
def _max_pool(op: Op, get: Getter) -> list[np.ndarray]:
    return [_pool(op, get, "max")]


@register("avg_pool")
def _avg_pool(op: Op, get: Getter) -> list[np.ndarray]:
    return [_pool(op, get, "avg")]


@register("batch_norm")
def _batch_norm(op: Op, get: Getter) -> list[np.ndarray]:
    x = f32(get("x"))
    shape = [1, -1] + [1] * (x.ndim - 2)
    mean, var = f32(get("mean")).reshape(shape), f32(get("variance")).reshape(shape)
    gamma, beta = get("gamma", None), get("beta", None)
    out = (x - mean) / np.sqrt(var + float(get("epsilon", 1e-5)))
    if gamma is not None:
        out = out * f32(gamma).reshape(shape)
    if beta is not None:
        out = out + f32(beta).reshape(shape)
    return [out]


# ---------------------------------------------------------------- shapes and reductions

@register("reshape")
def _reshape(op: Op, get: Getter) -> list[np.ndarray]:
    x, shape = get("x"), [int(s) for s in get("shape")]
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


@register("transpose")
def _transpose(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.transpose(get("x"), [int(p) for p in get("perm")])]


@register("squeeze")
def _squeeze(op: Op, get: Getter) -> list[np.ndarray]:
    axes = get("axes", None)
    return [np.squeeze(get("x"), axis=tuple(int(a) for a in axes) if axes is not None else None)]


@register("expand_dims")
def _expand_dims(op: Op, get: Getter) -> list[np.ndarray]:
    x = get("x")
    for axis in sorted(int(a) for a in get("axes")):
        x = np.expand_dims(x, axis)
    return [x]


@register("concat")
def _concat(op: Op, get: Getter) -> list[np.ndarray]:
    values = [np.atleast_1d(f32(np.asarray(v))) for v in get("values")]  # scalars (gathered dims) join as [1]
    return [np.concatenate(values, axis=int(get("axis")))]


@register("pad")
def _pad(op: Op, get: Getter) -> list[np.ndarray]:
    x, pad = f32(get("x")), [int(p) for p in get("pad")]
    pairs = [(0, 0)] * (x.ndim - len(pad) // 2) + [(pad[i], pad[i + 1]) for i in range(0, len(pad), 2)]
    mode = str(get("mode", "constant"))
    if mode == "constant":
        return [np.pad(x, pairs, constant_values=float(get("constant_val", 0.0)))]
    np_mode: Any = {"reflect": "reflect", "replicate": "edge"}[mode]
    return [np.pad(x, pairs, mode=np_mode)]


def _reduce(fn: Callable[..., np.ndarray]) -> Callable[[Op, Getter], list[np.ndarray]]:
    def run(op: Op, get: Getter) -> list[np.ndarray]:
        axes = get("axes", None)
        axis = tuple(int(a) for a in axes) if axes is not None else None
        return [fn(f32(get("x")), axis=axis, keepdims=bool(get("keep_dims", False)))]
    return run


_REDUCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min, "reduce_prod": np.prod,
    "reduce_l2_norm": lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)),
    "reduce_l1_norm": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
    "reduce_sum_square": lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims),
    "reduce_log_sum": lambda x, axis, keepdims: np.log(np.sum(x, axis=axis, keepdims=keepdims)),
    "reduce_log_sum_exp": lambda x, axis, keepdims: np.log(np.sum(np.exp(x), axis=axis, keepdims=keepdims)),
}
for _name, _reduce_fn in _REDUCTIONS.items():
    OPS[_name] = _reduce(_reduce_fn)


@register("slice_by_index")
def _slice_by_index(op: Op, get: Getter) -> list[np.ndarray]:
    x = get("x")
    begin, end = [int(b) for b in get("begin")], [int(e) for e in get("end")]
    stride = [int(s) for s in get("stride", [1] * x.ndim)]
    begin_mask = list(get("begin_mask", [False] * x.ndim))
    end_mask = list(get("end_mask", [False] * x.ndim))
    squeeze = list(get("squeeze_mask", [False] * x.ndim))
    index = tuple(slice(None if begin_mask[i] else begin[i], None if end_mask[i] else end[i], stride[i])
                  for i in range(x.ndim))
    out = x[index]
    axes = tuple(i for i, s in enumerate(squeeze) if s)
    return [np.squeeze(out, axis=axes) if axes else out]


@register("shape")
def _shape_op(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.asarray(np.shape(get("x")), np.int32)]


@register("gather")
def _gather(op: Op, get: Getter) -> list[np.ndarray]:
    x, indices = get("x"), np.asarray(get("indices")).astype(np.int64)
    axis = int(get("axis", 0)) % np.ndim(x)
    if int(get("batch_dims", 0)):
        raise not_verifiable("op gather with batch_dims")
    return [np.take(x, np.where(indices < 0, indices + np.shape(x)[axis], indices), axis=axis)]


@register("select")
def _select(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.where(get("cond"), f32(get("a")), f32(get("b")))]


@register("slice_by_size")
def _slice_by_size(op: Op, get: Getter) -> list[np.ndarray]:
    x, begin, size = get("x"), [int(b) for b in get("begin")], [int(n) for n in get("size")]
    return [x[tuple(slice(b, None if n == -1 else b + n) for b, n in zip(begin, size, strict=True))]]


@register("tile")
def _tile(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.tile(get("x"), [int(r) for r in get("reps")])]


@register("logical_not")
def _logical_not(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.logical_not(get("x"))]


@register("logical_and", "logical_or", "logical_xor")
def _logical(op: Op, get: Getter) -> list[np.ndarray]:
    fn = {"logical_and": np.logical_and, "logical_or": np.logical_or, "logical_xor": np.logical_xor}[op.op_type]
    return [fn(get("x"), get("y"))]
