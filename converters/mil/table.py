"""The op table of the MIL reference interpreter and what its ops share (dtypes, argument access)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Op = Any
Env = dict[str, np.ndarray]
Getter = Callable[..., Any]  # get(input name, default=None): the input's value
OpFn = Callable[[Op, Getter], list[np.ndarray]]
DTYPES = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int8": np.int8, "uint8": np.uint8,
          "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32, "int64": np.int64,
          "bool": np.bool_}
OPS: dict[str, OpFn] = {}
# Ops with nested blocks (while_loop, cond) evaluate them with run_block and need the environment
ControlFn = Callable[[Op, Getter, Env], list[Any]]
CONTROL: dict[str, ControlFn] = {}


def register(*names: str) -> Callable[[Callable[..., list[np.ndarray]]], Callable[..., list[np.ndarray]]]:
    """Register an op implementation under the MIL op type names given."""
    def add(fn: Callable[..., list[np.ndarray]]) -> Callable[..., list[np.ndarray]]:
        for name in names:
            OPS[name] = fn
        return fn
    return add


def dtype_of(var: Any) -> Any:
    from coremltools.converters.mil.mil import types

    return DTYPES.get(types.builtin_to_string(var.dtype), np.float32)


def f32(x: np.ndarray) -> np.ndarray:
    """float16 values as float32 (ops compute in float32; results are rounded to the declared dtype)."""
    return x.astype(np.float32) if x.dtype == np.float16 else x


def not_verifiable(what: str) -> Exception:
    from edgekit.errors import NotVerifiableError

    return NotVerifiableError(f"unverified: {what} (not implemented by edgekit's MIL reference interpreter)")


def is_list_var(var: Any) -> bool:
    from coremltools.converters.mil.mil import types

    return bool(types.is_list(var.sym_type))


def value_of(var: Any, env: Env) -> Any:
    """A variable's value: computed (in ``env``) or constant."""
    return env[var.name] if var.name in env else var.val


def _as_half(value: Any) -> Any:
    """A float input rounded to float16 and computed on in float32 (what an op cast to float16 sees)."""
    if isinstance(value, list):
        return [_as_half(v) for v in value]
    if isinstance(value, (np.ndarray, np.floating)) and np.asarray(value).dtype in (np.float32, np.float64):
        return np.asarray(value).astype(np.float16).astype(np.float32)
    return value


def run_block(operations: Any, env: Env, half: frozenset[str] = frozenset(),
              weights: Mapping[str, np.ndarray] | None = None) -> None:
    """Evaluate ``operations`` in order, writing each result into ``env`` (rounded to its declared dtype).

    ``half`` names ops (by their first output) to compute as a float16 program would, although the program
    declares them float32: their float inputs and results are rounded to float16 (mixed-precision search).
    ``weights`` replaces the values of the named constants (the mixed int8 search: dequantized weights).
    """
    for op in operations:
        if op.op_type == "const":
            name = op.outputs[0].name
            env[name] = np.asarray(weights[name] if weights and name in weights else op.outputs[0].val)
            continue
        rounded = bool(half) and bool(op.outputs) and op.outputs[0].name in half

        def get(name: str, default: Any = None, op: Any = op, rounded: bool = rounded) -> Any:
            var = op.inputs.get(name)
            if var is None:
                return default
            if isinstance(var, (list, tuple)):
                values = [value_of(v, env) for v in var]
            else:
                values = value_of(var, env)
            return _as_half(values) if rounded else values

        results = CONTROL[op.op_type](op, get, env) if op.op_type in CONTROL else OPS[op.op_type](op, get)
        for var, value in zip(op.outputs, results, strict=True):
            if is_list_var(var):
                env[var.name] = value
                continue
            array = np.asarray(value)
            if rounded and array.dtype.kind == "f":
                array = array.astype(np.float16)
            env[var.name] = array.astype(dtype_of(var))


def op_types(operations: Any) -> set[str]:
    """Every op type in ``operations`` and the blocks nested in them."""
    found: set[str] = set()
    for op in operations:
        found.add(op.op_type)
        for block in getattr(op, "blocks", ()):
            found |= op_types(block.operations)
    return found
