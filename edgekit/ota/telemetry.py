"""Fleet telemetry, the format both sides share: an OTLP/HTTP JSON metrics request.

A device sends what its sessions did since its last batch as one ``ExportMetricsServiceRequest`` of
OpenTelemetry's metrics data model (the JSON an OpenTelemetry collector's OTLP/HTTP receiver takes on
``/v1/metrics``), so a fleet that outgrows the built-in store can forward it unchanged:

- the resource is the device: ``device.id``, ``os.type``, ``host.arch`` (OpenTelemetry's semantic
  conventions), ``edgekit.accelerator`` and the app-declared ``edgekit.device.tier``; together all but
  the id are the *device class* the service compares releases by;
- ``edgekit.inference.duration`` (unit ``s``): a delta explicit-bucket histogram per model release and
  artifact, with the provider that ran (``edgekit.provider``) and those passed over;
- ``edgekit.inference.errors``: a delta monotonic sum per ``error.type`` (the exception class);
- ``edgekit.model.load.duration`` (unit ``s``): a gauge, the session's load time.

Never inputs or outputs. :func:`parse_batch` is the service's check of a batch (limits included).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import TelemetryError
from edgekit.histogram import LatencyHistogram

DURATION, ERRORS, LOAD = "edgekit.inference.duration", "edgekit.inference.errors", "edgekit.model.load.duration"
DELTA = 1  # AGGREGATION_TEMPORALITY_DELTA
CLASS_KEYS = ("os.type", "host.arch", "edgekit.accelerator", "edgekit.device.tier")
POINT_KEYS = ("edgekit.model", "edgekit.channel", "edgekit.release", "edgekit.artifact", "edgekit.provider")
MAX_POINTS = 64  # data points in one batch, all metrics together
MAX_BUCKETS = 400  # the runtime's layout has 320
MAX_BYTES = 64 * 1024  # one batch's JSON
MAX_INT = (1 << 53) - 1
_WORD = re.compile(r"^[A-Za-z0-9._:/+-]{0,128}$")


@dataclass
class Point:
    """What one artifact of one model release did on the device since the last batch."""

    model: str
    channel: str
    release: int
    artifact: str
    provider: str
    passed_over: str = ""  # providers tried and passed over, comma-separated
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    errors: dict[str, int] = field(default_factory=dict)  # error.type -> count
    load_seconds: float | None = None

    @property
    def key(self) -> tuple[str, str, int, str, str]:
        return self.model, self.channel, self.release, self.artifact, self.provider


@dataclass
class Batch:
    """A parsed, checked telemetry batch."""

    device_id: str
    resource: dict[str, str]
    points: list[Point]

    @property
    def device_class(self) -> str:
        return device_class(self.resource)


def device_class(resource: dict[str, str]) -> str:
    """``os/arch/accelerator/tier``: the device class releases are compared on."""
    return "/".join(resource.get(k, "") or "-" for k in CLASS_KEYS)


# -- writing (devices) ------------------------------------------------------------------------------


def _attrs(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": {"intValue": str(v)} if isinstance(v, int) and not isinstance(v, bool)
             else {"stringValue": str(v)}} for k, v in values.items()]


def make_batch(device_id: str, resource: dict[str, str], points: list[Point], *, start_ns: int, end_ns: int,
               scope_version: str = "") -> dict[str, Any]:
    """The OTLP JSON request for ``points`` (int64 fields as strings, as OTLP's JSON mapping writes them)."""
    durations: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    loads: list[dict[str, Any]] = []
    for p in points:
        base = dict(zip(POINT_KEYS, (p.model, p.channel, p.release, p.artifact, p.provider), strict=True))
        if p.passed_over:
            base["edgekit.providers.passed_over"] = p.passed_over
        times = {"startTimeUnixNano": str(start_ns), "timeUnixNano": str(end_ns)}
        hist = p.latency.to_explicit()
        durations.append({"attributes": _attrs(base), **times, "count": str(hist["count"]), "sum": hist["sum"],
                          **({"min": hist["min"], "max": hist["max"]} if hist["count"] else {}),
                          "bucketCounts": [str(n) for n in hist["bucketCounts"]],  # type: ignore[attr-defined]
                          "explicitBounds": hist["explicitBounds"]})
        errors.extend({"attributes": _attrs({**base, "error.type": kind}), **times, "asInt": str(n)}
                      for kind, n in sorted(p.errors.items()) if n)
        if p.load_seconds is not None:
            loads.append({"attributes": _attrs(base), "timeUnixNano": str(end_ns), "asDouble": float(p.load_seconds)})
    metrics: list[dict[str, Any]] = [
        {"name": DURATION, "unit": "s", "description": "model inference duration",
         "histogram": {"aggregationTemporality": DELTA, "dataPoints": durations}}]
    if errors:
        metrics.append({"name": ERRORS, "unit": "{error}", "description": "failed inferences",
                        "sum": {"aggregationTemporality": DELTA, "isMonotonic": True, "dataPoints": errors}})
    if loads:
        metrics.append({"name": LOAD, "unit": "s", "description": "model load duration", "gauge": {"dataPoints": loads}})
    return {"resourceMetrics": [{
        "resource": {"attributes": _attrs({"device.id": device_id, **resource})},
        "scopeMetrics": [{"scope": {"name": "edgekit", "version": scope_version}, "metrics": metrics}]}]}


# -- reading (the service) --------------------------------------------------------------------------


def _fail(why: str) -> TelemetryError:
    return TelemetryError(f"telemetry batch refused: {why}")


def _int(value: Any, what: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INT:
        raise _fail(f"{what} must be a non-negative integer (OTLP JSON: a number or a decimal string), not {value!r}")
    return value


def _float(value: Any, what: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise _fail(f"{what} must be a finite non-negative number, not {value!r}")
    return float(value)


def _read_attrs(items: Any, what: str) -> dict[str, Any]:
    if not isinstance(items, list) or len(items) > 16:
        raise _fail(f"{what} attributes must be a list of at most 16 key/value objects")
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not isinstance(item.get("value"), dict):
            raise _fail(f"{what} attributes must be {{'key': ..., 'value': {{'stringValue' | 'intValue': ...}}}}")
        value = item["value"]
        if "stringValue" in value and isinstance(value["stringValue"], str):
            text = value["stringValue"]
            if not _WORD.match(text) and item["key"] != "edgekit.providers.passed_over":
                raise _fail(f"{what} attribute {item['key']!r}: {text[:40]!r} is not a short plain word")
            out[item["key"]] = text[:256]
        elif "intValue" in value:
            out[item["key"]] = _int(value["intValue"], f"{what} attribute {item['key']!r}")
        else:
            raise _fail(f"{what} attribute {item['key']!r} must have a stringValue or intValue")
    return out


def _list(container: Any, key: str, what: str) -> list[Any]:
    value = container.get(key) if isinstance(container, dict) else None
    if not isinstance(value, list):
        raise _fail(f"{what} must have a list {key!r}")
    return value


def parse_batch(body: Any) -> Batch:
    """Check and read a telemetry batch (the JSON value of a request body).

    Raises:
        TelemetryError: It is not an OTLP metrics request of one resource with a ``device.id``, a data
            point lacks the model release it is about, a number is not a count, a histogram's counts
            do not add up, or it holds more than :data:`MAX_POINTS` data points.
    """
    resources = _list(body, "resourceMetrics", "the batch")
    if len(resources) != 1:
        raise _fail("a batch holds exactly one resource (the device)")
    resource = _read_attrs((resources[0].get("resource") or {}).get("attributes", []), "resource")
    device_id = resource.pop("device.id", None)
    if not isinstance(device_id, str) or not device_id:
        raise _fail("the resource has no device.id")
    resource = {k: str(v) for k, v in resource.items() if k in CLASS_KEYS}
    points: dict[tuple[str, str, int, str, str], Point] = {}
    seen = 0
    for scope in _list(resources[0], "scopeMetrics", "the resource"):
        for metric in _list(scope, "metrics", "a scope"):
            name = metric.get("name") if isinstance(metric, dict) else None
            kind = next((k for k in ("histogram", "sum", "gauge") if isinstance(metric, dict) and k in metric), None)
            if name not in (DURATION, ERRORS, LOAD) or kind is None:
                continue  # another metric: an OTLP batch may carry more; edgekit reads its own
            data = metric[kind]
            if kind != "gauge" and data.get("aggregationTemporality") != DELTA:
                raise _fail(f"{name} must use delta temporality (aggregationTemporality 1)")
            for dp in _list(data, "dataPoints", name):
                seen += 1
                if seen > MAX_POINTS:
                    raise _fail(f"more than {MAX_POINTS} data points; send smaller batches")
                attrs = _read_attrs(dp.get("attributes", []), name) if isinstance(dp, dict) else None
                if attrs is None or any(k not in attrs for k in POINT_KEYS):
                    raise _fail(f"a {name} data point must name {', '.join(POINT_KEYS)}")
                release = attrs["edgekit.release"]
                if not isinstance(release, int) or release < 1:
                    raise _fail("edgekit.release must be an intValue >= 1")
                key = (str(attrs["edgekit.model"]), str(attrs["edgekit.channel"]), release,
                       str(attrs["edgekit.artifact"]), str(attrs["edgekit.provider"]))
                point = points.setdefault(key, Point(*key, passed_over=str(attrs.get("edgekit.providers.passed_over", ""))))
                if name == DURATION:
                    point.latency.merge(_histogram(dp))
                elif name == ERRORS:
                    kind_name = str(attrs.get("error.type", "error"))
                    point.errors[kind_name] = point.errors.get(kind_name, 0) + _int(dp.get("asInt"), "an error count")
                else:
                    point.load_seconds = _float(dp.get("asDouble"), "a load duration")
    if not points:
        raise _fail(f"it holds no {DURATION}, {ERRORS} or {LOAD} data point")
    return Batch(device_id, resource, list(points.values()))


def _histogram(dp: dict[str, Any]) -> LatencyHistogram:
    counts = [_int(n, "a bucket count") for n in _list(dp, "bucketCounts", "a histogram data point")]
    bounds = [_float(b, "a bucket bound") for b in dp.get("explicitBounds", [])]
    if not counts or len(counts) != len(bounds) + 1 or len(counts) > MAX_BUCKETS:
        raise _fail(f"a histogram needs len(bucketCounts) == len(explicitBounds) + 1 <= {MAX_BUCKETS}")
    if any(b >= c for b, c in zip(bounds, bounds[1:], strict=False)):
        raise _fail("explicitBounds must increase")
    count = _int(dp.get("count"), "a histogram count")
    if count != sum(counts):
        raise _fail(f"a histogram's count ({count}) is not the sum of its bucket counts ({sum(counts)})")
    low = _float(dp["min"], "min") if "min" in dp else None
    high = _float(dp["max"], "max") if "max" in dp else None
    return LatencyHistogram.from_explicit(counts, bounds, _float(dp.get("sum", 0.0), "sum"), low, high)
