"""Tensor-level delta updates: the service publishes, beside release N+1's artifacts, signed deltas
from release N's; a device on release N rebuilds N+1's file from its slot byte for byte, checks it
against the signed target, and falls back to the full download on any mismatch. Real conversions
(MobileNetV2 with a retrained head, to onnx-web and tflite), a real service on loopback, real installs
and smoke tests."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgekit._files import hash_path
from edgekit.errors import VerificationError
from edgekit.ota import contract, delta
from edgekit.ota.device import Updater
from edgekit.ota.operator import bundle_tar, call
from tests.conftest import DIGITS
from tests.ota_helpers import LiveServer

pytest.importorskip("tuf")
pytest.importorskip("fastapi")


def _edited_onnx(tmp_path: Path) -> tuple[bytes, bytes]:
    """The digits ONNX and a copy with one weight tensor changed a little and one replaced."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(DIGITS / "digits.onnx")
    inits = [i for i in model.graph.initializer if np.prod(i.dims) >= 64]
    moved = numpy_helper.to_array(inits[0])
    inits[0].CopyFrom(numpy_helper.from_array((moved * 1.001).astype(moved.dtype), inits[0].name))
    fresh = numpy_helper.to_array(inits[-1])
    inits[-1].CopyFrom(numpy_helper.from_array(np.random.default_rng(0).standard_normal(fresh.shape).astype(fresh.dtype),
                                               inits[-1].name))
    return (DIGITS / "digits.onnx").read_bytes(), model.SerializeToString()


def test_a_delta_rebuilds_the_new_file_byte_for_byte(tmp_path: Path) -> None:
    old, new = _edited_onnx(tmp_path)
    made = delta.make(old, new, "onnx")
    header, _ = delta.read_header(made, max_size=len(new))
    kinds = {op[0] for op in header["ops"]}
    assert {"copy", "xor", "data"} <= kinds  # unchanged tensors copied, changed ones as XOR, the graph as is
    out = io.BytesIO()
    delta.apply(old, made, out, max_size=len(new))
    assert out.getvalue() == new
    assert len(made) < len(new) // 2


def test_a_delta_refuses_another_base_and_damage(tmp_path: Path) -> None:
    old, new = _edited_onnx(tmp_path)
    made = delta.make(old, new, "onnx")
    with pytest.raises(VerificationError, match="another base"):
        delta.apply(old[:-1] + b"\0", made, io.BytesIO(), max_size=len(new))
    with pytest.raises(VerificationError, match="truncated"):
        delta.apply(old, made[:len(made) // 2], io.BytesIO(), max_size=len(new))
    with pytest.raises(VerificationError, match="size"):
        delta.apply(old, made, io.BytesIO(), max_size=len(new) - 1)
    with pytest.raises(VerificationError, match="magic"):
        delta.apply(old, b"PK" + made, io.BytesIO(), max_size=len(new))
    with pytest.raises(ValueError, match="TFL3"):
        delta.make(old, new, "tflite")


def test_tensor_blobs_are_found_in_onnx_and_tflite() -> None:
    import numpy as np
    import onnx

    data = (DIGITS / "digits.onnx").read_bytes()
    found = {data[o:o + n] for o, n in delta.blobs(data, "onnx")}
    weights = [i.raw_data for i in onnx.load(DIGITS / "digits.onnx").graph.initializer if len(i.raw_data) >= delta.MIN_BLOB]
    assert weights and set(weights) <= found
    assert np.sum([len(w) for w in weights]) > 0.9 * len(data)


# -- end to end: MobileNetV2 with a retrained head ----------------------------------------------

@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Bundles of release N and N+1 (onnx-web and tflite each): one real conversion per release."""
    pytest.importorskip("keras")
    from edgekit.converters import convert
    from examples.retrained_head.make_releases import build_releases

    work = tmp_path_factory.mktemp("delta")
    models = build_releases(work / "models")
    return tuple(convert(m, ["onnx-web", "tflite"], out=work / f"release-{i}", name="head", version=f"1.0.{i}",
                         report=False).bundle.path for i, m in enumerate(models, 1))  # type: ignore[return-value]


@pytest.fixture
def server(tmp_path: Path, ota_keys: Path) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path / "server", ota_keys)
    yield live
    live.stop()


def _publish(server: LiveServer, bundle: Path) -> dict[str, Any]:
    return call(server.url, "POST", "/v1/models/head/channels/stable/releases?basis_points=10000",
                token=server.token("publish"), data=bundle_tar(bundle), content_type="application/x-tar")


def _device(server: LiveServer, tmp_path: Path, name: str) -> Updater:
    return Updater(server.url, tmp_path / name, name, server.service.repo.root_bytes(), enrolment_token=server.enrolment())


def _files(release: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["file"]: f for f in release["files"]}


@pytest.mark.tensorflow
@pytest.mark.slow
@pytest.mark.parametrize("target,file", [("onnx-web", "onnx-web.onnx"), ("tflite", "tflite.tflite")])
def test_a_retrained_head_arrives_as_a_delta(server: LiveServer, releases: tuple[Path, Path], tmp_path: Path,
                                             target: str, file: str) -> None:
    first, second = releases
    _publish(server, first)
    device = _device(server, tmp_path, f"dev-{target}")
    assert device.update("head", "stable", target=target).release == 1
    published = _files(_publish(server, second))
    name = delta.delta_name(file, 1)
    assert published[name]["kind"] == "delta" and published[name]["delta"]["of"] == file

    result = device.update("head", "stable", target=target)
    assert result.status == "installed" and result.delta_from == 1, result.detail
    full = published[file]["size"]
    # the artifact came as a delta: bundle.json, reference.npz and the delta, not the 8.5 MB file
    assert result.downloaded_bytes <= 0.15 * full, (result.downloaded_bytes, full)
    assert result.path is not None and hash_path(result.path / file)[0] == published[file]["sha256"]
    assert "rebuilt from release 1 by a delta" in result.detail
    assert not any(p.name.endswith(".part") for p in (tmp_path / f"dev-{target}" / "downloads").iterdir())


def _corrupt_stored(server: LiveServer, release: int, entry: dict[str, Any]) -> None:
    key = contract.target_key(contract.target_path("head", "stable", release, entry["file"]), entry["sha256"])
    stored = server.service.storage.root / key  # type: ignore[attr-defined]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))


def _wrong_maker(make: Any) -> Any:
    """The service's delta maker with a bug: one literal byte off. Its deltas pass TUF (the service signs
    what it made), so only the device's check of the rebuilt file against the full file's signed
    sha256 can catch them."""
    import json
    import struct
    import zlib

    def wrong(base: bytes, target: bytes, fmt: str) -> bytes:
        header, literals = delta.read_header(make(base, target, fmt), max_size=len(target))
        body = json.dumps(header, separators=(",", ":")).encode()
        return delta.MAGIC + zlib.compress(struct.pack("<I", len(body)) + body + bytes([literals[0] ^ 0xFF]) + literals[1:])

    return wrong


@pytest.mark.tensorflow
@pytest.mark.slow
@pytest.mark.parametrize("damage", ["stored bytes", "signed but wrong"])
def test_a_bad_delta_falls_back_to_the_full_download(server: LiveServer, releases: tuple[Path, Path], tmp_path: Path,
                                                     damage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.ota.service import delta_targets

    first, second = releases
    _publish(server, first)
    device = _device(server, tmp_path, "dev")
    device.update("head", "stable", target="tflite")
    if damage == "signed but wrong":
        monkeypatch.setattr(delta_targets.delta, "make", _wrong_maker(delta.make))
    published = _files(_publish(server, second))
    name = delta.delta_name("tflite.tflite", 1)
    assert name in published
    if damage == "stored bytes":
        _corrupt_stored(server, 2, published[name])  # TUF's hash check on the delta catches it
    result = device.update("head", "stable", target="tflite")
    assert result.status == "installed" and result.delta_from is None
    assert result.downloaded_bytes >= published["tflite.tflite"]["size"]
    assert result.path is not None and hash_path(result.path / "tflite.tflite")[0] == published["tflite.tflite"]["sha256"]


@pytest.mark.tensorflow
@pytest.mark.slow
def test_no_delta_is_published_for_a_model_that_shares_no_tensors(server: LiveServer, releases: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    """A release whose tensors all differ (here another model under the same name) gets no delta: it
    would be about as large as the file."""
    first, _ = releases
    _publish(server, first)
    other = tmp_path / "other"
    from edgekit.converters import convert

    convert(DIGITS / "digits.onnx", ["onnx-web"], out=other, name="head", version="2.0.0", report=False)
    published = _files(_publish(server, other))
    assert not [f for f in published.values() if f["kind"] == "delta"]
