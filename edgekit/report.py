"""The bundle report: one self-contained HTML page (inline CSS and SVG, no script, no network).

It shows the per-target table (size, ratio, parity, accuracy, latency on this host, provider), the
automatic-precision decisions, failures, and two plots: size against accuracy for every artifact and
candidate, and latency by target on this host. ``edgekit convert`` writes it into the bundle as
``report.html`` once the bundle is in place (a short latency run of each artifact first); ``edgekit
report`` writes it anywhere, with as many timed runs as asked.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgekit._files import human_size, write_atomic
from edgekit.bundle import Manifest

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
_COLORS = {"onnx-web": "#2f6db5", "tflite": "#d9822b", "coreml": "#3a9d5d"}
_CSS = """
body{font:14px/1.45 -apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1d232a;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde3ea}
.muted{color:#5b6672}table{border-collapse:collapse;width:100%;margin:.6rem 0}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #e8edf2;font-variant-numeric:tabular-nums}
th{background:#f4f7fa}.ok{color:#217a3c}.bad{color:#b42318}.plots{display:flex;flex-wrap:wrap;gap:1.5rem}
figure{margin:0}figcaption{font-weight:600;margin-bottom:.3rem}svg text{font-size:11px;fill:#3a4450}
"""


def _points(manifest: Manifest) -> list[dict[str, Any]]:
    """One point per artifact and per automatic candidate: family, label, size, quality, samples and its name.

    When the points were measured on different numbers of samples (ORT-format copies are validated on
    fewer), each label says its count: figures on 64 samples are not comparable to figures on 360.
    """
    points: dict[str, dict[str, Any]] = {}
    for a in manifest.artifacts:
        quality = a.accuracy.top1 if a.accuracy else (a.parity.top1_agreement if a.parity else None)
        samples = a.accuracy.n_samples if a.accuracy else (a.parity.n_samples if a.parity else None)
        key = f"{a.target}/{a.format}"
        points[key] = {"family": a.target.split("-")[0] if not a.target.startswith("onnx-web") else "onnx-web",
                       "label": f"{a.target} ({a.format})", "size": a.size_bytes, "quality": quality, "chosen": True,
                       "samples": samples}
    for selection in manifest.selections or ():
        for c in selection.candidates:
            if c.get("size_bytes") is None or any(p["label"].startswith(f"{c['target']} (") for p in points.values()):
                continue
            quality = c.get("top1") if c.get("top1") is not None else c.get("top1_agreement")
            points[c["target"]] = {"family": selection.family, "label": c["target"], "size": c["size_bytes"],
                                   "quality": quality, "chosen": False, "samples": c.get("n_samples")}
    kept = [p for p in points.values() if p["quality"] is not None]
    counts = {p["samples"] for p in kept if p["samples"]}
    if len(counts) > 1:
        for p in kept:
            if p["samples"]:
                p["label"] += f", {p['samples']} samples"
    return kept


CHAR_WIDTH, LINE_HEIGHT = 6.6, 13  # an 11px sans-serif label's width per character (generous) and height


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(anchors: Sequence[tuple[float, float, str]], bounds: tuple[float, float, float, float],
                 avoid: Sequence[tuple[float, float, float, float]] = ()) -> list[tuple[float, float, str] | None]:
    """Where each label (text beside a point at x, y) goes so that no two labels' boxes overlap, nor a label
    and a point in ``avoid``, inside ``bounds`` (x0, y0, x1, y1): the first free spot of eight around its
    point, else ``None`` (the caller lists it instead). Returns (x, y baseline, text-anchor) per label."""
    taken: list[tuple[float, float, float, float]] = list(avoid)
    out: list[tuple[float, float, str] | None] = []
    for x, y, text in anchors:
        w, h = len(text) * CHAR_WIDTH, LINE_HEIGHT
        spots = ((x + 8, y - 6, "start"), (x + 8, y + 14, "start"), (x - 8, y - 6, "end"), (x - 8, y + 14, "end"),
                 (x, y - 10, "middle"), (x, y + 20, "middle"), (x + 8, y + 4, "start"), (x - 8, y + 4, "end"))
        chosen = None
        for sx, sy, anchor in spots:
            left = sx if anchor == "start" else sx - w if anchor == "end" else sx - w / 2
            box = (left, sy - h + 3, left + w, sy + 3)
            inside = box[0] >= bounds[0] and box[2] <= bounds[2] and box[1] >= bounds[1] and box[3] <= bounds[3]
            if inside and not any(_overlaps(box, other) for other in taken):
                taken.append(box)
                chosen = (sx, sy, anchor)
                break
        out.append(chosen)
    return out


UNITS = (("B", 1), ("KB", 1024), ("MB", 1024 ** 2), ("GB", 1024 ** 3))


def size_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    """Round sizes between ``lo`` and ``hi`` bytes with their labels: steps of 1, 2 and 5 of B, KB, MB or
    GB, finer ones when the range is narrow, so that a range of at least 3x gets three to seven."""
    finest = tuple(m / 10 for m in range(10, 100, 2))
    ticks: list[tuple[float, str]] = []
    for mantissas in ((1, 2, 5), (1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9), finest):
        ticks = sorted({(m * 10 ** k * size, f"{m * 10 ** k:g} {name}") for name, size in UNITS for k in range(4)
                        for m in mantissas if m * 10 ** k < 1024 or name == "GB"
                        if lo <= m * 10 ** k * size <= hi})
        if len(ticks) >= 3:
            break
    return ticks[::-(-len(ticks) // 7)] if len(ticks) > 7 else ticks


def size_accuracy_svg(manifest: Manifest, width: int = 560, height: int = 360) -> str:
    """Scatter plot: artifact size (log scale, at least three ticks) against top-1 accuracy (or agreement
    without labels), a legend of the colours, and each point's label beside it where it fits without
    overlapping another; the labels that do not fit are numbered and listed under the plot."""
    points = _points(manifest)
    has_labels = any(a.accuracy for a in manifest.artifacts)
    left, right, top, bottom = 60, 20, 34, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    if not points:
        return f'<svg id="size-accuracy" width="{width}" height="60"><text x="10" y="30">no parity data</text></svg>'
    sizes = [math.log10(max(p["size"], 1)) for p in points]
    lo_s, hi_s = min(sizes) - 0.1, max(sizes) + 0.1
    if hi_s - lo_s < math.log10(3):  # a narrow range still gets round ticks either side
        middle = (lo_s + hi_s) / 2
        lo_s, hi_s = middle - math.log10(3) / 2, middle + math.log10(3) / 2
    qualities = [p["quality"] for p in points]
    lo_q, hi_q = min(min(qualities) - 0.02, 0.9), 1.0
    lo_q = max(0.0, lo_q)

    def x(size: float) -> float:
        return float(left + (math.log10(max(size, 1)) - lo_s) / (hi_s - lo_s) * plot_w)

    def y(quality: float) -> float:
        return float(top + (hi_q - quality) / max(hi_q - lo_q, 1e-9) * plot_h)

    parts = [f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fbfcfd" stroke="#cfd8e1"/>']
    for k in range(5):
        q = lo_q + (hi_q - lo_q) * k / 4
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(q):.1f}" y2="{y(q):.1f}" stroke="#e8edf2"/>'
                     f'<text class="tick" x="{left - 6}" y="{y(q) + 4:.1f}" text-anchor="end">{q:.3f}</text>')
    for value, label in size_ticks(10 ** lo_s, 10 ** hi_s):
        parts.append(f'<line x1="{x(value):.1f}" x2="{x(value):.1f}" y1="{top}" y2="{top + plot_h}" stroke="#e8edf2"/>'
                     f'<text class="tick x-tick" x="{x(value):.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
                     f'{label}</text>')
    ordered = sorted(points, key=lambda p: (not p["chosen"], p["size"]))  # artifacts' labels placed first
    dots = [(x(p["size"]) - 6, y(p["quality"]) - 6, x(p["size"]) + 6, y(p["quality"]) + 6) for p in ordered]
    places = place_labels([(x(p["size"]), y(p["quality"]), p["label"]) for p in ordered],
                          (left, top, left + plot_w, top + plot_h), avoid=dots)
    listed: list[str] = []
    for p, place in zip(ordered, places, strict=True):
        color = _COLORS.get(p["family"], "#6b7785")
        fill = color if p["chosen"] else "#ffffff"
        cx, cy = x(p["size"]), y(p["quality"])
        parts.append(f'<circle class="point" cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{fill}" stroke="{color}" '
                     f'stroke-width="2"><title>{html.escape(p["label"])}: {human_size(p["size"])}, '
                     f'{p["quality"]:.4f}</title></circle>')
        if place is None:
            listed.append(p["label"])
            parts.append(f'<text class="label key" x="{cx + 7:.1f}" y="{cy + 4:.1f}">{len(listed)}</text>')
        else:
            lx, ly, anchor = place
            parts.append(f'<text class="label" x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}">'
                         f'{html.escape(p["label"])}</text>')
    # the legend: a colour per family shown, filled for artifacts in the bundle, hollow for candidates not kept
    legend_x = float(left)
    for family in dict.fromkeys(p["family"] for p in points):
        color = _COLORS.get(family, "#6b7785")
        parts.append(f'<circle cx="{legend_x + 5:.1f}" cy="{top - 16}" r="5" fill="{color}"/>'
                     f'<text class="legend" x="{legend_x + 14:.1f}" y="{top - 12}">{html.escape(family)}</text>')
        legend_x += 22 + len(family) * CHAR_WIDTH
    if not all(p["chosen"] for p in points):
        parts.append(f'<circle cx="{legend_x + 5:.1f}" cy="{top - 16}" r="5" fill="#ffffff" stroke="#6b7785" '
                     f'stroke-width="2"/><text class="legend" x="{legend_x + 14:.1f}" y="{top - 12}">hollow: a '
                     'candidate not kept</text>')
    axis = "top-1 accuracy" if has_labels else "top-1 agreement with the source"
    key_rows = -(-len(listed) // 2)
    total_h = height + key_rows * (LINE_HEIGHT + 2)
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 12}" text-anchor="middle">size (log scale)</text>'
                 f'<text transform="translate(14 {top + plot_h / 2}) rotate(-90)" text-anchor="middle">{axis}</text>')
    for i, label in enumerate(listed):  # numbered labels that found no free spot, two columns
        parts.append(f'<text class="label listed" x="{left + (i % 2) * plot_w / 2:.1f}" '
                     f'y="{height + (i // 2) * (LINE_HEIGHT + 2) + 2}">{i + 1}: {html.escape(label)}</text>')
    head = (f'<svg id="size-accuracy" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total_h}" '
            f'viewBox="0 0 {width} {total_h}" role="img">')
    return head + "".join(parts) + "</svg>"


def latency_svg(latency: Mapping[str, Mapping[str, Any]], width: int = 560) -> str:
    """Horizontal bars of p50 latency by artifact, with a whisker to p99, each labelled with the provider
    that ran it."""
    rows = [(k, v) for k, v in latency.items() if v.get("p50_ms") is not None]
    if not rows:
        return (f'<svg id="latency" width="{width}" height="60"><text x="10" y="30">latency not measured on this '
                f'host (edgekit report BUNDLE measures it)</text></svg>')
    names = [name + (f" · {_provider(v['provider'])}" if v.get("provider") else "") for name, v in rows]
    left = int(min(max(len(n) for n in names) * CHAR_WIDTH + 12, width / 2))
    bar_h, gap, top = 16, 8, 10
    height = top + len(rows) * (bar_h + gap) + 30
    worst = max(float(v.get("p99_ms") or v["p50_ms"]) for _, v in rows) or 1.0
    scale = (width - left - 80) / worst
    parts = [f'<svg id="latency" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">']
    for i, ((name, v), shown) in enumerate(zip(rows, names, strict=True)):
        y0 = top + i * (bar_h + gap)
        p50 = float(v["p50_ms"])
        p99 = float(v.get("p99_ms") or p50)
        color = _COLORS.get("onnx-web" if name.startswith("onnx-web") else name.split("-")[0], "#6b7785")
        parts.append(f'<text class="label" x="{left - 6}" y="{y0 + 12}" text-anchor="end">{html.escape(shown)}</text>'
                     f'<rect class="bar" x="{left}" y="{y0}" width="{max(p50 * scale, 1):.1f}" height="{bar_h}" '
                     f'fill="{color}"><title>p50 {p50:.3f} ms, p99 {p99:.3f} ms</title></rect>'
                     f'<line x1="{left + p50 * scale:.1f}" x2="{left + p99 * scale:.1f}" y1="{y0 + bar_h / 2}" '
                     f'y2="{y0 + bar_h / 2}" stroke="#1d232a"/>'
                     f'<text class="label" x="{left + p99 * scale + 5:.1f}" y="{y0 + 12}">{p50:.3f} ms</text>')
    parts.append(f'<text x="{left}" y="{height - 8}">p50 bar, whisker to p99, batch 1, this host</text></svg>')
    return "".join(parts)


def _provider(name: str) -> str:
    """onnxruntime's CPUExecutionProvider as "CPU", LiteRT's "XNNPACK" as it is."""
    return name.removesuffix("ExecutionProvider")


def _parity_html(p: Any) -> str:
    """Passed or failed, the figures, and where they were measured."""
    e = html.escape
    where = ", ".join(x for x in (p.runtime, p.host) if x)
    return (f'<span class="{"ok" if p.passed else "bad"}">{"passed" if p.passed else "FAILED"}'
            f'</span> max abs {p.max_abs_error:.3g}'
            + (f", top-1 agr. {p.top1_agreement:.4f}" if p.top1_agreement is not None else "")
            + (f' <span class="muted" title="{e(where)}">({e(where)})</span>' if where else ""))


def render(manifest: Manifest, latency: Mapping[str, Mapping[str, Any]] | None = None,
           host: str = "") -> str:
    """The report page for ``manifest``; ``latency`` maps "target (format)" to bench figures."""
    latency = dict(latency or {})
    for selection in manifest.selections or ():  # latencies measured while choosing a precision
        for c in selection.candidates:
            if c.get("latency_p50_ms") is not None:
                fmt = next((a.format for a in manifest.artifacts if a.target == c["target"]), c.get("format", ""))
                runtime = str(c.get("latency_runtime") or "").split(" (")[0]  # what ran it, without the host
                latency.setdefault(f"{c['target']} ({fmt})", {"p50_ms": c["latency_p50_ms"], "provider": runtime})
    e = html.escape
    rows = []
    for a in manifest.artifacts:
        key = f"{a.target} ({a.format})"
        lat = latency.get(key, {})
        if a.parity is None:
            parity = f'<span class="bad">{e(a.unverified or "not measured")}</span>'
        else:
            parity = _parity_html(a.parity)
        for check in a.runtime_checks or ():  # the same samples on the runtime browsers run
            parity += (f'<br>{e(check.runtime)}: ' + (_parity_html(check.parity) if check.parity else
                                                       f'<span class="bad">{e(check.not_checked or "")}</span>'))
        accuracy = f"{a.accuracy.top1:.4f} (source {a.accuracy.source_top1:.4f})" if a.accuracy else "-"
        lat_text = (" / ".join(f"{float(lat[k]):.3f}" if lat.get(k) is not None else "-"
                               for k in ("p50_ms", "p95_ms", "p99_ms")) if lat else "-")
        rows.append(f"<tr><td>{e(a.target)}</td><td>{e(a.format)}</td><td>{e(a.precision)}</td>"
                    f"<td>{human_size(a.size_bytes)}</td><td>{f'{a.size_ratio:.2f}x' if a.size_ratio else '-'}</td>"
                    f"<td>{parity}</td><td>{accuracy}</td><td>{lat_text}</td><td>{e(str(lat.get('provider', '-')))}</td></tr>")
    selections = []
    for s in manifest.selections or ():
        cands = "".join(
            f"<tr><td>{e(c.get('target', ''))}</td><td>{human_size(c.get('size_bytes'))}</td>"
            f"<td>{e(str(c.get('latency_p50_ms', '-')))}</td><td>{e(c.get('latency_runtime', '-'))}</td>"
            f"<td>{e(c.get('verdict', ''))}</td></tr>"
            for c in s.candidates)
        selections.append(f"<h3>{e(s.family)}-auto: {e(s.chosen or 'nothing chosen')}</h3><p>{e(s.reason)}</p>"
                          "<table><tr><th>candidate</th><th>size</th><th>p50 ms</th><th>measured on</th><th>verdict</th></tr>"
                          f"{cands}</table>")
    failures = "".join(f"<li><b>{e(f.target)}</b>: {e(f.error)}</li>" for f in manifest.failures or ())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(manifest.name)} {e(manifest.version)}: edgekit report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>
<h1>{e(manifest.name)} {e(manifest.version)}</h1>
<p class="muted">{e(manifest.source.format)} source {e(manifest.source.file)}, {e(manifest.created_by)},
{e(manifest.created_at or '')}{(', measured on ' + e(host)) if host else ''}</p>
<h2>Artifacts</h2>
<table><tr><th>target</th><th>format</th><th>precision</th><th>size</th><th>ratio</th><th>parity</th>
<th>top-1 accuracy</th><th>latency p50 / p95 / p99 ms</th><th>provider</th></tr>{''.join(rows)}</table>
<h2>Plots</h2><div class="plots">
<figure><figcaption>Size against accuracy</figcaption>{size_accuracy_svg(manifest)}</figure>
<figure><figcaption>Latency by target</figcaption>{latency_svg(latency)}</figure></div>
{'<h2>Automatic precision</h2>' + ''.join(selections) if selections else ''}
{'<h2>Failed targets</h2><ul>' + failures + '</ul>' if failures else ''}
</body></html>
"""


def host_text() -> str:
    """The host latencies were measured on, as the report names it."""
    import os
    import platform

    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"


def write_report(bundle: Path, out: Path | None = None, *, latency: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write the report of ``bundle`` to ``out`` (default: ``BUNDLE/report.html``) atomically. ``latency``
    is what :func:`edgekit.runtimes.bench.report_latency` measured on this host (none: no latency plot)."""
    from edgekit.bundle import read_bundle

    manifest = read_bundle(bundle).manifest
    target = out or bundle / REPORT_NAME
    write_atomic(target, render(manifest, latency or {}, host=host_text() if latency else ""))
    return target


def latency_of(results: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Bench results (edgekit.runtimes.bench) keyed as the report expects."""
    return {f"{r.target} ({r.format})": {"p50_ms": r.p50_ms, "p95_ms": r.p95_ms, "p99_ms": r.p99_ms,
                                         "provider": r.provider}
            for r in results if not r.error}
