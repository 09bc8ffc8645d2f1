"""``edgekit serve``: the OTA service over HTTP (FastAPI; its OpenAPI document is at ``/openapi.json``).

Device paths are plain files any CDN or object store could serve: ``GET /metadata/<name>`` and
``GET /targets/<path>``, with ``ETag``/``If-None-Match`` and ``Range``. Devices decide their rollout
from the signed rule, so the hot path reads no per-device state. Devices ``POST /v1/reports``.
Publishing and rollout changes need a bearer token with the ``publish`` or ``rollout`` scope.
``/metrics`` is Prometheus text; logs are JSON lines (one event per line).
"""


import asyncio
import json
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

from edgekit._http import byte_range
from edgekit.errors import AuthError, BundleError, OtaRequestError, UserError
from edgekit.ota.service import OtaService
from edgekit.ota.storage import check_key

log = logging.getLogger("edgekit.ota")
MAX_RELEASE = (1 << 53) - 1  # the largest integer every JSON reader keeps exactly
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


ERRORS = {400: "the body is not valid JSON", 401: "no token, or an unknown one",
          403: "the token lacks the scope, or names another device",
          404: "no such model, channel, release or file", 409: "in conflict with the current state",
          413: "the upload is over a limit", 422: "the request does not match the API", 429: "too many requests"}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route gives (each an {"error": message} object)."""
    schema = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
    return {code: {"description": ERRORS[code], "content": {"application/json": {"schema": schema}}} for code in codes}


def _file_responses() -> dict[int | str, dict[str, Any]]:
    """The answers of the static device paths."""
    return {200: {"description": "the file", "content": {"application/json": {}, "application/octet-stream": {}}},
            206: {"description": "the requested byte range"}, 304: {"description": "unchanged (If-None-Match)"},
            416: {"description": "the range is outside the file"}, **_responses(404)}


def _printable(value: Any) -> Any:
    """``value`` safe to write as JSON in UTF-8 (a lone surrogate or a NaN sent by a client must not
    break the error answer that refuses it)."""
    if isinstance(value, bool | int):
        return value
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")[:300]


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the event's fields."""

    RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "message": record.getMessage()}
        out.update({k: v for k, v in record.__dict__.items() if k not in self.RESERVED})
        return json.dumps(out, default=str)


def _metrics() -> dict[str, Any]:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    return {
        "registry": registry,
        "requests": Counter("edgekit_ota_requests_total", "HTTP requests", ["route", "status"], registry=registry),
        "latency": Histogram("edgekit_ota_request_seconds", "HTTP request latency", ["route"], registry=registry,
                             buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)),
        "events": Counter("edgekit_ota_events_total", "Service events (published, rollout, halted, report...)",
                          ["event"], registry=registry),
        "reports": Counter("edgekit_ota_reports_total", "Device reports", ["outcome"], registry=registry),
        "bytes": Counter("edgekit_ota_sent_bytes_total", "Bytes of metadata and targets sent", ["kind"],
                         registry=registry),
    }


def create_app(service: OtaService, *, refresh_every_s: float | None = 60.0, limits: Limits | None = None) -> Any:
    """The FastAPI application for ``service``."""
    from typing import Annotated

    from fastapi import Depends, FastAPI, Request
    from fastapi import Path as PathParam
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from pydantic import BaseModel, ConfigDict, Field, field_validator
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from edgekit.ota.rules import DEVICE_ID, NAME_SCHEMA

    limits = limits or Limits()
    ModelName = Annotated[str, PathParam(pattern=NAME_SCHEMA, max_length=64, description="a-z 0-9 . _ -")]
    ChannelName = Annotated[str, PathParam(pattern=NAME_SCHEMA, max_length=64, description="a-z 0-9 . _ -")]

    metrics = _metrics()
    previous = service._events  # noqa: SLF001 (chain the service's event hook)

    fast: list[DeviceFastPath] = []

    def count(name: str, fields: dict[str, Any]) -> None:
        metrics["events"].labels(name).inc()
        if name != "report" and fast:
            fast[0].fresh.clear()  # this process re-signed: serve the new timestamp at once
        if name == "report":
            metrics["reports"].labels(fields.get("outcome", "?")).inc()
        previous(name, fields)

    service._events = count  # noqa: SLF001
    app = FastAPI(title="edgekit OTA", version="1", description=__doc__)

    @app.on_event("startup")
    def _start() -> None:  # a restart mid-rollout: re-sign whatever the registry and the metadata disagree on
        clean_publish_leftovers()
        service.resync()
        if refresh_every_s:
            service.keep_fresh(refresh_every_s)

    @app.on_event("shutdown")
    def _stop() -> None:
        service.close()

    @app.middleware("http")
    async def _observe(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        metrics["requests"].labels(name, str(response.status_code)).inc()
        metrics["latency"].labels(name).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(OtaRequestError)
    async def _refused(_request: Request, exc: OtaRequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {"Retry-After": "10"} if exc.status == 429 else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)

    @app.exception_handler(BundleError)
    async def _bad_bundle(_request: Request, exc: BundleError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": _printable(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": [_printable(p) for p in e.get("loc", ())], "msg": _printable(e.get("msg", "")),
                   "type": _printable(e.get("type", ""))} for e in exc.errors()]
        where = ", ".join(".".join(str(p) for p in d["loc"]) + ": " + d["msg"] for d in detail[:5])
        return JSONResponse({"error": f"the request does not match the API (see /docs): {where}", "detail": detail},
                            status_code=422)

    @app.exception_handler(UserError)
    async def _user(_request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    def scope(needed: str) -> Any:
        def check(request: Request) -> str:
            header = request.headers.get("authorization", "")
            if not header.lower().startswith("bearer ") or not header[7:].strip():
                raise AuthError(f"this request needs an API token with the {needed!r} scope: "
                                "send 'Authorization: Bearer <token>' (create one with `edgekit ota token`)")
            found = service.registry.token_scopes(header[7:].strip())
            if found is None:
                raise AuthError("unknown API token; create one with `edgekit ota token`")
            name: str = found[0]
            scopes = found[1]
            if needed != "read" and needed not in scopes and "admin" not in scopes:
                raise AuthError(f"token {name!r} lacks the {needed!r} scope (it has: {', '.join(sorted(scopes))})",
                                status=403)
            return name
        return Depends(check)

    # -- device paths (static-friendly) -----------------------------------------------------------

    # Declared for the OpenAPI document only: DeviceFastPath answers these paths before routing.
    @app.get("/metadata/{name}", tags=["devices"], summary="TUF metadata (root, timestamp, snapshot, targets, bins); "
             "ETag / If-None-Match, Range", responses=_file_responses())
    def metadata(name: str) -> Response:  # pragma: no cover - never routed
        return Response(status_code=404)

    @app.get("/targets/{path:path}", tags=["devices"], summary="A release file by its hash-prefixed name; ETag, Range",
             responses=_file_responses())
    def targets(path: str) -> Response:  # pragma: no cover - never routed
        return Response(status_code=404)

    class Report(BaseModel):
        model_config = ConfigDict(allow_inf_nan=False, extra="forbid")
        device_id: str = Field(max_length=128, pattern=DEVICE_ID.pattern)
        model: str = Field(max_length=64, pattern=NAME_SCHEMA)
        channel: str = Field(max_length=64, pattern=NAME_SCHEMA)
        release: int = Field(ge=1, le=MAX_RELEASE)
        outcome: str = Field(max_length=32)
        detail: str = Field("", max_length=2000)

        @field_validator("detail")
        @classmethod
        def _utf8(cls, value: str) -> str:  # stored and shown: no lone surrogates
            return value.encode("utf-8", "replace").decode("utf-8")

    per_device = RateLimiter(limits.reports_per_device_per_min)
    per_address = RateLimiter(limits.reports_per_address_per_min)
    enrolling = RateLimiter(limits.enrolments_per_address_per_min)

    def _limited(limiter: RateLimiter, key: str, what: str) -> None:
        if not limiter.allow(key):
            raise OtaRequestError(f"too many {what}; try again in {limiter.retry_after()} s", status=429)

    def device(request: Request) -> str:
        """The enrolled device a request's device token names (reports need one)."""
        _limited(per_address, request.client.host if request.client else "?", "requests from this address")
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            raise AuthError("device reports need the device's token: enrol the device (POST /v1/devices/enrol with "
                            "an enrolment token from `edgekit ota enrolment`) and send 'Authorization: Bearer <token>'")
        found = service.registry.device_of(header[7:].strip())
        if found is None:
            raise AuthError("unknown device token; enrol the device again")
        return found

    @app.post("/v1/reports", tags=["devices"], summary="An enrolled device's outcome for a release (after its smoke "
              "test); needs the device's token", responses=_responses(400, 401, 403, 404, 422, 429))
    def report(body: Report, device_id: str = Depends(device)) -> dict[str, Any]:
        if body.device_id != device_id:
            raise AuthError(f"this device token belongs to {device_id!r}, not {body.device_id!r}", status=403)
        _limited(per_device, device_id, "reports from this device")
        r, counted = service.report(device_id, body.model, body.channel, body.release, body.outcome, body.detail)
        return {"accepted": True, "counted": counted, "halted": r.halted}

    class Enrol(BaseModel):
        model_config = ConfigDict(extra="forbid")
        device_id: str = Field(max_length=128, pattern=DEVICE_ID.pattern)
        enrolment_token: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+$")

    @app.post("/v1/devices/enrol", status_code=201, tags=["devices"], responses=_responses(400, 401, 403, 409, 422, 429),
              summary="Enrol a device with an operator's enrolment token; answers the device's own token")
    def enrol(body: Enrol, request: Request) -> dict[str, Any]:
        _limited(enrolling, request.client.host if request.client else "?", "enrolments from this address")
        token = service.registry.enrol(body.device_id, body.enrolment_token)
        service.event("enrolled", device=body.device_id)
        return {"device_id": body.device_id, "device_token": token}

    # -- operators --------------------------------------------------------------------------------

    @app.post("/v1/models/{model}/channels/{channel}/releases", status_code=201, tags=["operators"],
              summary="Publish a bundle (a tar of its directory, optionally gzipped) as the next release; the same "
              "files again (a retry) answer 200 with the release already made",
              responses={200: {"description": "the same files are this channel's latest release already"},
                         **_responses(401, 403, 409, 413, 422)},
              openapi_extra={"requestBody": {"required": True, "description": "the bundle directory's files as one flat "
                             "tar, optionally gzipped (edgekit publish makes it)", "content": {
                                 media: {"schema": {"type": "string", "format": "binary"}}
                                 for media in ("application/octet-stream", "application/x-tar")}}})
    async def publish(model: ModelName, channel: ChannelName, request: Request, response: Response,
                      percent: Annotated[int, Field(ge=0, le=100)] = 0,
                      basis_points: Annotated[int | None, Field(ge=0, le=10000)] = None,
                      _who: str = scope("publish")) -> dict[str, Any]:
        import anyio

        points = basis_points if basis_points is not None else percent * 100
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limits.max_upload_bytes):
            raise OtaRequestError(f"the upload ({declared} bytes) is over the {limits.max_upload_bytes} bytes allowed",
                                  status=413)
        work = Path(tempfile.mkdtemp(prefix=f"{PUBLISH_TMP_PREFIX}{os.getpid()}-"))
        try:
            upload = work / "upload.tar"
            size = 0
            with upload.open("wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limits.max_upload_bytes:
                        raise OtaRequestError(f"the upload is over the {limits.max_upload_bytes} bytes allowed", status=413)
                    f.write(chunk)
            bundle = work / "bundle"
            await anyio.to_thread.run_sync(lambda: _extract(upload, bundle, limits))
            release = await anyio.to_thread.run_sync(
                lambda: service.publish(model, channel, bundle, basis_points=points))
            if release.already_published:
                response.status_code = 200  # the same files are this channel's latest release already
            return release.to_dict()
        finally:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(work, ignore_errors=True))

    class Rollout(BaseModel):
        model_config = ConfigDict(allow_inf_nan=False, extra="forbid", json_schema_extra={
            "anyOf": [{"required": ["percent"], "properties": {"percent": {"type": "number"}}},
                      {"required": ["basis_points"], "properties": {"basis_points": {"type": "integer"}}}]})
        percent: float | None = Field(None, ge=0, le=100)
        basis_points: int | None = Field(None, ge=0, le=10000)

    @app.post("/v1/models/{model}/channels/{channel}/rollout", tags=["operators"],
              summary="Set the current release's rollout share", responses=_responses(400, 401, 403, 404, 409, 422))
    def rollout(model: ModelName, channel: ChannelName, body: Rollout, _who: str = scope("rollout")) -> dict[str, Any]:
        if body.basis_points is None and body.percent is None:
            raise OtaRequestError("give percent (0-100) or basis_points (0-10000)", status=422)
        points = body.basis_points if body.basis_points is not None else round(float(body.percent or 0) * 100)
        return service.set_rollout(model, channel, points).to_dict()

    class Halt(BaseModel):
        model_config = ConfigDict(extra="forbid")
        reason: str = Field("halted by an operator", max_length=500)

    @app.post("/v1/models/{model}/channels/{channel}/halt", tags=["operators"], summary="Halt the current rollout",
              responses=_responses(400, 401, 403, 404, 422))
    def halt(model: ModelName, channel: ChannelName, body: Halt | None = None, _who: str = scope("rollout")) -> dict[str, Any]:
        return service.halt(model, channel, body.reason if body else "halted by an operator").to_dict()

    @app.post("/v1/models/{model}/channels/{channel}/resume", tags=["operators"], summary="Resume a halted rollout",
              responses=_responses(401, 403, 404, 422))
    def resume(model: ModelName, channel: ChannelName, _who: str = scope("rollout")) -> dict[str, Any]:
        return service.resume(model, channel).to_dict()

    class Rollback(BaseModel):
        model_config = ConfigDict(extra="forbid")
        to_release: int | None = Field(None, ge=1, le=MAX_RELEASE)

    @app.post("/v1/models/{model}/channels/{channel}/rollback", tags=["operators"],
              summary="Publish an earlier release's files as a new release for the whole channel",
              responses=_responses(400, 401, 403, 404, 409, 422))
    def rollback(model: ModelName, channel: ChannelName, body: Rollback | None = None,
                 _who: str = scope("rollout")) -> dict[str, Any]:
        return service.rollback(model, channel, body.to_release if body else None).to_dict()

    @app.get("/v1/models", tags=["operators"], summary="Models and their channels", responses=_responses(401))
    def models(_who: str = scope("read")) -> list[dict[str, Any]]:
        return service.models()

    @app.get("/v1/models/{model}/channels/{channel}", tags=["operators"],
             summary="A channel's signed state, its releases and device outcomes", responses=_responses(401, 404, 422))
    def channel(model: ModelName, channel: ChannelName, _who: str = scope("read")) -> dict[str, Any]:
        return service.channel(model, channel)

    @app.get("/v1/trusted-root", tags=["devices"], summary="The current root metadata (ship it with the app)",
             response_class=Response, responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}})
    def trusted_root() -> Response:
        return Response(service.repo.root_bytes(), media_type="application/json")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def prometheus(_who: str = scope("read")) -> Response:  # Prometheus sends the token (authorization: credentials)
        return Response(generate_latest(metrics["registry"]), media_type=CONTENT_TYPE_LATEST)

    fast.append(DeviceFastPath(app, service, metrics))
    return fast[0]


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
            except (OtaRequestError, ValueError, OSError):  # NUL bytes, names over the file system's limit
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


ENV_PREFIX = "EDGEKIT_OTA_"


def app_from_env() -> Any:
    """The app for ``uvicorn --factory`` worker processes (``edgekit serve --workers N`` sets the variables)."""
    import os

    from edgekit.ota.service import HaltPolicy

    env = {k[len(ENV_PREFIX):].lower(): v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    configure_logging()
    service = OtaService.embedded(env.get("data") or None, env["keys"], registry_url=env.get("registry") or None,
                                  storage_url=env.get("storage") or None,
                                  halt_policy=HaltPolicy(int(env.get("halt_bp", "2000")), int(env.get("halt_min", "5"))))
    return create_app(service)


def configure_logging() -> None:
    """edgekit.ota logs JSON lines to stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("edgekit.ota")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _extract(upload: Path, dst: Path, limits: Limits) -> None:
    """Unpack an uploaded bundle tar: regular files only, flat names, nothing outside ``dst``, within
    ``limits`` (member count, extracted bytes, expansion ratio). Runs in a worker thread.

    Raises:
        OtaRequestError: Not a tar, a member with a path, a link or a device, or over a limit (413).
    """
    from edgekit.ota.rules import check_file_name

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

