"""One options object for the CLI, the Python API, the workers and auto-precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.converters import Budget, ConvertOptions, convert
from edgekit.errors import UserError
from tests.conftest import DIGITS


def test_flags_keywords_and_plain_data_make_the_same_options() -> None:
    from_flags = ConvertOptions.from_flags(calibration=DIGITS / "digits.npz", min_ios=17, via=("litert-torch",),
                                           input_shape=["x:1,1,8,8"], output_kind=["logits=scores"],
                                           min_agreement=0.995)
    from_api = ConvertOptions.from_choices(calibration=str(DIGITS / "digits.npz"), min_ios=17, via="litert-torch",
                                           input_shapes={"x": [1, 1, 8, 8]}, output_kinds={"logits": "scores"},
                                           budget=Budget(min_agreement=0.995))
    assert from_flags == from_api
    assert from_flags.calibration == DIGITS / "digits.npz" and from_flags.input_shapes == {"x": (1, 1, 8, 8)}
    # a worker process gets it as JSON and reads back the same object
    assert ConvertOptions.from_dict(json.loads(json.dumps(from_flags.to_dict()))) == from_flags
    # no budget unless one of the budget flags is set
    assert ConvertOptions.from_flags().budget is None


def test_the_default_budget_depends_on_labels() -> None:
    assert Budget().for_samples(has_labels=True).max_accuracy_drop == 1.0
    assert Budget().for_samples(has_labels=False) == Budget()
    assert Budget(min_agreement=0.9).for_samples(has_labels=True).max_accuracy_drop is None
    assert Budget(optimize="size").describe() == {"optimize": "size"}


@pytest.mark.parametrize(("make", "message"), [
    (lambda: ConvertOptions.from_flags(input_shape=["x:1,a"]), "--input-shape 'x:1,a'"),
    (lambda: ConvertOptions.from_flags(output_kind=["logits"]), "--output-kind 'logits'"),
    (lambda: ConvertOptions(input_shapes={"x": (1, 0)}), "positive size"),
    (lambda: ConvertOptions(budget=Budget(min_agreement=2.0)), "--min-agreement 2 is out of range"),
    (lambda: ConvertOptions.from_flags(optimize="speed"), "--optimize must be balanced or size"),
    (lambda: ConvertOptions(version=""), "--version must not be empty"),
])
def test_bad_options_are_refused_when_made(make: object, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()  # type: ignore[operator]


def test_convert_takes_options_or_keywords_and_refuses_unknown_ones(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="'calibraton'.*did you mean 'calibration'"):
        convert(DIGITS / "digits.onnx", ["onnx-web"], out=tmp_path / "a", calibraton=DIGITS / "digits.npz")
    options = ConvertOptions(calibration=DIGITS / "digits.npz", name="digits", version="2.0.0", report=False)
    # keywords replace the options' fields: the version given here wins
    result = convert(DIGITS / "digits.onnx", ["onnx-web"], out=tmp_path / "b", options=options, version="2.1.0")
    manifest = result.bundle.manifest
    assert (manifest.name, manifest.version) == ("digits", "2.1.0")
    assert manifest.calibration is not None and not (result.bundle.path / "report.html").exists()
