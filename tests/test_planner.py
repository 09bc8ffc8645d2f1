"""Routes through the pass graph, and the registry table agreeing with the pass classes."""

from __future__ import annotations

import importlib

import pytest

from edgekit.converters.planner import plan, reachable_kinds, resolve_targets, usable_passes
from edgekit.converters.registry import PASSES, TARGETS, Kind, PassInfo
from edgekit.errors import NoRouteError, UnknownTargetError


@pytest.mark.parametrize("source,first", [
    (Kind.ONNX, {"onnx-web": ["onnx-web-optimize"], "tflite": ["onnx2tf"], "coreml": ["onnx2tf"]}),
    (Kind.TORCH_MODULE, {"onnx-web": ["torch-export-onnx", "onnx-web-optimize"],
                         "tflite": ["torch-export-onnx", "onnx2tf"], "coreml": ["torch-coreml-fp"]}),
    (Kind.TORCH_EXPORT, {"onnx-web": ["torch-program-onnx", "onnx-web-optimize"],
                         "tflite": ["torch-program-onnx", "onnx2tf"], "coreml": ["torch-program-coreml-fp"]}),
    (Kind.KERAS, {"onnx-web": ["tf2onnx", "onnx-web-optimize"], "tflite": ["keras-tf"], "coreml": ["keras-tf"]}),
])
def test_every_source_reaches_every_target(source: str, first: dict[str, list[str]]) -> None:
    for target in TARGETS.values():
        route = plan(source, target)
        names = [p.name for p in route]
        want = first[target.family]
        assert len(names) >= len(want) and all(n.startswith(w) for n, w in zip(names, want, strict=False)), names
        assert route[-1].produces == target.kind
        assert all(a.produces == b.consumes for a, b in zip(route, route[1:], strict=False))
        assert all(p.alternative is None for p in route)


def test_via_takes_the_alternative_route_where_it_reaches() -> None:
    passes = usable_passes(("litert-torch",))
    assert [p.name for p in plan(Kind.TORCH_MODULE, TARGETS["tflite"], passes)] == ["litert-torch"]
    assert [p.name for p in plan(Kind.TORCH_EXPORT, TARGETS["tflite"], passes)] == ["litert-torch-program"]
    # the alternative makes fp32 only: other precisions keep the default route
    assert plan(Kind.TORCH_MODULE, TARGETS["tflite-int8"], passes)[1].name == "onnx2tf"
    with pytest.raises(NoRouteError, match="unknown route 'tflite-direct'.*litert-torch"):
        usable_passes(("tflite-direct",))


def test_no_route_names_the_reachable_kinds() -> None:
    island = (PassInfo("only", "x:Y", "tflite.fp32", "tflite.int8", ()),)
    with pytest.raises(NoRouteError, match="reaches the kinds") as info:
        plan("tflite.fp32", TARGETS["onnx-web"], island)
    assert "tflite.int8" in str(info.value)
    assert set(reachable_kinds(Kind.ONNX)) == {Kind.ONNX, Kind.ONNX_WEB, Kind.ONNX_WEB_FP16, Kind.ONNX_WEB_INT8,
                                               Kind.TF, *(t.kind for t in TARGETS.values() if t.family != "onnx-web")}


def test_resolve_targets_keeps_order_and_drops_repeats() -> None:
    ids = [t.id for t in resolve_targets(["onnx-web-int8", "onnx-web", "onnx-web-int8"])]
    assert ids == ["onnx-web-int8", "onnx-web"]
    with pytest.raises(UnknownTargetError, match="known targets"):
        resolve_targets(["onnx-wbe"])
    with pytest.raises(UnknownTargetError, match="no target"):
        resolve_targets([])


@pytest.mark.parametrize("info", PASSES, ids=lambda p: p.name)
def test_registry_entry_is_what_its_class_carries(info: PassInfo) -> None:
    module, _, name = info.impl.partition(":")
    cls = getattr(importlib.import_module(module), name)
    assert (cls.name, cls.consumes, cls.produces, cls.modules) == (info.name, info.consumes, info.produces,
                                                                   info.modules)


def test_pass_metadata_is_declared_once_in_the_registry() -> None:
    """No pass class repeats its name, kinds or modules: they come from its PASSES entry."""
    import ast

    from tests.conftest import ROOT

    registered = {p.impl.rsplit(".", 1)[-1] for p in PASSES}  # "module:Class"
    repeated = []
    for file in (ROOT / "converters" / "passes").glob("*.py"):
        for node in ast.parse(file.read_text()).body:
            if isinstance(node, ast.ClassDef) and f"{file.stem}:{node.name}" in registered:
                names = {t.id for st in node.body if isinstance(st, ast.Assign) for t in st.targets if isinstance(t, ast.Name)}
                repeated += [f"{file.stem}:{node.name}.{n}" for n in names & {"name", "consumes", "produces", "modules"}]
    assert repeated == []
