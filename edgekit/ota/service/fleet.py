"""Fleet telemetry on the service: ingest, per-release aggregates, and rollout guards that halt a canary.

Batches (``edgekit.ota.telemetry``) are added into the registry's tables by one-minute window, release,
artifact, device class and provider: counters and latency buckets are additive upserts (no read
before write), so SQLite and PostgreSQL replicas ingest concurrently. A percentile is read back from
the added buckets, exact to the runtime histogram's 12.5%.

A channel can carry a :class:`Guard`. After each batch about a release under a staged rollout, the
release (the canary) is compared with the channel's stable release (the baseline) per device class:
when a class with at least ``min_devices`` reporting devices on both sides has the canary's P95 over
``p95_ratio`` times the baseline's, or the canary's error rate over ``error_rate``, the rollout halts
with that reason.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from edgekit.errors import OtaRequestError, TelemetryError
from edgekit.histogram import LatencyHistogram
from edgekit.ota import contract
from edgekit.ota.telemetry import Batch

WINDOW_S = 60
KEY = "model TEXT NOT NULL, channel TEXT NOT NULL, release INTEGER NOT NULL, device_class TEXT NOT NULL"
SCHEMA = [
    f"""CREATE TABLE IF NOT EXISTS fleet_counts ({KEY}, artifact TEXT NOT NULL, provider TEXT NOT NULL,
        window_start INTEGER NOT NULL, batches INTEGER NOT NULL, inferences INTEGER NOT NULL, errors INTEGER NOT NULL,
        sum_ns BIGINT NOT NULL, load_sum DOUBLE PRECISION NOT NULL, load_n INTEGER NOT NULL, passed_over TEXT NOT NULL,
        PRIMARY KEY (model, channel, release, device_class, artifact, provider, window_start))""",
    f"""CREATE TABLE IF NOT EXISTS fleet_buckets ({KEY}, provider TEXT NOT NULL, window_start INTEGER NOT NULL,
        bucket INTEGER NOT NULL, n BIGINT NOT NULL,
        PRIMARY KEY (model, channel, release, device_class, provider, window_start, bucket))""",
    f"""CREATE TABLE IF NOT EXISTS fleet_errors ({KEY}, kind TEXT NOT NULL, n BIGINT NOT NULL,
        PRIMARY KEY (model, channel, release, device_class, kind))""",
    f"""CREATE TABLE IF NOT EXISTS fleet_devices ({KEY}, device_id TEXT NOT NULL,
        PRIMARY KEY (model, channel, release, device_class, device_id))""",
    """CREATE TABLE IF NOT EXISTS fleet_guards (model TEXT NOT NULL, channel TEXT NOT NULL, p95_ratio DOUBLE PRECISION,
        error_rate DOUBLE PRECISION, min_devices INTEGER NOT NULL, PRIMARY KEY (model, channel))""",
]


@dataclass(frozen=True)
class Guard:
    """Halt a channel's staged rollout when, on any device class with at least ``min_devices`` reporting
    devices on the canary and on the baseline, the canary's P95 latency exceeds ``p95_ratio`` times the
    baseline's, or the canary's error rate (failed runs / runs) exceeds ``error_rate``."""

    p95_ratio: float | None = 1.2
    error_rate: float | None = 0.01
    min_devices: int = 10

    def __post_init__(self) -> None:
        if self.p95_ratio is not None and not 1.0 <= self.p95_ratio <= 100:
            raise OtaRequestError(f"a guard's p95_ratio must be 1..100, not {self.p95_ratio}", status=422)
        if self.error_rate is not None and not 0.0 <= self.error_rate <= 1.0:
            raise OtaRequestError(f"a guard's error_rate must be 0..1, not {self.error_rate}", status=422)
        if not 1 <= self.min_devices <= 1_000_000:
            raise OtaRequestError(f"a guard's min_devices must be 1..1000000, not {self.min_devices}", status=422)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Aggregate:
    """A release's runs on one device class (and provider, where split by it)."""

    devices: int = 0
    batches: int = 0
    inferences: int = 0
    errors: int = 0
    load_sum: float = 0.0
    load_n: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    error_kinds: dict[str, int] = field(default_factory=dict)
    passed_over: set[str] = field(default_factory=set)

    @property
    def error_rate(self) -> float:
        runs = self.inferences + self.errors
        return self.errors / runs if runs else 0.0

    def to_dict(self) -> dict[str, Any]:
        h = self.latency
        return {"devices": self.devices, "batches": self.batches, "inferences": self.inferences, "errors": self.errors,
                "error_rate": round(self.error_rate, 6), "p50_ms": h.percentile(50), "p95_ms": h.percentile(95),
                "p99_ms": h.percentile(99), "mean_ms": round(h.total_ns / h.count / 1e6, 4) if h.count else 0.0,
                "load_ms": round(self.load_sum / self.load_n * 1e3, 3) if self.load_n else None,
                "error_kinds": dict(sorted(self.error_kinds.items())), "passed_over": sorted(self.passed_over)}


class Fleet:
    """Telemetry in the service's registry (any :class:`~edgekit.ota.service.database.SqlRegistry`)."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        with registry.lock(), registry.transaction() as cur:
            for statement in SCHEMA:
                cur.execute(statement)

    # -- writing --------------------------------------------------------------------------------

    def add(self, batch: Batch, now: float | None = None) -> None:
        """Add a checked batch's data points into this minute's window."""
        window = int(now if now is not None else time.time()) // WINDOW_S * WINDOW_S
        cls = batch.device_class
        with self.registry.transaction() as cur:
            for p in batch.points:
                key = (p.model, p.channel, p.release, cls)
                load = p.load_seconds
                cur.execute("INSERT INTO fleet_counts (model, channel, release, device_class, artifact, provider, "
                            "window_start, batches, inferences, errors, sum_ns, load_sum, load_n, passed_over) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?) ON CONFLICT (model, channel, release, "
                            "device_class, artifact, provider, window_start) DO UPDATE SET "
                            "batches = fleet_counts.batches + 1, inferences = fleet_counts.inferences + excluded.inferences, "
                            "errors = fleet_counts.errors + excluded.errors, sum_ns = fleet_counts.sum_ns + excluded.sum_ns, "
                            "load_sum = fleet_counts.load_sum + excluded.load_sum, "
                            "load_n = fleet_counts.load_n + excluded.load_n, passed_over = excluded.passed_over",
                            (*key, p.artifact, p.provider, window, p.latency.count, sum(p.errors.values()),
                             p.latency.total_ns, load or 0.0, 0 if load is None else 1, p.passed_over))
                # one statement for all of a point's buckets (and one for its errors): a round trip each on
                # PostgreSQL, not one per bucket; within a point the conflict keys are distinct, as both need
                buckets = [(*key, p.provider, window, bucket, n) for bucket, n in enumerate(p.latency.counts) if n]
                if buckets:
                    cur.execute("INSERT INTO fleet_buckets (model, channel, release, device_class, provider, "
                                "window_start, bucket, n) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(buckets))
                                + " ON CONFLICT (model, channel, release, device_class, provider, window_start, bucket) "
                                "DO UPDATE SET n = fleet_buckets.n + excluded.n", tuple(v for row in buckets for v in row))
                kinds: dict[str, int] = {}
                for kind, n in p.errors.items():
                    kinds[kind[:64]] = kinds.get(kind[:64], 0) + n
                if kinds:
                    cur.execute("INSERT INTO fleet_errors (model, channel, release, device_class, kind, n) VALUES "
                                + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(kinds)) + " ON CONFLICT (model, channel, "
                                "release, device_class, kind) DO UPDATE SET n = fleet_errors.n + excluded.n",
                                tuple(v for kind, n in kinds.items() for v in (*key, kind, n)))
                cur.execute("INSERT INTO fleet_devices (model, channel, release, device_class, device_id) "
                            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", (*key, batch.device_id))

    def set_guard(self, model: str, channel: str, guard: Guard | None) -> None:
        with self.registry.transaction() as cur:
            cur.execute("DELETE FROM fleet_guards WHERE model = ? AND channel = ?", (model, channel))
            if guard is not None:
                cur.execute("INSERT INTO fleet_guards (model, channel, p95_ratio, error_rate, min_devices) "
                            "VALUES (?, ?, ?, ?, ?)", (model, channel, guard.p95_ratio, guard.error_rate, guard.min_devices))

    # -- reading --------------------------------------------------------------------------------

    def guard(self, model: str, channel: str) -> Guard | None:
        rows = self.registry._read("SELECT p95_ratio, error_rate, min_devices FROM fleet_guards WHERE model = ? "
                                   "AND channel = ?", (model, channel))
        return Guard(rows[0][0], rows[0][1], int(rows[0][2])) if rows else None

    def aggregates(self, model: str, channel: str, release: int, *, by_provider: bool = False,
                   since: int = 0) -> dict[tuple[str, str], Aggregate]:
        """``(device class, provider or '')`` -> the release's runs there since ``since`` (unix seconds)."""
        out: dict[tuple[str, str], Aggregate] = {}
        args = (model, channel, release, since)
        where = "WHERE model = ? AND channel = ? AND release = ? AND window_start >= ?"
        for cls, provider, batches, inferences, errors, sum_ns, load_sum, load_n, passed in self.registry._read(
                "SELECT device_class, provider, SUM(batches), SUM(inferences), SUM(errors), SUM(sum_ns), SUM(load_sum), "
                f"SUM(load_n), MAX(passed_over) FROM fleet_counts {where} GROUP BY device_class, provider", args):
            a = out.setdefault((cls, provider if by_provider else ""), Aggregate())
            a.batches += int(batches)
            a.inferences += int(inferences)
            a.errors += int(errors)
            a.latency.total_ns += int(sum_ns)
            a.load_sum += float(load_sum)
            a.load_n += int(load_n)
            a.passed_over.update(x for x in str(passed or "").split(",") if x)
        for cls, provider, bucket, n in self.registry._read(
                f"SELECT device_class, provider, bucket, SUM(n) FROM fleet_buckets {where} "
                "GROUP BY device_class, provider, bucket", args):
            h = out.setdefault((cls, provider if by_provider else ""), Aggregate()).latency
            h.counts[int(bucket)] += int(n)
            h.count += int(n)
            h.min_ns = min(h.min_ns, LatencyHistogram.upper(int(bucket) - 1) + 1 if bucket else 0)
            h.max_ns = max(h.max_ns, LatencyHistogram.upper(int(bucket)))
        for cls, kind, n in self.registry._read("SELECT device_class, kind, n FROM fleet_errors WHERE model = ? AND "
                                                "channel = ? AND release = ?", (model, channel, release)):
            for (c, _), a in out.items():
                if c == cls:
                    a.error_kinds[str(kind)] = int(n)
                    break
        for cls, devices in self.registry._read("SELECT device_class, COUNT(*) FROM fleet_devices WHERE model = ? AND "
                                                "channel = ? AND release = ? GROUP BY device_class",
                                                (model, channel, release)):
            for (c, _), a in out.items():
                if c == cls:
                    a.devices = int(devices)
                    break
        return out

    def series(self, model: str, channel: str, release: int, device_class: str | None = None) -> list[dict[str, Any]]:
        """Per window: runs, error rate and P50/P95/P99 of the release (on one device class, or all): the
        dashboard's plots."""
        where = "WHERE model = ? AND channel = ? AND release = ?" + (" AND device_class = ?" if device_class else "")
        args = (model, channel, release, *((device_class,) if device_class else ()))
        rows = self.registry._read(f"SELECT window_start, SUM(inferences), SUM(errors) FROM fleet_counts {where} "
                                   "GROUP BY window_start ORDER BY window_start", args)
        hists: dict[int, LatencyHistogram] = {}
        for window, bucket, n in self.registry._read(
                f"SELECT window_start, bucket, SUM(n) FROM fleet_buckets {where} GROUP BY window_start, bucket", args):
            h = hists.setdefault(int(window), LatencyHistogram())
            h.counts[int(bucket)] += int(n)
            h.count += int(n)
            h.max_ns = max(h.max_ns, LatencyHistogram.upper(int(bucket)))
        out = []
        for window, inferences, errors in rows:
            h = hists.get(int(window), LatencyHistogram())
            runs = int(inferences) + int(errors)
            out.append({"time": int(window), "inferences": int(inferences), "errors": int(errors),
                        "error_rate": round(int(errors) / runs, 6) if runs else 0.0,
                        "p50_ms": h.percentile(50), "p95_ms": h.percentile(95), "p99_ms": h.percentile(99)})
        return out

    def compare(self, canary: Any, baseline: int | None) -> dict[str, Any]:
        """The canary release against the baseline per device class, and each class's verdict."""
        guard = self.guard(canary.model, canary.channel)
        mine = {c: a for (c, _), a in self.aggregates(canary.model, canary.channel, canary.release).items()}
        theirs = ({c: a for (c, _), a in self.aggregates(canary.model, canary.channel, baseline).items()}
                  if baseline is not None else {})
        providers: dict[str, dict[str, int]] = {}
        for (cls, provider), a in self.aggregates(canary.model, canary.channel, canary.release, by_provider=True).items():
            providers.setdefault(cls, {})[provider] = a.inferences + a.errors
        classes = []
        for cls in sorted(set(mine) | set(theirs)):
            k, b = mine.get(cls), theirs.get(cls)
            ratio = (k.latency.percentile(95) / b.latency.percentile(95)
                     if k and b and k.latency.count and b.latency.count and b.latency.percentile(95) > 0 else None)
            classes.append({"device_class": cls, "canary": k.to_dict() if k else None,
                            "baseline": b.to_dict() if b else None,
                            "p95_ratio": round(ratio, 3) if ratio is not None else None,
                            "canary_providers": dict(sorted(providers.get(cls, {}).items())),
                            "verdict": _verdict(guard, k, b, ratio)})
        return {"canary": canary.release, "baseline": baseline, "guard": guard.to_dict() if guard else None,
                "classes": classes}

    def breach(self, canary: Any, baseline: int | None) -> str | None:
        """Why the guard halts ``canary`` now (None while it holds)."""
        report = self.compare(canary, baseline)
        guard = report["guard"]
        for c in report["classes"]:
            if c["verdict"] == "p95 over the guard":
                k, b = c["canary"], c["baseline"]
                return (f"automatic: on {c['device_class']} release {canary.release}'s P95 is {k['p95_ms']:.3g} ms, "
                        f"{c['p95_ratio']:.2f}x release {baseline}'s {b['p95_ms']:.3g} ms (guard: at most "
                        f"{guard['p95_ratio']:g}x; {k['devices']} and {b['devices']} devices reporting)")
            if c["verdict"] == "error rate over the guard":
                k = c["canary"]
                return (f"automatic: on {c['device_class']} release {canary.release} failed {k['errors']} of "
                        f"{k['errors'] + k['inferences']} runs ({k['error_rate']:.2%}; guard: at most "
                        f"{guard['error_rate']:.2%}; {k['devices']} devices reporting)")
        return None

    def releases_with_data(self) -> Iterator[tuple[str, str, int]]:
        for model, channel, release in self.registry._read("SELECT DISTINCT model, channel, release FROM fleet_counts "
                                                           "ORDER BY model, channel, release"):
            yield str(model), str(channel), int(release)


def _verdict(guard: Guard | None, k: Aggregate | None, b: Aggregate | None, ratio: float | None) -> str:
    if guard is None:
        return "no guard"
    if k is None or k.devices < guard.min_devices:
        return "too few canary devices"
    if guard.error_rate is not None and k.error_rate > guard.error_rate:
        return "error rate over the guard"
    if b is None or b.devices < guard.min_devices or ratio is None:
        return "too few baseline devices"
    if guard.p95_ratio is not None and ratio > guard.p95_ratio:
        return "p95 over the guard"
    return "ok"


def check_plausible(service: Any, device_id: str, batch: Batch) -> None:
    """Refuse a batch whose device is not the caller or speaks of a release it was never offered.

    Raises:
        OtaRequestError: 403 for another device's id or a release not offered to this device.
        TelemetryError: A release that does not exist.
    """
    if batch.device_id != device_id:
        raise OtaRequestError(f"this device token belongs to {device_id!r}, not {batch.device_id!r}", status=403)
    for p in batch.points:
        contract.check_name(p.model)
        contract.check_name(p.channel, "channel name")
        r = service.registry.release(p.model, p.channel, p.release)
        if r is None:
            raise TelemetryError(f"telemetry batch refused: {p.model}/{p.channel} has no release {p.release}")
        if not service._offered(r, device_id):
            raise OtaRequestError(f"telemetry batch refused: release {p.release} of {p.model}/{p.channel} was not "
                                  f"offered to device {device_id!r}", status=403)
