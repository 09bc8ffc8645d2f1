"""The OTA service under hostile input: every request an attacker shapes gets a 4xx, never a 5xx, and
the service keeps answering devices at its normal latency while a decompression bomb, an oversized
upload and hundreds of slow connections are refused. Real servers on loopback (edgekit serve on granian,
and uvicorn), raw sockets."""

from __future__ import annotations

import io
import socket
import statistics
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekit.ota.service.app import Limits
from tests.ota_helpers import LiveServer, ServedProcess, SlowClients, tar_of_members

pytest.importorskip("fastapi")


def _status(url: str, request: bytes, timeout: float = 10.0) -> int:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def _post(path: str, body: bytes, token: str | None = None, content_type: str = "application/json") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{auth}"
            "Connection: close\r\n\r\n").encode() + body


def _get(path: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@pytest.fixture(params=["edgekit serve", "uvicorn in a thread"])
def guarded(request: pytest.FixtureRequest, tmp_path: Path, ota_keys: Path) -> Iterator[LiveServer | ServedProcess]:
    """The service with small limits: ``edgekit serve`` as users run it (granian), and the app under
    uvicorn with its guarded protocol (``--server uvicorn``)."""
    limits = Limits(max_upload_bytes=32 << 20, max_extracted_bytes=16 << 20, ratio_floor_bytes=1 << 20, max_members=64,
                    header_timeout_s=2.0, body_grace_s=2.0, min_body_rate=4096)
    live = (ServedProcess(tmp_path / "server", ota_keys, limits=limits) if request.param == "edgekit serve"
            else LiveServer(tmp_path / "server", ota_keys, limits=limits))
    yield live
    live.stop()


REPORT = b'{"device_id":"%s","model":"digits","channel":"stable","release":%s,"outcome":"failed"}'


def test_hostile_paths_numbers_and_strings_get_a_4xx(guarded: LiveServer | ServedProcess) -> None:
    token = guarded.token("admin")
    requests = {
        "NUL in a target path": _get(b"/targets/a%00b"),
        "NUL in a metadata name": _get(b"/metadata/a%00.json"),
        "a name over the file system's limit": _get(b"/metadata/" + b"a" * 300 + b".json"),
        "a target segment over the limit": _get(b"/targets/" + b"a" * 300 + b"/x"),
        "NaN release": _post("/v1/reports", REPORT % (b"d1", b"NaN")),
        "Infinity release": _post("/v1/reports", REPORT % (b"d1", b"Infinity")),
        "1e400 release": _post("/v1/reports", REPORT % (b"d1", b"1e400")),
        "1e29 release": _post("/v1/reports", REPORT % (b"d1", b"100000000000000000000000000000")),
        "2^63 release": _post("/v1/reports", REPORT % (b"d1", b"9223372036854775808")),
        "a lone surrogate in device_id": _post("/v1/reports", REPORT % (b"\\ud800", b"1")),
        "a lone surrogate as a key": _post("/v1/reports", b'{"\\udfff": 1}'),
        "not JSON": _post("/v1/reports", b"{nope"),
        "NaN percent": _post("/v1/models/digits/channels/stable/rollout", b'{"percent": NaN}', token),
        "Infinity percent": _post("/v1/models/digits/channels/stable/rollout", b'{"percent": Infinity}', token),
        "2^63 to_release": _post("/v1/models/digits/channels/stable/rollback", b'{"to_release": 9223372036854775808}', token),
        "NUL in a model name": _post("/v1/models/a%00b/channels/c/halt", b"{}", token),
        "a model name of 300 characters": _post("/v1/models/" + "a" * 300 + "/channels/c/halt", b"{}", token),
        "a traversal in a model name": _post("/v1/models/..%2F..%2Fx/channels/c/rollout", b'{"percent": 1}', token),
        "huge basis_points on publish": _post("/v1/models/digits/channels/stable/releases?basis_points=99999999999999999999",
                                              b"x", token, "application/x-tar"),
        "a release that does not exist": _post("/v1/reports", REPORT % (b"d1", b"7")),
    }
    got = {name: _status(guarded.url, request) for name, request in requests.items()}
    assert all(400 <= status < 500 for status in got.values()), got
    assert _status(guarded.url, _get(b"/metadata/timestamp.json")) == 200


def _bomb(size: int) -> bytes:
    """A gzipped bundle tar whose one file is ``size`` zero bytes (it compresses about 1000:1)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo("digits.onnx")
        info.size = size
        tar.addfile(info, io.BytesIO(bytes(size)))
    return out.getvalue()


def test_a_bomb_an_oversized_upload_and_slow_connections_are_refused_while_devices_are_served(guarded: LiveServer | ServedProcess,
                                                                                            tmp_path: Path) -> None:
    token = guarded.token("publish")
    publish = "/v1/models/digits/channels/stable/releases"

    def device_latencies(n: int) -> list[float]:
        out = []
        for _ in range(n):
            started = time.perf_counter()
            assert _status(guarded.url, _get(b"/metadata/timestamp.json")) == 200
            out.append(time.perf_counter() - started)
        return out

    normal = statistics.median(device_latencies(30))

    # 800 connections that never finish their headers, 20 uploads that drip a byte a second
    clients = SlowClients(guarded.url, headers=800, drips=20, path=publish, token=token)

    # a 64 MiB bomb (about 64 KB gzipped), a tar of too many files, and 2 GiB announced: all refused
    statuses: dict[str, int] = {}

    def attack() -> None:
        statuses["bomb"] = _status(guarded.url, _post(publish, _bomb(64 << 20), token, "application/gzip"), timeout=60)
        statuses["members"] = _status(guarded.url, _post(publish, tar_of_members(65), token, "application/x-tar"))
        statuses["announced 2 GiB"] = _status(guarded.url, f"POST {publish} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                                              f"{token}\r\nContent-Length: {2 << 30}\r\n\r\n".encode())

    attacker = threading.Thread(target=attack)
    attacker.start()
    during = device_latencies(60)
    attacker.join(timeout=60)
    assert statuses == {"bomb": 413, "members": 413, "announced 2 GiB": 413}
    assert max(during) < 1.0 and statuses, (normal, sorted(during)[-5:])
    assert statistics.median(during) < max(10 * normal, 0.05), (normal, statistics.median(during))

    # every slow connection is closed by the server once its deadline passes (2 s here)
    time.sleep(3.0)
    assert clients.closed_by_server() == 820
    assert not list(Path(__import__("tempfile").gettempdir()).glob("edgekit-publish-*"))
