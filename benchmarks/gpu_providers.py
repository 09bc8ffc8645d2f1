"""Check the runtime's provider chain on a machine with a GPU (run it where one is lent).

Opens the digits example with providers="auto" and explicit chains, and prints, as JSON, which
provider ran, every attempt with its reason, the partial-placement report and a latency summary.
Needs only numpy and onnxruntime(-gpu); run from the repository root: python benchmarks/gpu_providers.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import numpy as np
    import onnxruntime as ort

    import edgekit.runtimes as rt

    model = ROOT / "examples" / "digits" / "digits.onnx"
    x = np.load(ROOT / "examples" / "digits" / "digits.npz")["x"]
    report: dict[str, object] = {"onnxruntime": ort.__version__, "available": ort.get_available_providers()}
    for name, providers, policy in (("auto", "auto", "fallback"), ("cuda,cpu", ("cuda", "cpu"), "fallback"),
                                    ("tensorrt,cuda,cpu", ("tensorrt", "cuda", "cpu"), "fallback"),
                                    ("cuda strict", ("cuda", "cpu"), "strict")):
        start = time.perf_counter()
        try:
            session = rt.open(model, providers=providers, policy=policy)
        except Exception as exc:  # report every outcome, this is a probe
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        for _ in range(50):
            logits = session.run({"x": x[:1]})["logits"]
        full = session.run({"x": x})["logits"]
        stats = session.stats()
        report[name] = {
            "provider": session.provider,
            "attempts": [a.__dict__ for a in session.attempts],
            "notes": list(session.notes),
            "placement": getattr(session, "placement", None),
            "open_seconds": round(time.perf_counter() - start, 3),
            "p50_ms": stats.p50_ms,
            "argmax_first": int(logits.argmax()),
            "accuracy": float((full.argmax(1) == np.load(ROOT / "examples/digits/digits.npz")["y"]).mean()),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
