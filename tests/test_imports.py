"""The thin device side must not load a training framework or converter (architecture rule)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("tensorflow", "torch", "coremltools", "onnx", "keras", "tf2onnx", "onnxslim", "onnxconverter_common", "onnx2tf",
         "tf_keras", "litert_torch", "jax")


def _loaded_after(statement: str) -> list[str]:
    code = (
        f"import sys, json\n{statement}\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_edgekit_and_runtimes_loads_no_heavy_module() -> None:
    assert _loaded_after("import edgekit, edgekit.runtimes") == []


def test_import_converters_and_cli_loads_no_heavy_module() -> None:
    # The CLI lists targets and checks flags without a framework; passes import theirs when run.
    assert _loaded_after("import edgekit.converters, edgekit.cli") == []


def test_opening_a_session_loads_no_heavy_module(tmp_path) -> None:
    from tests.conftest import DIGITS

    stmt = f"import edgekit.runtimes as r; s = r.open({str(DIGITS / 'digits.onnx')!r}); assert s.provider"
    assert _loaded_after(stmt) == []


def test_lazy_public_names_resolve() -> None:
    import edgekit

    assert callable(edgekit.convert)
    assert edgekit.read_bundle is not None


def test_running_a_tflite_artifact_loads_no_heavy_module(tmp_path) -> None:
    """ai-edge-litert runs .tflite files without TensorFlow (a converted bundle's file is enough)."""
    import pytest

    from tests.conftest import DIGITS

    pytest.importorskip("tensorflow")
    from edgekit.converters import convert

    bundle = convert(DIGITS / "digits.keras", ["tflite-dynamic-int8"], out=tmp_path / "b").bundle
    stmt = (f"import numpy as np, edgekit.runtimes as r; s = r.open({str(bundle.path)!r}); "
            "s.run({'x': np.zeros((2, 1, 8, 8), np.float32)})")
    assert _loaded_after(stmt) == []


SERVER_SIDE = ("fastapi", "starlette", "uvicorn", "granian", "pydantic", "prometheus_client", "psycopg", "boto3", "botocore")


def test_the_ota_device_client_loads_no_server_or_heavy_module() -> None:
    """The device side of OTA stays light: tuf and cryptography, never the service's stack."""
    code = ("import sys, json, edgekit.cli, edgekit.ota, edgekit.ota.device, edgekit.ota.contract\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {SERVER_SIDE + HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


CLI_STACK = ("typer", "click", "rich", "pygments", "pydantic", "shellingham", "markdown_it")


def test_the_base_install_is_the_runtime_without_the_cli_stack() -> None:
    """docs/adr/0014: `pip install edgekit` is numpy and onnxruntime; the CLI comes with an extra."""
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert sorted(d.split(">")[0].split("=")[0] for d in project["dependencies"]) == ["numpy", "onnxruntime"]
    extras = project["optional-dependencies"]
    assert extras["cli"] == ["typer>=0.12"]
    for extra in ("onnx", "ota-server", "all"):  # converting or serving brings the command
        assert any(d.startswith("edgekit[") and "cli" in d for d in extras[extra]), extra
    statement = "import edgekit, edgekit.runtimes, edgekit.ota.device"
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {CLI_STACK!r})))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_command_without_its_extra_says_how_to_get_it() -> None:
    code = "import sys; sys.modules['typer'] = None\nfrom edgekit._entry import main\nmain()"
    out = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "pip install 'edgekit[cli]'" in out.stderr
    ok = subprocess.run([sys.executable, "-m", "edgekit", "--version"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("edgekit "), ok.stderr
