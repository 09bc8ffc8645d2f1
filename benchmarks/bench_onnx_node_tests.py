"""Benchmark: ONNX backend node tests to TFLite, edgekit against onnx2tf called alone.

The node tests come from the ``onnx`` wheel (``onnx.backend.test.case.node.collect_testcases``):
one model per operator variant with its inputs and expected outputs. Kept: the tests whose every
input and output is a tensor and which onnxruntime passes (allclose, rtol 1e-3, atol 1e-4); then
every ``--every``-th of them (sorted by name). For each:

  onnx2tf   ``onnx2tf.convert`` on the model with its defaults, the float32 .tflite run by LiteRT on
            the test inputs (NCHW inputs fed channels-last where the .tflite wants it, outputs moved
            back where that matches the expected shape)
  edgekit   ``edgekit.converters.convert(model, ["tflite"], calibration=<the test inputs>)``, the
            artifact run through ``edgekit.runtimes`` (which applies the recorded layout changes)

A test passes when every output matches the expected one (allclose, rtol 1e-3, atol 1e-4). Each
test runs in a worker process that is restarted after a crash (the crash is that test's failure).

Run: .venv/bin/python benchmarks/bench_onnx_node_tests.py [--every 10] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RTOL, ATOL = 1e-3, 1e-4
TIMEOUT = 180


def _cases() -> list[Any]:
    from onnx.backend.test.case import node

    out = []
    for case in node.collect_testcases(None):
        if case.model is None or not case.data_sets:
            continue
        inputs, outputs = case.data_sets[0]
        if all(isinstance(v, np.ndarray) for v in (*inputs, *outputs)):
            out.append(case)
    return sorted(out, key=lambda c: c.name)


def _matches(expected: list[np.ndarray], got: list[np.ndarray]) -> bool:
    if len(expected) != len(got):
        return False
    for e, g in zip(expected, got, strict=True):
        g = np.asarray(g)
        candidates = [g]
        if g.ndim == e.ndim >= 3:
            candidates.append(np.moveaxis(g, -1, 1))
        if g.size == e.size:
            candidates.append(g.reshape(e.shape))
        ok = False
        for c in candidates:
            if c.shape != e.shape:
                continue
            if e.dtype.kind in "fc":
                ok = bool(np.allclose(c.astype(np.float64), e.astype(np.float64), rtol=RTOL, atol=ATOL, equal_nan=True))
            else:
                ok = bool(np.array_equal(c.astype(e.dtype), e))
            if ok:
                break
        if not ok:
            return False
    return True


def _ort_passes(case: Any) -> bool:
    import onnxruntime as ort

    inputs, outputs = case.data_sets[0]
    try:
        session = ort.InferenceSession(case.model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        got = session.run(None, dict(zip(names, inputs, strict=True)))
    except Exception:  # noqa: BLE001 - onnxruntime's own failures leave the test out
        return False
    return _matches(list(outputs), got)


def _tflite_outputs(path: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    details = interp.get_input_details()
    if len(details) != len(inputs):
        raise ValueError(f"{len(details)} inputs for {len(inputs)}")
    feeds = []
    for d, v in zip(details, inputs, strict=True):
        v = np.asarray(v)
        if v.ndim >= 3 and tuple(d["shape_signature"]) != v.shape and tuple(d["shape"]) != v.shape:
            moved = np.moveaxis(v, 1, -1)
            fits = all(s in (-1, m) for s, m in zip(d["shape_signature"], moved.shape, strict=False))
            if len(d["shape"]) == moved.ndim and fits:
                v = moved
        feeds.append(v)
        interp.resize_tensor_input(d["index"], list(v.shape))
    interp.allocate_tensors()
    for d, v in zip(interp.get_input_details(), feeds, strict=True):
        interp.set_tensor(d["index"], v.astype(d["dtype"]))
    interp.invoke()
    return [interp.get_tensor(d["index"]) for d in interp.get_output_details()]


def run_onnx2tf(case: Any, work: Path) -> dict[str, Any]:
    import contextlib

    import onnx
    import onnx2tf

    inputs, outputs = case.data_sets[0]
    path = work / "model.onnx"
    onnx.save(case.model, str(path))
    with contextlib.chdir(work), contextlib.redirect_stdout(None):
        onnx2tf.convert(input_onnx_file_path=str(path), output_folder_path=str(work / "out"), non_verbose=True)
    tflite = work / "out" / "model_float32.tflite"
    return {"passed": _matches(list(outputs), _tflite_outputs(tflite, list(inputs)))}


def run_edgekit(case: Any, work: Path) -> dict[str, Any]:
    import onnx

    import edgekit.runtimes as rt
    from edgekit.converters import convert

    inputs, outputs = case.data_sets[0]
    path = work / "model.onnx"
    onnx.save(case.model, str(path))
    initializers = {i.name for i in case.model.graph.initializer}
    names = [i.name for i in case.model.graph.input if i.name not in initializers]
    np.savez(work / "cal.npz", **dict(zip(names, inputs, strict=True)))
    result = convert(path, ["tflite"], out=work / "b", calibration=work / "cal.npz", keep_partial=True, report=False,
                     isolate=False)
    if not result.bundle.manifest.artifacts:
        failure = (result.failures or [None])[0]
        return {"passed": False, "error": (failure.error if failure else "no artifact")[:300]}
    session = rt.open(result.bundle.path, target="tflite")
    got = session.run(dict(zip(names, inputs, strict=True)))
    out_names = [o.name for o in case.model.graph.output]
    return {"passed": _matches(list(outputs), [got[n] for n in out_names])}


def worker(work: Path) -> None:
    """Read test names from stdin, write one JSON line per test to stdout."""
    cases = {c.name: c for c in _cases()}
    for line in sys.stdin:
        tool, name = line.split()
        case = cases[name]
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            try:
                with open(os.devnull, "w") as sink, __import__("contextlib").redirect_stderr(sink):
                    result = (run_onnx2tf if tool == "onnx2tf" else run_edgekit)(case, Path(tmp))
            except BaseException as exc:  # noqa: BLE001 - the tool's failure is the test's verdict
                result = {"passed": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        print(json.dumps({"tool": tool, "name": name, **result}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "node-tests")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker(args.work)
        return
    start = time.perf_counter()
    passing = [c.name for c in _cases() if _ort_passes(c)]
    chosen = passing[::args.every]
    print(f"{len(passing)} node tests pass on onnxruntime; every {args.every}th: {len(chosen)}", flush=True)
    results_path = args.work / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    scratch = args.work / "tmp"  # what TensorFlow's autograph and onnx2tf leave in the temp dir stays here
    scratch.mkdir(exist_ok=True)
    for tool in ("onnx2tf", "edgekit"):
        todo = [n for n in chosen if f"{tool}/{n}" not in results]
        while todo:
            proc = subprocess.Popen([sys.executable, __file__, "--worker", "--work", str(args.work)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(scratch)},
                                    cwd=args.work)
            assert proc.stdin is not None and proc.stdout is not None
            current = None
            for name in list(todo):
                current = name
                proc.stdin.write(f"{tool} {name}\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
                if not line:
                    break
                done = json.loads(line)
                results[f"{tool}/{name}"] = done
                todo.remove(name)
                current = None
                results_path.write_text(json.dumps(results, indent=1, sort_keys=True))
            proc.kill()
            proc.wait()
            if current is not None:  # the worker died on this test
                results[f"{tool}/{current}"] = {"tool": tool, "name": current, "passed": False,
                                                "error": f"crashed (exit {proc.returncode})"}
                todo.remove(current)
                results_path.write_text(json.dumps(results, indent=1, sort_keys=True))
    shares = {}
    for tool in ("onnx2tf", "edgekit"):
        passed = sum(1 for n in chosen if results.get(f"{tool}/{n}", {}).get("passed"))
        shares[tool] = passed / len(chosen)
        print(f"{tool:8} {passed}/{len(chosen)} = {100 * shares[tool]:.1f}%")
    both = sum(1 for n in chosen if results.get(f"onnx2tf/{n}", {}).get("passed") and
               not results.get(f"edgekit/{n}", {}).get("passed"))
    print(f"ratio edgekit/onnx2tf {shares['edgekit'] / max(shares['onnx2tf'], 1e-9):.2f}x; "
          f"onnx2tf passes where edgekit fails: {both}; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
