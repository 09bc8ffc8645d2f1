"""PyTorch sources: a ``torch.nn.Module`` with example inputs, or a saved ``torch.export`` program (.pt2)."""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._deps import require
from edgekit._files import hash_path
from edgekit.bundle import SourceInfo, TensorSpec
from edgekit.converters.passes import Value
from edgekit.converters.registry import Kind
from edgekit.converters.sources import ReferenceFn, Source, flatten_outputs, output_names
from edgekit.errors import InvalidModelError, UnsupportedModelError

log = logging.getLogger(__name__)


def _torch_dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _torch_reference(call: Callable[..., Any], names: list[str], out_names: list[str]) -> ReferenceFn:
    import torch

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            result = call(*[torch.from_numpy(np.require(feeds[n], requirements="C")) for n in names])
        return {n: t.detach().cpu().numpy() for n, t in zip(out_names, flatten_outputs(result), strict=True)}

    return run


def _torch_specs(names: list[str], tensors: list[Any], dynamic_batch: bool) -> tuple[TensorSpec, ...]:
    specs = []
    for name, t in zip(names, tensors, strict=True):
        shape: list[int | str | None] = [int(d) for d in t.shape]
        if dynamic_batch and shape:
            shape[0] = "batch"
        specs.append(TensorSpec(name=name, shape=tuple(shape), dtype=_torch_dtype_name(t.dtype)))
    return tuple(specs)


def torch_module_source(module: Any, example_inputs: tuple[Any, ...]) -> Source:
    torch = require("torch", purpose="convert PyTorch models")
    module.eval()
    params = list(inspect.signature(module.forward).parameters)
    names = params[: len(example_inputs)] if len(params) >= len(example_inputs) else [
        f"input_{i}" for i in range(len(example_inputs))
    ]
    from edgekit.converters.ranges import unit_range_autograd

    try:  # the one pass, with autograd on: its graph says which outputs are probabilities by construction
        with torch.enable_grad():
            result = module(*example_inputs)
        bounded = [unit_range_autograd(t) for t in flatten_outputs(result)]
    except Exception:  # a module that cannot run with autograd (inference-mode tensors...): none known
        with torch.no_grad():
            result = module(*example_inputs)
        bounded = []
    out_names = output_names(result)
    digest = hashlib.sha256()
    size = 0
    for key, tensor in module.state_dict().items():
        data = tensor.detach().cpu().contiguous().numpy().tobytes()
        digest.update(key.encode() + b"\0" + data)
        size += len(data)
    info = SourceInfo(format="torch.nn.Module", file=f"{type(module).__module__}.{type(module).__qualname__}",
                      sha256=digest.hexdigest(), size_bytes=size)
    return Source(
        Kind.TORCH_MODULE,
        Value(Kind.TORCH_MODULE, obj=module),
        info,
        _torch_specs(names, list(example_inputs), dynamic_batch=True),
        tuple(replace(o, extra={**o.extra, "range": [0, 1]}) if i < len(bounded) and bounded[i] else o
              for i, o in enumerate(_torch_specs(out_names, flatten_outputs(result), dynamic_batch=True))),
        _torch_reference(module, names, out_names),
        example_inputs,
    )


def torch_program_source(path: Path) -> Source:
    torch = require("torch", purpose="read torch.export programs (.pt2)")
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch raises many types for a bad archive
        raise InvalidModelError(
            f"{path} is not a torch.export program that torch can load ({type(exc).__name__}: {exc}); "
            "save one with torch.export.save(torch.export.export(model, args), 'model.pt2')"
        ) from exc
    args, kwargs = program.example_inputs or ((), {})
    if kwargs or not args:
        raise UnsupportedModelError(f"{path} must carry positional example inputs (export it with args, not kwargs)")
    names = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    specs = []
    for name, arg in zip(names, args, strict=True):
        fake = placeholders[name].meta.get("val", arg)
        shape = tuple(int(d) if isinstance(d, int) else str(d) for d in fake.shape)
        specs.append(TensorSpec(name=name, shape=shape, dtype=_torch_dtype_name(arg.dtype)))
    module = program.module()
    with torch.no_grad():
        result = module(*args)
    out_names = output_names(result)
    dynamic = any(isinstance(d, str) for s in specs for d in s.shape[:1])
    from edgekit.converters.ranges import unit_range_program_outputs

    bounded = unit_range_program_outputs(program)  # probabilities by construction (parity judges them on [0, 1])
    outputs = tuple(replace(o, extra={**o.extra, "range": [0, 1]}) if i < len(bounded) and bounded[i] else o
                    for i, o in enumerate(_torch_specs(out_names, flatten_outputs(result), dynamic_batch=dynamic)))
    digest, size = hash_path(path)
    info = SourceInfo(format="torch.export", file=path.name, sha256=digest, size_bytes=size)
    return Source(
        Kind.TORCH_EXPORT,
        Value(Kind.TORCH_EXPORT, path=path, obj=program),
        info,
        tuple(specs),
        outputs,
        _torch_reference(module, names, out_names),
        tuple(args),
    )
