"""Outcome reports and telemetry batches waiting to reach the service (``outbox.jsonl``), and the
device token they carry.

A report or batch is appended (fsynced) before it is sent, so a crash or a lost connection only
delays it; a telemetry line is ``{"telemetry": BATCH}`` and goes to ``/v1/telemetry``.
The device enrols once with the operator's enrolment token and keeps the device token it gets in
``device.json`` (mode 0600); reports without a token wait.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from edgekit._files import write_atomic
from edgekit.ota.device.fetcher import Fetcher, FetchError, HttpError

log = logging.getLogger("edgekit.ota")


class Outbox:
    """The reports of one device for one service, kept under ``cache``."""

    MAX = 1000  # reports kept while the service cannot take them (the oldest go first)

    def __init__(self, cache: Path, server: str, device_id: str, fetcher: Fetcher, *, enabled: bool = True,
                 enrolment_token: str | None = None) -> None:
        self.path, self.token_path = cache / "outbox.jsonl", cache / "device.json"
        self.server, self.device_id, self.fetcher = server, device_id, fetcher
        self.enabled, self.enrolment_token = enabled, enrolment_token

    def queue(self, report: dict[str, Any]) -> None:
        self._append({"device_id": self.device_id, **report})

    def queue_telemetry(self, batch: dict[str, Any]) -> None:
        self._append({"telemetry": batch})

    def _append(self, entry: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(entry, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def device_token(self) -> str | None:
        """This device's token: kept from its enrolment, else enrolled now (None when it cannot be yet)."""
        if self.token_path.exists():
            saved = json.loads(self.token_path.read_text())
            if saved.get("device_id") == self.device_id and saved.get("server") == self.server:
                return str(saved["device_token"])
        if not self.enrolment_token:
            log.warning("outcome reports wait in the outbox: this device is not enrolled (give an enrolment token)")
            return None
        body = json.dumps({"device_id": self.device_id, "enrolment_token": self.enrolment_token}).encode()
        try:
            token = str(json.loads(self.fetcher.post(f"{self.server}/v1/devices/enrol", body))["device_token"])
        except HttpError as exc:
            log.warning("the service refused to enrol this device (%s): %s", exc.status, exc.body[:300])
            return None
        except (FetchError, ValueError, KeyError):
            return None
        write_atomic(self.token_path, json.dumps({"server": self.server, "device_id": self.device_id,
                                                  "device_token": token}).encode(), mode=0o600)
        return token

    def flush(self) -> int:
        """Send queued reports; those the server cannot take now stay queued (at most MAX, oldest dropped
        first). How many were sent."""
        if not self.enabled or not self.path.exists():
            return 0
        pending = [line for line in self.path.read_text().splitlines() if line.strip()][-self.MAX:]
        token = self.device_token() if pending else None
        left, sent = [], 0
        for i, line in enumerate(pending):
            if token is None:
                left.extend(pending[i:])
                break
            try:
                if line.startswith('{"telemetry":'):
                    body = json.dumps(json.loads(line)["telemetry"], separators=(",", ":")).encode()
                    self.fetcher.post(f"{self.server}/v1/telemetry", body, token=token)
                else:
                    self.fetcher.post(f"{self.server}/v1/reports", line.encode(), token=token)
                sent += 1
            except HttpError as exc:
                if exc.status >= 500 or exc.status == 429:
                    left.append(line)
                elif exc.status == 401:  # the service no longer knows this token: enrol again next time
                    self.token_path.unlink(missing_ok=True)
                    left.extend(pending[i:])
                    break
                else:  # the server refuses it for good (unknown release...): drop it, say so
                    log.warning("the server refused a report (%s): %s: %s", exc.status, line[:200], exc.body[:300])
            except FetchError:
                left.append(line)
        write_atomic(self.path, "".join(f"{line}\n" for line in left).encode())
        return sent
