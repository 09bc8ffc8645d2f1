"""The runtime protocol: a Runtime opens an artifact, a Session runs feeds to outputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edgekit.bundle import TensorSpec


@dataclass(frozen=True)
class Attempt:
    """One provider tried while opening a session, and why it was passed over (if it was)."""

    provider: str
    ok: bool
    reason: str = ""


class Session(Protocol):
    """A loaded artifact that turns feeds into outputs."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    provider: str
    attempts: tuple[Attempt, ...]
    load_seconds: float

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model once; keys of the result are the output names."""
        ...


class Runtime(Protocol):
    """A way to run one artifact format on this host."""

    name: str
    formats: tuple[str, ...]

    def is_available(self) -> bool:
        """True when this runtime can run on this host."""
        ...

    def open(self, path: Path, *, providers: tuple[str, ...] | None = None) -> Session:
        """Load the artifact at ``path``."""
        ...
