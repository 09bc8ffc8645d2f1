"""The OTA service's operator client: one HTTP request with its JSON answer and the service's errors
as edgekit errors (``call``), a bundle as the flat tar the publish endpoint takes (``bundle_tar``),
and retries while the service restarts (``retrying``). The CLI's OTA commands use it; so can scripts."""

from __future__ import annotations

import http.client
import io
import json
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgekit.errors import AuthError, OtaRequestError, UpdateError


def call(server: str, method: str, path: str, *, token: str | None = None, body: Any = None,
         data: bytes | None = None, content_type: str = "application/json", timeout: float = 300) -> Any:
    """One request to the service; its JSON answer. HTTP errors become OtaRequestError with the server's message.

    A server may answer (401, 413, 422) before it has read a large upload and close the connection;
    the answer is read even when sending the rest of the body fails.
    """
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = json.dumps(body).encode()
    url = urlsplit(server.rstrip("/") + path)
    conn_class = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(url.hostname or "127.0.0.1", url.port, timeout=timeout)
    target = url.path + (f"?{url.query}" if url.query else "")
    try:
        try:
            conn.request(method, target, body=data, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early; its answer is still there to read
        response = conn.getresponse()
        payload = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise UpdateError(f"cannot reach the OTA service at {server} ({exc}); is `edgekit serve` running?") from exc
    finally:
        conn.close()
    if response.status >= 400:
        try:
            message = json.loads(payload).get("error") or response.reason
        except (ValueError, AttributeError):
            message = response.reason
        cls = AuthError if response.status in (401, 403) else OtaRequestError
        raise cls(f"the server refused {method} {path}: HTTP {response.status}: {message}", status=response.status)
    return json.loads(payload or b"null")


def bundle_tar(bundle: Path) -> bytes:
    """The bundle directory's files as one flat tar (what the publish endpoint takes); a directory artifact
    (Core ML's ``.mlpackage``) goes in as its deterministic tar, ``NAME.tar`` (:func:`contract.pack_directory`)."""
    from edgekit.bundle import read_bundle
    from edgekit.ota.contract import pack_directory, packed_name

    read_bundle(bundle)  # refuse a damaged bundle before uploading it
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path in sorted(bundle.iterdir()):
            if path.is_file():
                tar.add(path, arcname=path.name)
            elif path.is_dir():
                data = pack_directory(path)
                info = tarfile.TarInfo(packed_name(path.name))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def retrying(request: Any, patience_s: float = 30.0) -> Any:
    """``request()`` again while the service cannot be reached, for up to ``patience_s`` (a restart).

    Safe for publishing: the same files published again answer with the release already made, so a
    retry after a lost answer never makes a second release.
    """
    import sys
    import time

    deadline = time.monotonic() + patience_s
    wait = 0.5
    while True:
        try:
            return request()
        except UpdateError as exc:
            if time.monotonic() + wait > deadline:
                raise
            print(f"{exc}; trying again in {wait:g} s", file=sys.stderr)
            time.sleep(wait)
            wait = min(wait * 2, 8.0)
