"""Delta targets at publish time: for each ``.onnx``/``.tflite`` artifact of a new release, a
tensor-level delta (``edgekit.ota.delta``) from the same target's artifact in the releases devices
most likely hold (the channel's latest and its stable release), stored and signed like any file.

A delta is kept only when it is at most ``MAX_SHARE`` of the full file (fine-tuning the whole
network still saves about 45 %: weights that moved a little share their high bytes); a release that
shares nothing with the base gets no delta, and devices download the file as before.
"""

from __future__ import annotations

import logging
from typing import Any

from edgekit.ota import contract, delta
from edgekit.ota.service.database import Release
from edgekit.ota.service.storage import Storage

log = logging.getLogger("edgekit.ota")
MAX_SHARE = 0.8


def make_deltas(storage: Storage, model: str, channel: str, number: int, files: list[dict[str, Any]],
                data_of: dict[str, bytes], bases: list[Release]) -> list[dict[str, Any]]:
    """The delta entries (``kind: delta``) of release ``number``, whose ``files`` (name, sha256, artifact)
    have the bytes ``data_of``; each delta's bytes are stored under its target key."""
    from tuf.api.metadata import TargetFile

    out: list[dict[str, Any]] = []
    for f in files:
        art = f.get("artifact") or {}
        if f["kind"] != "artifact" or art.get("format") not in delta.FORMATS or art.get("packed_from"):
            continue
        for base in bases:
            old = next((b for b in base.files if b["kind"] == "artifact" and (b.get("artifact") or {}).get("target")
                        == art["target"] and (b.get("artifact") or {}).get("format") == art["format"]), None)
            if old is None or old["sha256"] == f["sha256"]:
                continue
            old_key = contract.target_key(contract.target_path(model, channel, base.release, old["file"]), old["sha256"])
            try:
                made = delta.make(storage.get(old_key), data_of[f["file"]], art["format"])
            except (ValueError, KeyError, OSError) as exc:  # a file this reader does not follow: full downloads only
                log.info("no delta", extra={"event": "delta_skipped", "file": f["file"], "from_release": base.release,
                                            "reason": str(exc)})
                continue
            if len(made) > MAX_SHARE * f["size"]:
                log.info("delta too large", extra={"event": "delta_skipped", "file": f["file"], "from_release": base.release,
                                                   "reason": f"{len(made)} of {f['size']} bytes"})
                continue
            name = contract.check_file_name(delta.delta_name(f["file"], base.release))
            info = TargetFile.from_data(contract.target_path(model, channel, number, name), made, ["sha256"])
            key = contract.target_key(info.path, info.hashes["sha256"])
            if storage.stat(key) is None:
                storage.put(key, made)
            out.append({"file": name, "kind": "delta", "size": info.length, "sha256": info.hashes["sha256"],
                        "delta": {"of": f["file"], "from_release": base.release, "from_sha256": old["sha256"],
                                  "format": delta.FORMAT}})
    return out
