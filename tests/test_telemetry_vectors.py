"""Fleet telemetry is one format on every device: the Python device, the browser library (web/src/telemetry.js,
run here in node) and the Kotlin client (its unit tests read the same file, tests/test_kotlin_client.py runs
them) agree with tests/data/telemetry-vectors.json; the browser library's batches reach the service."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.telemetry_vectors import BATCHES, VECTORS, compute

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node (Debian: apt-get install nodejs) runs the browser library")


def test_the_vectors_are_what_python_computes() -> None:
    assert json.loads(VECTORS.read_text(encoding="utf-8")) == json.loads(json.dumps(compute()))


def test_the_service_reads_each_vector_batch_back_to_what_was_recorded() -> None:
    from edgekit.ota.telemetry import parse_batch

    for vector in json.loads(VECTORS.read_text())["batches"]:
        given = vector["input"]
        batch = parse_batch(vector["batch"])
        assert batch.device_id == given["device_id"] and batch.resource == given["resource"]
        for point, recorded in zip(batch.points, given["points"], strict=True):
            assert (point.model, point.release, point.provider) == (recorded["model"], recorded["release"], recorded["provider"])
            assert point.latency.count == len(recorded["durations_ns"])
            assert point.latency.total_ns == sum(recorded["durations_ns"])
            assert point.errors == recorded["errors"] and point.passed_over == recorded["passed_over"]
            assert point.load_seconds == recorded["load_seconds"]


@needs_node
def test_the_browser_library_gives_the_same_answers() -> None:
    out = subprocess.run([str(NODE), str(ROOT / "tests" / "js" / "telemetry_vectors.mjs"), str(VECTORS)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    vectors = json.loads(VECTORS.read_text())
    for key in ("buckets", "uppers", "explicit", "since", "empty", "percentiles_ms"):
        assert got[key] == vectors["histogram"][key], key
    assert got["batches"] == [v["batch"] for v in vectors["batches"]]


@needs_node
def test_the_browser_library_sends_batches_the_service_takes(ota_keys: Path, ota_bundles: dict[str, Path],
                                                             tmp_path: Path) -> None:
    from tests.ota_helpers import LiveServer

    live = LiveServer(tmp_path / "server", ota_keys)
    try:
        live.service.publish("digits", "stable", ota_bundles["v1"], basis_points=10000)
        given = BATCHES[1]
        point = given["points"][0]
        runs = tmp_path / "runs.json"
        runs.write_text(json.dumps({"resource": given["resource"], "points": [point]}))
        out = subprocess.run([str(NODE), str(ROOT / "tests" / "js" / "telemetry_send.mjs"), live.url, "http://127.0.0.1:9",
                              live.enrolment(), given["device_id"], str(runs)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        got: dict[str, Any] = json.loads(out.stdout)
        assert got["offline"] == {"sent": 0, "kept": 1, "refused": []}  # unreachable: it waits
        assert got["sent"] == {"sent": 1, "kept": 0, "refused": []} and got["queuedAfter"] == 0
        assert got["again"] is None  # nothing new: no batch
        assert got["kept"] == got["ends"][-2:]  # offline long: the newest two of four kept
        [cls] = live.service.fleet_status("digits", "stable")["comparison"]["classes"]
        assert cls["device_class"] == "linux/amd64/none/-"
        figures = cls["canary"]
        assert figures["inferences"] == len(point["durations_ns"]) and figures["errors"] == 0
        assert figures["passed_over"] == ["webgpu"] and figures["load_ms"] == pytest.approx(1500)
        assert cls["canary_providers"] == {"wasm": len(point["durations_ns"])}
    finally:
        live.stop()
