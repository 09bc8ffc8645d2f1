"""Tensor-level delta updates, the part of the OTA contract both sides share: the service makes a delta
from release N's artifact to release N+1's; the device rebuilds N+1's file, byte for byte, from the
file it already holds.

A model file is mostly tensors. A retrained head or a fine-tuned adapter leaves most of them as they
were, byte for byte, but moves them: the graph around them changes size, a flatbuffer aligns them
again. Byte-level diffs (bsdiff, ``zstd --patch-from``) find the moved blocks by searching; this
module finds them by reading the file's own structure: the tensor blobs of an ONNX model (every
``TensorProto``'s data, in initializers, ``Constant`` attributes and subgraphs) and of a TFLite model
(every ``Buffer``'s data, inside the flatbuffer or after it). A blob whose sha256 the base file holds
is copied from the base; a changed tensor travels as its XOR with the base's (weights that moved a
little share their sign and exponent bytes, which then compress away); the graph travels as it is.

The delta's bytes::

    b"EKDELTA1"  then one zlib stream of:  u32 header length (little-endian), the header (JSON), literals

The header is ``{"format", "base_sha256", "base_size", "target_sha256", "target_size", "ops"}``; each op
is ``["copy", base_offset, length]``, ``["data", literal_offset, length]`` or ``["xor", base_offset,
literal_offset, length]`` (the base's bytes XOR the literal's, stored as byte planes: every fourth
byte together), written in order. A device
checks the base's hash before applying, and the rebuilt file's length and sha256 against the release's
signed TUF target before using it; on any mismatch it downloads the whole file.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

from edgekit.errors import VerificationError

FORMAT = "edgekit-delta/1"
MAGIC = b"EKDELTA1"
SUFFIX = ".delta"
FORMATS = ("onnx", "tflite")  # the artifact formats whose tensors are addressable here
MIN_BLOB = 64  # smaller blobs are cheaper to send than to name
MAX_HEADER = 16 << 20
MAX_OPS = 1_000_000
_OP_LENGTH = {"copy": 3, "data": 3, "xor": 4}  # [kind, base offset | literal offset, (literal offset,) length]


def delta_name(file: str, base_release: int) -> str:
    """The target name of the delta that rebuilds ``file`` from release ``base_release``'s copy."""
    return f"{file}.from-{base_release}{SUFFIX}"


# -- where the tensors are ------------------------------------------------------------------------

def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """The protobuf fields in ``data[start:end]``: (field number, wire type, value start, value end)."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, after = _varint(data, pos)
        elif wire == 1:
            after = pos + 8
        elif wire == 5:
            after = pos + 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            after = pos + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if after > end:
            raise ValueError("protobuf field runs past its message")
        yield number, wire, pos, after
        pos = after


# TensorProto fields that hold its data (raw_data, and the packed typed lists).
_TENSOR_DATA = {4, 5, 7, 9, 10, 11}
# Where tensors and graphs nest: message kind -> {field number: kind of the nested message}.
_ONNX_NESTING = {
    "model": {7: "graph", 25: "function"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}


def onnx_blobs(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of every tensor's data in a serialized ONNX model."""
    view = memoryview(data)
    out: list[tuple[int, int]] = []
    stack = [("model", 0, len(data))]
    while stack:
        kind, start, end = stack.pop()
        for number, wire, lo, hi in _fields(view, start, end):
            if wire != 2:
                continue
            if kind == "tensor":
                if number in _TENSOR_DATA and hi - lo >= MIN_BLOB:
                    out.append((lo, hi - lo))
                continue
            nested = _ONNX_NESTING.get(kind, {}).get(number)
            if nested:
                stack.append((nested, lo, hi))
    return sorted(out)


def _u32(data: bytes, pos: int) -> int:
    return int(struct.unpack_from("<I", data, pos)[0])


def _table_field(data: bytes, table: int, index: int) -> int:
    """The position of field ``index`` of the flatbuffer table at ``table`` (0 when absent)."""
    vtable = table - int(struct.unpack_from("<i", data, table)[0])
    vtable_size = int(struct.unpack_from("<H", data, vtable)[0])
    slot = 4 + 2 * index
    if slot + 2 > vtable_size:
        return 0
    offset = int(struct.unpack_from("<H", data, vtable + slot)[0])
    return table + offset if offset else 0


def tflite_blobs(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of every buffer's data in a TFLite flatbuffer (``Model.buffers``: data inline,
    or ``offset``/``size`` past the flatbuffer for models over 2 GB)."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError("not a TFLite flatbuffer (no TFL3 identifier)")
    model = _u32(data, 0)
    field = _table_field(data, model, 4)  # Model.buffers
    if not field:
        return []
    vector = field + _u32(data, field)
    out = []
    for i in range(_u32(data, vector)):
        element = vector + 4 + 4 * i
        buffer = element + _u32(data, element)
        inline = _table_field(data, buffer, 0)  # Buffer.data
        if inline:
            start = inline + _u32(data, inline)
            length = _u32(data, start)
            if length >= MIN_BLOB:
                out.append((start + 4, length))
            continue
        offset_at, size_at = _table_field(data, buffer, 1), _table_field(data, buffer, 2)
        if offset_at and size_at:
            offset, size = (int(struct.unpack_from("<Q", data, at)[0]) for at in (offset_at, size_at))
            if size >= MIN_BLOB:
                out.append((offset, size))
    for offset, length in out:
        if offset + length > len(data):
            raise ValueError("a TFLite buffer runs past the end of the file")
    return sorted(out)


def blobs(data: bytes, fmt: str) -> list[tuple[int, int]]:
    """The tensor blobs of an artifact of format ``fmt`` (``onnx`` or ``tflite``), without overlaps."""
    found = onnx_blobs(data) if fmt == "onnx" else tflite_blobs(data) if fmt == "tflite" else []
    out: list[tuple[int, int]] = []
    for offset, length in found:  # a buffer shared by two tensors is named once
        if not out or offset >= out[-1][0] + out[-1][1]:
            out.append((offset, length))
    return out


# -- making and applying ------------------------------------------------------------------------

def _shuffle(data: bytes, width: int = 4) -> bytes:
    """Byte planes: every ``width``-th byte together (the sign and exponent bytes of float32 weights
    that moved a little are equal, so their XOR planes are zeros that compress away)."""
    import numpy as np

    if len(data) % width:
        return data
    return np.frombuffer(data, np.uint8).reshape(-1, width).T.tobytes()


def _unshuffle(data: bytes | memoryview, width: int = 4) -> bytes:
    import numpy as np

    if len(data) % width:
        return bytes(data)
    return np.frombuffer(data, np.uint8).reshape(width, -1).T.tobytes()


def _xor(a: bytes | memoryview, b: bytes | memoryview) -> bytes:
    import numpy as np

    return np.bitwise_xor(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)).tobytes()


def make(base: bytes, target: bytes, fmt: str) -> bytes:
    """The delta that rebuilds ``target`` from ``base`` (both artifacts of format ``fmt``).

    A tensor found in the base byte for byte is copied; a changed tensor of the same size at the
    same place in the graph (the same rank among the tensors of its size) is sent as its XOR with the
    base's, in byte planes; everything else is sent as it is.

    Raises:
        ValueError: A file is not a readable model of that format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"no tensor-level deltas for {fmt} artifacts (only {', '.join(FORMATS)})")
    base_blobs = blobs(base, fmt)
    known: dict[bytes, int] = {}
    by_size: dict[int, list[int]] = {}
    for offset, length in base_blobs:
        known.setdefault(hashlib.sha256(base[offset:offset + length]).digest(), offset)
        by_size.setdefault(length, []).append(offset)
    ops: list[list[Any]] = []
    literals = bytearray()

    def literal(lo: int, hi: int) -> None:
        if hi <= lo:
            return
        if ops and ops[-1][0] == "data":
            ops[-1][2] += hi - lo
        else:
            ops.append(["data", len(literals), hi - lo])
        literals.extend(target[lo:hi])

    pos = 0
    rank: dict[int, int] = {}
    for offset, length in blobs(target, fmt):
        nth = rank[length] = rank.get(length, -1) + 1
        blob = target[offset:offset + length]
        at = known.get(hashlib.sha256(blob).digest())
        if at is None and nth < len(by_size.get(length, ())):  # the same tensor, changed: its XOR
            literal(pos, offset)
            twin = by_size[length][nth]
            ops.append(["xor", twin, len(literals), length])
            literals.extend(_shuffle(_xor(blob, base[twin:twin + length])))
            pos = offset + length
            continue
        if at is None:
            continue  # sent as a literal with what surrounds it
        literal(pos, offset)
        if ops and ops[-1][0] == "copy" and ops[-1][1] + ops[-1][2] == at:
            ops[-1][2] += length
        else:
            ops.append(["copy", at, length])
        pos = offset + length
    literal(pos, len(target))
    header = json.dumps({"format": FORMAT, "base_sha256": hashlib.sha256(base).hexdigest(), "base_size": len(base),
                         "target_sha256": hashlib.sha256(target).hexdigest(), "target_size": len(target),
                         "ops": ops}, separators=(",", ":")).encode()
    return MAGIC + zlib.compress(struct.pack("<I", len(header)) + header + bytes(literals), 9)


def read_header(delta: bytes, *, max_size: int) -> tuple[dict[str, Any], bytes]:
    """The header and the literal bytes of ``delta``, which may rebuild at most ``max_size`` bytes.

    Raises:
        VerificationError: Not a delta of this format, or malformed.
    """
    if not delta.startswith(MAGIC):
        raise VerificationError("not an edgekit delta (bad magic)")
    try:
        inflater = zlib.decompressobj()
        body = inflater.decompress(delta[len(MAGIC):], 4 + MAX_HEADER + max_size + 1)
        if len(body) > 4 + MAX_HEADER + max_size:
            raise VerificationError("the delta expands past what the release can hold")
        if not inflater.eof:
            raise VerificationError("the delta is truncated")
        size = int(struct.unpack_from("<I", body, 0)[0])
        if size > MAX_HEADER:
            raise VerificationError("the delta's header is too large")
        header = json.loads(body[4:4 + size])
        literals = body[4 + size:]
        ops = header["ops"]
        if header.get("format") != FORMAT or not isinstance(ops, list) or len(ops) > MAX_OPS:
            raise VerificationError(f"the delta is not {FORMAT}")
        for op in ops:
            if (not isinstance(op, list) or len(op) != _OP_LENGTH.get(str(op[0]) if op else "", 0)
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in op[1:])):
                raise VerificationError("the delta holds a malformed op")
        if sum(op[-1] for op in ops) != header["target_size"] or header["target_size"] > max_size:
            raise VerificationError("the delta's ops do not add up to its target's size")
    except (zlib.error, struct.error, ValueError, KeyError, TypeError) as exc:
        raise VerificationError(f"the delta is malformed ({exc})") from exc
    return header, literals


def apply(base: bytes, delta: bytes, out: BinaryIO, *, max_size: int) -> dict[str, Any]:
    """Write the file ``delta`` rebuilds from ``base`` to ``out``; its header.

    The caller checks the written file against the release's signed target.

    Raises:
        VerificationError: The delta is malformed, is for another base, or reads outside its inputs.
    """
    header, literals = read_header(delta, max_size=max_size)
    if len(base) != header.get("base_size") or hashlib.sha256(base).hexdigest() != header.get("base_sha256"):
        raise VerificationError("the delta is for another base file than the one installed here")
    view, plain = memoryview(base), memoryview(literals)
    for op in header["ops"]:
        kind, length = op[0], op[-1]
        reads = [(view, op[1])] if kind == "copy" else [(plain, op[1])] if kind == "data" else [(view, op[1]), (plain, op[2])]
        if any(offset + length > len(source) for source, offset in reads):
            raise VerificationError(f"a {kind} op of the delta reads past the end of its input")
        if kind == "xor":
            out.write(_xor(view[op[1]:op[1] + length], _unshuffle(plain[op[2]:op[2] + length])))
        else:
            source, offset = reads[0]
            out.write(source[offset:offset + length])
    return header
