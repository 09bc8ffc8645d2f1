"""Find the chain of passes from a source kind to each target's kind (breadth-first, shortest)."""

from __future__ import annotations

import importlib.util
import itertools
from collections import deque

from edgekit.converters.registry import ALTERNATIVE_NEEDS, ALTERNATIVES, PASSES, TARGETS, Kind, PassInfo, TargetInfo
from edgekit.errors import NoRouteError, UnknownTargetError, did_you_mean


def resolve_targets(ids: list[str] | tuple[str, ...]) -> list[TargetInfo]:
    """Turn target ids into target records, in order and without repeats.

    Raises:
        UnknownTargetError: An id is not a known target; the message lists the known ones.
    """
    if not ids:
        raise UnknownTargetError(f"no target given; pass --target with one of: {', '.join(TARGETS)}")
    from edgekit.converters.auto import AUTO_TARGETS

    out: list[TargetInfo] = []
    for tid in ids:
        if tid not in TARGETS:
            raise UnknownTargetError(
                f"unknown target {tid!r}{did_you_mean(tid, [*TARGETS, *AUTO_TARGETS])}; known targets: "
                f"{', '.join(TARGETS)}, and the automatic onnx-web-auto, "
                "tflite-auto, coreml-auto, all-auto (list them with: edgekit targets)"
            )
        if TARGETS[tid] not in out:
            out.append(TARGETS[tid])
    return out


def usable_passes(via: tuple[str, ...] = (), passes: tuple[PassInfo, ...] = PASSES) -> tuple[PassInfo, ...]:
    """The passes a plan may use: the default ones, plus the alternative routes named in ``via``.

    Raises:
        NoRouteError: ``via`` names a route edgekit does not have; the message lists them.
    """
    for name in via:
        if name not in ALTERNATIVES:
            known = "; ".join(f"{k}: {v}" for k, v in ALTERNATIVES.items())
            raise NoRouteError(f"unknown route {name!r} for --via; edgekit has: {known}")
    allowed = {*via, *(n for name in via for n in ALTERNATIVE_NEEDS.get(name, ()))}
    return tuple(p for p in passes if p.fallback_of is None and (p.alternative is None or p.alternative in allowed))


def _family(kind: str) -> str:
    return kind.split(".")[0]


def _combos(route: list[PassInfo], passes: tuple[PassInfo, ...]) -> list[list[PassInfo]]:
    """``route`` with fallback passes in place of the default ones: each alone, then two of them (a fallback
    that reads another kind than the pass it stands in for comes by :func:`_widened` instead)."""
    options = [[step, *(p for p in passes if p.fallback_of == step.name and p.consumes == step.consumes)]
               for step in route]
    combos = sorted((c for c in itertools.product(*(range(len(o)) for o in options)) if any(c)),
                    key=lambda c: (sum(1 for i in c if i), c[::-1]))  # one pass replaced, then two
    return [[options[i][k] for i, k in enumerate(c)] for c in combos]


def fallback_routes(source: str, target: TargetInfo, first: list[PassInfo],
                    passes: tuple[PassInfo, ...] = PASSES) -> list[list[PassInfo]]:
    """Routes to try, in order, when ``first`` (the planned route) fails to convert or fails fp32 parity.

    First the planned route with each fallback pass in place of the default pass it stands in for
    (onnx2tf with fixed shapes, then with every input's layout kept; mixed-precision fp16), then with
    two of them (fixed shapes and mixed precision), then the alternative routes (``litert-torch``)
    that reach the target from this source.
    """
    out = _combos(first, passes)
    for candidate in _widened(source, first, passes):
        if candidate != first and candidate not in out:
            out.append(candidate)
    for name in ALTERNATIVES:
        allowed = usable_passes((name,), passes)
        for step in (p for p in allowed if p.alternative == name):
            before = reachable_kinds(source, allowed).get(step.consumes)
            after = reachable_kinds(step.produces, allowed).get(target.kind)
            if before is None or after is None:
                continue
            route = [*before, step, *after]
            kinds = [source, *(p.produces for p in route)]
            if len(set(kinds)) != len(kinds) or _family(step.produces) == _family(source) != _family(step.consumes):
                continue  # a route that comes back to a kind, or to the source's framework (torch -> ONNX -> torch)
            for candidate in (route, *_combos(route, passes)):
                if candidate != first and candidate not in out:
                    out.append(candidate)
    return out


def _widened(source: str, route: list[PassInfo], passes: tuple[PassInfo, ...]) -> list[list[PassInfo]]:
    """``route`` with a fallback pass that reads a wider kind than the pass it stands in for (int8 weights on
    Core ML's fp32 program when float16 cannot hold the model), reached by its own shortest route, then
    the same with that route's fallbacks."""
    reach = reachable_kinds(source, usable_passes((), passes))
    out: list[list[PassInfo]] = []
    for i, step in enumerate(route):
        for p in passes:
            if p.fallback_of == step.name and p.consumes != step.consumes and p.consumes in reach:
                wide = [*reach[p.consumes], p, *route[i + 1:]]
                out += [c for c in (wide, *_combos(wide, passes)) if c not in out]
    return out


def ordered_routes(source: str, target: TargetInfo, first: list[PassInfo],
                   passes: tuple[PassInfo, ...] = PASSES) -> list[list[PassInfo]]:
    """Every route to try, in order: ``first`` (the planned route) and its fallbacks, except that for a
    PyTorch or Keras source a direct route that is installed (litert-torch) goes before any route
    through ONNX, which loses more on the way (a second converter, layout guesses)."""
    rest = fallback_routes(source, target, first, passes)
    if source == Kind.ONNX or not any(step.produces == Kind.ONNX for step in first):
        return [first, *rest]
    direct = [r for r in rest if all(step.produces != Kind.ONNX for step in r)
              and all(importlib.util.find_spec(m) is not None for step in r for m in step.modules)]
    return [*direct, first, *[r for r in rest if r not in direct]]


def reachable_kinds(source: str, passes: tuple[PassInfo, ...] | None = None) -> dict[str, list[PassInfo]]:
    """Every kind reachable from ``source`` (default passes only, unless given), each with its shortest route."""
    passes = usable_passes() if passes is None else passes
    routes: dict[str, list[PassInfo]] = {source: []}
    queue = deque([source])
    ordered = sorted(passes, key=lambda p: p.alternative is None)  # an alternative asked for wins a tie
    while queue:
        kind = queue.popleft()
        for step in ordered:
            if step.consumes == kind and step.produces not in routes:
                routes[step.produces] = routes[kind] + [step]
                queue.append(step.produces)
    return routes


def plan(source: str, target: TargetInfo, passes: tuple[PassInfo, ...] | None = None) -> list[PassInfo]:
    """The shortest list of passes that turns a ``source`` kind into ``target``'s kind.

    An alternative route is shorter than the default it replaces, so passing it in ``passes`` (see
    :func:`usable_passes`) makes the plan take it where it reaches the target.

    Raises:
        NoRouteError: No route exists; the message names the kinds and targets that are reachable.
    """
    routes = reachable_kinds(source, passes)
    if target.kind in routes:
        return routes[target.kind]
    reachable_targets = [t.id for t in TARGETS.values() if t.kind in routes]
    raise NoRouteError(
        f"no conversion route from a {source} model to target {target.id!r} ({target.kind}); "
        f"from {source} edgekit reaches the kinds {', '.join(sorted(routes))}"
        + (f" and the targets {', '.join(reachable_targets)}" if reachable_targets else "")
    )
