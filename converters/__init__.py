"""edgekit.converters: turn a trained model into verified artifacts packed in one bundle.

Importing this package loads no framework; each pass imports what it needs when it runs.
"""

from __future__ import annotations

from edgekit.converters.options import Budget, ConvertOptions
from edgekit.converters.pipeline import ConversionResult, convert
from edgekit.converters.planner import plan, reachable_kinds, resolve_targets
from edgekit.converters.registry import PASSES, TARGETS, Kind, TargetInfo

__all__ = [
    "PASSES",
    "TARGETS",
    "Budget",
    "ConversionResult",
    "ConvertOptions",
    "Kind",
    "TargetInfo",
    "convert",
    "plan",
    "reachable_kinds",
    "resolve_targets",
]
