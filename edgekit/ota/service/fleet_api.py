"""The fleet routes of ``edgekit serve``: devices' telemetry in, per-release figures and guards out,
and the fleet's aggregates for Prometheus (``/metrics``)."""


import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgekit.errors import OtaRequestError, TelemetryError
from edgekit.histogram import LatencyHistogram
from edgekit.ota import telemetry
from edgekit.ota.service.fleet import Guard
from edgekit.ota.service.guards import RateLimiter
from edgekit.ota.service.params import ChannelName, ModelName

DASHBOARD = Path(__file__).parent / "dashboard"
DASHBOARD_FILES = {"index.html": "text/html; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8",
                   "dashboard.css": "text/css; charset=utf-8"}
# The page talks to this origin only: no script, style, font or image from anywhere else, no framing.
DASHBOARD_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
                    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PROMETHEUS_BOUNDS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075,
                     0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def add_fleet_routes(app: FastAPI, service: Any, *, device: Any, scope: Callable[[str], Any], limits: Any,
                     responses: Callable[..., dict[int | str, dict[str, Any]]]) -> None:
    """Add ``POST /v1/telemetry``, ``GET .../fleet`` and ``PUT .../guard`` to ``app``."""
    per_device = RateLimiter(limits.telemetry_per_device_per_min)

    @app.post("/v1/telemetry", tags=["devices"], responses=responses(400, 401, 403, 413, 422, 429),
              summary="An enrolled device's telemetry batch: an OTLP/HTTP JSON metrics request (edgekit.ota.telemetry)",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "type": "object", "required": ["resourceMetrics"],
                  "properties": {"resourceMetrics": {"type": "array", "maxItems": 1, "minItems": 1}}}}}}})
    async def ingest(request: Request, device_id: str = Depends(device)) -> dict[str, Any]:
        import anyio

        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > telemetry.MAX_BYTES):
            raise OtaRequestError(f"a telemetry batch may be at most {telemetry.MAX_BYTES} bytes", status=413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > telemetry.MAX_BYTES:
                raise OtaRequestError(f"a telemetry batch may be at most {telemetry.MAX_BYTES} bytes", status=413)
        if not per_device.allow(device_id):
            raise OtaRequestError(f"too many telemetry batches from this device; try again in "
                                  f"{per_device.retry_after()} s", status=429)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise OtaRequestError(f"the body is not valid JSON ({exc})", status=400) from exc
        batch = telemetry.parse_batch(data)
        result: dict[str, Any] = await anyio.to_thread.run_sync(lambda: service.telemetry(device_id, batch))
        return result

    @app.get("/v1/models/{model}/channels/{channel}/fleet", tags=["operators"], responses=responses(401, 404, 422),
             summary="The current release against the stable one per device class (P50/P95/P99, error rate), "
             "its guard, and each release's figures per minute")
    def fleet(model: ModelName, channel: ChannelName, _who: str = scope("read")) -> dict[str, Any]:
        result: dict[str, Any] = service.fleet_status(model, channel)
        return result

    class GuardBody(BaseModel):
        model_config = ConfigDict(allow_inf_nan=False, extra="forbid")
        p95_ratio: float | None = Field(1.2, ge=1, le=100)
        error_rate: float | None = Field(0.01, ge=0, le=1)
        min_devices: int = Field(10, ge=1, le=1_000_000)

        @field_validator("p95_ratio", "error_rate", "min_devices", mode="before")
        @classmethod
        def numbers_only(cls, value: Any) -> Any:
            if isinstance(value, (bool, str)):
                raise ValueError("must be a JSON number")
            return value

    @app.put("/v1/models/{model}/channels/{channel}/guard", tags=["operators"], responses=responses(400, 401, 403, 422),
             summary="Set the channel's rollout guard: a staged release halts when it breaks it on any device class "
             "(p95_ratio and error_rate both null: no guard)")
    def guard(model: ModelName, channel: ChannelName, body: GuardBody, _who: str = scope("rollout")) -> dict[str, Any]:
        new = None if body.p95_ratio is None and body.error_rate is None else Guard(body.p95_ratio, body.error_rate,
                                                                                      body.min_devices)
        service.fleet.set_guard(model, channel, new)
        service.event("guard_set", model=model, channel=channel, **(new.to_dict() if new else {}))
        return {"guard": new.to_dict() if new else None}


def add_dashboard_routes(app: FastAPI) -> None:
    """``GET /dashboard`` (the page; it holds no data: it reads ``.../fleet`` with the operator token the
    user gives it) and its script and style sheet."""

    def page(name: str) -> Response:
        kind = DASHBOARD_FILES.get(name)
        if kind is None:
            raise OtaRequestError(f"no dashboard file {name!r}", status=404)
        return Response((DASHBOARD / name).read_bytes(), media_type=kind,
                        headers={"content-security-policy": DASHBOARD_POLICY, "x-content-type-options": "nosniff",
                                 "cache-control": "no-cache", "referrer-policy": "no-referrer"})

    @app.get("/dashboard", include_in_schema=False)
    def dashboard() -> Response:
        return page("index.html")

    @app.get("/dashboard/{name}", include_in_schema=False)
    def dashboard_file(name: str) -> Response:
        return page(name)


class FleetCollector:
    """The fleet's per-release aggregates as Prometheus metrics, read from the registry at each scrape
    (every replica answers the same)."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        labels = ["model", "channel", "release", "device_class", "provider"]
        duration = HistogramMetricFamily("edgekit_fleet_inference_duration_seconds",
                                         "Model inference duration on the fleet's devices", labels=labels)
        runs = CounterMetricFamily("edgekit_fleet_inferences", "Inferences run on the fleet's devices", labels=labels)
        errors = CounterMetricFamily("edgekit_fleet_inference_errors", "Failed inferences on the fleet's devices",
                                     labels=labels)
        quantiles = GaugeMetricFamily("edgekit_fleet_inference_latency_seconds", "P50/P95/P99 latency on the fleet",
                                      labels=[*labels, "quantile"])
        devices = GaugeMetricFamily("edgekit_fleet_devices", "Devices that reported the release",
                                    labels=labels[:4])
        for model, channel, release in self.service.fleet.releases_with_data():
            per_class: dict[str, int] = {}
            for (cls, provider), a in self.service.fleet.aggregates(model, channel, release, by_provider=True).items():
                values = [model, channel, str(release), cls, provider]
                duration.add_metric(values, _cumulative(a.latency), a.latency.total_ns / 1e9)
                runs.add_metric(values, a.inferences)
                errors.add_metric(values, a.errors)
                for q in (50, 95, 99):
                    quantiles.add_metric([*values, f"0.{q}"], a.latency.percentile(q) / 1e3)
                per_class[cls] = max(per_class.get(cls, 0), a.devices)
            for cls, n in per_class.items():
                devices.add_metric([model, channel, str(release), cls], n)
        yield from (duration, runs, errors, quantiles, devices)


def _cumulative(h: LatencyHistogram) -> list[tuple[str, float]]:
    out, seen, index = [], 0, 0
    for bound in PROMETHEUS_BOUNDS:
        while index < len(h.counts) and h.upper(index) <= bound * 1e9:
            seen += h.counts[index]
            index += 1
        out.append((repr(bound), float(seen)))
    out.append(("+Inf", float(h.count)))
    return out


__all__ = ["FleetCollector", "TelemetryError", "add_fleet_routes"]
