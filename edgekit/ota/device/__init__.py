"""The device side of OTA: what an app embeds to keep its models up to date (``edgekit pull`` runs it).

It imports only the OTA contract, core and :mod:`edgekit.runtimes` (and ``tuf``): never the service.

- :mod:`~edgekit.ota.device.updater`: check, download, verify, install, switch, roll back.
- :mod:`~edgekit.ota.device.slots`: ``state.json`` and the slot folders.
- :mod:`~edgekit.ota.device.outbox`: outcome reports until delivered; the device's enrolment.
- :mod:`~edgekit.ota.device.offer`: what the service offers this device, and what an update did.
- :mod:`~edgekit.ota.device.telemetry`: what the sessions did, as telemetry batches for the outbox.
- :mod:`~edgekit.ota.device.rebuild`: an artifact rebuilt from the previous release by a delta target.
- :mod:`~edgekit.ota.device.fetcher`: the one network seam.
"""

from __future__ import annotations

from edgekit.ota.device.fetcher import Fetcher, FetchError, HttpError, Response, UrllibFetcher
from edgekit.ota.device.offer import Offer, UpdateResult
from edgekit.ota.device.outbox import Outbox
from edgekit.ota.device.slots import Slots, SlotState
from edgekit.ota.device.updater import Updater

__all__ = ["FetchError", "Fetcher", "HttpError", "Offer", "Outbox", "Response", "SlotState", "Slots", "UpdateResult",
           "Updater", "UrllibFetcher"]
