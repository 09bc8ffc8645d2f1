"""Routes through the pass graph, and the registry table agreeing with the pass classes."""

from __future__ import annotations

import importlib

import pytest

from edgekit.converters.planner import ordered_routes, plan, reachable_kinds, resolve_targets, usable_passes
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


@pytest.mark.parametrize("source", [Kind.ONNX, Kind.TORCH_MODULE, Kind.TORCH_EXPORT, Kind.KERAS, Kind.TF_SAVED_MODEL])
def test_every_fallback_route_chains_its_kinds(source: str) -> None:
    """Fallback passes stand in only where they read what the step before makes: int8 weights on Core ML's
    fp32 program come after an fp32 conversion, never after the fp16 one."""
    for target in TARGETS.values():
        routes = ordered_routes(source, target, plan(source, target))
        for route in routes:
            names = [p.name for p in route]
            assert route[0].consumes == source and route[-1].produces == target.kind, names
            assert all(a.produces == b.consumes for a, b in zip(route, route[1:], strict=False)), names
        if target.id == "coreml-int8":
            wide = [r for r in routes if r[-1].name == "coreml-int8-fp32"]
            assert wide and all(r[-2].produces == Kind.COREML_FP32 for r in wide)
            assert routes.index(wide[0]) > 0  # after the fp16 program's route


def test_a_reduced_precision_parity_failure_retries_the_precision_fallbacks_only() -> None:
    """coreml-int8 from a PyTorch module failed parity on the fp16 program: the mixed-precision fp16 program, then
    int8 weights on the fp32 program are tried; no route through another converter is."""
    from edgekit.converters.artifacts import _precision_retries

    target = TARGETS["coreml-int8"]
    first = plan(Kind.TORCH_MODULE, target)
    assert [p.name for p in first] == ["torch-coreml-fp16", "coreml-int8"]
    routes = ordered_routes(Kind.TORCH_MODULE, target, first)
    retries = [[p.name for p in r] for r in _precision_retries(first, [r for r in routes if r != first])]
    mixed, wide = ["torch-coreml-fp16-mixed", "coreml-int8"], ["torch-coreml-fp32", "coreml-int8-fp32"]
    assert mixed in retries and wide in retries and retries.index(mixed) < retries.index(wide)
    assert all(r[0].startswith("torch-coreml-fp") for r in retries)  # nothing through ONNX or onnx2tf
    onnx_first = plan(Kind.ONNX, TARGETS["onnx-web-int8"])
    later = [r for r in ordered_routes(Kind.ONNX, TARGETS["onnx-web-int8"], onnx_first) if r != onnx_first]
    assert [r[-1].name for r in _precision_retries(onnx_first, later)] == [
        "onnx-int8-second", "onnx-int8-third", "onnx-int8-fourth", "onnx-int8-fifth"]


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
