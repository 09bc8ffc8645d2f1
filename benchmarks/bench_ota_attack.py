"""Benchmark: the OTA path under attack, in one run.

  conformance  the TUF conformance suite (android-demo/ota-client/tuf-conformance, with its default
               ecdsa keys) against the Kotlin client's CLI and against python-tuf's own client (the
               suite's clients/python-tuf, python-tuf 7.0.0 from the suite's pins): tests passed of all.
  attack       `edgekit serve`'s app (uvicorn, default server.Limits) on loopback. Device update checks
               (GET metadata/timestamp.json, one at a time) are timed before and during an attack:
               a gzip bomb (1 GiB of zeros, about 1 MB on the wire), a tar of 100,000 members, 800
               connections that never finish their headers and 20 uploads dripping a byte a second.
               Reported: the check latency P50/P99 before and during, how long each refusal took and
               its status, and how many slow connections the service had closed 12 s later.

Run: .venv/bin/python benchmarks/bench_ota_attack.py [--part conformance|attack]
(needs `make build/tuf-conformance/.installed` and the Kotlin jar: android-demo/ota-client/bin/build)
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT))
SUITE = ROOT / "build" / "tuf-conformance"


def conformance() -> dict[str, Any]:
    python = SUITE / "venv" / "bin" / "python"
    clients = {"edgekit Kotlin client": ROOT / "android-demo" / "ota-client" / "bin" / "edgekit-tuf-client",
               "python-tuf 7.0.0 (the suite's own client)": SUITE / "src" / "clients" / "python-tuf" / "python_tuf.py"}
    out = {}
    for name, entry in clients.items():
        started = time.perf_counter()
        run = subprocess.run([str(python), "-m", "pytest", "tuf_conformance", "-q", "-p", "no:cacheprovider",
                              "-c", str(SUITE / "src" / "pyproject.toml"), "--rootdir", str(SUITE / "src"),
                              "--entrypoint", str(entry)],
                             cwd=SUITE / "src", capture_output=True, text=True,
                             env={"PATH": f"{python.parent}:/usr/bin:/bin"})
        summary = run.stdout.strip().splitlines()[-1]
        counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|xfailed|xpassed|error)", summary)}
        out[name] = {"passed": counts.get("passed", 0), "of": sum(counts.values()), "summary": summary,
                     "seconds": round(time.perf_counter() - started, 1)}
        print(f"{name:45s} {out[name]['passed']}/{out[name]['of']}  ({summary})", flush=True)
    return out


def _status(host: str, port: int, request: bytes, timeout: float = 120.0) -> int:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(request)
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                return 0
            head += chunk
    return int(head.split(b" ", 2)[1])


def _upload(path: str, body: bytes, token: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/gzip\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def _bomb(size: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=9) as tar:
        info = tarfile.TarInfo("digits.onnx")
        info.size = size

        class Zeros(io.RawIOBase):
            left = size

            def readable(self) -> bool:
                return True

            def readinto(self, b: Any) -> int:
                n = min(len(b), self.left)
                b[:n] = bytes(n)
                self.left -= n
                return n

        tar.addfile(info, io.BufferedReader(Zeros(), 1 << 20))
    return out.getvalue()


def attack() -> dict[str, Any]:
    from edgekit.ota.service.repository import generate_keys
    from tests.ota_helpers import LiveServer, SlowClients, tar_of_members

    work = Path(tempfile.mkdtemp(prefix="edgekit-bench-attack-"))
    generate_keys(work / "keys")
    live = LiveServer(work / "data", work / "keys")
    host, port = live.url.removeprefix("http://").split(":")
    token = live.token("publish")
    publish = "/v1/models/digits/channels/stable/releases"
    check = b"GET /metadata/timestamp.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    bomb, members = _bomb(1 << 30), tar_of_members(100_000)

    def latencies(seconds: float) -> list[float]:
        out, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            started = time.perf_counter()
            assert _status(host, int(port), check) == 200
            out.append(time.perf_counter() - started)
        return out

    def pct(values: list[float], q: float) -> float:
        return round(sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000, 2)

    before = latencies(5.0)
    clients = SlowClients(live.url, headers=800, drips=20, path=publish, token=token)
    refusals: dict[str, Any] = {}

    def send(name: str, body: bytes) -> None:
        started = time.perf_counter()
        status = _status(host, int(port), _upload(publish, body, token))
        refusals[name] = {"status": status, "seconds": round(time.perf_counter() - started, 2), "upload_bytes": len(body)}

    attackers = [threading.Thread(target=send, args=("gzip bomb (1 GiB of zeros)", bomb)),
                 threading.Thread(target=send, args=("tar of 100,000 members", members))]
    for t in attackers:
        t.start()
    during = latencies(8.0)
    for t in attackers:
        t.join()
    time.sleep(max(0.0, 12.0 - 8.0))
    closed = clients.closed_by_server()
    live.stop()
    shutil.rmtree(work, ignore_errors=True)
    result = {"check_ms_before": {"p50": pct(before, 0.5), "p99": pct(before, 0.99), "n": len(before)},
              "check_ms_during": {"p50": pct(during, 0.5), "p99": pct(during, 0.99), "max": pct(during, 1.0),
                                  "n": len(during)},
              "refusals": refusals, "slow_connections_closed": f"{closed} of 820",
              "p50_ratio_during_over_before": round(statistics.median(during) / statistics.median(before), 2)}
    print(json.dumps(result, indent=1), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--part", choices=("conformance", "attack"), action="append")
    parts = parser.parse_args().part or ["conformance", "attack"]
    out = {}
    if "conformance" in parts:
        out["conformance"] = conformance()
    if "attack" in parts:
        out["attack"] = attack()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
