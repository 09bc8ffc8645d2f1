"""What the device's sessions did, sent as telemetry batches (``edgekit.ota.telemetry``) through the outbox.

:meth:`Telemetry.track` keeps each session the Updater opened with the release it runs; :meth:`Telemetry.batch`
takes what those sessions recorded since the last batch (runs by latency bucket, failed runs by kind,
load time, the provider that ran and those passed over). Never inputs or outputs. Batches are bounded
(:data:`~edgekit.ota.telemetry.MAX_POINTS` data points) and rate-limited (``every_s``); queued in the
outbox they survive restarts and go oldest-first when the device stays offline long.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from typing import Any

from edgekit.histogram import LatencyHistogram
from edgekit.ota.telemetry import MAX_POINTS, Point, make_batch

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i386": "x86", "i686": "x86",
         "armv7l": "arm32", "ppc64le": "ppc64", "s390x": "s390x"}


def this_device_class(tier: str = "") -> dict[str, str]:
    """The resource attributes of this host: OS, CPU architecture, accelerator family, the app's tier."""
    from edgekit.runtimes.onnxruntime import provider_chain

    try:
        accelerators = [p for p, _ in provider_chain("auto") if p != "CPUExecutionProvider"]
    except Exception:  # no onnxruntime: the device runs LiteRT or Core ML only
        accelerators = []
    family = accelerators[0].removesuffix("ExecutionProvider").lower() if accelerators else "none"
    machine = platform.machine().lower()
    return {"os.type": platform.system().lower() or "unknown", "host.arch": _ARCH.get(machine, machine or "unknown"),
            "edgekit.accelerator": family, "edgekit.device.tier": tier}


@dataclass
class _Tracked:
    session: Any
    model: str
    channel: str
    release: int
    sent: LatencyHistogram
    sent_errors: dict[str, int]
    load_sent: bool = False


class Telemetry:
    """The sessions of one device whose runs go to the service."""

    def __init__(self, device_id: str, resource: dict[str, str], *, every_s: float = 300.0) -> None:
        self.device_id, self.resource, self.every_s = device_id, resource, every_s
        self._tracked: list[_Tracked] = []
        self._last = time.time_ns()
        self._last_sent = 0.0

    def track(self, session: Any, model: str, channel: str, release: int) -> None:
        """Report ``session``'s runs from now on as release ``release`` of ``model`` on ``channel``."""
        histogram = getattr(session, "histogram", None)
        if histogram is None:
            return  # a session that keeps no histogram
        self._tracked.append(_Tracked(session, model, channel, release, histogram(), session.error_kinds()))

    def due(self) -> bool:
        return time.monotonic() - self._last_sent >= self.every_s

    def batch(self) -> dict[str, Any] | None:
        """The OTLP request for what the tracked sessions did since the last batch (None when nothing)."""
        points: list[Point] = []
        for t in self._tracked[:MAX_POINTS]:
            now, kinds = t.session.histogram(), t.session.error_kinds()
            delta = now.since(t.sent)
            errors = {k: n - t.sent_errors.get(k, 0) for k, n in kinds.items() if n > t.sent_errors.get(k, 0)}
            if not delta.count and not errors and t.load_sent:
                continue
            artifact = getattr(getattr(t.session, "artifact", None), "target", "") or "artifact"
            passed = ",".join(a.provider for a in getattr(t.session, "attempts", ()) if not a.ok)
            points.append(Point(t.model, t.channel, t.release, artifact, str(getattr(t.session, "provider", "")),
                                passed, delta, errors, None if t.load_sent else float(t.session.load_seconds)))
            t.sent, t.sent_errors, t.load_sent = now, kinds, True
        end = time.time_ns()
        start, self._last = self._last, end
        self._last_sent = time.monotonic()
        self._tracked = [t for t in self._tracked if not getattr(t.session, "closed", False)]
        return make_batch(self.device_id, self.resource, points, start_ns=start, end_ns=end) if points else None
