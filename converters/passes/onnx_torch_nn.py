"""ONNX network layers as PyTorch calls, for the ONNX-to-PyTorch route (:mod:`onnx_torch`): convolutions,
pooling, normalization, softmax, reductions, resizing, padding, quantization.
Semantics follow the ONNX operator specification; what a layer does not support raises
:class:`UnsupportedModelError` naming the attribute, never a silently different result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edgekit.converters.passes.onnx_torch_ops import Args, torch_module, torch_nn_functional
from edgekit.errors import UnsupportedModelError


def _pads_split(pads: list[int], rank: int) -> tuple[list[int], list[int]]:
    return pads[:rank], pads[rank:]


def _auto_pads(a: Args, spatial: list[int], kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    mode = a.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    n = len(kernel)
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begin.append(small if mode == "SAME_UPPER" else big)
            end.append(big if mode == "SAME_UPPER" else small)
        return begin + end
    if mode == "VALID":
        return [0] * (2 * n)
    return list(a.get("pads", [0] * (2 * n)))


def _torch_pad(begin: list[int], end: list[int]) -> list[int]:
    """ONNX begin/end pads of the trailing dims as F.pad's (last dim first) list."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        out += [b, e]
    return out


def _conv(a: Args) -> Any:
    F = torch_nn_functional()
    x, w, b = a.t(0), a.t(1), a.t(2)
    n = w.ndim - 2
    kernel = list(w.shape[2:])
    strides = list(a.get("strides", [1] * n))
    dilations = list(a.get("dilations", [1] * n))
    begin, end = _pads_split(_auto_pads(a, list(x.shape[2:]), kernel, strides, dilations), n)
    padding: Any = begin
    if begin != end:
        x = F.pad(x, _torch_pad(begin, end))
        padding = [0] * n
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    return fn(x, w, b, stride=strides, padding=padding, dilation=dilations, groups=a.get("group", 1))


def _conv_transpose(a: Args) -> Any:
    F = torch_nn_functional()
    x, w, b = a.t(0), a.t(1), a.t(2)
    n = w.ndim - 2
    strides = list(a.get("strides", [1] * n))
    dilations = list(a.get("dilations", [1] * n))
    if a.get("output_shape") is not None or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedModelError("ConvTranspose with output_shape or auto_pad is not supported on the ONNX-to-PyTorch "
                                    "route; export the model with explicit pads")
    begin, end = _pads_split(list(a.get("pads", [0] * 2 * n)), n)
    extra = list(a.get("output_padding", [0] * n))
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]
    out = fn(x, w, b, stride=strides, padding=0, output_padding=extra, groups=a.get("group", 1), dilation=dilations)
    index = [slice(None), slice(None)] + [slice(bb, out.shape[2 + i] - e)
                                          for i, (bb, e) in enumerate(zip(begin, end, strict=True))]
    return out[tuple(index)]


def _pool(a: Args, kind: str) -> Any:
    F = torch_nn_functional()
    x = a.t(0)
    kernel = list(a.get("kernel_shape"))
    n = len(kernel)
    strides = list(a.get("strides", [1] * n))
    dilations = list(a.get("dilations", [1] * n))
    begin, end = _pads_split(_auto_pads(a, list(x.shape[2:]), kernel, strides, dilations), n)
    ceil = bool(a.get("ceil_mode", 0))
    if kind == "max":
        if begin != end or any(p * 2 > k for p, k in zip(begin, kernel, strict=True)):
            x = F.pad(x, _torch_pad(begin, end), value=float("-inf"))
            begin = [0] * n
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
        return fn(x, kernel, strides, begin, dilation=dilations, ceil_mode=ceil)
    include = bool(a.get("count_include_pad", 0))
    if any(d != 1 for d in dilations):
        raise UnsupportedModelError("AveragePool with dilations is not supported on the ONNX-to-PyTorch route")
    if begin != end or any(p * 2 > k for p, k in zip(begin, kernel, strict=True)):
        if not include:
            raise UnsupportedModelError("AveragePool with asymmetric pads that exclude the padding is not supported on "
                                        "the ONNX-to-PyTorch route")
        x = F.pad(x, _torch_pad(begin, end))
        begin = [0] * n
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
    return fn(x, kernel, strides, begin, ceil_mode=ceil, count_include_pad=include)


def _global_pool(kind: str) -> Callable[[Args], Any]:
    def run(a: Args) -> Any:
        x = a.t(0)
        dims = tuple(range(2, x.ndim))
        return x.mean(dim=dims, keepdim=True) if kind == "avg" else x.amax(dim=dims, keepdim=True)
    return run


def _batch_norm(a: Args) -> Any:
    return torch_nn_functional().batch_norm(a.t(0), a.t(3), a.t(4), a.t(1), a.t(2), False, 0.0, a.get("epsilon", 1e-5))


def _instance_norm(a: Args) -> Any:
    return torch_nn_functional().instance_norm(a.t(0), weight=a.t(1), bias=a.t(2), eps=a.get("epsilon", 1e-5))


def _layer_norm(a: Args) -> Any:
    x = a.t(0)
    axis = a.get("axis", -1) % x.ndim
    shape = tuple(x.shape[axis:])
    scale, bias = a.t(1), a.t(2)
    eps = a.get("epsilon", 1e-5)
    out = torch_nn_functional().layer_norm(x, shape, scale.expand(shape) if scale is not None else None,
                          bias.expand(shape) if bias is not None else None, eps)
    if len(a.node.output) == 1:
        return out
    dims = tuple(range(axis, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    return [out, mean, torch_module().rsqrt(((x - mean) ** 2).mean(dim=dims, keepdim=True) + eps)]


def _softmax(log: bool) -> Callable[[Args], Any]:
    def run(a: Args) -> Any:
        F = torch_nn_functional()
        x = a.t(0)
        fn = F.log_softmax if log else F.softmax
        if a.opset >= 13:
            return fn(x, dim=a.get("axis", -1))
        axis = a.get("axis", 1) % x.ndim  # before opset 13: over the dims from ``axis`` on, flattened
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        return fn(flat, dim=1).reshape(x.shape)
    return run


def _reduce(kind: str) -> Callable[[Args], Any]:
    def run(a: Args) -> Any:
        torch = torch_module()
        x = a.t(0)
        from_input = kind == "sum" and a.opset >= 13 or a.opset >= 18
        axes = a.list_or_input("axes", 1) if from_input else a.list_or_input("axes", 99)
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.ndim))
        dims = tuple(int(d) % x.ndim for d in axes)
        if kind == "sum":
            return x.sum(dim=dims, keepdim=keep)
        if kind == "mean":
            return x.mean(dim=dims, keepdim=keep)
        if kind == "max":
            return x.amax(dim=dims, keepdim=keep)
        if kind == "min":
            return x.amin(dim=dims, keepdim=keep)
        if kind == "prod":
            out = x
            for d in sorted(dims, reverse=True):
                out = out.prod(dim=d, keepdim=keep)
            return out
        if kind == "l2":
            return torch.sqrt((x * x).sum(dim=dims, keepdim=keep))
        if kind == "l1":
            return x.abs().sum(dim=dims, keepdim=keep)
        if kind == "sumsquare":
            return (x * x).sum(dim=dims, keepdim=keep)
        return torch.logsumexp(x, dim=dims, keepdim=keep)
    return run


def _arg(kind: str) -> Callable[[Args], Any]:
    def run(a: Args) -> Any:
        x = a.t(0)
        axis = a.get("axis", 0)
        if a.get("select_last_index", 0):
            x = x.flip(axis)
        out = x.argmax(dim=axis, keepdim=bool(a.get("keepdims", 1))) if kind == "max" else \
            x.argmin(dim=axis, keepdim=bool(a.get("keepdims", 1)))
        if a.get("select_last_index", 0):
            out = x.shape[axis] - 1 - out
        return out
    return run


def _resize(a: Args) -> Any:
    F = torch_nn_functional()
    x = a.t(0)
    rank = x.ndim
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ctm = a.get("coordinate_transformation_mode", b"half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    if a.node.op_type == "Upsample":
        scales = a.static(1) if a.has(1) else np.array(a.get("scales"), np.float32)
        sizes = None
        ctm = "asymmetric"
    else:
        scale_at, size_at = (2, 3) if a.opset >= 11 else (1, 99)
        scales = a.static(scale_at) if a.has(scale_at) and a.static(scale_at).size else None  # type: ignore[union-attr]
        sizes = a.static(size_at) if a.has(size_at) and a.static(size_at).size else None  # type: ignore[union-attr]
    if sizes is not None:
        out = [int(s) for s in sizes]
    else:
        assert scales is not None
        out = [int(np.floor(d * float(s))) for d, s in zip(x.shape, scales, strict=True)]
    if a.get("antialias", 0) or a.get("axes") is not None or a.get("keep_aspect_ratio_policy", b"stretch") not in (
            b"stretch", "stretch"):
        raise UnsupportedModelError("Resize with antialias, axes or keep_aspect_ratio_policy is not supported on the "
                                    "ONNX-to-PyTorch route")
    if mode == "nearest":
        nearest = a.get("nearest_mode", b"round_prefer_floor")
        nearest = nearest.decode() if isinstance(nearest, bytes) else nearest
        picks = [_nearest_indices(x.shape[axis], out[axis], float(scales[axis]) if sizes is None  # type: ignore[index]
                                  else out[axis] / x.shape[axis], ctm, nearest) for axis in range(rank)]
        if rank >= 3 and out[:2] == list(x.shape[:2]):  # the resize op converters map to, where its indices agree
            for torch_mode, offset in (("nearest", 0.0), ("nearest-exact", 0.5)):
                if all(p == [min(int(np.floor((d + offset) * x.shape[i] / out[i])), x.shape[i] - 1) for d in range(out[i])]
                       for i, p in enumerate(picks) if i >= 2):
                    return F.interpolate(x, size=out[2:], mode=torch_mode)
        for axis, p in enumerate(picks):
            if p != list(range(x.shape[axis])):
                x = x.index_select(axis, torch_module().tensor(p, dtype=torch_module().int64))
        return x
    if out[:2] != list(x.shape[:2]):
        raise UnsupportedModelError("Resize of the batch or channel axis is not supported on the ONNX-to-PyTorch route")
    size = out[2:]
    if ctm == "pytorch_half_pixel" and all(s > 1 for s in size):
        ctm = "half_pixel"
    if mode == "linear" and rank in (3, 4, 5) and ctm in ("half_pixel", "align_corners"):
        torch_mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[rank]
        return F.interpolate(x, size=size, mode=torch_mode, align_corners=ctm == "align_corners")
    if mode == "cubic" and rank == 4 and ctm in ("half_pixel", "align_corners") and a.get("cubic_coeff_a", -0.75) == -0.75:
        return F.interpolate(x, size=size, mode="bicubic", align_corners=ctm == "align_corners")
    raise UnsupportedModelError(f"Resize with mode {mode!r} and coordinate transformation {ctm!r} is not supported on "
                                "the ONNX-to-PyTorch route")


def _nearest_indices(size: int, out: int, scale: float, ctm: str, mode: str) -> list[int]:
    """The source index of each output position of a nearest-neighbour Resize, as the ONNX spec computes it."""
    picks = []
    for dst in range(out):
        if ctm == "half_pixel" or ctm == "pytorch_half_pixel" and out > 1:
            x = (dst + 0.5) / scale - 0.5
        elif ctm == "pytorch_half_pixel":
            x = 0.0
        elif ctm == "align_corners":
            x = dst * (size - 1) / (out - 1) if out > 1 else 0.0
        elif ctm == "asymmetric":
            x = dst / scale
        elif ctm == "tf_half_pixel_for_nn":
            x = (dst + 0.5) / scale
        else:
            raise UnsupportedModelError(f"Resize with coordinate transformation {ctm!r} is not supported on the "
                                        "ONNX-to-PyTorch route")
        if mode == "round_prefer_floor":
            i = int(np.ceil(x - 0.5))
        elif mode == "round_prefer_ceil":
            i = int(np.floor(x + 0.5))
        elif mode == "floor":
            i = int(np.floor(x))
        else:
            i = int(np.ceil(x))
        picks.append(min(max(i, 0), size - 1))
    return picks


def _pad(a: Args) -> Any:
    F = torch_nn_functional()
    x = a.t(0)
    pads = a.list_or_input("pads", 1) if a.opset >= 11 else list(a.get("pads"))
    assert pads is not None
    axes = a.list_or_input("axes", 3) or list(range(x.ndim))
    begin, end = [0] * x.ndim, [0] * x.ndim
    for i, axis in enumerate(axes):
        begin[axis % x.ndim], end[axis % x.ndim] = pads[i], pads[i + len(axes)]
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    value = float(a.static(2).ravel()[0]) if a.has(2) else float(a.get("value", 0.0))  # type: ignore[union-attr]
    first = next((i for i in range(x.ndim) if begin[i] or end[i]), x.ndim)
    torch_pads = _torch_pad(begin[first:], end[first:])
    if mode == "constant":
        return F.pad(x, torch_pads, value=value)
    # reflect, edge and wrap as gathers of the padding's static indices, concatenated around x, per axis: any
    # rank (F.pad's modes take the last 1-3 axes of a batched tensor, and converters lower them through layout
    # changes that fail on other ranks); only the pads are gathered, so no index constant is as long as the axis
    torch = torch_module()
    for axis in range(x.ndim):
        b, e, size = begin[axis], end[axis], x.shape[axis]
        if not b and not e:
            continue
        if mode == "reflect":
            before, after = [abs(i) for i in range(-b, 0)], [size - 2 - i for i in range(e)]
        elif mode == "edge":
            before, after = [0] * b, [size - 1] * e
        else:
            before, after = [i % size for i in range(-b, 0)], [i % size for i in range(size, size + e)]
        pads = [x.index_select(axis, torch.tensor(picks, dtype=torch.int64)) if picks else None
                for picks in (before, after)]
        x = torch.cat([p for p in (pads[0], x, pads[1]) if p is not None], dim=axis)
    return x


def _depth_to_space(a: Args) -> Any:
    x = a.t(0)
    n, c, h, w = x.shape
    b = a.get("blocksize")
    mode = a.get("mode", b"DCR")
    if mode in (b"CRD", "CRD"):
        return x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // (b * b), h * b, w * b)
    return x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c // (b * b), h * b, w * b)


def _space_to_depth(a: Args) -> Any:
    x = a.t(0)
    n, c, h, w = x.shape
    b = a.get("blocksize")
    blocks = x.reshape(n, c, h // b, b, w // b, b)
    if a.get("mode", b"DCR") in (b"CRD", "CRD"):
        return blocks.permute(0, 1, 3, 5, 2, 4).reshape(n, c * b * b, h // b, w // b)
    return blocks.permute(0, 3, 5, 1, 2, 4).reshape(n, c * b * b, h // b, w // b)


def _scale_and_zero(a: Args, x: Any) -> tuple[Any, Any]:
    """(De)QuantizeLinear's scale and zero point, shaped to broadcast along ``axis`` when per channel."""
    scale, zero = a.t(1), a.t(2)
    axis = a.get("axis", 1) % max(x.ndim, 1)
    if scale.ndim == 1 and x.ndim > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = zero.reshape(shape) if zero is not None else None
    return scale, zero


def _dequantize(a: Args) -> Any:
    x = a.t(0)
    scale, zero = _scale_and_zero(a, x)
    out = x.float() if zero is None else x.float() - zero.float()
    return out * scale


def _quantize(a: Args) -> Any:
    torch = torch_module()
    x = a.t(0)
    scale, zero = _scale_and_zero(a, x)
    signed = zero is not None and zero.dtype == torch.int8
    low, high = (-128, 127) if signed else (0, 255)
    q = torch.round(x / scale) + (zero.float() if zero is not None else 0.0)
    return q.clamp(low, high).to(torch.int8 if signed else torch.uint8)


NN_OPS: dict[str, Callable[[Args], Any]] = {
    "Conv": _conv, "ConvTranspose": _conv_transpose,
    "MaxPool": lambda a: _pool(a, "max"), "AveragePool": lambda a: _pool(a, "avg"),
    "GlobalAveragePool": _global_pool("avg"), "GlobalMaxPool": _global_pool("max"),
    "BatchNormalization": _batch_norm, "InstanceNormalization": _instance_norm, "LayerNormalization": _layer_norm,
    "Softmax": _softmax(False), "LogSoftmax": _softmax(True),
    "ReduceSum": _reduce("sum"), "ReduceMean": _reduce("mean"), "ReduceMax": _reduce("max"), "ReduceMin": _reduce("min"),
    "ReduceProd": _reduce("prod"), "ReduceL2": _reduce("l2"), "ReduceL1": _reduce("l1"),
    "ReduceSumSquare": _reduce("sumsquare"), "ReduceLogSumExp": _reduce("logsumexp"),
    "ArgMax": _arg("max"), "ArgMin": _arg("min"),
    "Resize": _resize, "Upsample": _resize, "Pad": _pad,
    "DepthToSpace": _depth_to_space, "SpaceToDepth": _space_to_depth,
    "DequantizeLinear": _dequantize, "QuantizeLinear": _quantize,
}
