"""What one request may cost the OTA service, and how it is held to it: upload, extraction and
connection limits (``Limits``), uvicorn's protocol with header and body deadlines, rate limits, the
bounded tar extraction, and the cleanup of publishes a crash interrupted."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from edgekit.errors import OtaRequestError

log = logging.getLogger("edgekit.ota")
PUBLISH_TMP_PREFIX = "edgekit-publish-"


@dataclass(frozen=True)
class Limits:
    """What one request may cost the service.

    ``max_upload_bytes`` is checked against ``Content-Length`` before a byte is written and again while
    the body streams in; an upload expands to at most ``max_extracted_bytes``, and to at most
    ``max_ratio`` times its own size (above ``ratio_floor_bytes``: a decompression bomb stops early), in
    at most ``max_members`` files. A connection must send its request headers within
    ``header_timeout_s`` and then its body at ``min_body_rate`` bytes/s or more once ``body_grace_s``
    have passed (slowloris and dripping uploads are closed).
    """

    max_upload_bytes: int = 2 << 30
    max_extracted_bytes: int = 2 << 30
    max_ratio: int = 32
    ratio_floor_bytes: int = 64 << 20
    max_members: int = 256
    header_timeout_s: float = 10.0
    body_grace_s: float = 10.0
    min_body_rate: int = 16 << 10
    reports_per_device_per_min: float = 12.0
    reports_per_address_per_min: float = 6000.0
    enrolments_per_address_per_min: float = 600.0
    telemetry_per_device_per_min: float = 12.0


class RateLimiter:
    """Token buckets by key (a device id, a client address): ``per_min`` a minute, bursts of ``burst``.
    The table is bounded: past ``max_keys`` keys it starts again (a flood of keys cannot grow memory)."""

    def __init__(self, per_min: float, burst: float | None = None, max_keys: int = 100_000) -> None:
        self.rate = per_min / 60.0
        self.burst = burst if burst is not None else max(5.0, per_min / 6)
        self.max_keys = max_keys
        self.buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        tokens, last = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if len(self.buckets) >= self.max_keys and key not in self.buckets:
            self.buckets.clear()
        if tokens < 1.0:
            self.buckets[key] = (tokens, now)
            return False
        self.buckets[key] = (tokens - 1.0, now)
        return True

    def retry_after(self) -> int:
        return max(1, int(1.0 / self.rate) if self.rate else 60)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the header and body deadlines of :class:`Limits` (uvicorn
    has none: a connection that never finishes its headers, or drips its body, is held for good)."""

    limits = Limits()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._guard: asyncio.TimerHandle | None = None
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        self._cancel_guard()
        self._guard = self.loop.call_later(self.limits.header_timeout_s, self._too_slow)

    def _cancel_guard(self) -> None:
        if getattr(self, "_guard", None) is not None:
            self._guard.cancel()  # type: ignore[union-attr]
            self._guard = None

    def _too_slow(self) -> None:
        self._guard = None
        if not self.transport.is_closing():
            log.info("slow client closed", extra={"event": "slow_client", "client": str(self.client)})
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._cancel_guard()
        self._body_started, self._body_bytes = time.monotonic(), 0
        self._guard = self.loop.call_later(self.limits.body_grace_s, self._check_body_rate)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def _check_body_rate(self) -> None:
        elapsed = time.monotonic() - self._body_started
        if self._body_bytes < self.limits.min_body_rate * elapsed:
            self._too_slow()
        else:
            self._guard = self.loop.call_later(1.0, self._check_body_rate)

    def on_message_complete(self) -> None:
        self._cancel_guard()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_guard()
        super().connection_lost(exc)


async def receive_upload(stream: Any, out: Any, limits: Limits) -> int:
    """Write an upload's body (``stream``: Starlette's ``request.stream()``) to ``out``; its size.

    The body deadline of :class:`Limits`, whatever the server: after ``body_grace_s``, each next chunk
    must come before the bytes so far fall under ``min_body_rate`` (a dripping upload gets a 408).

    Raises:
        OtaRequestError: Over ``max_upload_bytes`` (413), or too slow (408).
    """
    import anyio

    started, size = time.monotonic(), 0
    chunks = stream.__aiter__()
    while True:
        wait = max(limits.body_grace_s, size / limits.min_body_rate) - (time.monotonic() - started)
        try:
            with anyio.fail_after(max(wait, 0.001)):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return size
        except TimeoutError as exc:
            log.info("slow upload refused", extra={"event": "slow_client", "bytes": size})
            raise OtaRequestError(f"the upload is too slow ({size} bytes in {time.monotonic() - started:.0f} s; "
                                  f"at least {limits.min_body_rate} bytes/s after {limits.body_grace_s:g} s)",
                                  status=408) from exc
        size += len(chunk)
        if size > limits.max_upload_bytes:
            raise OtaRequestError(f"the upload is over the {limits.max_upload_bytes} bytes allowed", status=413)
        out.write(chunk)


def guarded_protocol(limits: Limits) -> type[GuardedHttpProtocol]:
    """The protocol class (uvicorn's ``http=``) that enforces ``limits``."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"limits": limits})


def clean_publish_leftovers(folder: str | None = None) -> int:
    """Remove the temporary folders of publishes whose process is gone (a crash or a SIGKILL mid-upload);
    how many it removed. Each folder's name carries its process id."""
    removed = 0
    base = Path(folder or tempfile.gettempdir())
    for path in base.glob(PUBLISH_TMP_PREFIX + "*"):
        pid = path.name[len(PUBLISH_TMP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def extract_bundle(upload: Path, dst: Path, limits: Limits) -> None:
    """Unpack an uploaded bundle tar: regular files only, flat names, nothing outside ``dst``, within
    ``limits`` (member count, extracted bytes, expansion ratio). Runs in a worker thread.

    Raises:
        OtaRequestError: Not a tar, a member with a path, a link or a device, or over a limit (413).
    """
    from edgekit.ota.contract import check_file_name

    allowed = min(limits.max_extracted_bytes, max(limits.ratio_floor_bytes, limits.max_ratio * upload.stat().st_size))
    dst.mkdir()
    written = 0
    members = 0
    try:
        with tarfile.open(upload, "r:*") as tar:
            for member in tar:
                name = member.name[2:] if member.name.startswith("./") else member.name
                if member.isdir() and name in ("", "."):
                    continue
                members += 1
                if members > limits.max_members:
                    raise OtaRequestError(f"the upload holds more than {limits.max_members} files; a bundle has a few",
                                          status=413)
                if not member.isfile():
                    raise OtaRequestError(f"the upload holds {member.name!r}, which is not a regular file; upload a "
                                          "bundle directory as a flat tar (edgekit publish does)", status=422)
                check_file_name(name)
                if written + member.size > allowed:
                    raise OtaRequestError(f"the upload expands to more than {allowed} bytes (a {upload.stat().st_size}-byte "
                                          "upload may expand to at most "
                                          f"{limits.max_ratio}x, and to {limits.max_extracted_bytes} bytes in all)", status=413)
                source = tar.extractfile(member)
                if source is None:
                    raise OtaRequestError(f"cannot read {member.name!r} from the upload", status=422)
                with source, (dst / name).open("wb") as out:
                    while True:
                        block = source.read(1 << 20)
                        if not block:
                            break
                        written += len(block)
                        if written > allowed:
                            raise OtaRequestError(f"the upload expands to more than {allowed} bytes", status=413)
                        out.write(block)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise OtaRequestError(f"the upload is not a readable tar archive ({exc}); upload the bundle with edgekit publish",
                              status=422) from exc
