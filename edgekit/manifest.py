"""The manifest, ``bundle.json``: the contract read by the converters, the runtimes, the OTA service and
the browser and Android clients.

Its JSON Schema is ``edgekit/schemas/bundle.schema.json``; it is checked on every read and write.
Manifest types are frozen dataclasses that keep the fields they do not know (``extra``), so a
manifest written by a newer edgekit survives a read-write round trip. The bundle directory that
holds it is :mod:`edgekit.bundle`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from edgekit._schema import load_schema, validate
from edgekit.errors import BundleError

SCHEMA_ID = "edgekit.bundle/1"
MANIFEST_NAME = "bundle.json"
SCHEMA_FILE = "bundle.schema.json"

Dim = int | str | None


class _Record:
    """Shared ``to_dict``/``from_dict`` for the manifest dataclasses.

    ``_children`` names fields holding nested records: a record class, or a one-item list of
    one for a list of records. Fields whose value is None are left out of the JSON.
    """

    _children: ClassVar[dict[str, Any]] = {}
    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = _dump(value)
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}  # type: ignore[arg-type]
        names = set(fields)
        kwargs: dict[str, Any] = {}
        for name in names & data.keys():
            value = _load(cls._children.get(name), data[name])
            if isinstance(value, list) and str(fields[name].type).startswith("tuple"):  # JSON arrays of tuple fields
                value = tuple(value)
            kwargs[name] = value
        extra = {k: v for k, v in data.items() if k not in names}
        factory: Any = cls
        return factory(**kwargs, extra=extra)


def _dump(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


def _load(kind: Any, value: Any) -> Any:
    if kind is None:
        return value
    if isinstance(kind, list):
        return tuple(kind[0].from_dict(v) for v in value)
    return kind.from_dict(value)


@dataclass(frozen=True)
class TensorSpec(_Record):
    """One input or output: name, shape (int, or None / -1 / a symbol for dynamic dims), dtype.

    ``layout`` names the axis order when it matters (``"NCHW"``, ``"NHWC"``); ``quantization``
    holds ``{"scale", "zero_point"}`` for integer I/O of a quantized artifact (real value =
    ``scale * (q - zero_point)``).

    In an artifact's I/O list, ``source_name`` names the source model's tensor this one carries when
    the converter renamed it, and ``source_transpose`` gives the axes such that
    ``artifact_tensor = numpy.transpose(source_tensor, source_transpose)`` (an NCHW source input fed
    to an NHWC artifact has ``[0, 2, 3, 1]``). A runtime applies both, so callers feed and read
    tensors in the source model's layout and dtype whichever artifact runs.

    ``kind`` (outputs of the manifest) is how parity judges the output: ``exact``, ``scores``,
    ``embedding``, ``probability`` or ``map`` (see :data:`edgekit.parity.OUTPUT_KINDS`), inferred or set
    by the user; ``range`` (in ``extra``), where the source graph bounds the output, is that interval.
    """

    name: str
    shape: tuple[Dim, ...]
    dtype: str
    layout: str | None = None
    quantization: dict[str, Any] | None = None
    source_name: str | None = None
    source_transpose: tuple[int, ...] | None = None
    kind: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        spec: TensorSpec = super().from_dict(data)
        perm = tuple(spec.source_transpose) if spec.source_transpose is not None else None
        return dataclasses.replace(spec, shape=tuple(spec.shape), source_transpose=perm)

    @property
    def is_dynamic(self) -> bool:
        """True when any dimension is not a fixed positive size."""
        return any(not isinstance(d, int) or d < 0 for d in self.shape)

    def shown_shape(self) -> str:
        """The shape as people read it: sizes, the dimension names a user or exporter chose (``height``),
        and for names a tool generated (torch.export's ``s52``, tf2onnx's ``unk__1009``, none at all)
        ``batch`` on the first axis, ``seq`` on the second of a token input, ``?`` elsewhere."""
        token = len(self.shape) == 2 and self.dtype.startswith(("int", "uint"))
        return "[" + ", ".join(shown_dim(d, axis, token) for axis, d in enumerate(self.shape)) + "]"


GENERATED_DIM = re.compile(r"^(s\d+|unk__\d+|\d*|\?|-1|None|dim_?\d+|DynamicDimension.*)$")


def shown_dim(dim: Dim, axis: int, token: bool = False) -> str:
    """One dimension for :meth:`TensorSpec.shown_shape`."""
    if isinstance(dim, int) and dim >= 0:
        return str(dim)
    if isinstance(dim, str) and not GENERATED_DIM.match(dim):
        return dim
    return "batch" if axis == 0 else "seq" if axis == 1 and token else "?"


@dataclass(frozen=True)
class SourceInfo(_Record):
    """The model a bundle was converted from."""

    format: str
    file: str
    sha256: str
    size_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CalibrationInfo(_Record):
    """The calibration/validation data a bundle was made with."""

    file: str
    sha256: str
    n_samples: int
    has_labels: bool
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReferenceInfo(_Record):
    """Sample inputs and the source model's outputs on them, kept in the bundle (``reference.npz``).

    A device checks a downloaded artifact with them (``edgekit.runtimes.smoke_test``) before it
    reports a successful install. Arrays are named ``in.<input name>`` and ``out.<output name>``.
    """

    file: str
    sha256: str
    size_bytes: int
    n_samples: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Parity(_Record):
    """How far an artifact's outputs are from the source model's on the same inputs."""

    max_abs_error: float
    mean_abs_error: float
    n_samples: int
    passed: bool
    top1_agreement: float | None = None
    accepted: bool | None = None
    tolerance: dict[str, Any] | None = None
    per_output: tuple[dict[str, Any], ...] | None = None
    runtime: str | None = None  # what computed the artifact's outputs, e.g. "onnxruntime 1.32.0 CPUExecutionProvider"
    host: str | None = None  # where: the CPU features int8 kernels depend on, or the JS engine
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RuntimeCheck(_Record):
    """An artifact run on one more runtime than the one that validated it (``onnxruntime-web`` for onnx-web).

    Either ``parity`` (and the latency measured there) or ``not_checked`` (why it could not run) is set.
    """

    _children: ClassVar[dict[str, Any]] = {"parity": Parity}

    runtime: str
    parity: Parity | None = None
    latency_p50_ms: float | None = None  # batch 1, after warm-up runs
    not_checked: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Accuracy(_Record):
    """Top-1 accuracy of the artifact and of the source model on the labelled samples."""

    top1: float
    source_top1: float
    n_samples: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Artifact(_Record):
    """One converted model file (or directory) in the bundle."""

    _children: ClassVar[dict[str, Any]] = {
        "inputs": [TensorSpec],
        "outputs": [TensorSpec],
        "parity": Parity,
        "accuracy": Accuracy,
        "runtime_checks": [RuntimeCheck],
    }

    target: str
    format: str
    precision: str
    file: str
    size_bytes: int
    sha256: str
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None
    route: tuple[str, ...] | None = None
    parity: Parity | None = None
    accuracy: Accuracy | None = None
    size_ratio: float | None = None
    convert_seconds: float | None = None
    unverified: str | None = None  # why parity could not be measured (then ``parity`` is absent)
    runtime_checks: tuple[RuntimeCheck, ...] | None = None  # the same samples on other runtimes
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure(_Record):
    """A target that could not be produced: the error, its class name and the route that was tried."""

    target: str
    error: str
    kind: str | None = None
    route: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Selection(_Record):
    """How an automatic target (``tflite-auto``...) chose its artifact: the budget, every candidate, why."""

    family: str
    chosen: str | None
    reason: str
    budget: dict[str, Any] = field(default_factory=dict)
    candidates: tuple[dict[str, Any], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Selection:
        record: Selection = super().from_dict(data)
        return dataclasses.replace(record, candidates=tuple(record.candidates))


@dataclass(frozen=True)
class Manifest(_Record):
    """The content of ``bundle.json``."""

    _children: ClassVar[dict[str, Any]] = {
        "source": SourceInfo,
        "inputs": [TensorSpec],
        "outputs": [TensorSpec],
        "calibration": CalibrationInfo,
        "reference": ReferenceInfo,
        "artifacts": [Artifact],
        "failures": [Failure],
        "selections": [Selection],
    }

    name: str
    version: str
    created_by: str
    source: SourceInfo
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    artifacts: tuple[Artifact, ...] = ()
    schema: str = SCHEMA_ID
    created_at: str | None = None
    calibration: CalibrationInfo | None = None
    reference: ReferenceInfo | None = None
    failures: tuple[Failure, ...] | None = None
    selections: tuple[Selection, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialize, after checking the result against the schema.

        Raises:
            BundleError: The manifest does not satisfy the schema.
        """
        data = self.to_dict()
        check_manifest_dict(data, where="the manifest being written")
        return json.dumps(data, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, where: str = "bundle.json") -> Manifest:
        """Parse and schema-check ``bundle.json`` text.

        Raises:
            BundleError: The text is not JSON or does not satisfy the schema.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{where} is not valid JSON ({exc}); re-create the bundle with edgekit convert") from exc
        check_manifest_dict(data, where=where)
        manifest: Manifest = cls.from_dict(data)
        return manifest

    def artifact(self, target: str, format: str | None = None) -> Artifact:
        """The artifact for ``target`` (and ``format`` when several files share a target).

        Raises:
            BundleError: The bundle has no such artifact.
        """
        for art in self.artifacts:
            if art.target == target and (format is None or art.format == format):
                return art
        have = ", ".join(f"{a.target} ({a.format})" for a in self.artifacts) or "none"
        raise BundleError(f"bundle '{self.name}' has no artifact for target '{target}'; it has: {have}")


def check_manifest_dict(data: Any, *, where: str = "bundle.json") -> None:
    """Check a parsed ``bundle.json`` against the schema and edgekit's extra rules.

    Raises:
        BundleError: Listing every violation found.
    """
    problems = validate(data, load_schema(SCHEMA_FILE))
    if not problems and isinstance(data, dict):
        seen: set[tuple[str, str]] = set()
        for i, art in enumerate(data.get("artifacts", [])):
            key = (art["target"], art["format"])
            if key in seen:
                problems.append(f"$.artifacts[{i}]: a second {art['format']} artifact for target {art['target']!r}")
            seen.add(key)
            if ".." in Path(art["file"]).parts:
                problems.append(f"$.artifacts[{i}].file: {art['file']!r} points outside the bundle")
    if problems:
        shown = "; ".join(problems[:10]) + ("; ..." if len(problems) > 10 else "")
        raise BundleError(f"{where} does not match the bundle schema {SCHEMA_ID}: {shown}")
