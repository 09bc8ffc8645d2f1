"""MIL ops in numpy for transformers, detectors, OCR and audio models: normalizations, GELU, transposed
convolution, resizing, LSTM, top-k, argmax, split and stack, and the index ops around them."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.converters.mil.table import Getter, Op, f32, not_verifiable, register


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to float32 precision (a polynomial approximation is too coarse for parity at 1e-3)."""
    try:
        from scipy.special import erf
    except ImportError:  # scipy comes with scikit-learn and TensorFlow; without it, per element
        from math import erf as erf_scalar

        erf = np.vectorize(erf_scalar, otypes=[np.float64])
    return np.asarray(erf(x.astype(np.float64)), np.float32)


@register("erf")
def _erf_op(op: Op, get: Getter) -> list[np.ndarray]:
    return [_erf(f32(get("x")))]


@register("gelu")
def _gelu(op: Op, get: Getter) -> list[np.ndarray]:
    x, mode = f32(get("x")), str(get("mode", "EXACT"))
    if mode == "TANH_APPROXIMATION":
        return [0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))]
    if mode == "SIGMOID_APPROXIMATION":
        return [x / (1 + np.exp(-1.702 * x))]
    return [0.5 * x * (1 + _erf(x / np.sqrt(2)))]


@register("softplus")
def _softplus(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.logaddexp(0, f32(get("x")))]


@register("elu")
def _elu(op: Op, get: Getter) -> list[np.ndarray]:
    x, alpha = f32(get("x")), float(get("alpha", 1.0))
    return [np.where(x > 0, x, alpha * (np.exp(np.minimum(x, 0)) - 1))]


@register("round")
def _round(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.round(f32(get("x")))]


def _affine(out: np.ndarray, get: Getter, shape: list[int]) -> np.ndarray:
    gamma, beta = get("gamma", None), get("beta", None)
    if gamma is not None:
        out = out * f32(gamma).reshape(shape)
    if beta is not None:
        out = out + f32(beta).reshape(shape)
    return out


@register("layer_norm")
def _layer_norm(op: Op, get: Getter) -> list[np.ndarray]:
    x = f32(get("x"))
    axes = tuple(int(a) % x.ndim for a in get("axes"))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    out = (x - mean) / np.sqrt(var + float(get("epsilon", 1e-5)))
    shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)][min(axes):]
    return [_affine(out, get, shape)]


@register("instance_norm")
def _instance_norm(op: Op, get: Getter) -> list[np.ndarray]:
    x = f32(get("x"))
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    out = (x - mean) / np.sqrt(var + float(get("epsilon", 1e-5)))
    return [_affine(out, get, [1, -1] + [1] * (x.ndim - 2))]


@register("l2_norm")
def _l2_norm(op: Op, get: Getter) -> list[np.ndarray]:
    x = f32(get("x"))
    axes = tuple(range(max(x.ndim - 3, 0), x.ndim))  # the last three axes (all but batch for rank <= 3)
    norm = np.sqrt((x * x).sum(axis=axes, keepdims=True))
    return [x / np.maximum(norm, float(get("epsilon", 1e-6)))]


@register("conv_transpose")
def _conv_transpose(op: Op, get: Getter) -> list[np.ndarray]:
    """Scatter form: each input pixel adds its kernel-weighted patch; weight is [C_in, C_out/groups, *K]."""
    x, w = f32(get("x")), f32(get("weight"))
    n_spatial = x.ndim - 2
    strides = [int(s) for s in get("strides", [1] * n_spatial)]
    dilations = [int(d) for d in get("dilations", [1] * n_spatial)]
    groups = int(get("groups", 1))
    kernel = w.shape[2:]
    batch, c_in = x.shape[:2]
    c_out = w.shape[1] * groups
    full = [(s - 1) * st + (k - 1) * d + 1 for s, st, k, d in zip(x.shape[2:], strides, kernel, dilations, strict=True)]
    out = np.zeros((batch, c_out, *full), np.float32)
    per_group = c_in // groups
    xg = x.reshape(batch, groups, per_group, *x.shape[2:])
    wg = w.reshape(groups, per_group, w.shape[1], *kernel)
    for index in np.ndindex(*kernel):
        # contribution of kernel tap `index`: x[n, g, ci, *s] * w[g, ci, co, *index] lands at s*stride + index*dilation
        contrib = np.einsum("ngc...,gco->ngo...", xg, wg[(slice(None), slice(None), slice(None), *index)])
        target = tuple(slice(i * d, i * d + (s - 1) * st + 1, st)
                       for i, d, s, st in zip(index, dilations, x.shape[2:], strides, strict=True))
        out[(slice(None), slice(None), *target)] += contrib.reshape(batch, c_out, *x.shape[2:])
    pad_type = str(get("pad_type", "valid"))
    shape = get("output_shape", None)
    if pad_type == "custom":
        pad = [int(p) for p in get("pad")]
        crop = [(pad[2 * i], full[i] - pad[2 * i + 1]) for i in range(n_spatial)]
    elif pad_type == "same" or shape is not None:
        want = [int(s) for s in shape[2:]] if shape is not None else [s * st for s, st in zip(x.shape[2:], strides, strict=True)]
        crop = [((f - w_) // 2, (f - w_) // 2 + w_) for f, w_ in zip(full, want, strict=True)]
    else:
        crop = [(0, f) for f in full]
    out = out[(slice(None), slice(None), *(slice(lo, hi) for lo, hi in crop))]
    bias = get("bias", None)
    if bias is not None:
        out = out + f32(bias).reshape(1, -1, *([1] * n_spatial))
    return [out]


def _source_index(out_size: int, in_size: int, mode: str) -> np.ndarray:
    """Fractional source coordinates of each output position along one axis."""
    i = np.arange(out_size, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS", "align_corners"):
        return i * ((in_size - 1) / (out_size - 1)) if out_size > 1 else np.zeros(out_size)
    if mode in ("HALF_PIXEL_CENTERS", "half_pixel"):
        return np.clip((i + 0.5) * in_size / out_size - 0.5, 0, in_size - 1)
    if mode == "OFFSET_CORNERS":
        return np.clip((i + 0.5) * in_size / out_size - 0.5, 0, in_size - 1)
    return i * in_size / out_size  # DEFAULT: asymmetric


def _bilinear(x: np.ndarray, out_h: int, out_w: int, mode: str) -> np.ndarray:
    h, w = x.shape[-2:]
    ys, xs = _source_index(out_h, h, mode), _source_index(out_w, w, mode)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = x[..., y0, :][..., :, x0] * (1 - wx) + x[..., y0, :][..., :, x1] * wx
    bottom = x[..., y1, :][..., :, x0] * (1 - wx) + x[..., y1, :][..., :, x1] * wx
    return np.asarray(top * (1 - wy) + bottom * wy, np.float32)


@register("upsample_nearest_neighbor")
def _upsample_nearest(op: Op, get: Getter) -> list[np.ndarray]:
    x = f32(get("x"))
    sh, sw = float(get("scale_factor_height", 1)), float(get("scale_factor_width", 1))
    h, w = x.shape[-2:]
    rows = np.minimum((np.arange(int(h * sh)) / sh).astype(int), h - 1)
    cols = np.minimum((np.arange(int(w * sw)) / sw).astype(int), w - 1)
    return [x[..., rows, :][..., :, cols]]


@register("upsample_bilinear")
def _upsample_bilinear(op: Op, get: Getter) -> list[np.ndarray]:
    x = f32(get("x"))
    sh, sw = float(get("scale_factor_height", 1)), float(get("scale_factor_width", 1))
    mode = "ALIGN_CORNERS" if get("align_corners", True) else "HALF_PIXEL_CENTERS"
    if get("half_pixel_centers", None) is not None and not get("align_corners", True):
        mode = "HALF_PIXEL_CENTERS" if get("half_pixel_centers") else "DEFAULT"
    return [_bilinear(x, int(x.shape[-2] * sh), int(x.shape[-1] * sw), mode)]


@register("resize_bilinear")
def _resize_bilinear(op: Op, get: Getter) -> list[np.ndarray]:
    x = f32(get("x"))
    return [_bilinear(x, int(get("target_size_height")), int(get("target_size_width")),
                      str(get("sampling_mode", "DEFAULT")))]


@register("resize_nearest_neighbor")
def _resize_nearest(op: Op, get: Getter) -> list[np.ndarray]:
    x = f32(get("x"))
    h, w = x.shape[-2:]
    oh, ow = int(get("target_size_height")), int(get("target_size_width"))
    rows = np.minimum((np.arange(oh) * h / oh).astype(int), h - 1)
    cols = np.minimum((np.arange(ow) * w / ow).astype(int), w - 1)
    return [x[..., rows, :][..., :, cols]]


_ACTIVATIONS: dict[str, Any] = {
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)), "tanh": np.tanh, "relu": lambda v: np.maximum(v, 0),
    "linear": lambda v: v, "hard_sigmoid": lambda v: np.clip(0.2 * v + 0.5, 0, 1),
}


def _lstm_direction(x: np.ndarray, h: np.ndarray, c: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray,
                    bias: np.ndarray, acts: tuple[Any, Any, Any], reverse: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rec, cell, out_act = acts
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    outputs = np.zeros((x.shape[0], x.shape[1], h.shape[-1]), np.float32)
    size = h.shape[-1]
    for t in steps:
        gates = x[t] @ w_ih.T + h @ w_hh.T + bias
        i, f, o, z = (gates[:, k * size:(k + 1) * size] for k in range(4))  # MIL order: input, forget, output, cell
        c = rec(f) * c + rec(i) * cell(z)
        h = rec(o) * out_act(c)
        outputs[t] = h
    return outputs, h, c


@register("lstm")
def _lstm(op: Op, get: Getter) -> list[np.ndarray]:
    x = f32(get("x"))
    if get("clip", None) is not None or get("peephole", None) is not None:
        raise not_verifiable("op lstm with clip or peephole")
    acts = tuple(_ACTIVATIONS[str(get(k, d)).lower()] for k, d in
                 (("recurrent_activation", "sigmoid"), ("cell_activation", "tanh"), ("activation", "tanh")))
    direction = str(get("direction", "forward"))
    h0, c0 = f32(get("initial_h")), f32(get("initial_c"))
    size = f32(get("weight_hh")).shape[-1]
    zero = np.zeros(4 * size, np.float32)
    b = f32(get("bias")) if get("bias", None) is not None else zero
    fwd = _lstm_direction(x, h0[:, :size], c0[:, :size], f32(get("weight_ih")), f32(get("weight_hh")), b, acts,
                          reverse=direction == "reverse")
    if direction != "bidirectional":
        seq, h, c = fwd
    else:
        bb = f32(get("bias_back")) if get("bias_back", None) is not None else zero
        back = _lstm_direction(x, h0[:, size:], c0[:, size:], f32(get("weight_ih_back")), f32(get("weight_hh_back")),
                               bb, acts, reverse=True)
        seq = np.concatenate([fwd[0], back[0]], axis=-1)
        h, c = np.concatenate([fwd[1], back[1]], -1), np.concatenate([fwd[2], back[2]], -1)
        if not get("output_sequence", False):
            seq = np.concatenate([fwd[0][-1:], back[0][:1]], axis=-1)
    if direction != "bidirectional" and not get("output_sequence", False):
        seq = seq[-1:]
    return [seq, h[None] if h.ndim == 2 else h, c[None] if c.ndim == 2 else c][: len(op.outputs)]


@register("topk")
def _topk(op: Op, get: Getter) -> list[np.ndarray]:
    x, k, axis = get("x"), int(get("k", 1)), int(get("axis", -1))
    ascending = bool(get("ascending", False))
    order = np.argsort(x if ascending else -f32(np.asarray(x)), axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return [np.take_along_axis(x, idx, axis=axis), idx.astype(np.int32)][: len(op.outputs)]


@register("argsort")
def _argsort(op: Op, get: Getter) -> list[np.ndarray]:
    x = f32(np.asarray(get("x")))
    return [np.argsort(x if get("ascending", False) else -x, axis=int(get("axis", -1)), kind="stable").astype(np.int32)]


@register("reduce_argmax", "reduce_argmin")
def _argmax(op: Op, get: Getter) -> list[np.ndarray]:
    x, axis = get("x"), int(get("axis", -1))
    out = (np.argmax if op.op_type == "reduce_argmax" else np.argmin)(x, axis=axis)
    return [np.expand_dims(out, axis) if get("keep_dims", False) else out]


@register("split")
def _split(op: Op, get: Getter) -> list[np.ndarray]:
    x, axis = get("x"), int(get("axis"))
    sizes = get("split_sizes", None)
    if sizes is not None:
        return list(np.split(x, np.cumsum([int(s) for s in sizes])[:-1], axis=axis))
    return list(np.split(x, int(get("num_splits")), axis=axis))


@register("stack")
def _stack(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.stack([np.asarray(v) for v in get("values")], axis=int(get("axis")))]


@register("gather_along_axis")
def _gather_along_axis(op: Op, get: Getter) -> list[np.ndarray]:
    x, idx, axis = get("x"), np.asarray(get("indices")).astype(np.int64), int(get("axis", 0))
    return [np.take_along_axis(x, np.where(idx < 0, idx + x.shape[axis], idx), axis=axis)]


@register("gather_nd")
def _gather_nd(op: Op, get: Getter) -> list[np.ndarray]:
    x, idx = get("x"), np.asarray(get("indices")).astype(np.int64)
    if int(get("batch_dims", 0)):
        raise not_verifiable("op gather_nd with batch_dims")
    return [x[tuple(np.moveaxis(idx, -1, 0))]]


@register("band_part")
def _band_part(op: Op, get: Getter) -> list[np.ndarray]:
    x = get("x")
    lower, upper = int(get("lower", -1)), int(get("upper", -1))
    rows, cols = np.indices(x.shape[-2:])
    keep = ((lower < 0) | (rows - cols <= lower)) & ((upper < 0) | (cols - rows <= upper))
    return [np.where(keep, x, np.zeros_like(x))]


@register("fill")
def _fill(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.full([int(s) for s in get("shape")], get("value", 0.0))]


@register("range_1d")
def _range_1d(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.arange(get("start"), get("end"), get("step"))]


@register("cumsum")
def _cumsum(op: Op, get: Getter) -> list[np.ndarray]:
    x, axis = f32(get("x")), int(get("axis", 0))
    if get("reverse", False):
        x = np.flip(x, axis)
    out = np.cumsum(x, axis=axis)
    if get("exclusive", False):
        out = out - x
    return [np.flip(out, axis) if get("reverse", False) else out]


@register("einsum")
def _einsum(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.einsum(str(get("equation")), *[f32(np.asarray(v)) for v in get("values")])]


@register("depth_to_space", "pixel_shuffle")
def _depth_to_space(op: Op, get: Getter) -> list[np.ndarray]:
    x = get("x")
    r = int(get("block_size", None) or get("upscale_factor"))
    n, c, h, w = x.shape
    if op.op_type == "pixel_shuffle":
        out = x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:  # DCR order, as TensorFlow's DepthToSpace
        out = x.reshape(n, r, r, c // (r * r), h, w).transpose(0, 3, 4, 1, 5, 2)
    return [out.reshape(n, -1, h * r, w * r)]


@register("scatter_along_axis")
def _scatter_along_axis(op: Op, get: Getter) -> list[np.ndarray]:
    data, idx, updates = np.array(get("data")), np.asarray(get("indices")).astype(np.int64), get("updates")
    axis, mode = int(get("axis", 0)), str(get("mode", "update"))
    if mode != "update":
        raise not_verifiable(f"op scatter_along_axis with mode {mode}")
    np.put_along_axis(data, idx, updates, axis=axis)
    return [data]


@register("non_zero")
def _non_zero(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.argwhere(get("x")).astype(np.int32)]


@register("random_uniform", "random_normal", "random_bernoulli", "random_categorical")
def _random(op: Op, get: Getter) -> list[np.ndarray]:
    raise not_verifiable(f"op {op.op_type} (random values cannot be compared)")

