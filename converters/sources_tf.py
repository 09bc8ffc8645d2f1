"""TensorFlow sources: a Keras model (object, .keras or .h5) or a SavedModel directory."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._deps import require
from edgekit._files import hash_path
from edgekit.bundle import SourceInfo, TensorSpec
from edgekit.converters.passes import Value
from edgekit.converters.registry import Kind
from edgekit.converters.sources import Source, flatten_outputs
from edgekit.errors import InvalidModelError, UnsupportedModelError

log = logging.getLogger(__name__)


def keras_source(path: Path | None, model: Any = None) -> Source:
    keras = require("keras", purpose="convert Keras models")
    if path is not None:
        try:
            model = keras.saving.load_model(str(path), compile=False)
        except Exception as exc:  # keras raises ValueError, OSError, zipfile errors...
            raise InvalidModelError(
                f"{path} is not a Keras model that keras {keras.__version__} can load "
                f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
                "save it with model.save('model.keras')"
            ) from exc
    if not getattr(model, "inputs", None):
        raise UnsupportedModelError("the Keras model has no defined inputs; build it (call it once) or give it an Input")
    inputs = tuple(
        TensorSpec(name=t.name, shape=tuple(d if d is not None else "batch" if i == 0 else None
                                            for i, d in enumerate(t.shape)), dtype=str(t.dtype))
        for t in model.inputs
    )
    names = [s.name for s in inputs]
    out_names = list(getattr(model, "output_names", None) or [])
    if len(out_names) != len(model.outputs):
        out_names = ["output"] if len(model.outputs) == 1 else [f"output_{i}" for i in range(len(model.outputs))]
    outputs = tuple(
        TensorSpec(name=n, shape=tuple(d if d is not None else "batch" if i == 0 else None
                                       for i, d in enumerate(t.shape)), dtype=str(t.dtype))
        for n, t in zip(out_names, model.outputs, strict=True)
    )
    from edgekit.converters.ranges import unit_range_keras_outputs

    bounded = unit_range_keras_outputs(model)  # a sigmoid or softmax head: a probability (judged on [0, 1])
    outputs = tuple(replace(o, extra={**o.extra, "range": [0, 1]}) if b else o for o, b in zip(outputs, bounded, strict=True))

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [feeds[n] for n in names]
        result = model(args[0] if len(args) == 1 else args, training=False)
        values = flatten_outputs(result)
        return {n: np.asarray(v) for n, v in zip(out_names, values, strict=True)}

    if path is not None:
        digest_file, size = hash_path(path)
        info = SourceInfo(format="keras", file=path.name, sha256=digest_file, size_bytes=size)
    else:
        digest = hashlib.sha256()
        size = 0
        for weight in model.weights:
            data = np.asarray(weight.numpy()).tobytes()
            digest.update(weight.path.encode() + b"\0" + data)
            size += len(data)
        info = SourceInfo(format="keras.Model", file=f"{type(model).__module__}.{type(model).__qualname__}",
                          sha256=digest.hexdigest(), size_bytes=size)
    return Source(Kind.KERAS, Value(Kind.KERAS, path=path, obj=model), info, inputs, outputs, run)


def saved_model_source(path: Path) -> Source:
    tf = require("tensorflow", purpose="read TensorFlow SavedModels")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow raises many types for a bad directory
        raise InvalidModelError(f"{path} is not a SavedModel TensorFlow can load ({type(exc).__name__}: "
                                f"{str(exc).strip()[:300]})") from exc
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if not signatures:
        raise UnsupportedModelError(f"{path} has no serving signature; export it with model.export(dir) (Keras) or "
                                    "tf.saved_model.save(obj, dir, signatures=...)")
    function = signatures.get("serving_default") or next(iter(signatures.values()))
    args, kwargs = function.structured_input_signature
    if args or not kwargs:
        raise UnsupportedModelError(f"{path}: edgekit needs a signature with named inputs")

    def spec(name: str, t: Any) -> TensorSpec:
        dims = tuple(int(d) if d is not None else "batch" if i == 0 else None for i, d in enumerate(t.shape))
        return TensorSpec(name=name, shape=dims, dtype=t.dtype.name)

    inputs = tuple(spec(n, kwargs[n]) for n in sorted(kwargs))
    outputs = tuple(spec(n, t) for n, t in sorted(function.structured_outputs.items()))

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = function(**{s.name: tf.constant(feeds[s.name]) for s in inputs})
        return {s.name: np.asarray(result[s.name]) for s in outputs}

    digest, size = hash_path(path)
    info = SourceInfo(format="tf.savedmodel", file=path.name, sha256=digest, size_bytes=size)
    return Source(Kind.TF_SAVED_MODEL, Value(Kind.TF_SAVED_MODEL, path=path, obj=(loaded, function)), info, inputs,
                  outputs, run)
