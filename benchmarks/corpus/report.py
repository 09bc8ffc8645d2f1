"""Markdown tables of bench_corpus results: edgekit per model and target, the wrapped tools alone, totals."""

from __future__ import annotations

import re
from typing import Any

from benchmarks.corpus.fetch import load_models


def _short(error: str) -> str:
    """The part of an error that tells failures apart, for a table cell."""
    error = " ".join(error.replace("|", "/").split())
    drift = re.search(r"on \d+ samples: (.*?) FAILED", error)
    if error.startswith("target ") and drift:
        return "parity: " + drift.group(1)[:70]
    tool = re.match(r"onnx2tf [\d.]+ failed on this model \([^)]*\): (.*)", error)
    if tool:
        return "onnx2tf: " + tool.group(1)[:70]
    if error.startswith("onnxruntime could not load"):
        return "onnxruntime cannot load it: " + error.split("failed:")[-1].strip()[:50]
    return error[:80]


def _fallback_step(route: list[str]) -> str:
    """The step that made a fallback route differ from the planned one (a fallback or alternative pass)."""
    from edgekit.converters.registry import PASSES

    other = {p.name for p in PASSES if p.fallback_of or p.alternative}
    return next((step for step in route if step in other), route[0])


def _cell(t: dict[str, Any] | None) -> str:
    if not t:
        return " "
    if t["status"] == "passed":
        err = t.get("max_abs_error")
        ratio = t.get("size_ratio")
        tried = t.get("routes_tried") or []
        via = f" via {_fallback_step(t['route'])}" if tried and t.get("route") else ""  # a fallback route made it
        return f"ok {ratio:.2f}x" + (f" e={err:.1g}" if err is not None else "") + via
    if t["status"] in ("failed", "missing"):
        return "FAIL: " + _short(t.get("error") or "")
    return t["status"] + (": " + (t.get("unverified") or "")[:60] if t.get("unverified") else "")


def tables(results: dict[str, Any]) -> str:
    ids = [m["id"] for m in load_models()]
    targets: list[str] = []
    for key, value in results.items():
        if key.endswith("/edgekit"):
            targets += [t for t in value["targets"] if t not in targets]
    order = ["onnx-web", "tflite", "coreml-fp16", "onnx-web-fp16", "tflite-fp16", "onnx-web-int8",
             "tflite-dynamic-int8", "tflite-int8"]
    targets.sort(key=lambda t: order.index(t) if t in order else len(order))
    lines = ["| model | " + " | ".join(targets) + " | exit | s | left behind |",
             "|---" * (len(targets) + 4) + "|"]
    passed = {t: 0 for t in targets}
    counted = 0
    for mid in ids:
        r = results.get(f"{mid}/edgekit")
        if not r:
            continue
        counted += 1
        for t in targets:
            passed[t] += (r["targets"].get(t) or {}).get("status") == "passed"
        cells = [_cell(r["targets"].get(t)) for t in targets]
        left = ", ".join(r["leftovers"]) or "-"
        lines.append(f"| {mid} | " + " | ".join(cells) + f" | {r['rc']} | {r['seconds']:.0f} | {left} |")
    lines.append("| **passed** | " + " | ".join(f"**{passed[t]}/{counted}**" for t in targets) + " | | | |")
    tools = tuple(t for t in ("onnx2tf", "coremltools", "ort-quant", "fp16-converter")
                  if any(key.endswith(f"/{t}") for key in results))  # the tools this run has results of
    lines += ["", "| model | " + " | ".join(f"{t} alone" for t in tools) + " |", "|---" * (len(tools) + 1) + "|"]
    alone = {t: [0, 0] for t in tools}
    for mid in ids:
        cells = []
        for tool in tools:
            r = results.get(f"{mid}/{tool}")
            if r and r["status"] != "n/a":
                alone[tool][1] += 1
                alone[tool][0] += r["status"] == "passed"
            cells.append(" " if not r else ("ok" if r["status"] == "passed" else r["status"] if r["status"] == "n/a"
                                             else "FAIL: " + _short(r.get("error") or "")))
        lines.append(f"| {mid} | " + " | ".join(cells) + " |")
    lines.append("| **passed** | " + " | ".join(f"**{p}/{n}** (of those it takes)" for p, n in alone.values()) + " |")
    return "\n".join(lines)
