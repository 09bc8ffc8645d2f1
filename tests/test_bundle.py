"""The bundle contract: schema-checked manifests, unknown fields kept, atomic writes, integrity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.bundle import (
    Artifact,
    BundleWriter,
    Manifest,
    SourceInfo,
    TensorSpec,
    hash_path,
    read_bundle,
)
from edgekit.errors import BundleError, IntegrityError, OutputExistsError


def _manifest(artifacts: tuple[Artifact, ...] = ()) -> Manifest:
    return Manifest(
        name="m", version="1", created_by="edgekit test",
        source=SourceInfo(format="onnx", file="m.onnx", sha256="0" * 64, size_bytes=1),
        inputs=(TensorSpec("x", ("batch", 3), "float32"),),
        outputs=(TensorSpec("y", (None, 2), "float32"),),
        artifacts=artifacts,
    )


def _artifact_in(root: Path, name: str = "a.onnx", data: bytes = b"model bytes") -> Artifact:
    (root / name).write_bytes(data)
    digest, size = hash_path(root / name)
    return Artifact(target="onnx-web", format="onnx", precision="fp32", file=name, size_bytes=size, sha256=digest)


def test_unknown_fields_survive_a_round_trip(digits_bundle: Path) -> None:
    data = json.loads((digits_bundle / "bundle.json").read_text())
    data["future_top_level"] = {"kept": True}
    data["inputs"][0]["future_tensor_field"] = [1, 2]
    data["artifacts"][0]["future_artifact_field"] = "x"
    data["artifacts"][0]["parity"]["future_parity_field"] = 3
    again = json.loads(Manifest.from_json(json.dumps(data)).to_json())
    assert again == data


def test_manifest_records_what_the_contract_requires(digits_bundle: Path) -> None:
    m = read_bundle(digits_bundle).manifest
    assert m.schema == "edgekit.bundle/1" and m.name == "digits" and m.version == "1.0.0"
    assert m.created_by.startswith("edgekit ")
    assert m.source.format == "onnx" and len(m.source.sha256) == 64 and m.source.size_bytes > 0
    assert m.inputs[0].shape == ("batch", 1, 8, 8) and m.inputs[0].dtype == "float32"
    for art in m.artifacts:
        # ORT-format variants hold the same graph and are checked on the first 64 samples
        n = 360 if art.format == "onnx" else 64
        assert art.parity is not None and art.parity.n_samples == n and art.parity.passed
        assert art.accuracy is not None and art.accuracy.n_samples == n
        assert art.size_ratio is not None and art.route


def test_write_rejects_an_invalid_manifest(tmp_path: Path) -> None:
    bad = _manifest().__class__(**{**_manifest().__dict__, "name": "bad name/with slash"})
    with pytest.raises(BundleError, match="name"), BundleWriter(tmp_path / "out") as w:
        w.commit(bad)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), BundleWriter(tmp_path / "out") as w:
        _artifact_in(w.staging)
        raise RuntimeError("conversion crashed half way")
    assert list(tmp_path.iterdir()) == []


def test_commit_refuses_an_artifact_that_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="missing"), BundleWriter(tmp_path / "out") as w:
        art = _artifact_in(w.staging)
        (w.staging / art.file).unlink()
        w.commit(_manifest((art,)))
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_and_refuses_without_the_flag(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with BundleWriter(out) as w:
        w.commit(_manifest((_artifact_in(w.staging, data=b"one"),)))
    with pytest.raises(OutputExistsError, match="--overwrite"):
        BundleWriter(out)
    with BundleWriter(out, overwrite=True) as w:
        w.commit(_manifest((_artifact_in(w.staging, data=b"two!"),)))
    assert (out / "a.onnx").read_bytes() == b"two!"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert read_bundle(out).manifest.artifacts[0].size_bytes == 4


def test_tampered_artifact_is_refused(bundle_copy: Path) -> None:
    target = bundle_copy / "onnx-web-int8.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        read_bundle(bundle_copy)
    read_bundle(bundle_copy, verify=False)  # reading without verification still works


def test_truncated_artifact_is_refused_by_size(bundle_copy: Path) -> None:
    target = bundle_copy / "onnx-web.onnx"
    target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(IntegrityError, match="bytes"):
        read_bundle(bundle_copy)


def test_duplicate_and_escaping_artifacts_are_invalid(tmp_path: Path) -> None:
    art = Artifact(target="onnx-web", format="onnx", precision="fp32", file="a.onnx", size_bytes=1, sha256="a" * 64)
    with pytest.raises(BundleError, match="second onnx artifact"):
        _manifest((art, art)).to_json()
    with pytest.raises(BundleError, match="outside the bundle"):
        _manifest((Artifact(**{**art.__dict__, "file": "x/../../etc"}),)).to_json()


def test_directory_hash_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.mlpackage", tmp_path / "b.mlpackage"
    for root, order in ((a, ["w", "m"]), (b, ["m", "w"])):
        (root / "Data").mkdir(parents=True)
        for name in order:
            (root / "Data" / name).write_bytes(name.encode() * 10)
    assert hash_path(a) == hash_path(b)
    (b / "Data" / "w").write_bytes(b"changed")
    assert hash_path(a)[0] != hash_path(b)[0]


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such directory"):
        read_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="no bundle.json"):
        read_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text(json.dumps({"schema": "edgekit.bundle/1"}))
    with pytest.raises(BundleError, match="missing required field 'name'"):
        read_bundle(tmp_path)


def test_generated_dimension_names_are_shown_as_people_read_them() -> None:
    from edgekit.bundle import TensorSpec

    tokens = TensorSpec("input_ids", ("s52", "s53"), "int64")
    assert tokens.shown_shape() == "[batch, seq]"
    image = TensorSpec("x", ("unk__1009", 3, "height", None), "float32")
    assert image.shown_shape() == "[batch, 3, height, ?]"
    assert TensorSpec("y", (-1, "unk__7", 10), "float32").shown_shape() == "[batch, ?, 10]"
    assert TensorSpec("z", ("batch_size", 4), "float32").shown_shape() == "[batch_size, 4]"  # a chosen name stays
