"""A numpy reference interpreter for Core ML ML Programs (MIL), so Core ML artifacts are checked on Linux.

coremltools converts, compresses and saves ``.mlpackage`` files on any OS but predicts only on
macOS. This module reads a saved package back (its spec and weight blobs, through coremltools'
MIL loader) and evaluates the program op by op in numpy, including the compressed-weight ops that
edgekit's compression emits. Each op's result is rounded to the dtype the program declares for it
(fp16 programs store every intermediate as float16), so fp16 rounding is reproduced; accumulation
runs in float32. An op this interpreter does not know is reported by name before anything runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle import TensorSpec
from edgekit.errors import BundleError, NotVerifiableError
from edgekit.runtimes.base import Attempt, TimedSession

Op = Any
Env = dict[str, np.ndarray]
Getter = Callable[..., Any]  # get(input name, default=None): the input's value
_DTYPES = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int8": np.int8, "uint8": np.uint8,
           "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32, "int64": np.int64,
           "bool": np.bool_}
OPS: dict[str, Callable[[Op, Getter], list[np.ndarray]]] = {}


def _op(*names: str) -> Callable[[Callable[..., list[np.ndarray]]], Callable[..., list[np.ndarray]]]:
    def register(fn: Callable[..., list[np.ndarray]]) -> Callable[..., list[np.ndarray]]:
        for name in names:
            OPS[name] = fn
        return fn
    return register


def _dtype_of(var: Any) -> Any:
    from coremltools.converters.mil.mil import types

    return _DTYPES.get(types.builtin_to_string(var.dtype), np.float32)


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


def _f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _unary(f: Callable[[np.ndarray], np.ndarray]) -> Callable[[Op, Getter], list[np.ndarray]]:
    return lambda op, get: [f(_f32(get("x")))]


def _binary(f: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[Op, Getter], list[np.ndarray]]:
    return lambda op, get: [f(_f32(get("x")), _f32(get("y")))]


for _name, _unary_fn in _UNARY.items():
    OPS[_name] = _unary(_unary_fn)
for _name, _binary_fn in _BINARY.items():
    OPS[_name] = _binary(_binary_fn)


@_op("clip")
def _clip(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.clip(_f32(get("x")), get("alpha"), get("beta"))]


@_op("leaky_relu")
def _leaky_relu(op: Op, get: Getter) -> list[np.ndarray]:
    x = _f32(get("x"))
    return [np.where(x >= 0, x, x * get("alpha"))]


@_op("prelu")
def _prelu(op: Op, get: Getter) -> list[np.ndarray]:
    x, alpha = _f32(get("x")), _f32(get("alpha"))
    shape = [1, alpha.shape[0]] + [1] * (x.ndim - 2)  # one slope per channel (axis 1)
    return [np.where(x >= 0, x, x * alpha.reshape(shape))]


@_op("softmax")
def _softmax(op: Op, get: Getter) -> list[np.ndarray]:
    x, axis = _f32(get("x")), int(get("axis"))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return [e / e.sum(axis=axis, keepdims=True)]


@_op("cast")
def _cast(op: Op, get: Getter) -> list[np.ndarray]:
    return [get("x").astype(_DTYPES[str(get("dtype"))])]


# ---------------------------------------------------------------- linear algebra

@_op("linear")
def _linear(op: Op, get: Getter) -> list[np.ndarray]:
    x, w = _f32(get("x")), _f32(get("weight"))
    out = x @ w.T
    bias = get("bias", None)
    return [out + _f32(bias) if bias is not None else out]


@_op("matmul")
def _matmul(op: Op, get: Getter) -> list[np.ndarray]:
    x, y = _f32(get("x")), _f32(get("y"))
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


@_op("conv")
def _conv(op: Op, get: Getter) -> list[np.ndarray]:
    x, w = _f32(get("x")), _f32(get("weight"))
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
        out = out + _f32(bias).reshape(1, -1, *([1] * n_spatial))
    return [out]


def _pool(op: Op, get: Getter, reduce: str) -> np.ndarray:
    x = _f32(get("x"))
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


@_op("max_pool")
def _max_pool(op: Op, get: Getter) -> list[np.ndarray]:
    return [_pool(op, get, "max")]


@_op("avg_pool")
def _avg_pool(op: Op, get: Getter) -> list[np.ndarray]:
    return [_pool(op, get, "avg")]


@_op("batch_norm")
def _batch_norm(op: Op, get: Getter) -> list[np.ndarray]:
    x = _f32(get("x"))
    shape = [1, -1] + [1] * (x.ndim - 2)
    mean, var = _f32(get("mean")).reshape(shape), _f32(get("variance")).reshape(shape)
    gamma, beta = get("gamma", None), get("beta", None)
    out = (x - mean) / np.sqrt(var + float(get("epsilon", 1e-5)))
    if gamma is not None:
        out = out * _f32(gamma).reshape(shape)
    if beta is not None:
        out = out + _f32(beta).reshape(shape)
    return [out]


# ---------------------------------------------------------------- shapes and reductions

@_op("reshape")
def _reshape(op: Op, get: Getter) -> list[np.ndarray]:
    x, shape = get("x"), [int(s) for s in get("shape")]
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


@_op("transpose")
def _transpose(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.transpose(get("x"), [int(p) for p in get("perm")])]


@_op("squeeze")
def _squeeze(op: Op, get: Getter) -> list[np.ndarray]:
    axes = get("axes", None)
    return [np.squeeze(get("x"), axis=tuple(int(a) for a in axes) if axes is not None else None)]


@_op("expand_dims")
def _expand_dims(op: Op, get: Getter) -> list[np.ndarray]:
    x = get("x")
    for axis in sorted(int(a) for a in get("axes")):
        x = np.expand_dims(x, axis)
    return [x]


@_op("concat")
def _concat(op: Op, get: Getter) -> list[np.ndarray]:
    values = [np.atleast_1d(_f32(np.asarray(v))) for v in get("values")]  # scalars (gathered dims) join as [1]
    return [np.concatenate(values, axis=int(get("axis")))]


@_op("pad")
def _pad(op: Op, get: Getter) -> list[np.ndarray]:
    x, pad = _f32(get("x")), [int(p) for p in get("pad")]
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
        return [fn(_f32(get("x")), axis=axis, keepdims=bool(get("keep_dims", False)))]
    return run


_REDUCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min, "reduce_prod": np.prod}
for _name, _reduce_fn in _REDUCTIONS.items():
    OPS[_name] = _reduce(_reduce_fn)


@_op("slice_by_index")
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


@_op("shape")
def _shape_op(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.asarray(np.shape(get("x")), np.int32)]


@_op("gather")
def _gather(op: Op, get: Getter) -> list[np.ndarray]:
    x, indices = get("x"), np.asarray(get("indices")).astype(np.int64)
    axis = int(get("axis", 0)) % np.ndim(x)
    if int(get("batch_dims", 0)):
        raise NotVerifiableError("unverified: op gather with batch_dims (not implemented by edgekit's MIL reference "
                                 "interpreter)")
    return [np.take(x, np.where(indices < 0, indices + np.shape(x)[axis], indices), axis=axis)]


@_op("select")
def _select(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.where(get("cond"), _f32(get("a")), _f32(get("b")))]


@_op("slice_by_size")
def _slice_by_size(op: Op, get: Getter) -> list[np.ndarray]:
    x, begin, size = get("x"), [int(b) for b in get("begin")], [int(n) for n in get("size")]
    return [x[tuple(slice(b, None if n == -1 else b + n) for b, n in zip(begin, size, strict=True))]]


@_op("tile")
def _tile(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.tile(get("x"), [int(r) for r in get("reps")])]


@_op("logical_not")
def _logical_not(op: Op, get: Getter) -> list[np.ndarray]:
    return [np.logical_not(get("x"))]


@_op("logical_and", "logical_or", "logical_xor")
def _logical(op: Op, get: Getter) -> list[np.ndarray]:
    fn = {"logical_and": np.logical_and, "logical_or": np.logical_or, "logical_xor": np.logical_xor}[op.op_type]
    return [fn(get("x"), get("y"))]


# ---------------------------------------------------------------- compressed weights (iOS16 forms)

@_op("constexpr_affine_dequantize")
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


@_op("constexpr_lut_to_dense")
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
        raise NotVerifiableError("unverified: op constexpr_lut_to_dense with vector palettes (not implemented by "
                                 "edgekit's MIL reference interpreter)")
    blocks = lut.shape[:-2]
    grids = np.meshgrid(*[np.arange(d) // (d // b) for d, b in zip(indices.shape, blocks, strict=True)],
                        indexing="ij")
    return [lut[(*grids, indices, 0)]]


@_op("constexpr_blockwise_shift_scale")
def _blockwise_shift_scale(op: Op, get: Getter) -> list[np.ndarray]:
    """iOS18 quantization: ``scale * (data - offset)``, scale and offset given per block."""
    data = np.asarray(get("data")).astype(np.float32)
    scale = _blockwise(np.asarray(get("scale"), np.float32), data.shape)
    offset = get("offset")
    if offset is not None:
        data = data - _blockwise(np.asarray(offset, np.float32), data.shape)
    return [data * scale]


@_op("constexpr_sparse_to_dense")
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


# ---------------------------------------------------------------- the session

def load_program(path: Path) -> Any:
    """The main function of a saved ``.mlpackage``, as coremltools' MIL objects with weights loaded."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    if not spec.HasField("mlProgram"):
        raise NotVerifiableError(f"{path.name} is a neural-network Core ML model, not an ML Program; the MIL "
                                 "reference interpreter reads ML Programs only")
    weights = path / "Data" / "com.apple.CoreML" / "weights"
    program = load_milproto(spec, spec.specificationVersion, str(weights))
    return program.functions["main"]


def _spec(var: Any) -> TensorSpec:
    from coremltools.converters.mil.mil import types

    shape = tuple(int(d) if isinstance(d, (int, np.integer)) else None for d in var.shape)
    return TensorSpec(name=var.name, shape=shape, dtype=types.builtin_to_string(var.dtype).replace("fp", "float"))


class MilSession(TimedSession):
    """Runs a Core ML ML Program in numpy (the provider is ``mil-reference``)."""

    def __init__(self, function: Any, load_seconds: float):
        super().__init__()
        self._function = function
        self.provider = "mil-reference"
        self.attempts = (Attempt(self.provider, True),)
        self.load_seconds = load_seconds
        self.inputs = tuple(_spec(v) for v in function.inputs.values())
        self.outputs = tuple(_spec(v) for v in function.outputs)
        self.op_types = sorted({op.op_type for op in function.operations})

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        env: Env = {}
        for name, var in self._function.inputs.items():
            env[name] = np.asarray(feeds[name]).astype(_dtype_of(var))
        for op in self._function.operations:
            if op.op_type == "const":
                env[op.outputs[0].name] = np.asarray(op.outputs[0].val)
                continue

            def get(name: str, default: Any = None, op: Any = op) -> Any:
                var = op.inputs.get(name)
                if var is None:
                    return default
                if isinstance(var, (list, tuple)):
                    return [env[v.name] if v.name in env else v.val for v in var]
                if var.name in env:
                    return env[var.name]
                return var.val

            results = OPS[op.op_type](op, get)
            for var, value in zip(op.outputs, results, strict=True):
                env[var.name] = np.asarray(value).astype(_dtype_of(var))
        return {o.name: env[o.name] for o in self._function.outputs}


class MilRuntime:
    """The reference interpreter as a runtime for ``mlpackage`` artifacts (validation on any OS)."""

    name = "mil-reference"
    formats = ("mlpackage",)

    def is_available(self) -> bool:
        """True when coremltools is installed (it reads the package)."""
        try:
            import coremltools  # noqa: F401
        except ImportError:
            return False
        return True

    def open(self, path: Path, *, providers: Any = None, policy: str = "fallback") -> MilSession:
        """Read ``path`` and check that every op is one the interpreter knows.

        Raises:
            NotVerifiableError: The program uses an op the interpreter does not implement (named).
            BundleError: The package cannot be read.
        """
        start = time.perf_counter()
        try:
            function = load_program(Path(path))
        except NotVerifiableError:
            raise
        except Exception as exc:  # coremltools raises many types for a bad package
            raise BundleError(f"coremltools could not read {path}: {type(exc).__name__}: {exc}") from exc
        unknown = sorted({op.op_type for op in function.operations if op.op_type != "const" and op.op_type not in OPS})
        if unknown:
            raise NotVerifiableError(f"unverified: op {', '.join(unknown)} (not implemented by edgekit's MIL reference "
                                     "interpreter)")
        return MilSession(function, time.perf_counter() - start)
