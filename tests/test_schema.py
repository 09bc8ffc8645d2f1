"""The checked-in JSON Schema and the code agree, and the small validator agrees with jsonschema."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest

from edgekit import bundle
from edgekit._schema import SUPPORTED, load_schema, validate

SCHEMA = load_schema("bundle.schema.json")

RECORDS = {
    "": bundle.Manifest,
    "source": bundle.SourceInfo,
    "tensor": bundle.TensorSpec,
    "calibration": bundle.CalibrationInfo,
    "parity": bundle.Parity,
    "runtime_check": bundle.RuntimeCheck,
    "accuracy": bundle.Accuracy,
    "artifact": bundle.Artifact,
    "failure": bundle.Failure,
}


@pytest.mark.parametrize("defname", list(RECORDS))
def test_dataclass_fields_match_the_schema(defname: str) -> None:
    node = SCHEMA if defname == "" else SCHEMA["$defs"][defname]
    cls = RECORDS[defname]
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
    assert set(fields) == set(node["properties"]), f"{cls.__name__} and $defs/{defname} list different fields"
    # a field is always written (so required in the file) unless its default is None
    always_written = {n for n, f in fields.items() if f.default is not None}
    assert always_written == set(node["required"])


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def _mutations(doc: dict) -> list[dict]:
    out = []
    for path, value in [
        (("schema",), "edgekit.bundle/2"),
        (("name",), ""),
        (("inputs",), []),
        (("inputs", 0, "dtype"), "float8"),
        (("inputs", 0, "shape", 0), 1.5),
        (("inputs", 0, "shape", 0), -2),
        (("source", "sha256"), "xyz"),
        (("source", "size_bytes"), True),
        (("artifacts", 0, "format"), "zip"),
        (("artifacts", 0, "target"), "Bad Target"),
        (("artifacts", 0, "file"), "/abs/path"),
        (("artifacts", 0, "parity", "top1_agreement"), 1.5),
        (("artifacts", 0, "parity", "n_samples"), 0),
        (("artifacts", 0, "accuracy"), {"top1": 0.5}),
        (("calibration", "has_labels"), "yes"),
    ]:
        bad = copy.deepcopy(doc)
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        out.append(bad)
    for key in ("version", "artifacts", "outputs"):
        bad = copy.deepcopy(doc)
        del bad[key]
        out.append(bad)
    return out


def test_validator_agrees_with_jsonschema(digits_bundle: Path) -> None:
    doc = json.loads((digits_bundle / "bundle.json").read_text())
    reference = jsonschema.Draft202012Validator(SCHEMA)
    assert validate(doc, SCHEMA) == [] and reference.is_valid(doc)
    for bad in _mutations(doc):
        ours = validate(bad, SCHEMA)
        assert ours and not reference.is_valid(bad), (ours, list(reference.iter_errors(bad))[:1])


def test_validator_rejects_keywords_it_does_not_implement() -> None:
    from edgekit._schema import _check_keywords

    with pytest.raises(ValueError, match="oneOf"):
        _check_keywords({"type": "object", "properties": {"a": {"oneOf": []}}})
    assert "oneOf" not in SUPPORTED
