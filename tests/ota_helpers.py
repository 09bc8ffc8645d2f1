"""What the OTA tests share: a live service on loopback, bundles, and a connection-cutting proxy."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from edgekit.ota.service.core import HaltPolicy, OtaService
from edgekit.ota.service.database import SqlRegistry
from edgekit.ota.service.repository import Expiry, Repository


class LiveServer:
    """``edgekit serve``'s app under uvicorn in a thread, on a free loopback port."""

    def __init__(self, data: Path, keys: Path, *, expiry: Expiry | None = None, halt: HaltPolicy | None = None,
                 refresh_every_s: float | None = None, registry_url: str | None = None,
                 storage_url: str | None = None, limits: Any = None) -> None:
        import uvicorn

        from edgekit.ota.service.app import Limits, create_app, guarded_protocol

        limits = limits or Limits()

        self.service = OtaService.embedded(data, keys, expiry=expiry, halt_policy=halt, registry_url=registry_url,
                                           storage_url=storage_url)
        if self.service.storage.stat("metadata/timestamp.json") is None:
            Repository.create(self.service.storage, keys, expiry)
        app = create_app(self.service, refresh_every_s=refresh_every_s, limits=limits)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                                                    http=guarded_protocol(limits)))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the OTA test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.registry: SqlRegistry = self.service.registry

    def token(self, *scopes: str) -> str:
        return self.registry.create_token("test", list(scopes))

    def enrolment(self, max_devices: int = 10_000) -> str:
        """An enrolment token (one per server, made on first use) for the test's devices."""
        if not hasattr(self, "_enrolment"):
            self._enrolment = self.registry.create_enrolment("test fleet", max_devices)
        return self._enrolment

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.service.close()
        self.registry.close()


class ServedProcess:
    """``edgekit serve`` itself (its default server, granian, unless ``server``) in a subprocess on a
    free loopback port, with ``limits`` passed as the workers read them; tokens are made in the same
    registry from this process."""

    def __init__(self, data: Path, keys: Path, *, limits: Any = None, server: str = "granian", workers: int = 1) -> None:
        import dataclasses
        import os
        import subprocess
        import sys
        import urllib.request

        self.service = OtaService.embedded(data, keys)
        if self.service.storage.stat("metadata/timestamp.json") is None:
            Repository.create(self.service.storage, keys)
        self.registry: SqlRegistry = self.service.registry
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ)
        if limits is not None:
            env["EDGEKIT_OTA_LIMITS"] = json.dumps(dataclasses.asdict(limits))
        edgekit = str(Path(sys.executable).parent / "edgekit")
        self.proc = subprocess.Popen([edgekit, "serve", "--data", str(data), "--keys", str(keys), "--port", str(port),
                                      "--workers", str(workers), "--server", server], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1)  # noqa: S310
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.proc.kill()
                    raise RuntimeError("edgekit serve did not start") from None
                time.sleep(0.1)

    def token(self, *scopes: str) -> str:
        return self.registry.create_token("test", list(scopes))

    def stop(self) -> None:
        import signal
        import subprocess

        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.service.close()
        self.registry.close()


def edit_manifest(bundle: Path, change: Any) -> None:
    """Rewrite a bundle's bundle.json through ``change(dict)``."""
    path = bundle / "bundle.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def broken_bundle(good: Path, dst: Path, version: str) -> Path:
    """A bundle that verifies (sizes and sha256 match its manifest) but whose only artifact does not load:
    what a bad release looks like to a device."""
    import hashlib

    shutil.copytree(good, dst)
    garbage = b"this is not an onnx model" * 100
    (dst / "onnx-web-int8.onnx").write_bytes(garbage)

    def change(m: dict[str, Any]) -> None:
        m["version"] = version
        keep = [a for a in m["artifacts"] if a["target"] == "onnx-web-int8" and a["format"] == "onnx"]
        keep[0]["size_bytes"], keep[0]["sha256"] = len(garbage), hashlib.sha256(garbage).hexdigest()
        for a in m["artifacts"]:
            if a not in keep:
                (dst / a["file"]).unlink(missing_ok=True)
        m["artifacts"] = keep

    edit_manifest(dst, change)
    return dst


class CuttingProxy:
    """A TCP proxy to ``upstream`` that closes the first connection whose request line contains
    ``needle`` after forwarding ``cut_after`` bytes of the answer: a download cut off mid-way."""

    def __init__(self, upstream: str, needle: str, cut_after: int) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.needle, self.cut_after = needle.encode(), cut_after
        self.cuts = 0
        self.requests: list[bytes] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        try:
            request = client.recv(65536)
            self.requests.append(request)
            cut = self.needle in request.split(b"\r\n", 1)[0] and self.cuts == 0
            if cut:
                self.cuts += 1
            head, sep, body = request.partition(b"\r\n\r\n")
            lines = [h for h in head.split(b"\r\n") if not h.lower().startswith(b"connection:")]
            upstream.sendall(b"\r\n".join([*lines, b"Connection: close"]) + sep + body)
            sent = 0
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                if cut and sent + len(data) >= self.cut_after:
                    client.sendall(data[: self.cut_after - sent])
                    break
                client.sendall(data)
                sent += len(data)
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self.sock.close()


class SlowClients:
    """Connections that hold a server: ``headers`` that never finish their request headers, and ``drips``
    uploads (to ``path``, with ``token``) that send their announced 1 MB body a byte a second."""

    def __init__(self, url: str, *, headers: int, drips: int, path: str, token: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.slow = []
        for _ in range(headers):
            s = socket.create_connection((host, int(port)))
            s.sendall(b"GET /metadata/timestamp.json HTTP/1.1\r\nHost: x\r\n")
            self.slow.append(s)
        self.drips = []
        for _ in range(drips):
            s = socket.create_connection((host, int(port)))
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                      "Content-Type: application/x-tar\r\nContent-Length: 1000000\r\n\r\n".encode())
            self.drips.append(s)
        self.stop = threading.Event()
        threading.Thread(target=self._drip, daemon=True).start()

    def _drip(self) -> None:
        while not self.stop.wait(1.0):
            for s in self.drips:
                try:
                    s.send(b"x")
                except OSError:
                    pass

    def closed_by_server(self) -> int:
        """How many of the connections the server has closed (each is then closed here too)."""
        self.stop.set()
        closed = 0
        for s in self.slow + self.drips:
            s.settimeout(5.0)
            try:
                data = s.recv(65536)
                closed += data == b"" or b" 408 " in data[:20] or b" 413 " in data[:20]
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                pass
            s.close()
        return closed


def tar_of_members(count: int) -> bytes:
    """A tar of ``count`` one-byte files (what a member-count cap must refuse)."""
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for i in range(count):
            info = tarfile.TarInfo(f"f{i}.bin")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return out.getvalue()
