"""Run an artifact in the source model's terms: the names, layout and dtype the manifest records.

Converters may rename tensors, turn NCHW inputs into NHWC (onnx2tf) or give a model int8 inputs and
outputs (``--int8-io``). The artifact's I/O list in ``bundle.json`` records each change
(``source_name``, ``source_transpose``, ``quantization``); :func:`adapt` applies them around a raw
session so swapping artifacts never changes the caller's code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from edgekit.bundle import TensorSpec
from edgekit.errors import InvalidInputError
from edgekit.runtimes.base import TimedSession

_INT_DTYPES = ("int8", "uint8", "int16", "uint16", "int32")


def is_quantized(spec: TensorSpec) -> bool:
    """True when the artifact tensor holds integers that stand for real values."""
    return spec.quantization is not None and spec.dtype in _INT_DTYPES


def needs_adapting(spec: TensorSpec) -> bool:
    """True when the artifact tensor differs from its source tensor in name, layout or dtype."""
    return bool(spec.source_name and spec.source_name != spec.name) or bool(spec.source_transpose) or is_quantized(spec)


def source_view(spec: TensorSpec) -> TensorSpec:
    """The tensor as the caller sees it: source name, source layout, real-valued dtype."""
    shape = spec.shape
    if spec.source_transpose:
        inverse = np.argsort(spec.source_transpose)
        shape = tuple(spec.shape[i] for i in inverse)
    dtype = "float32" if is_quantized(spec) else spec.dtype
    return TensorSpec(name=spec.source_name or spec.name, shape=shape, dtype=dtype)


def to_artifact(value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Turn a source-layout, real-valued tensor into what the artifact takes."""
    if spec.source_transpose:
        value = np.transpose(value, spec.source_transpose)
    if is_quantized(spec):
        assert spec.quantization is not None
        scale, zero = float(spec.quantization["scale"]), int(spec.quantization["zero_point"])
        info = np.iinfo(np.dtype(spec.dtype))
        value = np.clip(np.round(value / scale) + zero, info.min, info.max).astype(spec.dtype)
    return np.require(value, requirements="C")  # ascontiguousarray would turn a scalar into shape (1,)


def from_artifact(value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Turn an artifact output back into the source model's layout and real values."""
    if is_quantized(spec):
        assert spec.quantization is not None
        scale, zero = float(spec.quantization["scale"]), int(spec.quantization["zero_point"])
        value = (value.astype(np.float32) - np.float32(zero)) * np.float32(scale)
    if spec.source_transpose:
        value = np.transpose(value, np.argsort(spec.source_transpose))
    return value


class AdaptedSession(TimedSession):
    """A session that takes and returns source-model tensors around an artifact's own session."""

    def __init__(self, raw: TimedSession, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]):
        super().__init__()
        self.raw = raw
        self.artifact_inputs = inputs
        self.artifact_outputs = outputs
        self.inputs = tuple(source_view(s) for s in inputs)
        self.outputs = tuple(source_view(s) for s in outputs)
        self.provider = raw.provider
        self.attempts = raw.attempts
        self.load_seconds = raw.load_seconds
        self.notes = raw.notes

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on source-layout feeds keyed by the source model's input names."""
        raw_feeds = {}
        for spec, view in zip(self.artifact_inputs, self.inputs, strict=True):
            if view.name not in feeds:
                names = ", ".join(s.name for s in self.inputs)
                raise InvalidInputError(f"missing input {view.name!r}; the model takes: {names}")
            value = np.asarray(feeds[view.name])
            if value.ndim != len(view.shape) and value.size == 1 and all(d in (1, None) for d in view.shape):
                value = value.reshape((1,) * len(view.shape))  # a scalar for a one-element input (converters add the axis)
            if value.ndim != len(view.shape):
                raise InvalidInputError(
                    f"input {view.name!r} has {value.ndim} dimensions {list(value.shape)}; the model takes "
                    f"{len(view.shape)}: {list(view.shape)} (in the source model's layout)")
            raw_feeds[spec.name] = to_artifact(value, spec)
        result = self.raw._run(raw_feeds)  # timed once, here
        return {view.name: from_artifact(result[spec.name], spec)
                for spec, view in zip(self.artifact_outputs, self.outputs, strict=True)}


def adapt(raw: TimedSession, inputs: tuple[TensorSpec, ...] | None,
          outputs: tuple[TensorSpec, ...] | None) -> TimedSession:
    """Wrap ``raw`` when the recorded artifact I/O differs from the source's; else return it as is."""
    if not inputs or not outputs or not any(needs_adapting(s) for s in (*inputs, *outputs)):
        return raw
    return AdaptedSession(raw, inputs, outputs)


def describe_io(raw: tuple[TensorSpec, ...], mapping: Mapping[str, TensorSpec]) -> tuple[TensorSpec, ...]:
    """The artifact's I/O for the manifest: the raw specs plus what ``mapping`` says of each.

    ``mapping`` holds, by artifact tensor name, a spec whose ``source_name``, ``source_transpose`` and
    ``layout`` are copied; the raw spec (read from the artifact) gives shape, dtype and quantization.
    """
    out = []
    for spec in raw:
        known = mapping.get(spec.name)
        if known is not None:
            spec = dataclasses.replace(spec, source_name=known.source_name if known.source_name != spec.name else None,
                                       source_transpose=known.source_transpose, layout=known.layout or spec.layout)
        out.append(spec)
    return tuple(out)
