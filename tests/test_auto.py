"""Accuracy-gated precision: -auto targets build every candidate and keep the smallest within budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekit.bundle import read_bundle
from edgekit.converters import convert
from edgekit.errors import UnknownTargetError
from tests.conftest import DIGITS, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.tensorflow]


@pytest.fixture(scope="module")
def all_auto(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    pytest.importorskip("coremltools")
    out = tmp_path_factory.mktemp("auto") / "digits"
    result = run_cli("convert", DIGITS / "digits.onnx", "--calibration", DIGITS / "digits.npz", "--target", "all-auto",
                     "--max-accuracy-drop", "1.0", "--out", out)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_all_auto_picks_a_small_artifact_per_family_and_says_why(all_auto: tuple[Path, str]) -> None:
    path, output = all_auto
    manifest = read_bundle(path).manifest
    selections = {s.family: s for s in manifest.selections or ()}
    assert set(selections) == {"onnx-web", "tflite", "coreml"}
    for family, selection in selections.items():
        assert selection.chosen is not None and selection.budget == {"max_accuracy_drop": 1.0, "optimize": "balanced"}
        chosen = next(a for a in manifest.artifacts if a.target == selection.chosen)
        smaller = [c for c in selection.candidates if c.get("size_bytes", 1 << 60) < chosen.size_bytes]
        # the smallest candidate, unless a smaller one was slower where it will run (digits on wasm: int8
        # and fp16 are within a few hundredths of a millisecond, and either can win)
        assert chosen.size_ratio is not None and (chosen.size_ratio <= 0.30 or all(
            "but slower than" in c["verdict"] for c in smaller)), (family, chosen.size_ratio, smaller)
        assert chosen.accuracy is not None and chosen.accuracy.top1 >= chosen.accuracy.source_top1 - 0.01
        assert chosen.extra["chosen_by"] == f"{family}-auto"
        assert len(selection.candidates) >= 3 and all("verdict" in c for c in selection.candidates)
        assert selection.reason.startswith(f"{selection.chosen} is the smallest candidate within the budget")
        assert f"{family}-auto: {selection.chosen}" in output  # the CLI explains the choice
    # only the chosen artifacts stay in the bundle (the .ort copy of a chosen web target too)
    assert {a.target for a in manifest.artifacts} == {s.chosen for s in selections.values()}
    assert sorted(p.name for p in path.iterdir() if p.name not in ("bundle.json", "reference.npz", "report.html")) == sorted(
        a.file for a in manifest.artifacts)
    web = selections["onnx-web"]
    measured = [c for c in web.candidates if c.get("latency_p50_ms") is not None]
    assert measured, "an integer candidate is timed against the next larger one"
    # judged where it will run: onnx-web on onnxruntime-web (wasm), tflite on LiteRT
    assert all(c["latency_runtime"].startswith("onnxruntime-web ") and "wasm" in c["latency_runtime"] for c in measured)
    assert all(c["latency_runtime"].startswith("ai-edge-litert ") for c in selections["tflite"].candidates
               if c.get("latency_p50_ms") is not None)


def _skewed_model() -> Any:
    """A classifier whose hidden layer carries a constant near 1000 next to the small values that decide:
    per-tensor int8 activations cannot hold both."""
    import torch
    from torch import nn

    class Skewed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.expand, self.head = nn.Linear(8, 1024), nn.Linear(1024, 4)
            with torch.no_grad():
                self.expand.weight.zero_()
                self.expand.weight[:8, :8] = torch.eye(8)
                self.expand.bias.zero_()
                self.expand.bias[8] = 1000.0
                self.head.weight.zero_()
                self.head.weight[:, :4] = torch.eye(4)
                self.head.bias.zero_()

        def forward(self, x: Any) -> Any:
            return self.head(self.expand(x))

    return Skewed().eval()


@pytest.mark.torch
def test_the_gate_rejects_int8_that_breaks_accuracy(tmp_path: Path) -> None:
    import torch

    x = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x, y=x[:, :4].argmax(1))
    result = convert(_skewed_model(), ["tflite-auto", "onnx-web-auto"], out=tmp_path / "b",
                     example_inputs=(torch.from_numpy(x[:2]),), calibration=tmp_path / "cal.npz")
    selections = {s.family: s for s in result.bundle.manifest.selections or ()}
    for family, int8 in (("tflite", "tflite-int8"), ("onnx-web", "onnx-web-int8")):
        selection = selections[family]
        assert selection.chosen is not None and "int8" not in selection.chosen
        record = next(c for c in selection.candidates if c["target"] == int8)
        assert record["verdict"].startswith("over budget: accuracy drop") and record["accuracy_drop_points"] > 10
        assert f"{int8}: over budget: accuracy drop" in selection.reason
    shown = run_cli("inspect", result.bundle.path)
    assert "tflite-auto:" in shown.output and "tflite-int8: over budget" in shown.output
    page = (result.bundle.path / "report.html").read_text()
    assert "tflite-auto: tflite" in page and "tflite-int8: over budget: accuracy drop" in page


def test_budget_flags_and_unknown_auto_targets(tmp_path: Path) -> None:
    with pytest.raises(UnknownTargetError, match="automatic ones"):
        convert(DIGITS / "digits.onnx", ["tflite-fast-auto"], out=tmp_path / "b")
    bad = run_cli("convert", DIGITS / "digits.onnx", "-t", "onnx-web-auto", "--optimize", "speed", "--out", tmp_path / "c")
    assert bad.exit_code == 2 and "--optimize" in bad.stderr
    by_size = run_cli("convert", DIGITS / "digits.onnx", "--calibration", DIGITS / "digits.npz", "-t", "onnx-web-auto",
                      "--min-agreement", "0.999", "--optimize", "size", "--out", tmp_path / "d")
    assert by_size.exit_code == 0, by_size.output
    manifest = json.loads((tmp_path / "d" / "bundle.json").read_text())
    (selection,) = manifest["selections"]
    assert selection["budget"] == {"min_agreement": 0.999, "optimize": "size"}
    assert all("latency_p50_ms" not in c for c in selection["candidates"])
