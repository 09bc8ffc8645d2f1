"""The choices one conversion is made with: one typed object for the CLI, the Python API and auto-precision.

``edgekit convert``'s flags build a :class:`ConvertOptions` (:meth:`ConvertOptions.from_flags`),
:func:`edgekit.converters.convert` takes one (or the same names as keywords), the passes read it from
their context, a worker process gets it as plain data (:meth:`ConvertOptions.to_dict`), and the
``-auto`` targets read their :class:`Budget` from it. Every value is checked when the object is made,
so a bad choice fails before any work, whichever way it came in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import UserError, did_you_mean

OPTIMIZE = ("balanced", "size")


@dataclass(frozen=True)
class Budget:
    """What a candidate must keep: top-1 accuracy (points, with labels), agreement, or output error."""

    max_accuracy_drop: float | None = None  # points of top-1 accuracy against the source (labels needed)
    min_agreement: float | None = None  # top-1 agreement with the source (class-score outputs)
    max_error: float | None = None  # max relative output error (regression outputs)
    optimize: str = "balanced"  # "size": skip the latency check

    def __post_init__(self) -> None:
        """Refuse budgets outside their range before any work (UserError)."""
        checks = (("--max-accuracy-drop", self.max_accuracy_drop, 0.0, 100.0, "points of top-1 accuracy, 0 to 100"),
                  ("--min-agreement", self.min_agreement, 0.0, 1.0, "a share of samples, 0 to 1"),
                  ("--max-error", self.max_error, 0.0, float("inf"), "a relative error above 0"))
        for flag, value, low, high, meaning in checks:
            if value is not None and not (low <= value <= high and (flag != "--max-error" or value > 0)):
                raise UserError(f"{flag} {value:g} is out of range: it is {meaning}")
        if self.optimize not in OPTIMIZE:
            raise UserError(f"--optimize must be balanced or size, not {self.optimize!r}")

    @property
    def sets_a_floor(self) -> bool:
        """Whether the user named what to keep (accuracy, agreement or error), not only how to optimize."""
        return any(v is not None for v in (self.max_accuracy_drop, self.min_agreement, self.max_error))

    def for_samples(self, has_labels: bool) -> Budget:
        """The budget a selection applies: with labels and no floor set, at most 1 point of top-1 accuracy."""
        if has_labels and not self.sets_a_floor:
            return dataclasses.replace(self, max_accuracy_drop=1.0)
        return self

    def describe(self) -> dict[str, Any]:
        """The budget as recorded in the manifest (only what was set)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert, besides the model, the targets and where the bundle goes.

    Each field has the ``edgekit convert`` flag of the same name (``int8_io`` is ``--int8-io``).
    """

    calibration: Path | None = None  # .npz of input samples (and labels) for calibration and parity
    name: str | None = None  # the bundle's model name (default: the model file's stem or class name)
    version: str = "0.1.0"
    labels_key: str = "y"  # the calibration array holding integer labels
    overwrite: bool = False  # replace the bundle directory if it exists
    accept_parity_failure: bool = False  # keep artifacts that drift beyond tolerance (recorded as accepted)
    keep_partial: bool = False  # return normally when some targets fail
    int8_io: bool = False  # tflite-int8: int8 inputs and outputs instead of float
    allow_flex: bool = False  # TFLite: accept TensorFlow Select (Flex) ops when builtins do not suffice
    min_ios: int = 16  # Core ML: the minimum_deployment_target (iOS 16 and up: ML Programs with fp16 I/O ops)
    via: tuple[str, ...] = ()  # alternative routes to prefer where they reach a target (litert-torch)
    budget: Budget | None = None  # -auto targets: what the chosen precision must keep
    report: bool = True  # write report.html into the bundle
    isolate: bool | None = None  # a worker process per target family (default: for model files)
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # NAME -> sizes of its dims
    output_kinds: Mapping[str, str] = field(default_factory=dict)  # NAME -> embedding|scores|probability|map|exact

    def __post_init__(self) -> None:
        """Normalize the containers and refuse malformed values (UserError)."""
        set_ = object.__setattr__  # frozen: normalize in place once, at construction
        if self.calibration is not None:
            set_(self, "calibration", Path(self.calibration))
        if isinstance(self.via, str):
            set_(self, "via", (self.via,))
        set_(self, "via", tuple(self.via))
        shapes: dict[str, tuple[int, ...]] = {}
        for name, dims in dict(self.input_shapes).items():
            values = tuple(int(d) for d in dims)
            if not name or not values or any(v < 1 for v in values):
                raise UserError(f"--input-shape {name}:{','.join(map(str, values))}: give one positive size per "
                                "dimension, e.g. input_ids:1,128")
            shapes[name] = values
        set_(self, "input_shapes", shapes)
        set_(self, "output_kinds", dict(self.output_kinds))
        if self.budget is not None and not isinstance(self.budget, Budget):
            set_(self, "budget", Budget(**self.budget))
        if not self.version:
            raise UserError("--version must not be empty: give the bundle's version, e.g. 1.0.0")

    @classmethod
    def from_choices(cls, options: ConvertOptions | None = None, **choices: Any) -> ConvertOptions:
        """``options`` (or the defaults) with ``choices`` replacing fields by name.

        Raises:
            TypeError: A choice that is not a field (a misspelt keyword of :func:`convert`).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(choices) - names)
        if unknown:
            raise TypeError(f"convert() got an unexpected keyword argument {unknown[0]!r}"
                            f"{did_you_mean(unknown[0], names)}")
        base = options if options is not None else cls()
        return dataclasses.replace(base, **choices) if choices else base

    @classmethod
    def from_flags(cls, *, input_shape: Sequence[str] = (), output_kind: Sequence[str] = (),
                   max_accuracy_drop: float | None = None, min_agreement: float | None = None,
                   max_error: float | None = None, optimize: str = "balanced", **fields: Any) -> ConvertOptions:
        """The options as ``edgekit convert``'s flags spell them: ``NAME:D0,D1`` shapes, ``NAME=KIND`` kinds,
        and the budget's four flags (a budget only when one of them is set).

        Raises:
            UserError: A flag written the wrong way, or a value out of range.
        """
        budget = None
        if max_accuracy_drop is not None or min_agreement is not None or max_error is not None or optimize != "balanced":
            budget = Budget(max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement, max_error=max_error,
                            optimize=optimize)
        return cls(budget=budget, input_shapes=parse_input_shapes(input_shape),
                   output_kinds=parse_output_kinds(output_kind), **fields)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (what a worker process is handed); :meth:`from_dict` reads it back."""
        data = dataclasses.asdict(self)
        data["calibration"] = str(self.calibration) if self.calibration is not None else None
        data["via"] = list(self.via)
        data["input_shapes"] = {k: list(v) for k, v in self.input_shapes.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConvertOptions:
        return cls(**dict(data))


def parse_input_shapes(specs: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """``--input-shape NAME:D0,D1,...`` flags, by input name.

    Raises:
        UserError: A flag that is not NAME:D0,D1,... with positive sizes.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition(":")
        try:
            values = tuple(int(d) for d in dims.split(","))
        except ValueError:
            values = ()
        if not sep or not name or not values or any(v < 1 for v in values):
            raise UserError(f"--input-shape {spec!r}: write NAME:D0,D1,... with positive sizes, e.g. input_ids:1,128")
        shapes[name] = values
    return shapes


def parse_output_kinds(specs: Sequence[str]) -> dict[str, str]:
    """``--output-kind NAME=KIND`` flags, by output name (the kinds are checked against the model later).

    Raises:
        UserError: A flag that is not NAME=KIND.
    """
    kinds: dict[str, str] = {}
    for spec in specs:
        name, sep, kind = spec.rpartition("=")
        if not sep or not name or not kind:
            raise UserError(f"--output-kind {spec!r}: write NAME=KIND, e.g. sentence_embedding=embedding")
        kinds[name] = kind
    return kinds
