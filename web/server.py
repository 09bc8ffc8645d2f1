"""``edgekit web BUNDLE``: serve the browser demo, the JavaScript library, onnxruntime-web and a bundle.

Paths (one origin, so the page is cross-origin isolated and wasm threads work):

- ``/`` redirects to ``/demo/``; ``/demo/*`` and ``/src/*`` are this folder's demo page and library;
- ``/ort/*`` is onnxruntime-web's dist folder, only the files the wasm and WebGPU builds load;
- ``/bundle/*`` is the bundle directory (``bundle.json`` and its artifacts).

Every response carries ``Cross-Origin-Opener-Policy: same-origin`` and
``Cross-Origin-Embedder-Policy: require-corp`` (without them wasm threads silently drop to one), an
``ETag``, and ``Range`` support, as any CDN or object store would give. Standard library only.
"""

from __future__ import annotations

import email.utils
import http.server
import logging
import mimetypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from edgekit._http import byte_range
from edgekit.errors import BundleError, MissingDependencyError

log = logging.getLogger("edgekit.web")

HERE = Path(__file__).resolve().parent
ORT_VERSION = "1.30.0"
# All the wasm path needs (14 MB), and the WebGPU build's files (27 MB), loaded only where an adapter exists.
ORT_FILES = (
    "ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm",
    "ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm",
)
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
         ".onnx": "application/octet-stream", ".ort": "application/octet-stream", ".css": "text/css",
         ".html": "text/html; charset=utf-8", ".png": "image/png", ".npz": "application/octet-stream"}
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
             "Cross-Origin-Resource-Policy": "same-origin", "X-Content-Type-Options": "nosniff"}


def find_ort_dir(explicit: str | Path | None = None) -> Path:
    """onnxruntime-web's ``dist`` folder: ``explicit``, ``$EDGEKIT_ORT_WEB_DIR``, or ``web/node_modules``.

    Raises:
        MissingDependencyError: None holds the files; the message says how to install them.
    """
    if explicit or os.environ.get("EDGEKIT_ORT_WEB_DIR"):  # a folder named by the user is the only one looked at
        candidates = [Path(explicit or os.environ["EDGEKIT_ORT_WEB_DIR"])]
    else:
        candidates = [HERE / "node_modules" / "onnxruntime-web" / "dist",
                      Path.cwd() / "web" / "node_modules" / "onnxruntime-web" / "dist"]
    for folder in candidates:
        if all((folder / name).is_file() for name in ORT_FILES[:3]):
            return folder
    where = ", ".join(str(c) for c in candidates)
    raise MissingDependencyError(
        f"onnxruntime-web's files are not installed (looked in {where}). Install them with "
        f"`npm ci --prefix web` in an edgekit checkout, or `npm install onnxruntime-web@{ORT_VERSION}` "
        "anywhere and pass --ort-dir node_modules/onnxruntime-web/dist (or set EDGEKIT_ORT_WEB_DIR)")


def check_web_bundle(bundle: str | Path) -> Path:
    """The bundle directory, verified, holding at least one onnx-web artifact.

    Raises:
        BundleError: Not a bundle, damaged, or without a web artifact.
    """
    from edgekit.bundle import read_bundle

    loaded = read_bundle(bundle)  # checks sizes and sha256
    if not any(a.format == "onnx" and a.target.startswith("onnx-web") for a in loaded.manifest.artifacts):
        have = ", ".join(a.target for a in loaded.manifest.artifacts) or "none"
        raise BundleError(f"{bundle} has no onnx-web artifact for the browser (it has: {have}); convert with "
                          "--target onnx-web (or onnx-web-int8, onnx-web-auto)")
    return Path(bundle).resolve()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: WebServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the stdlib's name)
        log.info("%s %s", self.address_string(), format % args)

    def _resolve(self) -> Path | None:
        path = unquote(urlsplit(self.path).path)
        mounts = {"/demo/": HERE / "demo", "/src/": HERE / "src", "/bundle/": self.server.bundle_dir,
                  "/ort/": self.server.ort_dir}
        for prefix, root in mounts.items():
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):] or "index.html"
            if prefix == "/ort/" and rest not in ORT_FILES:
                return None
            target = (root / rest).resolve()
            if not target.is_relative_to(root.resolve()) or not target.is_file():
                return None  # path traversal or a missing file: the same 404
            return target
        return None

    def do_HEAD(self) -> None:  # noqa: N802 (the stdlib's name)
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _send_plain(self, status: int, text: str, extra: dict[str, str] | None = None) -> None:
        data = text.encode()
        self.send_response(status)
        for k, v in {**ISOLATION, **(extra or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serve(self, body: bool) -> None:
        if urlsplit(self.path).path in ("/", "/demo"):
            query = urlsplit(self.path).query
            self._send_plain(302, "see /demo/\n", {"Location": "/demo/" + (f"?{query}" if query else "")})
            return
        target = self._resolve()
        if target is None:
            self._send_plain(404, "not found\n")
            return
        stat = target.stat()
        etag = self.server.etag(target, stat.st_size, stat.st_mtime_ns)
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            for k, v in ISOLATION.items():
                self.send_header(k, v)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = stat.st_size
        start, end, status = 0, size - 1, 200
        wanted = byte_range(self.headers.get("Range"), size) if self.headers.get("If-Range", etag) == etag else None
        if wanted is False:
            self._send_plain(416, "range not satisfiable\n", {"Content-Range": f"bytes */{size}"})
            return
        if wanted:
            (start, end), status = wanted, 206
        self.send_response(status)
        for k, v in ISOLATION.items():
            self.send_header(k, v)
        kind = TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
        # The manifest is revalidated on every load; artifacts are addressed by their manifest's hash.
        self.send_header("Cache-Control", "no-cache")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        self.server.count(urlsplit(self.path).path)
        with target.open("rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(1 << 20, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)


class WebServer(http.server.ThreadingHTTPServer):
    """The demo server; ``requests`` counts the GET requests per path (what tests and benchmarks read)."""

    daemon_threads = True

    def __init__(self, bundle_dir: Path, ort_dir: Path, host: str = "127.0.0.1", port: int = 8000) -> None:
        super().__init__((host, port), _Handler)
        self.bundle_dir = bundle_dir
        self.ort_dir = ort_dir
        self.requests: dict[str, int] = {}
        self._lock = threading.Lock()
        self._etags: dict[tuple[Path, int, int], str] = {}

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}"

    def count(self, path: str) -> None:
        with self._lock:
            self.requests[path] = self.requests.get(path, 0) + 1

    def etag(self, path: Path, size: int, mtime_ns: int) -> str:
        """A strong ETag from the file's content (cached per size and mtime)."""
        key = (path, size, mtime_ns)
        with self._lock:
            found = self._etags.get(key)
        if found is None:
            from edgekit._files import hash_path

            found = f'"{hash_path(path)[0][:32]}"'
            with self._lock:
                self._etags[key] = found
        return found


def make_server(bundle: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
                ort_dir: str | Path | None = None) -> WebServer:
    """A server for ``bundle`` (not started; call ``serve_forever``).

    Raises:
        BundleError: The bundle is damaged or has no web artifact.
        MissingDependencyError: onnxruntime-web's files are not installed.
        UserError: The port is taken.
    """
    from edgekit.errors import UserError

    bundle_dir = check_web_bundle(bundle)
    ort = find_ort_dir(ort_dir)
    try:
        return WebServer(bundle_dir, ort, host, port)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from exc


@contextmanager
def running(bundle: str | Path, **kwargs: object) -> Iterator[WebServer]:
    """A server on a free loopback port, serving in a thread for the duration (tests, benchmarks)."""
    server = make_server(bundle, port=0, **kwargs)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
