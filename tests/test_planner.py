"""Routes through the pass graph, and the registry table agreeing with the pass classes."""

from __future__ import annotations

import importlib

import pytest

from edgekit.converters.planner import plan, reachable_kinds, resolve_targets
from edgekit.converters.registry import PASSES, TARGETS, Kind, PassInfo
from edgekit.errors import NoRouteError, UnknownTargetError


@pytest.mark.parametrize("source,first", [
    (Kind.ONNX, "onnx-web-optimize"),
    (Kind.TORCH_MODULE, "torch-export-onnx"),
    (Kind.TORCH_EXPORT, "torch-program-onnx"),
    (Kind.KERAS, "tf2onnx"),
])
def test_every_source_reaches_every_web_target(source: str, first: str) -> None:
    for target in TARGETS.values():
        route = plan(source, target)
        assert route[0].name == first and route[-1].produces == target.kind
        assert all(a.produces == b.consumes for a, b in zip(route, route[1:], strict=False))


def test_no_route_names_the_reachable_kinds() -> None:
    island = (PassInfo("only", "x:Y", "tflite.fp32", "tflite.int8", ()),)
    with pytest.raises(NoRouteError, match="reaches the kinds") as info:
        plan("tflite.fp32", TARGETS["onnx-web"], island)
    assert "tflite.int8" in str(info.value)
    assert set(reachable_kinds(Kind.ONNX)) == {Kind.ONNX, Kind.ONNX_WEB, Kind.ONNX_WEB_FP16, Kind.ONNX_WEB_INT8}


def test_resolve_targets_keeps_order_and_drops_repeats() -> None:
    ids = [t.id for t in resolve_targets(["onnx-web-int8", "onnx-web", "onnx-web-int8"])]
    assert ids == ["onnx-web-int8", "onnx-web"]
    with pytest.raises(UnknownTargetError, match="known targets"):
        resolve_targets(["onnx-wbe"])
    with pytest.raises(UnknownTargetError, match="no target"):
        resolve_targets([])


@pytest.mark.parametrize("info", PASSES, ids=lambda p: p.name)
def test_registry_entry_matches_its_class(info: PassInfo) -> None:
    module, _, name = info.impl.partition(":")
    cls = getattr(importlib.import_module(module), name)
    assert (cls.name, cls.consumes, cls.produces, cls.modules) == (info.name, info.consumes, info.produces,
                                                                   info.modules)
