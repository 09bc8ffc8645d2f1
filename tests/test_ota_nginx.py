"""The documented way to scale the device paths: examples/nginx/edgekit-ota.conf, run as it is (only
its paths and ports replaced), serves TUF metadata and targets from the service's files and passes the
API through. A real device installs through it and its report reaches the service."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekit.ota import contract
from edgekit.ota.device import Updater
from edgekit.ota.operator import bundle_tar, call
from tests.ota_helpers import LiveServer

pytest.importorskip("tuf")
pytest.importorskip("fastapi")
ROOT = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fronted(tmp_path: Path, ota_keys: Path) -> Iterator[tuple[LiveServer, str]]:
    live = LiveServer(tmp_path / "data", ota_keys)
    port = _free_port()
    site = (ROOT / "examples/nginx/edgekit-ota.conf").read_text()
    site = (site.replace("/srv/edgekit/data", str(tmp_path / "data")).replace("127.0.0.1:8081", f"127.0.0.1:{port}")
            .replace("http://127.0.0.1:8080", live.url))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\ndaemon off;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path};\n  proxy_temp_path {tmp_path};\n"
        f"  include {tmp_path}/site.conf;\n}}\n" + ("user root;\n" if __import__("os").geteuid() == 0 else ""))
    proc = subprocess.Popen([NGINX, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 10
    while True:
        try:
            urllib.request.urlopen(url + "/metadata/timestamp.json", timeout=1)  # noqa: S310
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"nginx did not start: {proc.stderr.read() if proc.stderr else ''}") from None
            time.sleep(0.05)
    yield live, url
    proc.terminate()
    proc.wait(timeout=10)
    live.stop()


def test_a_device_installs_through_nginx(fronted: tuple[LiveServer, str], digits_bundle: Path, tmp_path: Path) -> None:
    live, url = fronted
    # publishing goes through nginx to the service
    release = call(url, "POST", "/v1/models/digits/channels/stable/releases?basis_points=10000",
                   token=live.token("publish"), data=bundle_tar(digits_bundle), content_type="application/x-tar")
    assert release["release"] == 1
    # nginx, not the service, answers the device paths, with the caching the files allow
    stamp = urllib.request.urlopen(url + "/metadata/timestamp.json")  # noqa: S310
    assert stamp.headers["Server"].startswith("nginx") and stamp.headers["Cache-Control"] == "no-cache"
    versioned = urllib.request.urlopen(url + "/metadata/1.root.json")  # noqa: S310
    assert "immutable" in versioned.headers["Cache-Control"]
    art = next(f for f in release["files"] if f["kind"] == "artifact")
    key = contract.target_key(contract.target_path("digits", "stable", 1, art["file"]), art["sha256"])
    part = urllib.request.urlopen(urllib.request.Request(f"{url}/{key}", headers={"Range": "bytes=0-9"}))  # noqa: S310
    assert part.status == 206 and len(part.read()) == 10 and "immutable" in part.headers["Cache-Control"]

    device = Updater(url, tmp_path / "device", "dev-1", live.service.repo.root_bytes(), enrolment_token=live.enrolment())
    result = device.update("digits", "stable")
    assert result.status == "installed" and result.release == 1
    assert live.registry.outcomes("digits", "stable", 1).get("installed") == 1  # the report went through nginx
