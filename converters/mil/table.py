"""The op table of the MIL reference interpreter and what its ops share (dtypes, argument access)."""

from __future__ import annotations

from collections.abc import Callable
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
