"""OTA end to end on loopback: publish, staged rollout to a simulated fleet, halt, roll back; and the
attacks and faults a device must refuse or survive. Real TUF metadata (python-tuf), a real HTTP
service (uvicorn), real downloads, real installs and smoke tests on onnxruntime."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekit.errors import InvalidNameError, OtaRequestError, UpdateError, VerificationError
from edgekit.ota import contract
from edgekit.ota.device import Updater
from edgekit.ota.operator import bundle_tar, call
from edgekit.ota.service.core import HaltPolicy
from edgekit.ota.service.repository import Expiry
from tests.conftest import DIGITS, run_cli
from tests.ota_helpers import CuttingProxy, LiveServer

pytest.importorskip("tuf")
pytest.importorskip("fastapi")

FLEET = 40


@pytest.fixture
def server(tmp_path: Path, ota_keys: Path) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path / "server", ota_keys, halt=HaltPolicy(failure_rate_bp=2000, min_reports=5))
    yield live
    live.stop()


def _publish(server: LiveServer, bundle: Path, percent: float, token: str | None = None,
             model: str = "digits", channel: str = "stable") -> dict[str, Any]:
    token = token or server.token("publish")
    return call(server.url, "POST", f"/v1/models/{model}/channels/{channel}/releases?basis_points={round(percent * 100)}",
                token=token, data=bundle_tar(bundle), content_type="application/x-tar")


def _device(server: LiveServer, tmp_path: Path, i: int | str, root: bytes, url: str | None = None) -> Updater:
    return Updater(url or server.url, tmp_path / "devices" / str(i), f"device-{i}", root,
                   enrolment_token=server.enrolment())


def _root(server: LiveServer) -> bytes:
    return server.service.repo.root_bytes()


def _runs(updater: Updater) -> None:
    """The installed model loads and classifies the held-out digits well."""
    data = np.load(DIGITS / "digits.npz")
    session = updater.open("digits")
    logits = session.run({"x": data["x"][:64]})["logits"]
    assert (logits.argmax(1) == data["y"][:64]).mean() > 0.9


def test_fleet_rollout_halt_and_rollback(server: LiveServer, ota_bundles: dict[str, Path], tmp_path: Path) -> None:
    root = _root(server)
    fleet = [_device(server, tmp_path, i, root) for i in range(FLEET)]
    assert _publish(server, ota_bundles["v1"], 100)["release"] == 1
    assert {d.update("digits", "stable").status for d in fleet} == {"installed"}
    # v2 to half the fleet: exactly the devices whose bucket is under 5000 take it
    assert _publish(server, ota_bundles["v2"], 50)["release"] == 2
    expected = {i for i in range(FLEET) if contract.bucket(f"device-{i}", "digits/stable/2") < 5000}
    results = [d.update("digits", "stable") for d in fleet]
    updated = {i for i, r in enumerate(results) if r.status == "installed"}
    assert updated == expected and FLEET * 0.3 < len(updated) < FLEET * 0.7
    assert all(r.status == "up_to_date" for i, r in enumerate(results) if i not in updated)
    for i in updated:
        assert fleet[i].state("digits").active_version == "2.0.0" and fleet[i].state("digits").previous == 1
        _runs(fleet[i])
    outcomes = server.service.channel("digits", "stable")["releases"][1]["outcomes"]
    assert outcomes == {"installed": len(updated)}  # each device reported after its smoke test
    # to everyone
    rollout = run_cli("ota", "rollout", "--server", server.url, "--model", "digits", "--channel", "stable",
                      "--percent", "100", "--token", server.token("rollout"))
    assert rollout.exit_code == 0, rollout.output
    assert {d.update("digits", "stable").status for i, d in enumerate(fleet) if i not in updated} == {"installed"}
    assert {d.state("digits").active for d in fleet} == {2}
    # a release that verifies but does not load: devices refuse to switch, report, and the rollout halts itself
    assert _publish(server, ota_bundles["v3"], 50)["release"] == 3
    in_rollout = [d for i, d in enumerate(fleet) if contract.bucket(f"device-{i}", "digits/stable/3") < 5000]
    statuses = [d.update("digits", "stable").status for d in in_rollout]
    assert statuses[:5] == ["failed"] * 5 and set(statuses[5:]) <= {"up_to_date"}  # halted after 5 failures
    state = server.service.channel("digits", "stable")
    assert state["state"]["rollout"]["halted"] and "automatic: 5 of 5" in state["releases"][2]["halted_reason"]
    assert {d.state("digits").active for d in fleet} == {2}  # nobody lost a working model
    for d in fleet[:3]:
        _runs(d)
    # roll back to v1 for the whole channel: a new release counter, signed, that every device accepts
    back = run_cli("ota", "rollback", "--server", server.url, "--model", "digits", "--channel", "stable",
                   "--to-release", "1", "--token", server.token("rollout"), "--json")
    assert back.exit_code == 0, back.output
    assert json.loads(back.stdout)["release"] == 4 and json.loads(back.stdout)["rollback_of"] == 3
    assert {d.update("digits", "stable").status for d in fleet} == {"installed"}
    assert {(d.state("digits").active, d.state("digits").active_version) for d in fleet} == {(4, "1.0.0")}
    _runs(fleet[0])


def test_publish_and_rollout_need_a_token_with_the_scope(server: LiveServer, ota_bundles: dict[str, Path]) -> None:
    with pytest.raises(OtaRequestError, match="HTTP 401.*needs an API token"):
        call(server.url, "POST", "/v1/models/digits/channels/stable/releases", data=bundle_tar(ota_bundles["v1"]),
             content_type="application/x-tar")
    with pytest.raises(OtaRequestError, match="HTTP 401.*unknown API token"):
        _publish(server, ota_bundles["v1"], 100, token="ek_made_up")
    with pytest.raises(OtaRequestError, match="HTTP 403.*lacks the 'publish' scope"):
        _publish(server, ota_bundles["v1"], 100, token=server.token("rollout"))
    _publish(server, ota_bundles["v1"], 10, token=server.token("publish"))
    with pytest.raises(OtaRequestError, match="HTTP 403.*lacks the 'rollout' scope"):
        call(server.url, "POST", "/v1/models/digits/channels/stable/rollout", token=server.token("publish"),
             body={"percent": 100})
    assert call(server.url, "POST", "/v1/models/digits/channels/stable/rollout", token=server.token("admin"),
                body={"percent": 100})["basis_points"] == 10000
    no_token = run_cli("publish", ota_bundles["v1"], "--server", server.url, "--model", "digits", "--channel", "stable")
    assert no_token.exit_code == 2 and "EDGEKIT_OTA_TOKEN" in no_token.stderr


def test_path_traversal_is_refused(server: LiveServer, ota_bundles: dict[str, Path], tmp_path: Path) -> None:
    token = server.token("publish")
    for model in ("..", "a..b", "Digits", "a/b"):
        with pytest.raises(OtaRequestError, match="HTTP 4"):
            _publish(server, ota_bundles["v1"], 100, token=token, model=model)
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        data = b"x"
        info = tarfile.TarInfo("../../escape.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(OtaRequestError, match="HTTP 422.*not allowed"):
        call(server.url, "POST", "/v1/models/digits/channels/stable/releases", token=token, data=evil.getvalue(),
             content_type="application/x-tar")
    assert not list(tmp_path.rglob("escape.txt"))
    _publish(server, ota_bundles["v1"], 100, token=token)
    host, port = server.url.removeprefix("http://").split(":")
    for path in ("/targets/../registry.sqlite3", "/targets/%2e%2e/%2e%2e/registry.sqlite3", "/metadata/..%2froot.json",
                 "/targets/digits/stable/1/..%2f..%2f..%2fregistry.sqlite3", "/targets//etc/passwd"):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 404 and b"SQLite" not in body and b"root:" not in body, path
        conn.close()
    with pytest.raises(InvalidNameError, match="not allowed"):  # refused on the device, before any request
        _device(server, tmp_path, "x", _root(server)).update("../digits", "stable")


def test_a_tampered_artifact_is_refused(server: LiveServer, ota_bundles: dict[str, Path], tmp_path: Path) -> None:
    _publish(server, ota_bundles["v2"], 100)
    stored = next((tmp_path / "server" / "files" / "targets").rglob("*.onnx-web-int8.onnx"))
    data = bytearray(stored.read_bytes())
    data[1000] ^= 0xFF
    stored.write_bytes(bytes(data))
    device = _device(server, tmp_path, 1, _root(server))
    with pytest.raises(VerificationError, match="does not match its signed length and sha256"):
        device.update("digits", "stable")
    assert device.active("digits") is None
    sha = stored.name.split(".")[0]  # the signed hash; the bad bytes under it were discarded, not kept to resume
    assert not (tmp_path / "devices" / "1" / "downloads" / f"{sha}.part").exists()


def test_replayed_timestamp_and_expired_metadata_are_refused(ota_keys: Path, ota_bundles: dict[str, Path],
                                                            tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "server", ota_keys, expiry=Expiry(timestamp=timedelta(seconds=2)))
    try:
        _publish(live, ota_bundles["v1"], 100)
        timestamp = tmp_path / "server" / "files" / "metadata" / "timestamp.json"
        old = timestamp.read_bytes()
        _publish(live, ota_bundles["v2"], 100)
        device = _device(live, tmp_path, 1, _root(live))
        assert device.update("digits", "stable").version == "2.0.0"
        new = timestamp.read_bytes()
        timestamp.write_bytes(old)  # a mirror or attacker serves the older, validly signed timestamp
        with pytest.raises(VerificationError, match="TUF verification.*version"):
            device.check("digits", "stable")
        timestamp.write_bytes(new)
        assert device.check("digits", "stable") is None
        time.sleep(2.5)  # nobody re-signs: the timestamp expires
        fresh = _device(live, tmp_path, 2, _root(live))
        with pytest.raises(VerificationError, match="[Ee]xpired"):
            fresh.update("digits", "stable")
        assert fresh.active("digits") is None
        _runs(device)  # an expired server leaves installed models alone
    finally:
        live.stop()


def test_a_cut_download_resumes_and_ends_verified(server: LiveServer, ota_bundles: dict[str, Path], tmp_path: Path) -> None:
    _publish(server, ota_bundles["v2"], 100)
    proxy = CuttingProxy(server.url, ".onnx-web-int8.onnx", cut_after=60_000)
    try:
        device = _device(server, tmp_path, 1, _root(server), url=proxy.url)
        with pytest.raises(UpdateError, match="cut off|resume"):
            device.update("digits", "stable")
        assert proxy.cuts == 1 and device.active("digits") is None
        partial = list((tmp_path / "devices" / "1" / "downloads").glob("*.part"))
        assert partial and 0 < sum(p.stat().st_size for p in partial)
        result = device.update("digits", "stable")
        assert result.status == "installed" and result.resumed_bytes > 0
        assert any(b"Range: bytes=" in r and b"onnx-web-int8" in r for r in proxy.requests)
        _runs(device)
    finally:
        proxy.close()


def test_a_killed_install_leaves_the_previous_model_loadable(server: LiveServer, ota_bundles: dict[str, Path],
                                                             tmp_path: Path) -> None:
    _publish(server, ota_bundles["v1"], 100)
    root_file = tmp_path / "root.json"
    root_file.write_bytes(_root(server))
    cache = tmp_path / "devices" / "k"
    first = Updater(server.url, cache, "device-k", root_file, enrolment_token=server.enrolment())
    assert first.update("digits", "stable").status == "installed"
    _publish(server, ota_bundles["v2"], 100)
    command = [sys.executable, "-m", "edgekit", "pull", "--server", server.url, "--model", "digits", "--channel", "stable",
               "--cache", str(cache), "--device-id", "device-k", "--root", str(root_file)]
    killed = 0
    for delay in (0.3, 0.6, 0.9, 1.2, 1.5, 1.8, 2.2, 2.6, 3.0, 4.0):
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        after = Updater(server.url, cache, "device-k", root_file, report=False)
        assert after.state("digits").active in (1, 2)
        _runs(after)  # whatever step the kill hit, the active model loads
        if after.state("digits").active == 2:
            break
    assert killed >= 1
    final = Updater(server.url, cache, "device-k", root_file, enrolment_token=server.enrolment())
    result = final.update("digits", "stable")
    assert final.state("digits").active == 2 and result.status in ("installed", "up_to_date")
    assert not list((cache / "models" / "digits" / "slots").glob(".tmp-*"))
    assert not list((cache / "downloads").iterdir())  # a kill after the switch left no download behind for good


def test_the_server_restarts_mid_rollout(tmp_path: Path, ota_keys: Path, ota_bundles: dict[str, Path]) -> None:
    data = tmp_path / "server"
    live = LiveServer(data, ota_keys)
    _publish(live, ota_bundles["v1"], 100)
    _publish(live, ota_bundles["v2"], 25)
    root = _root(live)
    fleet = [_device(live, tmp_path, i, root) for i in range(12)]
    before = [d.update("digits", "stable").status for d in fleet]
    # the rollout change reaches the registry, then the process dies before it re-signs anything
    current = live.registry.latest("digits", "stable")
    assert current is not None
    current.basis_points = 10000
    live.registry.update_release(current)
    live.stop()
    again = LiveServer(data, ota_keys)  # a restart: resync re-signs what the registry says
    try:
        assert again.service.resync() == 0  # startup already did it
        fleet = [_device(again, tmp_path, i, root) for i in range(12)]
        after = [d.update("digits", "stable").status for d in fleet]
        assert all(b == "installed" or a == "up_to_date" for a, b in zip(after, before, strict=True))
        assert {d.state("digits").active for d in fleet} == {2}
    finally:
        again.stop()


def test_rollout_buckets_are_stable_and_fair() -> None:
    seed = "digits/stable/7"
    assert contract.bucket("device-1", seed) == contract.bucket("device-1", seed)
    shares = [sum(contract.bucket(f"d{i}", seed) < 5000 for i in range(4000)) / 4000]
    assert 0.47 < shares[0] < 0.53
    rule = contract.Rollout(2500, seed)
    admitted = {i for i in range(1000) if rule.includes(f"d{i}")}
    wider = {i for i in range(1000) if contract.Rollout(5000, seed).includes(f"d{i}")}
    assert admitted < wider  # raising the share only adds devices
    assert not contract.Rollout(10000, seed, halted=True).includes("d1")
    with pytest.raises(VerificationError):
        contract.Rollout.from_dict({"basis_points": 5000.5, "seed": seed})


def test_keys_init_and_serve_commands(tmp_path: Path) -> None:
    assert run_cli("ota", "keygen", tmp_path / "keys").exit_code == 0
    again = run_cli("ota", "keygen", tmp_path / "keys")
    assert again.exit_code == 2 and "never overwritten" in again.stderr
    assert oct((tmp_path / "keys" / "root.pem").stat().st_mode & 0o777) == "0o600"
    init = run_cli("ota", "init", "--data", tmp_path / "data", "--keys", tmp_path / "keys")
    assert init.exit_code == 0 and "admin token (shown once): ek_" in init.stdout
    assert json.loads((tmp_path / "data" / "root.json").read_text())["signed"]["_type"] == "root"
    twice = run_cli("ota", "init", "--data", tmp_path / "data", "--keys", tmp_path / "keys")
    assert twice.exit_code == 2 and "already holds" in twice.stderr
    token = run_cli("ota", "token", "--data", tmp_path / "data", "--name", "ci", "--scope", "publish")
    assert token.exit_code == 0 and token.stdout.startswith("ek_")
    bad = run_cli("ota", "token", "--data", tmp_path / "data", "--name", "ci", "--scope", "everything")
    assert bad.exit_code == 2 and "scopes must be among" in bad.stderr
    shutil.rmtree(tmp_path / "keys")


def test_edgekit_serve_with_workers_openapi_metrics_and_etags(tmp_path: Path) -> None:
    import socket
    import urllib.request

    assert run_cli("ota", "keygen", tmp_path / "keys").exit_code == 0
    assert run_cli("ota", "init", "--data", tmp_path / "data", "--keys", tmp_path / "keys").exit_code == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    edgekit = str(Path(sys.executable).parent / "edgekit")
    proc = subprocess.Popen([edgekit, "serve", "--data", str(tmp_path / "data"), "--keys", str(tmp_path / "keys"),
                             "--port", str(port), "--workers", "2"], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1)  # noqa: S310
                break
            except OSError:
                time.sleep(0.05)
        spec = json.loads(urllib.request.urlopen(url + "/openapi.json").read())  # noqa: S310
        assert {"/v1/reports", "/metadata/{name}", "/v1/models/{model}/channels/{channel}/releases"} <= set(spec["paths"])
        first = urllib.request.urlopen(url + "/metadata/timestamp.json")  # noqa: S310
        etag = first.headers["ETag"]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metadata/timestamp.json", headers={"If-None-Match": etag})
        assert conn.getresponse().status == 304
        conn.close()
        with pytest.raises(urllib.error.HTTPError, match="401"):  # operators' reads need a token
            urllib.request.urlopen(url + "/metrics")  # noqa: S310
        token = run_cli("ota", "token", "--data", tmp_path / "data", "--name", "prometheus", "--scope", "read").stdout.strip()
        scrape = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {token}"})
        metrics = urllib.request.urlopen(scrape).read().decode()  # noqa: S310
        assert "edgekit_ota_requests_total" in metrics
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "serving" and e.get("workers") == 2 for e in events)  # JSON log lines


def test_an_older_current_release_is_refused_without_a_signed_rollback(server: LiveServer,
                                                                       ota_bundles: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    _publish(server, ota_bundles["v1"], 100)
    _publish(server, ota_bundles["v2"], 100)
    device = _device(server, tmp_path, 1, _root(server))
    assert device.update("digits", "stable").release == 2
    # the registry is restored from an old backup: release 2 is gone, the signed state says release 1
    with server.registry.transaction() as cur:
        cur.execute("DELETE FROM releases WHERE release = 2")
    assert server.service.resync() >= 1
    with pytest.raises(VerificationError, match="offers release 1 as current, older than release 2"):
        device.update("digits", "stable")
    assert device.state("digits").active == 2
    _runs(device)


def test_the_service_re_signs_metadata_before_it_expires(ota_keys: Path, ota_bundles: dict[str, Path],
                                                         tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "server", ota_keys, expiry=Expiry(timestamp=timedelta(seconds=3)), refresh_every_s=0.5)
    try:
        _publish(live, ota_bundles["v1"], 100)
        device = _device(live, tmp_path, 1, _root(live))
        time.sleep(4)  # longer than the timestamp lives: the refresh thread must have re-signed it
        assert device.update("digits", "stable").status == "installed"
        assert live.service.repo.refresh(margin=0.0) is False  # nothing stale right after a refresh
    finally:
        live.stop()
