"""Deprecated alias of :mod:`edgekit.ota.device` (the device side's home since 0.1): import from there."""

from __future__ import annotations

import warnings

from edgekit.ota.device import Offer, SlotState, Updater, UpdateResult

__all__ = ["Offer", "SlotState", "UpdateResult", "Updater"]

warnings.warn("edgekit.ota.client is deprecated: import Updater from edgekit.ota (or edgekit.ota.device)",
              DeprecationWarning, stacklevel=2)
