"""Publishing survives SIGKILL: the service process is killed at random moments during a publish
(20 tries), restarted, and the publish retried as `edgekit publish` retries it. No retry makes a
second release of the same files, and no versioned metadata file ever gets different bytes."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from edgekit.errors import EdgekitError
from edgekit.ota.operator import bundle_tar, call
from tests.conftest import run_cli
from tests.ota_helpers import edit_manifest

pytest.importorskip("fastapi")
pytestmark = pytest.mark.slow
TRIES = 20


class Serve:
    """`edgekit serve` as its own process (so it can be SIGKILLed)."""

    def __init__(self, data: Path, keys: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        edgekit = str(Path(sys.executable).parent / "edgekit")
        self.proc = subprocess.Popen([edgekit, "serve", "--data", str(data), "--keys", str(keys), "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(400):
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1)  # noqa: S310
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("edgekit serve did not start")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


def _versioned(data: Path) -> dict[str, str]:
    """sha256 of every versioned metadata file (N.role.json) the service has written."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.rglob("metadata/*.json") if p.name[0].isdigit()}


def test_sigkill_during_publish_never_duplicates_a_release_or_rewrites_metadata(tmp_path: Path,
                                                                                ota_bundles: dict[str, Path]) -> None:
    keys, data = tmp_path / "keys", tmp_path / "data"
    assert run_cli("ota", "keygen", keys).exit_code == 0
    assert run_cli("ota", "init", "--data", data, "--keys", keys).exit_code == 0
    token = run_cli("ota", "token", "--data", data, "--name", "ci", "--scope", "publish").stdout.strip()
    rng = random.Random(17)
    seen: dict[str, str] = {}
    killed_mid_request = 0
    path = "/v1/models/digits/channels/stable/releases?basis_points=5000"
    for i in range(TRIES):
        bundle = tmp_path / "bundles" / str(i)
        shutil.copytree(ota_bundles["v1"], bundle)
        edit_manifest(bundle, lambda m, i=i: m.update(version=f"1.0.{i}"))
        tar = bundle_tar(bundle)
        server = Serve(data, keys)
        outcome: dict[str, Any] = {}

        def publish(url: str = server.url, tar: bytes = tar, outcome: dict[str, Any] = outcome) -> None:
            try:
                outcome["answer"] = call(url, "POST", path, token=token, data=tar, content_type="application/x-tar")
            except EdgekitError as exc:
                outcome["error"] = exc

        sender = threading.Thread(target=publish)
        sender.start()
        time.sleep(rng.uniform(0.0, 0.08))
        server.kill()
        sender.join(timeout=30)
        killed_mid_request += "error" in outcome
        before = _versioned(data)
        for name, digest in seen.items():
            assert before[name] == digest, f"try {i}: {name} changed bytes"
        seen.update(before)

        server = Serve(data, keys)  # a restart re-signs what the registry holds, then the client retries
        try:
            answer = call(server.url, "POST", path, token=token, data=tar, content_type="application/x-tar")
            if "answer" in outcome:
                assert answer["already_published"] and answer["release"] == outcome["answer"]["release"]
            releases = call(server.url, "GET", "/v1/models/digits/channels/stable", token=token)["releases"]
            mine = [r for r in releases if r["version"] == f"1.0.{i}"]
            assert len(mine) == 1, f"try {i}: {len(mine)} releases of the same bundle"
            assert [r["release"] for r in releases] == list(range(1, len(releases) + 1))
        finally:
            server.kill()
        after = _versioned(data)
        for name, digest in seen.items():
            assert after[name] == digest, f"try {i}: {name} changed bytes across the restart"
        seen.update(after)
    assert killed_mid_request >= 3  # the kills did land mid-publish, not only before or after
    assert len(json.dumps(seen)) > 0
