"""MIL control flow and tensor lists in numpy: while_loop and cond (nested blocks), and the list ops
TensorFlow's loops become (TensorArray: make_list, list_write, list_read, list_gather, list_scatter)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.converters.mil.table import CONTROL, Env, Getter, Op, register, run_block, value_of

MAX_ITERATIONS = 1_000_000


def _run(block: Any, env: Env, values: list[Any]) -> list[Any]:
    """Run ``block`` with its inputs bound to ``values``, in a copy of ``env``; its outputs' values."""
    inner = dict(env)
    for var, value in zip(block.inputs, values, strict=True):
        inner[var.name] = value
    run_block(block.operations, inner)
    return [value_of(v, inner) for v in block.outputs]


def _while_loop(op: Op, get: Getter, env: Env) -> list[Any]:
    values = list(get("loop_vars"))
    cond_block, body_block = op.blocks
    for _ in range(MAX_ITERATIONS):
        if not bool(np.asarray(_run(cond_block, env, values)[0])):
            return values
        values = _run(body_block, env, values)
    raise RuntimeError(f"while_loop {op.name} ran {MAX_ITERATIONS} iterations")


def _cond(op: Op, get: Getter, env: Env) -> list[Any]:
    taken = op.blocks[0] if bool(np.asarray(get("pred"))) else op.blocks[1]
    return _run(taken, env, [])


CONTROL["while_loop"] = _while_loop
CONTROL["cond"] = _cond


# Tensor lists are Python lists of arrays in the environment (None: an element not written yet).

@register("make_list")
def _make_list(op: Op, get: Getter) -> list[Any]:
    return [[None] * int(get("init_length", 1))]


@register("list_length")
def _list_length(op: Op, get: Getter) -> list[Any]:
    return [np.int32(len(get("ls")))]


@register("list_write")
def _list_write(op: Op, get: Getter) -> list[Any]:
    items, index = list(get("ls")), int(get("index"))
    if index >= len(items):
        items.extend([None] * (index + 1 - len(items)))
    items[index] = np.asarray(get("value"))
    return [items]


def _item(items: list[Any], index: int) -> np.ndarray:
    value = items[index]
    if value is None:
        known = next((v for v in items if v is not None), None)
        if known is None:
            raise ValueError("read of a list element that was never written")
        return np.zeros_like(known)
    return np.asarray(value)


@register("list_read")
def _list_read(op: Op, get: Getter) -> list[Any]:
    return [_item(list(get("ls")), int(get("index")))]


@register("list_gather")
def _list_gather(op: Op, get: Getter) -> list[Any]:
    items = list(get("ls"))
    return [np.stack([_item(items, int(i)) for i in np.asarray(get("indices")).ravel()])]


@register("list_scatter")
def _list_scatter(op: Op, get: Getter) -> list[Any]:
    items = list(get("ls"))
    value = np.asarray(get("value"))
    for row, index in enumerate(np.asarray(get("indices")).ravel()):
        index = int(index)
        if index >= len(items):
            items.extend([None] * (index + 1 - len(items)))
        items[index] = value[row]
    return [items]


@register("reverse")
def _reverse(op: Op, get: Getter) -> list[Any]:
    x, axes = get("x"), get("axes", None)
    return [np.flip(x, axis=tuple(int(a) for a in axes) if axes is not None else None)]


@register("reverse_sequence")
def _reverse_sequence(op: Op, get: Getter) -> list[Any]:
    x, lengths = np.array(get("x")), np.asarray(get("lengths")).astype(int)
    seq_axis, batch_axis = int(get("seq_axis", 0)), int(get("batch_axis", 0))
    out = x.copy()
    for b, n in enumerate(lengths):
        index = [slice(None)] * x.ndim
        index[batch_axis] = b  # type: ignore[call-overload]
        part = x[tuple(index)]
        axis = seq_axis - (1 if seq_axis > batch_axis else 0)
        head = np.flip(np.take(part, np.arange(n), axis=axis), axis=axis)
        target = [slice(None)] * part.ndim
        target[axis] = slice(0, n)
        sub = out[tuple(index)]
        sub[tuple(target)] = head
    return [out]
