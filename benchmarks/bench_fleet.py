"""Benchmark: fleet telemetry ingest on one replica, and the update check while ingest runs.

One run, one data directory (the digits bundle published to 100%, 1,000 enrolled devices):
  ingest         wrk POSTs telemetry batches (edgekit.ota.telemetry, as a device's Telemetry writes them:
                 one model release, a latency histogram over ~20 buckets, an error count, the load time),
                 each from one of the devices with its own token, 64 connections, 20 s: batches/s
                 accepted (200), and their P50/P99. The rate limits per device (12 a minute by default;
                 a device sends one every 5 minutes) and per address (every device here is loopback)
                 are lifted, so 1,000 devices stand in for a fleet (one replica taking B batches/s
                 serves B x 300 devices that send every 5 minutes).
  check          the update check (bench_ota.py's: GET metadata/<N+1>.root.json and timestamp.json),
                 20 connections, alone and again while the ingest runs: P50/P99.
``edgekit serve`` with its defaults (granian, 1 worker: one replica) and again with ``--workers 2``; SQLite,
the embedded registry. With EDGEKIT_BENCH_POSTGRES (a postgresql:// URL, e.g. `make services`' one), also
1 and 2 replicas (``edgekit serve --registry URL``, one worker each, each its own wrk) on one PostgreSQL.
wrk takes one thread per load on this 2-core machine, which it shares with the servers (and PostgreSQL).

Run: .venv/bin/python benchmarks/bench_fleet.py   (about 2 minutes, 4 with PostgreSQL; needs Debian's wrk)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ota import CHECK_LUA, _free_port, _wait, _wrk  # noqa: E402
from common import ROOT  # noqa: E402

DEVICES = 1000
INGEST_LUA = """
local items = dofile("{items}")
local i = 0
request = function()
  i = i + 1
  local it = items[(i % #items) + 1]
  return wrk.format("POST", "/v1/telemetry", {{["Content-Type"] = "application/json",
                    ["Authorization"] = "Bearer " .. it[1]}}, it[2])
end
"""


def _batches(tokens: dict[str, str], model: str = "digits") -> str:
    """A Lua table of {token, body}: one realistic batch per device."""
    import random

    from edgekit.histogram import LatencyHistogram
    from edgekit.ota.telemetry import Point, make_batch

    rng = random.Random(0)
    rows = []
    for i, (device, token) in enumerate(tokens.items()):
        h = LatencyHistogram()
        for _ in range(200):
            h.add(int(rng.lognormvariate(14.2, 0.35)))  # about 1.5 ms, a spread over ~20 buckets
        resource = {"os.type": "android", "host.arch": "arm64", "edgekit.accelerator": "nnapi",
                    "edgekit.device.tier": ("high", "low")[i % 2]}
        point = Point(model, "stable", 1, "tflite-int8", "litert", "", h, {"InferenceError": rng.randint(0, 2)}, 0.04)
        body = json.dumps(make_batch(device, resource, [point], start_ns=1, end_ns=2), separators=(",", ":"))
        rows.append(f"{{[==[{token}]==], [==[{body}]==]}}")
    return "return {\n" + ",\n".join(rows) + "\n}\n"


def _serve(tmp: Path, port: int, workers: int, registry: str | None) -> subprocess.Popen[bytes]:
    limits = {"telemetry_per_device_per_min": 1e9, "reports_per_address_per_min": 1e9}  # one address: loopback
    env = {**os.environ, "EDGEKIT_OTA_LIMITS": json.dumps(limits)}
    return subprocess.Popen([str(Path(sys.executable).parent / "edgekit"), "serve", "--data", str(tmp / "data"),
                             "--keys", str(tmp / "keys"), "--port", str(port), "--workers", str(workers),
                             *(["--registry", registry] if registry else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _setup(tmp: Path, registry: str | None, model: str) -> tuple[Path, Path]:
    """Keys, a repository with ``model`` published to 100%, DEVICES enrolled; the wrk scripts."""
    from edgekit.ota.service.core import OtaService
    from edgekit.ota.service.repository import Repository, generate_keys

    generate_keys(tmp / "keys")
    service = OtaService.embedded(tmp / "data", tmp / "keys", registry_url=registry)
    Repository.create(service.storage, tmp / "keys")
    bundle = tmp / "digits"
    subprocess.run([str(Path(sys.executable).parent / "edgekit"), "convert", str(ROOT / "examples/digits/digits.onnx"),
                    "-t", "onnx-web-int8", "--calibration", str(ROOT / "examples/digits/digits.npz"), "--name", model,
                    "--out", str(bundle), "--no-report"], check=True, capture_output=True)
    service.publish(model, "stable", bundle, basis_points=10000)
    enrolment = service.registry.create_enrolment("bench", DEVICES)
    prefix = f"{model}-device"
    tokens = {f"{prefix}-{i}": service.registry.enrol(f"{prefix}-{i}", enrolment) for i in range(DEVICES)}
    service.close()
    service.registry.close()
    items = tmp / "items.lua"
    items.write_text(_batches(tokens, model))
    ingest = tmp / "ingest.lua"
    ingest.write_text(INGEST_LUA.format(items=items))
    check = tmp / "check.lua"
    check.write_text(CHECK_LUA)
    return ingest, check


def _single(tmp: Path, ingest: Path, check: Path, workers: int) -> dict[str, Any]:
    port = _free_port()
    proc = _serve(tmp, port, workers, None)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url + "/metadata/timestamp.json")
        _wrk(url, 20, 3, check)
        _wrk(url, 16, 3, ingest)  # warm up
        alone = _wrk(url, 20, 10, check)
        ingest_alone = _wrk(url, 64, 20, ingest)
        during: dict[str, Any] = {}
        loaded = threading.Thread(target=lambda: during.update(_wrk(url, 64, 20, ingest)))
        loaded.start()
        checks_during = _wrk(url, 20, 15, check)
        loaded.join()
    finally:
        _stop([proc])
    return {"ingest_batches_per_s": round(ingest_alone["requests_per_s"], 1),
            "ingest_p50_ms": ingest_alone["p50_ms"], "ingest_p99_ms": ingest_alone["p99_ms"],
            "ingest_refused": ingest_alone["non_2xx_3xx"],
            "check_alone_p50_ms": alone["p50_ms"], "check_alone_p99_ms": alone["p99_ms"],
            "checks_per_s_alone": round(alone["requests_per_s"] / 2, 1),
            "ingest_batches_per_s_during_checks": round(during["requests_per_s"], 1),
            "check_during_ingest_p50_ms": checks_during["p50_ms"], "check_during_ingest_p99_ms": checks_during["p99_ms"],
            "checks_per_s_during_ingest": round(checks_during["requests_per_s"] / 2, 1),
            "ingest_refused_during_checks": during["non_2xx_3xx"]}


def _replicas(tmp: Path, ingest: Path, registry: str, count: int) -> dict[str, Any]:
    ports = [_free_port() for _ in range(count)]
    procs = [_serve(tmp, port, 1, registry) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url in urls:
            _wait(url + "/metadata/timestamp.json")
            _wrk(url, 16, 3, ingest)
        got: list[dict[str, Any]] = [{} for _ in urls]
        loads = [threading.Thread(target=lambda i=i, url=url: got[i].update(_wrk(url, 64 // count, 20, ingest)))
                 for i, url in enumerate(urls)]
        for t in loads:
            t.start()
        for t in loads:
            t.join()
    finally:
        _stop(procs)
    return {"ingest_batches_per_s": round(sum(g["requests_per_s"] for g in got), 1),
            "ingest_p99_ms": max(g["p99_ms"] for g in got), "ingest_refused": sum(g["non_2xx_3xx"] for g in got)}


def main() -> None:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ingest, check = _setup(tmp, None, "digits")
        for workers in (1, 2):
            name = f"edgekit serve --workers {workers} (SQLite)"
            results[name] = _single(tmp, ingest, check, workers)
            print(name, json.dumps(results[name]), flush=True)
    postgres = os.environ.get("EDGEKIT_BENCH_POSTGRES")
    if postgres:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            ingest, _ = _setup(tmp, postgres, f"bench{os.getpid()}")
            for count in (1, 2):
                name = f"{count} replica(s) on PostgreSQL"
                results[name] = _replicas(tmp, ingest, postgres, count)
                print(name, json.dumps(results[name]), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
