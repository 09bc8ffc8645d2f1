"""Benchmark: the digits bundle in the browser (onnxruntime-web 1.30, wasm) against onnxruntime in Python.

In one run, on loopback, with Debian's Chromium headless (no GPU, so wasm):
  first inference  navigation start to the first result of a run() the page makes as soon as the
                   bundle is loaded (manifest, artifact download and sha256 check, ORT's wasm, session,
                   probe run, one inference): cold (a fresh browser context, empty caches) and warm
                   (a reload: the verified artifact comes from Cache Storage). Aim: under 1 s.
  latency          median of 300 batch-1 runs inside the page (performance.now() around each
                   session.run) against the median of 300 onnxruntime.InferenceSession.run calls in
                   Python on the same artifact file, default threads on both sides; 3 alternating rounds.
                   On the digits CNN, and on MobileNetV2 96x96 (trained as in common.py), where compute
                   rather than the per-call overhead decides.
It also writes docs/web-demo.png, the screenshot the README shows (a drawn 7).

Run: .venv/bin/python benchmarks/bench_web.py   (about 3 minutes, most of it training MobileNetV2)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT))
from tests.conftest import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402

LOADS = 7
RUNS = 300
ROUNDS = 3
TARGETS = ["onnx-web-int8", "onnx-web", "onnx-web-fp16"]
SEVEN = [[(70, 60), (210, 60), (120, 230)]]

MOBILENET_TARGETS = ["onnx-web-int8", "onnx-web"]
IN_PAGE = """async ([values, dims, runs]) => {
    const s = window.edgekitDemo.session, name = s.inputs[0].name, times = [];
    for (let i = 0; i < runs; i++) {
        const t = performance.now();
        await s.ortSession.run({ [name]: new s.ort.Tensor('float32', Float32Array.from(values), dims) });
        times.push(performance.now() - t);
    }
    times.sort((a, b) => a - b);
    return times[Math.floor(times.length / 2)];
}"""
FIRST = """async ([values, dims]) => {
    const d = await window.edgekitDemo.ready;
    if (!d) throw new Error(JSON.stringify(window.edgekitDemo.error));
    await window.edgekitDemo.run(values, dims);
    return { ms: performance.now(), fromCache: d.fromCache, loadMs: d.loadMs, target: d.target };
}"""


def _python_median(path: Path, x: np.ndarray, runs: int) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: x}
    for _ in range(max(10, runs // 10)):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _latency(browser: Any, server: Any, bundle: Path, targets: list[str], x: np.ndarray, runs: int) -> dict[str, Any]:
    """Browser (wasm) against Python onnxruntime, per target, alternating rounds."""
    manifest = json.loads((bundle / "bundle.json").read_text())
    args = [x.ravel().tolist(), list(x.shape)]
    out: dict[str, Any] = {}
    for target in targets:
        art = next(a for a in manifest["artifacts"] if a["target"] == target and a["format"] == "onnx")
        page = browser.new_page()
        page.goto(f"{server.url}/demo/?target={target}")
        if page.evaluate("() => window.edgekitDemo.ready") is None:
            raise SystemExit(page.evaluate("() => window.edgekitDemo.error"))
        page.evaluate(IN_PAGE, [*args, max(10, runs // 10)])
        rounds: dict[str, list[float]] = {"browser": [], "python": []}
        for _ in range(ROUNDS):
            rounds["browser"].append(page.evaluate(IN_PAGE, [*args, runs]))
            rounds["python"].append(_python_median(bundle / art["file"], x, runs))
        b_ms, py_ms = statistics.median(rounds["browser"]), statistics.median(rounds["python"])
        out[target] = {"size_bytes": art["size_bytes"], "browser_wasm_ms": round(b_ms, 4),
                       "onnxruntime_python_ms": round(py_ms, 4), "ratio": round(b_ms / py_ms, 2),
                       "threads": page.evaluate("() => window.edgekitDemo.session.threads")}
        page.close()
    return out


def main() -> None:
    from playwright.sync_api import sync_playwright

    from edgekit.converters.pipeline import convert
    from edgekit.web.server import running

    digits = ROOT / "examples" / "digits"
    x = np.load(digits / "digits.npz")["x"][:1]
    args = [x.ravel().tolist(), list(x.shape)]
    results: dict[str, Any] = {"chromium": CHROMIUM}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        bundle = Path(tmp) / "digits"
        convert(digits / "digits.onnx", TARGETS, out=bundle, calibration=digits / "digits.npz", name="digits",
                version="1.0.0", report=False)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        results["chromium_version"] = browser.version
        with running(bundle) as server:
            cold, warm = [], []
            for _ in range(LOADS):
                context = browser.new_context()
                page = context.new_page()
                page.goto(f"{server.url}/demo/")
                first = page.evaluate(FIRST, args)
                assert not first["fromCache"]
                cold.append(first["ms"])
                page.reload()
                again = page.evaluate(FIRST, args)
                assert again["fromCache"]
                warm.append(again["ms"])
                context.close()
            results["first_inference_ms"] = {"target": first["target"], "cold_median": statistics.median(cold),
                                             "cold_max": max(cold), "warm_median": statistics.median(warm)}
            results["digits_latency_batch1"] = _latency(browser, server, bundle, TARGETS, x, RUNS)
            page = browser.new_page(viewport={"width": 1280, "height": 520})
            page.goto(f"{server.url}/demo/")
            page.evaluate("() => window.edgekitDemo.ready")
            box = page.locator("#pad").bounding_box()
            for stroke in SEVEN:
                page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
                page.mouse.down()
                for a, b in stroke[1:]:
                    page.mouse.move(box["x"] + a, box["y"] + b, steps=8)
                page.mouse.up()
            page.wait_for_function("() => document.getElementById('status').textContent === 'ready'")
            shot = ROOT / "docs" / "web-demo.png"
            page.screenshot(path=str(shot))
            results["screenshot"] = str(shot.relative_to(ROOT))
        work = Path(tmp) / "mobilenet"
        work.mkdir()
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "common.py"), str(work)], check=True,
                       capture_output=True)
        mobile = Path(tmp) / "mobilenet-bundle"
        convert(work / "model.keras", MOBILENET_TARGETS, out=mobile, calibration=work / "calibration.npz",
                report=False)
        x96 = np.load(work / "calibration.npz")["x"][:1]
        with running(mobile) as server:
            results["mobilenetv2_96_latency_batch1"] = _latency(browser, server, mobile, MOBILENET_TARGETS, x96, 50)
        browser.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
