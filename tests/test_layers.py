"""The layout tells the architecture: each part imports only the parts below it. Read from the source
(every import, the lazy ones inside functions included), not from what a run happens to load.

    cli ─────────────► everything
    web server ──────► web files, runtimes, core
    converters ──────► web files (the browser library, to check on its wasm runtime), runtimes, core
    OTA device ──────► OTA contract, runtimes, core
    OTA operator client ► OTA contract, core
    OTA service ─────► OTA contract, core
    runtimes ────────► core
    OTA contract ────► core
    core (bundle, errors, parity, report, _files, ...) ► core

The one exception: a package's lazy public names (PEP 562 ``__getattr__`` in ``edgekit/__init__.py``
and ``edgekit/ota/__init__.py``) may name what they re-export.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

FOLDERS = {"edgekit": ROOT / "edgekit", "edgekit.converters": ROOT / "converters", "edgekit.runtimes": ROOT / "runtimes",
           "edgekit.web": ROOT / "web"}
PARTS = [  # (part, module-name prefixes), the first match wins
    ("cli", ("edgekit.cli", "edgekit._entry", "edgekit.__main__")),
    ("ota-operator", ("edgekit.ota.operator",)),
    ("ota-device", ("edgekit.ota.device", "edgekit.ota.client")),  # client: the deprecated alias of device
    ("ota-contract", ("edgekit.ota.contract", "edgekit.ota.delta", "edgekit.ota.telemetry")),
    ("ota-service", ("edgekit.ota.service",)),
    ("lazy-names", ("edgekit.ota",)),
    ("web-server", ("edgekit.web.server",)),
    ("web-files", ("edgekit.web",)),  # the browser library's files (package data), found by path
    ("converters", ("edgekit.converters",)),
    ("runtimes", ("edgekit.runtimes",)),
    ("core", ("edgekit",)),
]
ALLOWED = {
    "cli": {"cli", "ota-device", "ota-contract", "ota-operator", "ota-service", "lazy-names", "web-server", "web-files",
            "converters", "runtimes", "core"},
    "ota-operator": {"ota-contract", "core"},
    "web-server": {"web-server", "web-files", "runtimes", "core"},
    "web-files": {"core"},
    "converters": {"converters", "web-files", "runtimes", "core"},
    "ota-device": {"ota-device", "ota-contract", "runtimes", "core"},
    "ota-service": {"ota-service", "ota-contract", "core"},
    "runtimes": {"runtimes", "core"},
    "ota-contract": {"ota-contract", "core"},
    "lazy-names": {"ota-device", "ota-contract", "core"},
    "core": {"core"},
}
LAZY_PUBLIC_NAMES = {"edgekit"}  # edgekit/__init__.py: convert, open, ... resolved on first use


def part_of(module: str) -> str:
    for part, prefixes in PARTS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return part
    raise AssertionError(f"{module} belongs to no part")


def modules() -> Iterator[tuple[str, Path]]:
    for package, folder in FOLDERS.items():
        for file in folder.rglob("*.py"):
            rel = file.relative_to(folder)
            if {"node_modules", "tuf-conformance"} & set(rel.parts):
                continue
            parts = [p for p in rel.with_suffix("").parts if p != "__init__"]
            if package == "edgekit" and parts and parts[0] in ("converters", "runtimes", "web"):
                continue
            yield ".".join([package, *parts]), file


def imports_of(module: str, source: str, is_package: bool) -> set[str]:
    """Every edgekit module ``source`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)  # from edgekit.ota import client
    return {m for m in found if m == "edgekit" or m.startswith("edgekit.")}


def violations() -> list[str]:
    known = {name for name, _ in modules()}
    out = []
    for module, file in modules():
        if module in LAZY_PUBLIC_NAMES:
            continue
        mine = part_of(module)
        targets = set()
        for target in imports_of(module, file.read_text(encoding="utf-8"), file.name == "__init__.py"):
            while target not in known and "." in target:  # from edgekit.bundle import Manifest -> edgekit.bundle
                target = target.rsplit(".", 1)[0]
            targets.add(target)
        # "from edgekit.ota import contract" imports the submodule: the package is only its way in
        targets -= {t for t in targets if any(o.startswith(t + ".") for o in targets)}
        for target in sorted(targets):
            if target == "edgekit":
                continue  # the package itself (its version, its lazy names)
            theirs = part_of(target)
            if theirs not in ALLOWED[mine]:
                out.append(f"{module} ({mine}) imports {target} ({theirs})")
    return out


def test_every_part_imports_only_the_parts_below_it() -> None:
    assert violations() == []


def test_the_rule_sees_lazy_imports_inside_functions() -> None:
    source = "def f():\n    from edgekit.ota.service.core import OtaService\n    import edgekit.converters.pipeline\n"
    found = imports_of("edgekit.ota.device.updater", source, False)
    assert {part_of(m) for m in found if m in {"edgekit.ota.service.core", "edgekit.converters.pipeline"}} == {
        "ota-service", "converters"}
    assert "ota-service" not in ALLOWED["ota-device"] and "converters" not in ALLOWED["runtimes"]
    assert not {"cli", "converters", "runtimes"} & ALLOWED["core"]


def test_the_ota_folders_are_its_sides() -> None:
    """Every OTA module lives in its side's folder: nothing new lands beside them by accident."""
    ota = ROOT / "edgekit" / "ota"
    loose = sorted(p.name for p in ota.glob("*.py"))
    assert loose == ["__init__.py", "client.py", "contract.py", "delta.py", "operator.py", "telemetry.py"]
    assert {p.name for p in ota.iterdir() if p.is_dir() and p.name != "__pycache__"} == {"device", "service"}
