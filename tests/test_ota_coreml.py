"""Core ML over the air: a ``.mlpackage`` (a directory) is delivered as its deterministic tar, signed in TUF,
unpacked into the slot and checked against the manifest's directory hash. Real conversion (coremltools),
real service on loopback, real device installs."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekit._files import hash_path
from edgekit.errors import UpdateError, VerificationError
from edgekit.ota import contract
from edgekit.ota.device import Updater
from edgekit.ota.operator import bundle_tar, call
from tests.conftest import DIGITS
from tests.ota_helpers import LiveServer

pytest.importorskip("tuf")
pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def coreml_and_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits CNN as coreml-fp16 beside onnx-web (one real conversion for the module)."""
    pytest.importorskip("coremltools")
    pytest.importorskip("torch")
    from edgekit.converters import convert

    out = tmp_path_factory.mktemp("coreml-ota") / "bundle"
    return convert(DIGITS / "digits.pt2", ["coreml-fp16", "onnx-web"], out=out, calibration=DIGITS / "digits.npz",
                   name="digits", version="1.0.0", report=False).bundle.path


@pytest.fixture
def server(tmp_path: Path, ota_keys: Path) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path / "server", ota_keys)
    yield live
    live.stop()


def _publish(server: LiveServer, bundle: Path) -> dict[str, object]:
    return call(server.url, "POST", "/v1/models/digits/channels/stable/releases?basis_points=10000",
                token=server.token("publish"), data=bundle_tar(bundle), content_type="application/x-tar")


def _device(server: LiveServer, tmp_path: Path, name: str) -> Updater:
    return Updater(server.url, tmp_path / name, name, server.service.repo.root_bytes(),
                   enrolment_token=server.enrolment())


def test_a_directory_packs_to_the_same_bytes_whatever_its_mtimes(tmp_path: Path) -> None:
    folder = tmp_path / "m.mlpackage"
    (folder / "Data" / "weights").mkdir(parents=True)
    (folder / "Manifest.json").write_text("{}")
    (folder / "Data" / "weights" / "weight.bin").write_bytes(os.urandom(1000))
    first = contract.pack_directory(folder)
    os.utime(folder / "Manifest.json", (1, 1))
    assert contract.pack_directory(folder) == first
    (folder / "Manifest.json").write_text("{ }")
    assert contract.pack_directory(folder) != first
    archive = tmp_path / "m.tar"
    archive.write_bytes(contract.pack_directory(folder))
    contract.unpack_directory(archive, tmp_path / "out", max_bytes=archive.stat().st_size)
    assert hash_path(tmp_path / "out") == hash_path(folder)


@pytest.mark.parametrize("member", ["../evil", "/abs/evil", "a/../../evil", "link"])
def test_unpacking_refuses_entries_outside_the_folder_and_links(tmp_path: Path, member: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    archive = tmp_path / "bad.tar"
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(VerificationError):
        contract.unpack_directory(archive, tmp_path / "out", max_bytes=10_000)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil").exists()


@pytest.mark.torch
def test_a_core_ml_bundle_is_published_installed_and_verified(server: LiveServer, coreml_and_onnx: Path,
                                                               tmp_path: Path) -> None:
    published = _publish(server, coreml_and_onnx)
    files = {f["file"]: f for f in published["files"]}  # type: ignore[index, union-attr]
    art = next(a for a in files.values() if a["kind"] == "artifact" and a["artifact"]["format"] == "mlpackage")
    assert art["file"] == "coreml-fp16.mlpackage.tar"
    directory_hash, _ = hash_path(coreml_and_onnx / "coreml-fp16.mlpackage")
    assert art["artifact"]["directory_sha256"] == directory_hash
    # the same bundle published again is the same release: the packed bytes are stable
    assert _publish(server, coreml_and_onnx)["already_published"] is True

    # a device on this host (no Core ML) takes the ONNX artifact by default ...
    linux = _device(server, tmp_path, "linux-1")
    assert linux.update("digits", "stable").detail.startswith("onnx-web (onnx)")
    # ... and an Apple device's updater, run here, installs the package: verified, not run
    apple = _device(server, tmp_path, "ios-1")
    result = apple.update("digits", "stable", target="coreml-fp16")
    assert result.status == "installed" and "not runnable on this host" in result.detail
    assert result.path is not None and hash_path(result.path / "coreml-fp16.mlpackage")[0] == directory_hash
    assert not (result.path / "coreml-fp16.mlpackage.tar").exists()
    with pytest.raises(UpdateError, match="installed for another platform"):
        apple.open("digits")
    assert apple.state("digits").active == 1  # not rolled back: it is the release, not a failure
    with pytest.raises(UpdateError, match="offers no coreml-int8 artifact"):
        _device(server, tmp_path, "ios-2").update("digits", "stable", target="coreml-int8")


@pytest.mark.torch
def test_a_tampered_core_ml_archive_is_refused(server: LiveServer, coreml_and_onnx: Path, tmp_path: Path) -> None:
    published = _publish(server, coreml_and_onnx)
    art = next(f for f in published["files"] if f["file"].endswith(".tar"))  # type: ignore[union-attr, index]
    key = contract.target_key(contract.target_path("digits", "stable", 1, art["file"]), art["sha256"])
    stored = server.service.storage.root / key  # type: ignore[attr-defined]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of a weight file flipped on the server
    stored.write_bytes(bytes(data))
    device = _device(server, tmp_path, "ios-t")
    with pytest.raises(VerificationError, match="does not match its signed length and sha256"):
        device.update("digits", "stable", target="coreml-fp16")
    assert device.active("digits") is None
