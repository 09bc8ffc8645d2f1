"""MIL's compressed-weight ops in numpy (the iOS16 and iOS18 forms edgekit's compression emits)."""

from __future__ import annotations

import numpy as np

from edgekit.converters.mil.table import Getter, Op, not_verifiable, register

# ---------------------------------------------------------------- compressed weights (iOS16 forms)

@register("constexpr_affine_dequantize")
def _affine_dequantize(op: Op, get: Getter) -> list[np.ndarray]:
    data = get("quantized_data").astype(np.float32)
    axis = int(get("axis")) % data.ndim
    shape = [1] * data.ndim
    scale, zero = np.asarray(get("scale"), np.float32), np.asarray(get("zero_point"), np.float32)
    if scale.ndim:
        shape[axis] = -1
    return [(data - zero.reshape(shape if zero.ndim else [])) * scale.reshape(shape if scale.ndim else [])]


def unpack_bits(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """Little-endian bit unpacking of ``count`` unsigned ``nbits``-bit values (the MIL weight packing)."""
    bits = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")[: count * nbits]
    bits = bits.reshape(count, nbits).astype(np.uint32)
    return np.asarray((bits << np.arange(nbits, dtype=np.uint32)).sum(axis=1))


def _blockwise(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Repeat per-block ``values`` (one entry per block along each axis) to the full ``shape``."""
    values = np.asarray(values)
    for axis, (full, blocks) in enumerate(zip(shape, values.shape, strict=True)):
        if blocks != full:
            values = np.repeat(values, full // blocks, axis=axis)
    return values


@register("constexpr_lut_to_dense")
def _lut_to_dense(op: Op, get: Getter) -> list[np.ndarray]:
    lut = np.asarray(get("lut"))
    shape = get("shape")
    if shape is not None:  # iOS16: one palette, indices bit-packed, the shape given
        dims = [int(s) for s in shape]
        count = int(np.prod(dims))
        nbits = int(np.log2(lut.shape[-1]))
        return [lut[unpack_bits(get("indices"), nbits, count)].reshape(dims)]
    # iOS18: indices as a tensor of the output's shape; lut [*blocks, palettes, vector size], one palette per block
    indices = np.asarray(get("indices")).astype(np.int64)
    if lut.shape[-1] != 1:
        raise not_verifiable("op constexpr_lut_to_dense with vector palettes")
    blocks = lut.shape[:-2]
    grids = np.meshgrid(*[np.arange(d) // (d // b) for d, b in zip(indices.shape, blocks, strict=True)],
                        indexing="ij")
    return [lut[(*grids, indices, 0)]]


@register("constexpr_blockwise_shift_scale")
def _blockwise_shift_scale(op: Op, get: Getter) -> list[np.ndarray]:
    """iOS18 quantization: ``scale * (data - offset)``, scale and offset given per block."""
    data = np.asarray(get("data")).astype(np.float32)
    scale = _blockwise(np.asarray(get("scale"), np.float32), data.shape)
    offset = get("offset")
    if offset is not None:
        data = data - _blockwise(np.asarray(offset, np.float32), data.shape)
    return [data * scale]


@register("constexpr_sparse_to_dense")
def _sparse_to_dense(op: Op, get: Getter) -> list[np.ndarray]:
    nonzero, mask = np.asarray(get("nonzero_data")), np.asarray(get("mask"))
    shape = get("shape")
    if shape is not None:  # iOS16: the mask bit-packed
        dims = [int(s) for s in shape]
        flat = np.unpackbits(mask.astype(np.uint8), bitorder="little")[: int(np.prod(dims))].astype(bool)
    else:  # iOS18: the mask as a tensor of the output's shape
        dims, flat = list(mask.shape), mask.astype(bool).ravel()
    dense = np.zeros(int(np.prod(dims)), dtype=nonzero.dtype)
    dense[flat] = nonzero
    return [dense.reshape(dims)]
