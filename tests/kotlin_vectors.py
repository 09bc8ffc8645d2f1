"""Test vectors the Kotlin OTA client must agree with, computed by the Python side.

``python -m tests.kotlin_vectors`` rewrites android-demo/ota-client/src/test/resources/vectors.json;
tests/test_kotlin_client.py checks the committed file is what this module computes, and the Kotlin
unit tests (VectorsTest) check the Kotlin code gives the same answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "android-demo" / "ota-client" / "src" / "test" / "resources" / "vectors.json"


def compute() -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from securesystemslib.formats import encode_canonical
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata, Root, SuccinctRoles

    from edgekit.ota import contract

    seeds = ["digits/stable/1", "digits/stable/2", "face/beta/17"]
    devices = ["device-0", "device-1", "pixel-8:a1b2", "emulator-5554", "ü-device"]
    buckets = [{"device": d, "seed": s, "bucket": contract.bucket(d, s)} for s in seeds for d in devices]
    samples: list[Any] = [
        {"b": 1, "a": [3, 2, {"z": None, "y": True}], "c": "x\"y\\z"},
        {"unicode": "ü→😀", "empty": {}, "list": [], "neg": -42, "big": 9007199254740993},
        {"signed": {"_type": "targets", "version": 2, "expires": "2030-01-01T00:00:00Z", "targets": {}}},
    ]
    canonical = [{"value": v, "canonical": encode_canonical(v)} for v in samples]
    state = contract.ChannelState(
        model="digits", channel="stable", current=contract.ReleaseRef(3, "2.0.0"),
        rollout=contract.Rollout(5000, "digits/stable/3"), stable=contract.ReleaseRef(2, "1.0.0"), rollback_of=None,
        files={"2": ["bundle.json", "reference.npz", "m.tflite"], "3": ["bundle.json", "reference.npz", "m.tflite"]})
    channel = {"custom": state.to_custom(),
               "release_for": {d: (r.release if (r := state.release_for(d)) else None) for d in devices}}
    art = {"target": "tflite-int8", "format": "tflite", "precision": "int8"}
    descriptors = [
        contract.descriptor(model="digits", channel="stable", version="2.0.0", release=3, file="tflite-int8.tflite",
                         kind="artifact", size=158_000, rollout=contract.Rollout(2500, "digits/stable/3"), artifact=art),
        contract.descriptor(model="digits", channel="stable", version="1.0.0", release=4, file="bundle.json",
                         kind="manifest", size=10_812, rollout=contract.Rollout(10000, "digits/stable/4", True),
                         rollback_of=3),
    ]
    bins = []
    for bits in (4, 8):
        succinct = SuccinctRoles([], 1, bits, "bins")
        for path in ("digits/stable/channel.json", "digits/stable/3/bundle.json", "a", "face/beta/17/m.onnx"):
            bins.append({"bit_length": bits, "path": path, "role": succinct.get_role_for_target(path)})
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    signer = CryptoSigner(key)
    root = Metadata(Root(expires=__import__("datetime").datetime(2030, 1, 1, tzinfo=__import__("datetime").timezone.utc)))
    root.signed.add_key(signer.public_key, "root")
    root.sign(signer)
    signed_root = json.loads(root.to_bytes())
    return {"buckets": buckets, "canonical": canonical, "channel": channel, "descriptors": descriptors, "succinct": bins,
            "signed_root": signed_root}


def write() -> None:
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    VECTORS.write_text(json.dumps(compute(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write()
