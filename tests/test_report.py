"""The bundle report: a self-contained page whose plots a real browser draws."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgekit.bundle import read_bundle
from tests.conftest import DIGITS, run_cli


@pytest.fixture(scope="module")
def auto_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "digits"
    result = run_cli("convert", DIGITS / "digits.onnx", "--calibration", DIGITS / "digits.npz",
                     "-t", "onnx-web-auto", "-t", "onnx-web", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def _open(browser: Any, page_path: Path) -> Any:
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(page_path.as_uri())
    assert all(url.startswith("file://") for url in requests), requests  # self-contained: no network
    return page


def test_convert_writes_a_report_and_the_browser_draws_its_plots(auto_bundle: Path, browser: Any) -> None:
    manifest = read_bundle(auto_bundle).manifest
    page = _open(browser, auto_bundle / "report.html")
    assert "digits" in page.title()
    points = page.eval_on_selector_all("#size-accuracy circle.point", """els => els.map(e => {
        const r = e.getBoundingClientRect(), box = e.ownerSVGElement.getBoundingClientRect();
        return {w: r.width, inside: r.left >= box.left && r.right <= box.right && r.top >= box.top
                && r.bottom <= box.bottom, fill: getComputedStyle(e).fill}; })""")
    # every artifact and every candidate not kept (three web candidates, fp32 also asked for)
    assert len(points) >= len(manifest.artifacts) + 1
    assert all(p["w"] > 0 and p["inside"] for p in points)
    assert {p["fill"] for p in points} >= {"rgb(255, 255, 255)"}  # hollow: a candidate that was not kept
    (selection,) = manifest.selections or ()
    assert page.locator(f"text=onnx-web-auto: {selection.chosen}").count() == 1
    _assert_readable(page, len(manifest.artifacts), any(a.format == "ort" for a in manifest.artifacts))
    page.close()


OVERLAPS = """sel => { const boxes = [...document.querySelectorAll(sel)].map(e => e.getBoundingClientRect());
    const hits = [];
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
        const a = boxes[i], b = boxes[j];
        if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) hits.push([i, j]);
    }
    return {count: boxes.length, hits}; }"""


def _assert_readable(page: Any, artifacts: int, has_ort: bool = False) -> None:
    """No two labels' boxes overlap (in either plot), the size axis has at least 3 ticks, there is a
    legend, every artifact has a point label (beside it or listed under the plot) and a latency bar
    labelled with the provider that ran it."""
    for plot in ("#size-accuracy", "#latency"):
        found = page.evaluate(OVERLAPS, f"{plot} text.label:not(.key)")
        assert found["count"] > 0 and found["hits"] == [], (plot, found)
    ticks = page.eval_on_selector_all("#size-accuracy text.x-tick", "els => els.map(e => e.textContent)")
    assert len(ticks) >= 3 and all(t.split()[-1] in ("B", "KB", "MB", "GB") for t in ticks), ticks
    legend = page.eval_on_selector_all("#size-accuracy text.legend", "els => els.map(e => e.textContent)")
    assert "onnx-web" in legend and any("hollow" in t for t in legend), legend
    labels = page.eval_on_selector_all("#size-accuracy text.label:not(.key)", "els => els.map(e => e.textContent)")
    assert sum("(onnx" in t or "(ort" in t for t in labels) >= artifacts, labels
    # ORT-format copies (kept only where they load faster here: timing decides) are validated on fewer samples: said so
    assert any("64 samples" in t for t in labels) == has_ort, labels
    bars = page.eval_on_selector_all("#latency text.label[text-anchor=end]", "els => els.map(e => e.textContent)")
    assert len(bars) >= artifacts and all(" · " in b for b in bars), bars  # each names what ran it
    assert sum(b.endswith(" · CPU") for b in bars) >= artifacts


def test_report_command_measures_latency_and_draws_bars(auto_bundle: Path, browser: Any, tmp_path: Path) -> None:
    out = tmp_path / "page.html"
    result = run_cli("report", auto_bundle, "--out", out, "--runs", "10")
    assert result.exit_code == 0, result.output
    page = _open(browser, out)
    bars = page.eval_on_selector_all("#latency rect.bar", "els => els.map(e => e.getBoundingClientRect().width)")
    assert len(bars) >= len(read_bundle(auto_bundle).manifest.artifacts)  # candidates timed while choosing, too
    assert all(width >= 1 for width in bars)
    cells = page.eval_on_selector_all("table tr td:nth-child(8)", "els => els.map(e => e.textContent)")
    assert any(" / " in c and c != "-" for c in cells)  # p50 / p95 / p99 in the table
    providers = page.eval_on_selector_all("table tr td:nth-child(9)", "els => els.map(e => e.textContent)")
    assert providers and all(p == "CPUExecutionProvider" for p in providers), providers
    arts = read_bundle(auto_bundle).manifest.artifacts
    _assert_readable(page, len(arts), any(a.format == "ort" for a in arts))
    page.close()


def test_size_ticks_are_round_and_at_least_three() -> None:
    from edgekit.report import size_ticks

    for lo, hi in ((150_000, 600_000), (1000, 3000), (2e6, 9e7), (400_000, 1_200_000)):  # the plot widens to 3x
        ticks = size_ticks(lo, hi)
        assert 3 <= len(ticks) <= 7, (lo, hi, ticks)
        assert all(lo <= v <= hi for v, _ in ticks)


def test_no_report_flag(tmp_path: Path) -> None:
    out = tmp_path / "b"
    result = run_cli("convert", DIGITS / "digits.onnx", "-t", "onnx-web", "--no-report", "--out", out)
    assert result.exit_code == 0, result.output
    assert not (out / "report.html").exists()
