"""Shared fixtures: the bundled digits example, converted once per test session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from edgekit.cli import app

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
WEB_TARGETS = ["onnx-web", "onnx-web-fp16", "onnx-web-int8"]


def pytest_report_header(config: pytest.Config) -> str:
    """Name the host: int8 kernels compute differently with and without VNNI (docs/adr/0009)."""
    from edgekit._host import describe_cpu

    return f"edgekit: CPU {describe_cpu()}"


def run_cli(*args: str):
    """Run the edgekit CLI in-process; returns the click Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def digits_onnx() -> Path:
    return DIGITS / "digits.onnx"


@pytest.fixture(scope="session")
def digits_npz() -> Path:
    return DIGITS / "digits.npz"


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory, digits_onnx: Path, digits_npz: Path) -> Path:
    """The quick start's conversion, run through the CLI once for every test that reads it."""
    out = tmp_path_factory.mktemp("bundles") / "digits"
    args = ["convert", digits_onnx, "--calibration", digits_npz, "--name", "digits", "--version", "1.0.0",
            "--out", out]
    for t in WEB_TARGETS:
        args += ["--target", t]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def bundle_copy(tmp_path: Path, digits_bundle: Path) -> Path:
    """A private copy of the digits bundle that a test may damage."""
    dst = tmp_path / "copy"
    shutil.copytree(digits_bundle, dst)
    return dst


# Debian's Chromium, driven by playwright (never `playwright install`); flags from ENVIRONMENT.md.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the whole session (each test opens its own context or page)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make test does)")
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield instance
        instance.close()


@pytest.fixture(scope="session")
def ota_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One set of OTA role keys for the session (generating keys is quick; repositories are per test)."""
    from edgekit.ota.service.repository import generate_keys

    folder = tmp_path_factory.mktemp("ota") / "keys"
    generate_keys(folder)
    return folder


@pytest.fixture(scope="session")
def ota_bundles(tmp_path_factory: pytest.TempPathFactory, digits_bundle: Path) -> dict[str, Path]:
    """v1 (the quick start's bundle), v2 (int8 only, converted again) and a v3 that verifies but does not load."""
    from edgekit.converters import convert
    from tests.ota_helpers import broken_bundle

    root = tmp_path_factory.mktemp("ota-bundles")
    v2 = convert(DIGITS / "digits.onnx", ["onnx-web-int8"], out=root / "v2", calibration=DIGITS / "digits.npz",
                 name="digits", version="2.0.0", report=False).bundle.path
    return {"v1": digits_bundle, "v2": v2, "v3": broken_bundle(v2, root / "v3", "3.0.0")}
