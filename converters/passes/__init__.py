"""Conversion passes: each consumes one artifact kind and produces another.

The base class owns the invariants (input kind, optional dependencies, wrapping third-party errors
into edgekit's); a pass fills in :meth:`Pass._run`.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgekit._deps import require
from edgekit.bundle import TensorSpec
from edgekit.converters.options import ConvertOptions
from edgekit.converters.registry import PassInfo
from edgekit.errors import ConversionError, EdgekitError, InternalError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Value:
    """An artifact between passes: its kind, and a file or an in-memory object."""

    kind: str
    path: Path | None = None
    obj: Any = None
    notes: dict[str, Any] = field(default_factory=dict)
    # How the artifact's own tensors relate to the source's (by artifact tensor name: source_name,
    # source_transpose, layout); None when they are the source's tensors unchanged.
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None

    @property
    def file(self) -> Path:
        """The artifact's file; only file-backed kinds have one."""
        if self.path is None:
            raise InternalError(f"a {self.kind} value held in memory was used as a file")
        return self.path


def carried_notes(earlier: dict[str, Any], notes: dict[str, Any]) -> dict[str, Any]:
    """A converter's notes with what an earlier pass of the route recorded about the graph (the shapes it fixed,
    its rewrites, its converter) kept: the artifact's ``conversion`` describes the whole route."""
    merged: dict[str, Any] = {k: earlier[k] for k in ("fixed_shapes", "batch") if k in earlier}
    merged.update(notes)
    if earlier.get("rewrites"):
        merged["rewrites"] = [*earlier["rewrites"], *notes.get("rewrites", [])]
    if earlier.get("converter") and notes.get("converter"):
        merged["converter"] = f"{earlier['converter']}, then {notes['converter']}"
    return merged


@dataclass(frozen=True)
class PassContext:
    """What every pass may read: a scratch directory, the model's I/O and the calibration samples."""

    workdir: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    samples: dict[str, np.ndarray]  # the validation/calibration inputs, one batch
    has_calibration: bool
    example_inputs: tuple[Any, ...] | None = None
    options: ConvertOptions = field(default_factory=ConvertOptions)  # --int8-io, --allow-flex, --min-ios, ...
    quantized_source: bool = False  # the source is already int8: its artifacts are held to the int8 tolerance
    reference: dict[str, np.ndarray] | None = None  # the source's outputs on ``samples``

    def scratch(self, name: str) -> Path:
        """A fresh path in the work directory (the file does not exist yet)."""
        path = self.workdir / name
        stem, suffix, i = path.stem, path.suffix, 1
        while path.exists():
            path = self.workdir / f"{stem}-{i}{suffix}"
            i += 1
        return path


class Pass:
    """Base class of all passes. A subclass implements ``_run``; its name, the kinds it consumes and
    produces and the modules it needs come from its entry in ``edgekit.converters.registry.PASSES``
    (declared there once, for the planner and for the pass)."""

    name: ClassVar[str]
    consumes: ClassVar[str]
    produces: ClassVar[str]
    modules: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        from edgekit.converters.registry import PASSES

        impl = f"{cls.__module__}:{cls.__qualname__}"
        entry = next((p for p in PASSES if p.impl == impl), None)
        if entry is not None:
            cls.name, cls.consumes, cls.produces, cls.modules = entry.name, entry.consumes, entry.produces, entry.modules

    def run(self, value: Value, ctx: PassContext) -> Value:
        """Check the input kind and dependencies, run the pass and wrap library errors.

        Raises:
            MissingDependencyError: A module the pass needs is not installed.
            ConversionError: The converter library failed on this model.
        """
        if value.kind != self.consumes:
            raise InternalError(f"pass {self.name} consumes {self.consumes}, was given {value.kind}")
        for module in self.modules:
            require(module, purpose=f"run the {self.name} conversion pass")
        log.info("pass %s: %s -> %s", self.name, self.consumes, self.produces)
        try:
            out = self._run(value, ctx)
        except EdgekitError:
            raise
        except (Exception, SystemExit) as exc:  # converters raise anything (onnx2tf even sys.exit); say which pass failed
            log.debug("pass %s failed", self.name, exc_info=True)  # the converter's traceback, for -v/logging users
            first_line = (str(exc).strip().splitlines() or [""])[0][:500].rstrip(".")
            raise ConversionError(
                f"the {self.name} pass ({self.consumes} -> {self.produces}) failed: "
                f"{type(exc).__name__}: {first_line}. The model may use an operator or construct this "
                f"converter does not support; try another target or simplify the model."
            ) from exc
        if out.kind != self.produces:
            raise InternalError(f"pass {self.name} produced {out.kind}, declared {self.produces}")
        return out

    def _run(self, value: Value, ctx: PassContext) -> Value:
        raise NotImplementedError


def load_pass(info: PassInfo) -> Pass:
    """Import and instantiate the pass a registry entry names.

    Raises:
        MissingDependencyError: One of the pass's modules is not installed.
    """
    for module in info.modules:
        require(module, purpose=f"run the {info.name} conversion pass")
    module_name, _, cls_name = info.impl.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    instance: Pass = cls()
    return instance
