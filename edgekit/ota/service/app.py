"""``edgekit serve``: the OTA service over HTTP (FastAPI; its OpenAPI document is at ``/openapi.json``).

Device paths are plain files any CDN or object store could serve: ``GET /metadata/<name>`` and
``GET /targets/<path>``, with ``ETag``/``If-None-Match`` and ``Range``. Devices decide their rollout
from the signed rule, so the hot path reads no per-device state (``fastpath``). Enrolled devices
``POST /v1/reports`` and ``POST /v1/telemetry`` with their device token (ADR 0015;
fleet_api). Publishing and rollout changes need a bearer
token with the ``publish`` or ``rollout`` scope; reading operator data, any operator token. What a
request may cost is bounded by ``guards.Limits``.
``/metrics`` is Prometheus text, ``/dashboard`` the fleet's page; logs are JSON lines (one event per line).
"""


import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from edgekit.errors import (
    AuthError,
    BundleError,
    InvalidNameError,
    NotFoundError,
    OtaRequestError,
    TelemetryError,
    UserError,
)
from edgekit.ota.service.core import OtaService
from edgekit.ota.service.fastpath import DeviceFastPath
from edgekit.ota.service.guards import (
    PUBLISH_TMP_PREFIX,
    GuardedHttpProtocol,
    Limits,
    RateLimiter,
    clean_publish_leftovers,
    extract_bundle,
    guarded_protocol,
    receive_upload,
)
from edgekit.ota.service.logs import JsonLogFormatter, configure_logging

__all__ = ["GuardedHttpProtocol", "JsonLogFormatter", "Limits", "app_from_env", "configure_logging", "create_app",
           "guarded_protocol"]

log = logging.getLogger("edgekit.ota")
MAX_RELEASE = (1 << 53) - 1  # the largest integer every JSON reader keeps exactly

def _printable(value: Any) -> Any:
    """``value`` safe to write as JSON in UTF-8 (a lone surrogate or a NaN sent by a client must not
    break the error answer that refuses it)."""
    if isinstance(value, bool | int):
        return value
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")[:300]


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
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from pydantic import BaseModel, ConfigDict, Field, field_validator
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from edgekit.ota.contract import DEVICE_ID, NAME_SCHEMA
    from edgekit.ota.service.fleet_api import FleetCollector, add_dashboard_routes, add_fleet_routes
    from edgekit.ota.service.params import ChannelName, ModelName, file_responses, responses

    limits = limits or Limits()

    metrics = _metrics()

    fast: list[DeviceFastPath] = []

    def count(name: str, fields: dict[str, Any]) -> None:
        metrics["events"].labels(name).inc()
        if name != "report" and fast:
            fast[0].fresh.clear()  # this process re-signed: serve the new timestamp at once
        if name == "report":
            metrics["reports"].labels(fields.get("outcome", "?")).inc()

    service.subscribe(count)
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
    @app.exception_handler(InvalidNameError)
    @app.exception_handler(TelemetryError)
    async def _unprocessable(_request: Request, exc: UserError) -> JSONResponse:  # the domain's errors, as HTTP
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.exception_handler(NotFoundError)
    async def _not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

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
             "ETag / If-None-Match, Range", responses=file_responses())
    def metadata(name: str) -> Response:  # pragma: no cover - never routed
        return Response(status_code=404)

    @app.get("/targets/{path:path}", tags=["devices"], summary="A release file by its hash-prefixed name; ETag, Range",
             responses=file_responses())
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
              "test); needs the device's token", responses=responses(400, 401, 403, 404, 422, 429))
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

    @app.post("/v1/devices/enrol", status_code=201, tags=["devices"], responses=responses(400, 401, 403, 409, 422, 429),
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
                         **responses(401, 403, 408, 409, 413, 422)},
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
            with upload.open("wb") as f:
                await receive_upload(request.stream(), f, limits)
            bundle = work / "bundle"
            await anyio.to_thread.run_sync(lambda: extract_bundle(upload, bundle, limits))
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
              summary="Set the current release's rollout share", responses=responses(400, 401, 403, 404, 409, 422))
    def rollout(model: ModelName, channel: ChannelName, body: Rollout, _who: str = scope("rollout")) -> dict[str, Any]:
        if body.basis_points is None and body.percent is None:
            raise OtaRequestError("give percent (0-100) or basis_points (0-10000)", status=422)
        points = body.basis_points if body.basis_points is not None else round(float(body.percent or 0) * 100)
        return service.set_rollout(model, channel, points).to_dict()

    class Halt(BaseModel):
        model_config = ConfigDict(extra="forbid")
        reason: str = Field("halted by an operator", max_length=500)

    @app.post("/v1/models/{model}/channels/{channel}/halt", tags=["operators"], summary="Halt the current rollout",
              responses=responses(400, 401, 403, 404, 422))
    def halt(model: ModelName, channel: ChannelName, body: Halt | None = None, _who: str = scope("rollout")) -> dict[str, Any]:
        return service.halt(model, channel, body.reason if body else "halted by an operator").to_dict()

    @app.post("/v1/models/{model}/channels/{channel}/resume", tags=["operators"], summary="Resume a halted rollout",
              responses=responses(401, 403, 404, 422))
    def resume(model: ModelName, channel: ChannelName, _who: str = scope("rollout")) -> dict[str, Any]:
        return service.resume(model, channel).to_dict()

    class Rollback(BaseModel):
        model_config = ConfigDict(extra="forbid")
        to_release: int | None = Field(None, ge=1, le=MAX_RELEASE)

    @app.post("/v1/models/{model}/channels/{channel}/rollback", tags=["operators"],
              summary="Publish an earlier release's files as a new release for the whole channel",
              responses=responses(400, 401, 403, 404, 409, 422))
    def rollback(model: ModelName, channel: ChannelName, body: Rollback | None = None,
                 _who: str = scope("rollout")) -> dict[str, Any]:
        return service.rollback(model, channel, body.to_release if body else None).to_dict()

    @app.get("/v1/models", tags=["operators"], summary="Models and their channels", responses=responses(401))
    def models(_who: str = scope("read")) -> list[dict[str, Any]]:
        return service.models()

    @app.get("/v1/models/{model}/channels/{channel}", tags=["operators"],
             summary="A channel's signed state, its releases and device outcomes", responses=responses(401, 404, 422))
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

    add_fleet_routes(app, service, device=device, scope=scope, limits=limits, responses=responses)
    add_dashboard_routes(app)
    metrics["registry"].register(FleetCollector(service))
    fast.append(DeviceFastPath(app, service, metrics))
    return fast[0]


ENV_PREFIX = "EDGEKIT_OTA_"


def app_from_env() -> Any:
    """The app for the server's worker processes (``edgekit serve`` sets the variables; ``limits`` is the
    JSON of :class:`Limits`' fields)."""
    import os

    from edgekit.ota.service.core import HaltPolicy

    env = {k[len(ENV_PREFIX):].lower(): v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    if env.get("worker_of"):
        _die_with(int(env["worker_of"]))
    limits = Limits(**json.loads(env["limits"])) if env.get("limits") else Limits()
    configure_logging()
    service = OtaService.embedded(env.get("data") or None, env["keys"], registry_url=env.get("registry") or None,
                                  storage_url=env.get("storage") or None,
                                  halt_policy=HaltPolicy(int(env.get("halt_bp", "2000")), int(env.get("halt_min", "5"))))
    app = create_app(service, limits=limits)
    import gc

    gc.collect()
    gc.freeze()  # the startup's objects (FastAPI, pydantic, TUF) leave the collector's scans: no long pauses
    return app


def _die_with(parent: int) -> None:
    """A worker process ends when ``edgekit serve`` does, also when it was SIGKILLed (granian's
    workers would otherwise keep the port and serve on)."""
    import os
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it was gone before the line above
        os._exit(1)
