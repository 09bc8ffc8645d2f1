"""The Kotlin OTA client (android-demo/ota-client), driven through its CLI against repositories that
python-tuf writes and a loopback HTTP server serves: a good update, a delegated role, and the
failures it must refuse. Also: the shared test vectors are the ones Python computes today."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.kotlin_vectors import VECTORS, compute

pytestmark = pytest.mark.kotlin
MODULE = ROOT / "android-demo" / "ota-client"
JAR = MODULE / "build" / "edgekit-ota-client.jar"


@pytest.fixture(scope="module")
def client() -> list[str]:
    """The CLI. bin/build compiles the module with Debian's kotlinc and runs its JUnit tests."""
    build = subprocess.run([str(MODULE / "bin" / "build")], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    assert "OK (13 tests)" in build.stdout, build.stdout  # the Kotlin unit tests, all of them, passed
    return ["java", "-cp", str(JAR), "dev.edgekit.ota.Main"]


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        self.server.paths.append(self.path)  # type: ignore[attr-defined]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str, list[str]]]:
    """A directory served on loopback: (root, URL, request paths)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    server.paths = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", server.paths  # type: ignore[attr-defined]
    server.shutdown()


class Repo:
    """A TUF repository written with python-tuf's metadata API: top-level roles, one delegated role
    (``role1`` for ``delegated/*``), consistent snapshots and hash-prefixed target files."""

    def __init__(self, www: Path) -> None:
        from securesystemslib.signer import CryptoSigner
        from tuf.api.metadata import DelegatedRole, Delegations, Metadata, Root, Snapshot, Targets, Timestamp

        self.www = www
        (www / "metadata").mkdir()
        (www / "targets").mkdir()
        self.keys = {r: CryptoSigner.generate_ed25519() for r in ("root", "targets", "snapshot", "timestamp", "role1")}
        expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=7)
        self.root = Metadata(Root(expires=expires, consistent_snapshot=True))
        for role in ("root", "targets", "snapshot", "timestamp"):
            self.root.signed.add_key(self.keys[role].public_key, role)
        self.targets = Metadata(Targets(expires=expires))
        key = self.keys["role1"].public_key
        self.targets.signed.delegations = Delegations(
            keys={key.keyid: key}, roles={"role1": DelegatedRole("role1", [key.keyid], 1, True, ["delegated/*"])})
        self.role1 = Metadata(Targets(expires=expires))
        self.snapshot = Metadata(Snapshot(expires=expires))
        self.timestamp = Metadata(Timestamp(expires=expires))
        self.write_root()

    def write_root(self) -> None:
        self.root.signatures.clear()
        self.root.sign(self.keys["root"])
        data = self.root.to_bytes()
        (self.www / "metadata" / f"{self.root.signed.version}.root.json").write_bytes(data)
        (self.www / "trusted-root.json").write_bytes(data)

    def add_target(self, role: Any, path: str, data: bytes) -> None:
        from tuf.api.metadata import TargetFile

        info = TargetFile.from_data(path, data, ["sha256"])
        role.signed.targets[path] = info
        directory, _, name = path.rpartition("/")
        folder = self.www / "targets" / directory
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{info.hashes['sha256']}.{name}").write_bytes(data)

    def publish(self, *, timestamp_signer: Any = None, bump: bool = True) -> None:
        """Sign and write targets, role1, snapshot and timestamp (each one version up)."""
        from tuf.api.metadata import MetaFile

        for md, name, key in ((self.targets, "targets", "targets"), (self.role1, "role1", "role1")):
            if bump:
                md.signed.version += 1
            md.signatures.clear()
            md.sign(self.keys[key])
            (self.www / "metadata" / f"{md.signed.version}.{name}.json").write_bytes(md.to_bytes())
            self.snapshot.signed.meta[f"{name}.json"] = MetaFile(md.signed.version)
        if bump:
            self.snapshot.signed.version += 1
        self.snapshot.signatures.clear()
        self.snapshot.sign(self.keys["snapshot"])
        (self.www / "metadata" / f"{self.snapshot.signed.version}.snapshot.json").write_bytes(self.snapshot.to_bytes())
        if bump:
            self.timestamp.signed.version += 1
        self.timestamp.signed.snapshot_meta = MetaFile(self.snapshot.signed.version)
        self.timestamp.signatures.clear()
        self.timestamp.sign(timestamp_signer or self.keys["timestamp"])
        (self.www / "metadata" / "timestamp.json").write_bytes(self.timestamp.to_bytes())


def _run(client: list[str], *args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*client, *map(str, args)], capture_output=True, text=True, timeout=120)


def _download(client: list[str], meta: Path, url: str, out: Path, *names: str) -> subprocess.CompletedProcess[str]:
    flags: list[Any] = []
    for name in names:
        flags += ["--target-name", name]
    return _run(client, "--metadata-dir", meta, "--metadata-url", f"{url}/metadata/", *flags,
                "--target-base-url", f"{url}/targets/", "--target-dir", out, "download")


def test_the_vectors_are_what_python_computes() -> None:
    assert json.loads(VECTORS.read_text(encoding="utf-8")) == json.loads(json.dumps(compute()))


def test_init_refresh_and_download_with_a_delegated_role(client: list[str], served: Any, tmp_path: Path) -> None:
    www, url, paths = served
    repo = Repo(www)
    repo.add_target(repo.targets, "file.txt", b"top-level target")
    repo.add_target(repo.role1, "delegated/model.bin", b"\x00\x01 delegated target" * 100)
    repo.publish()
    meta, out = tmp_path / "meta", tmp_path / "out"
    init = _run(client, "--metadata-dir", meta, "init", www / "trusted-root.json")
    assert init.returncode == 0, init.stderr
    assert paths == [] and (meta / "root.json").read_bytes() == (www / "trusted-root.json").read_bytes()
    refresh = _run(client, "--metadata-dir", meta, "--metadata-url", f"{url}/metadata/", "refresh")
    assert refresh.returncode == 0, refresh.stderr
    assert {p.name for p in meta.iterdir()} >= {"root.json", "timestamp.json", "snapshot.json", "targets.json"}
    got = _download(client, meta, url, out, "file.txt", "delegated/model.bin")
    assert got.returncode == 0, got.stderr
    assert (out / "file.txt").read_bytes() == b"top-level target"
    assert (out / "delegated%2Fmodel.bin").read_bytes() == b"\x00\x01 delegated target" * 100
    assert (meta / "role1.json").exists()
    before = [p for p in paths if p.startswith("/targets/")]
    again = _download(client, meta, url, out, "file.txt", "delegated/model.bin")
    assert again.returncode == 0 and [p for p in paths if p.startswith("/targets/")] == before  # already held
    missing = _download(client, meta, url, out, "no/such/file")
    assert missing.returncode == 1 and "no signed target" in missing.stderr


def _ready(client: list[str], www: Path, url: str, tmp_path: Path) -> tuple[Repo, Path]:
    repo = Repo(www)
    repo.add_target(repo.targets, "file.txt", b"v1")
    repo.publish()
    meta = tmp_path / "meta"
    assert _run(client, "--metadata-dir", meta, "init", www / "trusted-root.json").returncode == 0
    return repo, meta


def test_a_tampered_target_is_refused(client: list[str], served: Any, tmp_path: Path) -> None:
    www, url, _ = served
    repo, meta = _ready(client, www, url, tmp_path)
    stored = next((www / "targets").glob("*.file.txt"))
    stored.write_bytes(b"v2")  # same length, other bytes
    got = _download(client, meta, url, tmp_path / "out", "file.txt")
    assert got.returncode == 1 and "sha256 differs" in got.stderr
    assert not (tmp_path / "out" / "file.txt").exists()


def test_an_expired_timestamp_is_refused(client: list[str], served: Any, tmp_path: Path) -> None:
    www, url, _ = served
    repo, meta = _ready(client, www, url, tmp_path)
    repo.timestamp.signed.expires = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=1)
    repo.publish()
    got = _run(client, "--metadata-dir", meta, "--metadata-url", f"{url}/metadata/", "refresh")
    assert got.returncode == 1 and "expired" in got.stderr


def test_a_rolled_back_timestamp_is_refused(client: list[str], served: Any, tmp_path: Path) -> None:
    www, url, _ = served
    repo, meta = _ready(client, www, url, tmp_path)
    old = (www / "metadata" / "timestamp.json").read_bytes()
    repo.publish()
    assert _run(client, "--metadata-dir", meta, "--metadata-url", f"{url}/metadata/", "refresh").returncode == 0
    (www / "metadata" / "timestamp.json").write_bytes(old)
    got = _run(client, "--metadata-dir", meta, "--metadata-url", f"{url}/metadata/", "refresh")
    assert got.returncode == 1 and "rollback" in got.stderr


def test_a_bad_signature_is_refused(client: list[str], served: Any, tmp_path: Path) -> None:
    from securesystemslib.signer import CryptoSigner

    www, url, _ = served
    repo, meta = _ready(client, www, url, tmp_path)
    repo.publish(timestamp_signer=CryptoSigner.generate_ed25519())  # a key root does not trust
    got = _run(client, "--metadata-dir", meta, "--metadata-url", f"{url}/metadata/", "refresh")
    assert got.returncode == 1 and "threshold not met" in got.stderr and "timestamp" in got.stderr


def test_a_threshold_not_met_is_refused(client: list[str], served: Any, tmp_path: Path) -> None:
    from securesystemslib.signer import CryptoSigner

    www, url, _ = served
    repo = Repo(www)
    second = CryptoSigner.generate_ed25519()
    repo.root.signed.add_key(second.public_key, "targets")
    repo.root.signed.roles["targets"].threshold = 2  # two keys must sign targets; only one will
    repo.write_root()
    repo.add_target(repo.targets, "file.txt", b"v1")
    repo.publish()
    meta = tmp_path / "meta"
    assert _run(client, "--metadata-dir", meta, "init", www / "trusted-root.json").returncode == 0
    got = _run(client, "--metadata-dir", meta, "--metadata-url", f"{url}/metadata/", "refresh")
    assert got.returncode == 1 and "1 valid signature(s) of the 2 required" in got.stderr


def test_a_delegated_role_signed_by_the_wrong_key_is_refused(client: list[str], served: Any, tmp_path: Path) -> None:
    from securesystemslib.signer import CryptoSigner

    www, url, _ = served
    repo = Repo(www)
    repo.add_target(repo.role1, "delegated/model.bin", b"payload")
    repo.keys["role1"] = CryptoSigner.generate_ed25519()  # signs role1, but targets delegates to the old key
    repo.publish()
    meta = tmp_path / "meta"
    assert _run(client, "--metadata-dir", meta, "init", www / "trusted-root.json").returncode == 0
    got = _download(client, meta, url, tmp_path / "out", "delegated/model.bin")
    assert got.returncode == 1 and "role1" in got.stderr


def test_the_kotlin_client_reads_edgekits_own_repository(client: list[str], ota_keys: Path,
                                                         ota_bundles: dict[str, Path], tmp_path: Path) -> None:
    """The service's repository: succinct hashed bins, edgekit descriptors; Kotlin and Python agree."""
    from tests.ota_helpers import LiveServer

    live = LiveServer(tmp_path / "server", ota_keys)
    try:
        live.service.publish("digits", "stable", ota_bundles["v2"], basis_points=10000)
        root = tmp_path / "root.json"
        root.write_bytes(live.service.repo.root_bytes())
        meta = tmp_path / "meta"
        assert _run(client, "--metadata-dir", meta, "init", root).returncode == 0
        got = _download(client, meta, live.url, tmp_path / "out", "digits/stable/channel.json",
                        "digits/stable/1/bundle.json")
        assert got.returncode == 0, got.stderr
        state = json.loads((tmp_path / "out" / "digits%2Fstable%2Fchannel.json").read_text())
        assert state["current"] == {"release": 1, "version": "2.0.0"}
        assert (tmp_path / "out" / "digits%2Fstable%2F1%2Fbundle.json").read_bytes() == \
            (ota_bundles["v2"] / "bundle.json").read_bytes()
        assert any(p.name.startswith("bins-") for p in meta.iterdir())  # the hashed bin it walked through
    finally:
        live.stop()
    shutil.rmtree(meta)


def test_the_kotlin_client_sends_telemetry_the_service_takes(client: list[str], ota_keys: Path,
                                                            ota_bundles: dict[str, Path], tmp_path: Path) -> None:
    """ModelStats -> Telemetry -> the outbox -> POST /v1/telemetry with the device's enrolled token: the
    service's fleet figures count every recorded run, error and the load time; offline, the batch waits."""
    from tests.ota_helpers import LiveServer
    from tests.telemetry_vectors import BATCHES

    live = LiveServer(tmp_path / "server", ota_keys)
    try:
        live.service.publish("digits", "stable", ota_bundles["v1"], basis_points=10000)
        root = tmp_path / "root.json"
        root.write_bytes(live.service.repo.root_bytes())
        point = {**BATCHES[0]["points"][0], "release": 1}
        runs = tmp_path / "runs.json"
        runs.write_text(json.dumps({"resource": BATCHES[0]["resource"], "points": [point]}))
        cache = tmp_path / "device"
        device = ["--cache-dir", cache, "--device-id", "pixel-8:a1b2", "--trusted-root", root]
        offline = _run(client, "--server", "http://127.0.0.1:9", *device, "--enrolment-token", live.enrolment(),
                       "telemetry", runs)
        assert offline.returncode == 1 and "1 outbox entries still wait" in offline.stderr, offline.stderr
        assert json.loads((cache / "outbox.jsonl").read_text())["telemetry"]["resourceMetrics"]
        shutil.rmtree(cache)
        sent = _run(client, "--server", live.url, *device, "--enrolment-token", live.enrolment(), "telemetry", runs)
        assert sent.returncode == 0 and sent.stdout.strip() == "1", sent.stdout + sent.stderr
        status = live.service.fleet_status("digits", "stable")
        [cls] = status["comparison"]["classes"]
        assert cls["device_class"] == "android/arm64/nnapi/high"
        figures = cls["canary"]
        assert figures["inferences"] == len(point["durations_ns"]) and figures["errors"] == 2
        assert figures["error_kinds"] == {"InferenceError": 2} and figures["load_ms"] == pytest.approx(42.1)
        assert cls["canary_providers"] == {"litert": len(point["durations_ns"]) + 2}
        assert figures["p50_ms"] == pytest.approx(0.8, rel=0.125)
    finally:
        live.stop()


CONFORMANCE = ROOT / "build" / "tuf-conformance"


def test_the_tuf_conformance_suite_passes_with_its_default_keys(client: list[str]) -> None:
    """theupdateframework/tuf-conformance (a copy in android-demo/ota-client/tuf-conformance; `make test`
    installs it into build/tuf-conformance with its own pins) against the client's CLI: every test,
    with the suite's default ecdsa-sha2-nistp256 keys, ed25519 and rsassa-pss-sha256 in the key tests.
    Expected failures would be listed in bin/edgekit-tuf-client.xfails; there are none."""
    python = CONFORMANCE / "venv" / "bin" / "python"
    assert python.exists() and shutil.which("faketime"), "run `make build/tuf-conformance/.installed` (installs faketime too)"
    entrypoint = MODULE / "bin" / "edgekit-tuf-client"
    assert not Path(f"{entrypoint}.xfails").exists()
    suite = CONFORMANCE / "src"
    run = subprocess.run([str(python), "-m", "pytest", "tuf_conformance", "-q", "-p", "no:cacheprovider",
                          "-c", str(suite / "pyproject.toml"), "--rootdir", str(suite), "--entrypoint", str(entrypoint)],
                         cwd=suite, capture_output=True, text=True, timeout=900)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 113 and "failed" not in summary and "error" not in summary, summary
