"""Over-the-air delivery of bundles: a TUF-signed repository, the service, and the device updater.

The device side (:class:`edgekit.ota.device.Updater`, ``edgekit pull``) needs only ``tuf`` (the
``ota`` extra); the service (``edgekit serve``) needs the ``ota-server`` extra. Nothing here is
imported by ``import edgekit``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Updater"]


def __getattr__(name: str) -> Any:
    if name == "Updater":
        from edgekit.ota.device import Updater

        return Updater
    raise AttributeError(name)
