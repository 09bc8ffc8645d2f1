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
    page.close()


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
    page.close()


def test_no_report_flag(tmp_path: Path) -> None:
    out = tmp_path / "b"
    result = run_cli("convert", DIGITS / "digits.onnx", "-t", "onnx-web", "--no-report", "--out", out)
    assert result.exit_code == 0, result.output
    assert not (out / "report.html").exists()
