"""The device hot path of ``edgekit serve``: plain ASGI for GET/HEAD of ``/metadata/*`` and
``/targets/*`` (immutable files cached in memory, ETag, Range), in front of the FastAPI app."""

from __future__ import annotations

import time
from typing import Any

from edgekit._http import byte_range
from edgekit.errors import NotFoundError, OtaRequestError
from edgekit.ota.service.core import OtaService
from edgekit.ota.service.storage import check_key

MUTABLE = ("metadata/timestamp.json", "metadata/root.json")
CONDITIONAL = (b"if-none-match", b"range", b"if-range")
NOT_FOUND_BODY = b'{"error":"not found"}'
NOT_FOUND_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(NOT_FOUND_BODY)).encode())]
MUTABLE_TTL_S = 0.5  # object stores without a cheap change token: a new timestamp is served at most this late


class DeviceFastPath:
    """Plain ASGI for the device hot path (``GET``/``HEAD`` of ``/metadata/*`` and ``/targets/*``).

    Everything else goes to the FastAPI app. Every file but ``timestamp.json`` and ``root.json`` is
    immutable (consistent snapshots, hash-prefixed targets), so their size, ETag and, up to 1 MB,
    their bytes are cached. ``timestamp.json`` and ``root.json`` are cached too, and read again
    when the file's size or mtime changes (on S3: after 0.5 s, or at once after a change this
    process made). A missing ``N.root.json`` (the client's root-rotation probe) is remembered for 2 s.
    """

    def __init__(self, app: Any, service: OtaService, metrics: dict[str, Any], cache_bytes: int = 64 << 20) -> None:
        self.app = app
        self.service = service
        self.metrics = metrics
        self.cache: dict[str, tuple[Any, bytes | None]] = {}
        self.missing: dict[str, float] = {}
        self.fresh: dict[str, tuple[Any, tuple[Any, bytes | None], float]] = {}
        self._version = getattr(service.storage, "version", None)  # FileStorage: one stat call tells a change
        self._metric_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._headers: dict[tuple[str, str], list[tuple[bytes, bytes]]] = {}
        self._bytes_children: dict[str, Any] = {}
        self.cache_left = cache_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and path.startswith(("/metadata/", "/targets/")):
            started = time.perf_counter()
            route = "/metadata/{name}" if path.startswith("/metadata/") else "/targets/{path:path}"
            status = await self._serve(scope, send, path[1:], route)
            counter, latency = self._children(route, status)
            counter.inc()
            latency.observe(time.perf_counter() - started)
            return
        await self.app(scope, receive, send)

    def _children(self, route: str, status: int) -> tuple[Any, Any]:
        """The metric children for a route and status (labels() looked up once, not per request)."""
        key = (route, status)
        found = self._metric_children.get(key)
        if found is None:
            found = (self.metrics["requests"].labels(route, str(status)), self.metrics["latency"].labels(route))
            self._metric_children[key] = found
        return found

    def _lookup(self, key: str) -> tuple[Any, bytes | None] | None:
        found = self.cache.get(key)
        if found is not None:
            return found
        now = time.monotonic()
        if key in self.missing and now - self.missing[key] < 2.0:
            return None
        version = None
        if key in MUTABLE:
            fresh = self.fresh.get(key)
            version = self._version(key) if self._version is not None else None
            if fresh is not None and (fresh[0] == version if version is not None else now - fresh[2] < MUTABLE_TTL_S):
                return fresh[1]
        stat = self.service.storage.stat(key)
        if stat is None:
            if key.endswith(".root.json"):
                self.missing[key] = time.monotonic()
            return None
        data = None
        if stat.size <= 1 << 20:
            data = b"".join(self.service.storage.read_range(key, 0, stat.size - 1)) if stat.size else b""
        if key in MUTABLE:
            self.fresh[key] = (version, (stat, data), now)
        elif data is None or len(data) <= self.cache_left:
            self.cache[key] = (stat, data)
            self.cache_left -= len(data or b"")
        return stat, data

    async def _serve(self, scope: Any, send: Any, key: str, route: str) -> int:
        found = self.cache.get(key)  # the common case first: an immutable file already seen
        if found is None:
            missing = self.missing.get(key)
            if missing is not None and time.monotonic() - missing < 2.0:
                return await _answer(send, 404, NOT_FOUND_HEADERS, NOT_FOUND_BODY)
            try:
                if key not in MUTABLE:  # two fixed, safe names; anything else is checked
                    check_key(key)
                    if key.startswith("metadata/") and "/" in key[9:]:
                        raise OtaRequestError("not found", status=404)
                found = self._lookup(key)
            except (OtaRequestError, NotFoundError, ValueError, OSError):  # NUL bytes, names over the file system's limit
                found = None
        if found is None:
            return await _answer(send, 404, NOT_FOUND_HEADERS, NOT_FOUND_BODY)
        stat, data = found
        conditional = [(k, v) for k, v in scope["headers"] if k in CONDITIONAL]
        kind = self._sent_bytes(route)
        if not conditional and data is not None:  # the hot path: a plain GET of a small file
            kind.inc(stat.size)
            return await _answer(send, 200, self._full_headers(key, stat), data if scope["method"] == "GET" else b"")
        headers = dict(conditional)
        out = [(b"etag", stat.etag.encode()), (b"accept-ranges", b"bytes"),
               (b"cache-control", b"no-cache" if key in MUTABLE else b"public, max-age=31536000, immutable")]
        if headers.get(b"if-none-match", b"").decode() == stat.etag:
            return await _answer(send, 304, out, b"")
        start, end, status = 0, stat.size - 1, 200
        wanted = None
        if headers.get(b"if-range", stat.etag.encode()).decode() == stat.etag:
            wanted = byte_range(headers.get(b"range", b"").decode(), stat.size)
        if wanted is False:
            return await _answer(send, 416, [(b"content-range", f"bytes */{stat.size}".encode())], b"")
        if wanted:
            (start, end), status = wanted, 206
            out.append((b"content-range", f"bytes {start}-{end}/{stat.size}".encode()))
        media = b"application/json" if key.endswith(".json") else b"application/octet-stream"
        out += [(b"content-type", media), (b"content-length", str(end - start + 1).encode())]
        kind.inc(end - start + 1)
        if scope["method"] == "HEAD":
            return await _answer(send, status, out, b"")
        if data is not None:
            return await _answer(send, status, out, data[start:end + 1])
        await send({"type": "http.response.start", "status": status, "headers": out})
        for chunk in self.service.storage.read_range(key, start, end):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return status

    def _full_headers(self, key: str, stat: Any) -> list[tuple[bytes, bytes]]:
        """The headers of a whole-file 200 answer (built once per file version)."""
        found = self._headers.get((key, stat.etag))
        if found is None:
            media = b"application/json" if key.endswith(".json") else b"application/octet-stream"
            found = [(b"etag", stat.etag.encode()), (b"accept-ranges", b"bytes"),
                     (b"cache-control", b"no-cache" if key in MUTABLE else b"public, max-age=31536000, immutable"),
                     (b"content-type", media), (b"content-length", str(stat.size).encode())]
            if len(self._headers) > 10_000:
                self._headers.clear()
            self._headers[(key, stat.etag)] = found
        return found

    def _sent_bytes(self, route: str) -> Any:
        found = self._bytes_children.get(route)
        if found is None:
            found = self._bytes_children[route] = self.metrics["bytes"].labels(route.split("/")[1])
        return found


async def _answer(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    if not any(k == b"content-length" for k, _ in headers):
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
    return status
