"""The OTA service on PostgreSQL and an S3-compatible store (OpenStack Swift's S3 API), two replicas.

Real servers on loopback: ``make test`` starts them (``make services``) and sets
``EDGEKIT_TEST_POSTGRES`` (an admin URL) and ``EDGEKIT_TEST_S3`` (``s3://?endpoint=...``, with
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``). Each test gets its own database and bucket.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest

from edgekit.ota.device import Updater
from edgekit.ota.operator import bundle_tar, call
from tests.conftest import DIGITS
from tests.ota_helpers import CuttingProxy, LiveServer, edit_manifest

pytestmark = pytest.mark.services
PG = os.environ.get("EDGEKIT_TEST_POSTGRES")
S3 = os.environ.get("EDGEKIT_TEST_S3")
if not (PG and S3):
    pytest.skip("needs EDGEKIT_TEST_POSTGRES and EDGEKIT_TEST_S3 (make test starts the servers: make services)",
                allow_module_level=True)


@pytest.fixture
def database() -> Iterator[str]:
    import psycopg

    name = f"ek_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(PG)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    with psycopg.connect(PG, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def bucket() -> str:
    parts = urlsplit(S3 or "")
    return urlunsplit(parts._replace(netloc=f"ek-{uuid.uuid4().hex[:12]}"))


def _publish(server: LiveServer, bundle: Path, percent: int, token: str) -> int:
    r = call(server.url, "POST", f"/v1/models/digits/channels/stable/releases?percent={percent}", token=token,
             data=bundle_tar(bundle), content_type="application/x-tar")
    return int(r["release"])


def test_two_replicas_share_postgres_and_s3(database: str, bucket: str, ota_keys: Path,
                                            ota_bundles: dict[str, Path], tmp_path: Path) -> None:
    a = LiveServer(tmp_path / "a", ota_keys, registry_url=database, storage_url=bucket)
    b = LiveServer(tmp_path / "b", ota_keys, registry_url=database, storage_url=bucket)
    try:
        token = a.token("admin")  # a token made through one replica works on the other: one registry
        assert _publish(a, ota_bundles["v1"], 100, token) == 1
        # two publishes at once, one through each replica: the advisory lock gives distinct release
        # counters and consistent metadata
        numbers: list[int] = []
        other = tmp_path / "v2b"  # the same model, another version (the same files again would be one release)
        shutil.copytree(ota_bundles["v2"], other)
        edit_manifest(other, lambda m: m.update(version="2.0.1"))
        threads = [threading.Thread(target=lambda s=s, v=v: numbers.append(_publish(s, v, 100, token)))
                   for s, v in ((a, ota_bundles["v2"]), (b, other))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(numbers) == [2, 3]
        root = b.service.repo.root_bytes()
        enrol = a.enrolment()  # made through one replica, it enrols devices through either
        fleet = [Updater(b.url if i % 2 else a.url, tmp_path / "dev" / str(i), f"device-{i}", root, enrolment_token=enrol)
                 for i in range(6)]
        assert {d.update("digits", "stable").status for d in fleet} == {"installed"}
        third = b.registry.release("digits", "stable", 3)
        assert third is not None and third.version in ("2.0.0", "2.0.1")
        assert {(d.state("digits").active, d.state("digits").active_version) for d in fleet} == {(3, third.version)}
        data = np.load(DIGITS / "digits.npz")
        logits = fleet[0].open("digits").run({"x": data["x"][:64]})["logits"]
        assert (logits.argmax(1) == data["y"][:64]).mean() > 0.9
        call(a.url, "POST", "/v1/models/digits/channels/stable/halt", token=token, body={"reason": "test"})
        assert call(b.url, "GET", "/v1/models/digits/channels/stable", token=token)["state"]["rollout"]["halted"]
        back = call(b.url, "POST", "/v1/models/digits/channels/stable/rollback", token=token, body={"to_release": 1})
        assert back["release"] == 4
        # a download cut mid-way through replica b resumes with a Range read from the object store
        proxy = CuttingProxy(b.url, ".onnx-web-int8.onnx", cut_after=50_000)
        try:
            device = Updater(proxy.url, tmp_path / "dev" / "cut", "device-cut", root, enrolment_token=enrol)
            with pytest.raises(Exception, match="cut off"):
                device.update("digits", "stable")
            result = device.update("digits", "stable")
            assert result.status == "installed" and result.resumed_bytes > 0 and result.version == "1.0.0"
        finally:
            proxy.close()
        assert {d.update("digits", "stable").status for d in fleet} == {"installed"}
        assert {d.state("digits").active_version for d in fleet} == {"1.0.0"}
        outcomes = call(a.url, "GET", "/v1/models/digits/channels/stable", token=token)["releases"][2]["outcomes"]
        assert outcomes == {"installed": 6}
        # telemetry through both replicas lands in the one registry: either replica shows the whole fleet
        for d in fleet:
            session = d.open("digits")
            for _ in range(5):
                session.run({"x": data["x"][:1]})
            assert d.send_telemetry(force=True) == 1
        views = [call(s.url, "GET", "/v1/models/digits/channels/stable/fleet", token=token)["comparison"] for s in (a, b)]
        assert views[0] == views[1] and views[0]["canary"] == 4
        [cls] = views[0]["classes"]
        assert cls["canary"]["devices"] == 6 and cls["canary"]["inferences"] == 6 * 5 and cls["canary"]["batches"] == 6
    finally:
        a.stop()
        b.stop()


def test_a_restarted_replica_resyncs_from_postgres(database: str, bucket: str, ota_keys: Path,
                                                   ota_bundles: dict[str, Path], tmp_path: Path) -> None:
    a = LiveServer(tmp_path / "a", ota_keys, registry_url=database, storage_url=bucket)
    token = a.token("admin")
    _publish(a, ota_bundles["v1"], 100, token)
    _publish(a, ota_bundles["v2"], 0, token)
    current = a.registry.latest("digits", "stable")
    assert current is not None
    current.basis_points = 10000  # recorded, then the replica dies before it re-signs
    a.registry.update_release(current)
    a.stop()
    b = LiveServer(tmp_path / "b", ota_keys, registry_url=database, storage_url=bucket)
    try:
        device = Updater(b.url, tmp_path / "dev", "device-1", b.service.repo.root_bytes())
        assert device.update("digits", "stable").version == "2.0.0"
    finally:
        b.stop()
