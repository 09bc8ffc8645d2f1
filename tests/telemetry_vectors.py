"""Telemetry test vectors that the Python device, the Kotlin client and the browser library share.

``python -m tests.telemetry_vectors`` rewrites tests/data/telemetry-vectors.json from what
``edgekit.histogram`` and ``edgekit.ota.telemetry`` compute. tests/test_telemetry_vectors.py checks the
committed file is what this module computes and that the browser library (node) gives the same answers;
the Kotlin unit tests (TelemetryTest, run by tests/test_kotlin_client.py) check the Kotlin client does.

Each implementation must give, for the same durations, the same bucket of each duration, the same
bucket edges, the same explicit-bucket histogram (``to_explicit``) and delta (``since``), and for the
same points the same OTLP JSON request, value for value (counts as decimal strings, seconds as floats).
Times in nanoseconds since the epoch pass 2**53, so the inputs give them as decimal strings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "tests" / "data" / "telemetry-vectors.json"

# Durations (ns) across the layout: exact small buckets, octave edges, a millisecond region, the
# clamp at the last bucket, and numbers past 2**32 (which JavaScript's 32-bit shifts would break).
DURATIONS = [0, 1, 7, 8, 9, 15, 16, 17, 1023, 1024, 1025, 999_999, 1_000_000, 1_234_567, 2_500_000, 4_194_303,
             4_194_304, 17_000_000, 4_294_967_295, 4_294_967_296, 123_456_789_012, (1 << 40) - 1, 1 << 40, 1 << 45]


def _histogram(durations: list[int]) -> Any:
    from edgekit.histogram import LatencyHistogram

    h = LatencyHistogram()
    for ns in durations:
        h.add(ns)
    return h


def _point(p: dict[str, Any]) -> Any:
    from edgekit.ota.telemetry import Point

    return Point(p["model"], p["channel"], p["release"], p["artifact"], p["provider"], p["passed_over"],
                 _histogram(p["durations_ns"]), dict(p["errors"]), p["load_seconds"])


BATCHES: list[dict[str, Any]] = [
    {"device_id": "pixel-8:a1b2", "start_ns": "1764000000123456789", "end_ns": "1764000300987654321",
     "resource": {"os.type": "android", "host.arch": "arm64", "edgekit.accelerator": "nnapi", "edgekit.device.tier": "high"},
     "points": [
         {"model": "digits", "channel": "stable", "release": 3, "artifact": "tflite-int8", "provider": "litert",
          "passed_over": "", "durations_ns": [812_000, 790_500, 1_250_000, 640_123, 799_999, 3_000_000],
          "errors": {"InferenceError": 2}, "load_seconds": 0.0421},
         {"model": "face", "channel": "beta", "release": 17, "artifact": "onnx-web-fp16", "provider": "webgpu",
          "passed_over": "webnn,wasm-simd", "durations_ns": [], "errors": {"InvalidInputError": 1, "InferenceError": 4},
          "load_seconds": None}]},
    {"device_id": "browser-3f9c", "start_ns": "1", "end_ns": "2",
     "resource": {"os.type": "linux", "host.arch": "amd64", "edgekit.accelerator": "none", "edgekit.device.tier": ""},
     "points": [{"model": "digits", "channel": "stable", "release": 1, "artifact": "onnx-web-int8", "provider": "wasm",
                 "passed_over": "webgpu", "durations_ns": DURATIONS, "errors": {}, "load_seconds": 1.5}]},
]


def compute() -> dict[str, Any]:
    from edgekit.histogram import LatencyHistogram
    from edgekit.ota.telemetry import make_batch

    whole = _histogram(DURATIONS)
    earlier = _histogram(DURATIONS[:9])
    histogram = {
        "durations_ns": DURATIONS,
        "buckets": [LatencyHistogram.bucket(ns) for ns in DURATIONS],
        "uppers": {str(i): LatencyHistogram.upper(i) for i in (0, 7, 8, 9, 15, 16, 100, 159, 160, 319)},
        "explicit": whole.to_explicit(),
        "since_first": 9,
        "since": whole.since(earlier).to_explicit(),
        "empty": LatencyHistogram().to_explicit(),
        "percentiles_ms": {str(q): whole.percentile(q) for q in (50, 95, 99)},
    }
    batches = [{"input": b, "batch": make_batch(b["device_id"], b["resource"], [_point(p) for p in b["points"]],
                                                start_ns=int(b["start_ns"]), end_ns=int(b["end_ns"]))} for b in BATCHES]
    return {"histogram": histogram, "batches": batches}


def write() -> None:
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    VECTORS.write_text(json.dumps(compute(), indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write()
