"""Benchmark: the OTA service's device paths against nginx serving the same files, on loopback.

In one run, with the same data directory (a repository holding the digits bundle):
  update check   what python-tuf's client fetches when nothing changed: GET metadata/<N+1>.root.json
                 (404: no root rotation) and GET metadata/timestamp.json. 200 concurrent simulated
                 devices (wrk, 2 threads, 200 connections, 15 s): checks/s (requests/s / 2) and the
                 request latency P50/P99. Aim: at least 0.5x nginx's checks/s and at most 2x its P99.
  download       one 64 MB target file, 8 connections (wrk, 10 s): MB/s.
Every server gets 2 worker processes (edgekit serve --workers 2 on granian, its default, and on
uvicorn; nginx worker_processes 2) on this 2-core machine, which wrk shares.

Run: .venv/bin/python benchmarks/bench_ota.py   (about 2 minutes; needs Debian's wrk and nginx)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

CHECK_LUA = """
local paths = {"/metadata/2.root.json", "/metadata/timestamp.json"}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % 2) + 1])
end
"""
NGINX_CONF = """
user root;
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
daemon off;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    etag on;
  }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, seconds: float = 30) -> None:
    import urllib.error
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def _wrk(url: str, connections: int, seconds: int, script: Path | None = None) -> dict[str, Any]:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        args += ["-s", str(script)]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    scale = {"B": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3}
    mb_s = float(transfer.group(1)) * scale.get(transfer.group(2), 1.0) if transfer else float("nan")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests_per_s": rps, "p50_ms": ms("50%"), "p99_ms": ms("99%"), "mb_per_s": mb_s,
            "non_2xx_3xx": int(errors.group(1)) if errors else 0}


def main() -> None:
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install -y wrk nginx")
    from edgekit.ota.service.core import OtaService
    from edgekit.ota.service.repository import Repository, generate_keys

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        generate_keys(tmp / "keys")
        service = OtaService.embedded(tmp / "data", tmp / "keys")
        Repository.create(service.storage, tmp / "keys")
        bundle = tmp / "digits"
        subprocess.run([str(Path(sys.executable).parent / "edgekit"), "convert", str(ROOT / "examples/digits/digits.onnx"),
                        "-t", "onnx-web-int8", "--calibration", str(ROOT / "examples/digits/digits.npz"),
                        "--out", str(bundle), "--no-report"], check=True, capture_output=True)
        service.publish("digits", "stable", bundle, basis_points=10000)
        big = "targets/bench/" + "0" * 64 + ".big.bin"
        service.storage.put(big, os.urandom(64 << 20))
        files = tmp / "data" / "files"
        script = tmp / "check.lua"
        script.write_text(CHECK_LUA)

        edgekit_port, uvicorn_port, nginx_port = _free_port(), _free_port(), _free_port()
        servers = [subprocess.Popen([str(Path(sys.executable).parent / "edgekit"), "serve", "--data", str(tmp / "data"),
                                     "--keys", str(tmp / "keys"), "--port", str(port), "--workers", "2", "--server", kind],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for port, kind in ((edgekit_port, "granian"), (uvicorn_port, "uvicorn"))]
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, port=nginx_port, root=files))
        nginx = subprocess.Popen(["nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            urls = {"edgekit serve": f"http://127.0.0.1:{edgekit_port}",
                    "edgekit serve --server uvicorn": f"http://127.0.0.1:{uvicorn_port}",
                    "nginx": f"http://127.0.0.1:{nginx_port}"}
            for url in urls.values():
                _wait(url + "/metadata/timestamp.json")
            for url in urls.values():  # warm up (caches, worker start)
                _wrk(url, 50, 3, script)
            for name, url in urls.items():
                check = _wrk(url, 200, 15, script)
                check["checks_per_s"] = check["requests_per_s"] / 2
                results.setdefault("update_check_200_devices", {})[name] = check
            for name, url in urls.items():
                results.setdefault("download_64MB_8_connections", {})[name] = _wrk(url + "/" + big, 8, 10)
        finally:
            for proc in (*servers, nginx):
                proc.terminate()
            for proc in (*servers, nginx):
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    check = results["update_check_200_devices"]
    results["check_ratio_edgekit_over_nginx"] = round(check["edgekit serve"]["checks_per_s"] / check["nginx"]["checks_per_s"], 2)
    results["check_p99_ratio_edgekit_over_nginx"] = round(check["edgekit serve"]["p99_ms"] / check["nginx"]["p99_ms"], 2)
    download = results["download_64MB_8_connections"]
    results["download_ratio_nginx_over_edgekit"] = round(download["nginx"]["mb_per_s"] / download["edgekit serve"]["mb_per_s"], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
