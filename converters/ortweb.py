"""Run onnx-web artifacts on onnxruntime-web's wasm backend under Node.js: what browsers run.

Native onnxruntime and its wasm build do not compute everything alike (x86 int8 kernels without
VNNI saturate 16-bit intermediates; wasm has no such path), so a parity figure measured natively is
a claim about native onnxruntime only. The converters check every onnx-web artifact here as well,
through ``web/src/node-runner.mjs``, and time it here for ``onnx-web-auto``.

onnxruntime-web comes from npm (``npm ci --prefix web``, pinned by ``web/package-lock.json``), or
from the directory ``EDGEKIT_ORT_WEB`` names. Where Node.js or the package is missing,
:func:`availability` says why, and the artifact is recorded as not checked on onnxruntime-web.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle import RuntimeCheck, TensorSpec
from edgekit.errors import NotVerifiableError
from edgekit.parity import Tolerance, is_single_feed

RUNTIME_NAME = "onnxruntime-web"
WEB_DIR = Path(__file__).resolve().parent.parent / "web"  # the source checkout's web/
RUNNER = "node-runner.mjs"
RUNNER_ERROR = "edgekit-runner-error:"
TIMEOUT_S = 600
CHUNK = 64  # samples per run when the model's batch dimension is dynamic


@dataclass(frozen=True)
class WebRun:
    """What one run on onnxruntime-web gave: outputs by name, and where they came from."""

    outputs: dict[str, np.ndarray]
    version: str
    backend: str
    threads: int
    load_ms: float
    latency_ms: tuple[float, ...]
    node: str = ""

    @property
    def runtime(self) -> str:
        """The runtime as recorded in the manifest, e.g. ``onnxruntime-web 1.30.0 wasm``."""
        return f"{RUNTIME_NAME} {self.version} {self.backend}"

    @property
    def host(self) -> str:
        """Where it ran, e.g. ``Node.js v20.20.2, 1 thread`` (wasm computes alike on every CPU)."""
        return f"Node.js {self.node}, {self.threads} thread{'s' if self.threads != 1 else ''}"


def _web_package_dir() -> Path:
    import edgekit.web

    return Path(edgekit.web.__file__).resolve().parent


def locate() -> tuple[str, Path, Path]:
    """Node.js, the onnxruntime-web package directory and the runner script.

    Raises:
        NotVerifiableError: Node.js or onnxruntime-web is missing; the message says how to get it.
    """
    node = shutil.which("node")
    if node is None:
        raise NotVerifiableError("not checked on onnxruntime-web: Node.js is not installed (install Node.js 18 or "
                                 "newer, e.g. apt-get install nodejs, then npm ci --prefix web)")
    web = _web_package_dir()
    candidates = [Path(os.environ["EDGEKIT_ORT_WEB"])] if os.environ.get("EDGEKIT_ORT_WEB") else []
    candidates += [web / "node_modules" / "onnxruntime-web", WEB_DIR / "node_modules" / "onnxruntime-web"]
    for candidate in candidates:
        if (candidate / "dist" / "ort.wasm.min.mjs").is_file():
            runner = web / "src" / RUNNER
            if not runner.is_file():
                runner = WEB_DIR / "src" / RUNNER
            return node, candidate, runner
    raise NotVerifiableError(
        "not checked on onnxruntime-web: the onnxruntime-web package is missing (run npm ci --prefix web in the "
        f"edgekit checkout, or point EDGEKIT_ORT_WEB at a node_modules/onnxruntime-web directory; looked in "
        f"{', '.join(str(c) for c in candidates)})")


def availability() -> str:
    """'' when artifacts can be run on onnxruntime-web here, else why not."""
    try:
        locate()
    except NotVerifiableError as exc:
        return str(exc)
    return ""


def run(model: Path, samples: dict[str, np.ndarray], *, chunk: int, threads: int = 1,
        bench_runs: int = 0, bench_warmup: int = 5, bench_batch: int = 1, whole: bool = False,
        stacked: bool = False) -> WebRun:
    """Run ``model`` on every sample (``chunk`` at a time) on onnxruntime-web's wasm backend.

    With ``bench_runs``, also time that many runs on the first ``bench_batch`` samples after
    ``bench_warmup`` runs. With ``whole``, the arrays are one feed (a fully static model) run as they are;
    with ``stacked``, each array's first axis lists whole feeds, run one by one (outputs stacked alike).

    Raises:
        NotVerifiableError: Node.js or onnxruntime-web is missing.
        ConversionError: onnxruntime-web could not load or run the model (its message is kept).
    """
    from edgekit.errors import ConversionError

    node, ort_dir, runner = locate()
    with tempfile.TemporaryDirectory(prefix="edgekit-ortweb-") as tmp:
        work = Path(tmp)
        inputs = []
        for i, (name, value) in enumerate(samples.items()):
            array = np.require(value, requirements="C")
            kind = "bool" if array.dtype == np.bool_ else str(array.dtype)
            file = work / f"in{i}.bin"
            array.astype(array.dtype.newbyteorder("<"), copy=False).tofile(file)
            inputs.append({"name": name, "dtype": kind, "shape": list(array.shape), "file": str(file)})
        request = {"model": str(model), "ort": str(ort_dir), "threads": threads, "inputs": inputs,
                   "chunk": chunk, "whole": whole, "stacked": stacked, "out_dir": str(work),
                   "bench": {"runs": bench_runs, "warmup": bench_warmup, "batch": bench_batch} if bench_runs else None}
        (work / "request.json").write_text(json.dumps(request), encoding="utf-8")
        try:
            proc = subprocess.run([node, str(runner), str(work / "request.json")], capture_output=True, text=True,
                                  timeout=TIMEOUT_S, cwd=work)
        except subprocess.TimeoutExpired as exc:
            raise ConversionError(f"onnxruntime-web did not finish running {model.name} within {TIMEOUT_S} s") from exc
        if proc.returncode != 0:
            lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
            marked = [line.removeprefix(RUNNER_ERROR).strip() for line in lines if line.startswith(RUNNER_ERROR)]
            detail = (marked or lines[-1:] or [f"exit code {proc.returncode}"])[0]
            raise ConversionError(f"onnxruntime-web (wasm, Node.js) could not run {model.name}: {detail[:500]}")
        result = json.loads((work / "result.json").read_text(encoding="utf-8"))
        outputs = {}
        for out in result["outputs"]:
            dtype = np.dtype(np.bool_ if out["dtype"] == "bool" else out["dtype"])
            outputs[out["name"]] = np.fromfile(out["file"], dtype=dtype).reshape(out["shape"])
    return WebRun(outputs=outputs, version=str(result["version"]), backend=result["backend"],
                  threads=int(result["threads"]), load_ms=float(result["load_ms"]),
                  latency_ms=tuple(float(t) for t in result["latency_ms"]), node=str(result.get("node", "")))


LATENCY_RUNS = 20
LATENCY_WARMUP = 5


def check(path: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
          samples: dict[str, np.ndarray], reference: dict[str, np.ndarray], source_outputs: tuple[TensorSpec, ...],
          tolerance: Tolerance, labels: np.ndarray | None = None,
          source_inputs: tuple[TensorSpec, ...] = ()) -> RuntimeCheck:
    """Run the artifact at ``path`` on onnxruntime-web (wasm) on the samples and measure its parity there.

    ``inputs``/``outputs`` are the artifact's tensors as the manifest records them; ``samples`` and
    ``reference`` are in the source model's terms, as for the native validation. The latency is the
    median of a few batch-1 runs (the batch the model fixes, if it fixes one).

    Returns a check with ``not_checked`` set when Node.js or onnxruntime-web is missing.

    Raises:
        ConversionError: onnxruntime-web could not load or run the artifact.
    """
    from edgekit.parity import attention_mask, chunk_size, compare, is_stacked
    from edgekit.runtimes.adapt import from_artifact, to_artifact

    try:
        locate()
    except NotVerifiableError as exc:
        return RuntimeCheck(runtime=RUNTIME_NAME, not_checked=str(exc))
    by_source = {spec.source_name or spec.name: spec for spec in inputs}
    stacked = is_stacked(samples, source_inputs or inputs)

    def each(fn: Any, value: np.ndarray, spec: TensorSpec) -> np.ndarray:  # per feed when stacked
        return np.stack([fn(v, spec) for v in value]) if stacked and np.ndim(value) else fn(value, spec)

    feeds = {by_source[name].name: each(to_artifact, value, by_source[name]) for name, value in samples.items()}
    first = inputs[0].shape[0] if inputs and inputs[0].shape else None
    batch = first if isinstance(first, int) and first > 0 else None
    whole = is_single_feed(feeds, inputs)
    chunk = min(batch or CHUNK, chunk_size(source_inputs)) if source_inputs else batch or CHUNK  # as the reference
    result = run(path, feeds, chunk=chunk, bench_runs=LATENCY_RUNS, bench_warmup=LATENCY_WARMUP,
                 bench_batch=batch or 1, whole=whole, stacked=stacked)
    specs = {spec.name: spec for spec in outputs}
    actual = {(specs[name].source_name or name) if name in specs else name:
              each(from_artifact, value, specs[name]) if name in specs else value
              for name, value in result.outputs.items()}
    parity, _ = compare(reference, actual, source_outputs, tolerance, labels,
                        mask=attention_mask(samples, source_inputs or inputs))
    parity = replace(parity, runtime=result.runtime, host=result.host)
    latency = round(float(np.median(result.latency_ms)), 4) if result.latency_ms else None
    return RuntimeCheck(runtime=result.runtime, parity=parity, latency_p50_ms=latency,
                        extra={"load_ms": round(result.load_ms, 2)})
