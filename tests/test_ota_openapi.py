"""The OTA service's OpenAPI document is complete: schemathesis with all its checks (no 5xx, every
status code documented, bodies and content types as documented, schema-valid data accepted,
invalid data refused...) on a bounded number of examples per operation, against a live service
holding a release, with an operator token and an enrolled device's token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.ota.operator import bundle_tar, call
from tests.conftest import ROOT
from tests.ota_helpers import LiveServer

pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")


def test_schemathesis_with_all_checks_finds_nothing(tmp_path: Path, ota_keys: Path, ota_bundles: dict[str, Path]) -> None:
    live = LiveServer(tmp_path / "server", ota_keys)
    try:
        operator = live.token("admin")
        call(live.url, "POST", "/v1/models/digits/channels/stable/releases?basis_points=5000", token=operator,
             data=bundle_tar(ota_bundles["v1"]), content_type="application/x-tar")
        device = call(live.url, "POST", "/v1/devices/enrol",
                      body={"device_id": "st-device", "enrolment_token": live.enrolment()})["device_token"]
        st = Path(sys.executable).parent / "schemathesis"
        run = subprocess.run([str(st), "--config-file", str(ROOT / "tests" / "data" / "schemathesis.toml"), "run",
                              f"{live.url}/openapi.json", "--checks", "all", "--max-examples", "25", "--seed", "7"],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path,
                             env={**os.environ, "EDGEKIT_ST_OPERATOR_TOKEN": operator, "EDGEKIT_ST_DEVICE_TOKEN": device,
                                  "NO_COLOR": "1"})
    finally:
        live.stop()
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "Tested: 15" in run.stdout and " failure" not in run.stdout.split("SUMMARY")[-1], run.stdout[-3000:]
