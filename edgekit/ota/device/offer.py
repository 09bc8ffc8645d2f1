"""What the service offers this device (:class:`Offer`, from the signed channel state) and what an update
did (:class:`UpdateResult`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Offer:
    """A release this device should install: its files' verified TUF target infos."""

    model: str
    channel: str
    release: int
    version: str
    rollback_of: int | None
    targets: dict[str, Any]  # file name -> TargetFile
    in_rollout: bool


@dataclass
class UpdateResult:
    """What :meth:`Updater.update` did: ``installed``, ``up_to_date``, ``failed`` (kept the old slot)."""

    status: str
    model: str
    release: int | None = None
    version: str | None = None
    detail: str = ""
    path: Path | None = None
    downloaded_bytes: int = 0
    resumed_bytes: int = 0
    delta_from: int | None = None  # the artifact was rebuilt from this release's copy by a delta target
