"""A small JSON Schema validator for the subset of draft 2020-12 that edgekit's schemas use.

The core must stay standard-library only, and the same checked-in schema file is read by the browser
and Android clients, so the Python side validates against that file instead of a second copy of the
rules in code. Supported keywords: type, const, enum, properties, required, items, minItems,
minLength, pattern, minimum, maximum and local ``$ref`` (``#/$defs/...``). A schema that uses any
other keyword is rejected, so the subset cannot drift silently (a test also compares the verdicts
with the ``jsonschema`` package).
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

SUPPORTED = {
    "$schema", "$id", "$defs", "$ref", "title", "description", "type", "const", "enum",
    "properties", "required", "items", "minItems", "minLength", "pattern", "minimum", "maximum",
}
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Load a schema shipped in ``edgekit/schemas`` by file name."""
    text = resources.files("edgekit.schemas").joinpath(name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    _check_keywords(schema)
    return schema


def _check_keywords(node: Any) -> None:
    if isinstance(node, dict):
        unknown = set(node) - SUPPORTED
        if unknown:
            raise ValueError(f"schema uses unsupported keywords {sorted(unknown)}")
        for key, value in node.items():
            if key in ("properties", "$defs"):
                for sub in value.values():
                    _check_keywords(sub)
            elif key == "items":
                _check_keywords(value)


def _is_type(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    if name == "number" and isinstance(value, float):
        return True
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[name])


def validate(instance: Any, schema: dict[str, Any]) -> list[str]:
    """Return the list of violations of ``schema`` by ``instance`` (empty when valid)."""
    errors: list[str] = []
    _validate(instance, schema, schema, "$", errors)
    return errors


def _validate(value: Any, node: dict[str, Any], root: dict[str, Any], path: str, errors: list[str]) -> None:
    if "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/$defs/"):
            raise ValueError(f"unsupported $ref {ref!r}")
        _validate(value, root["$defs"][ref[len("#/$defs/"):]], root, path, errors)
    if "type" in node:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        if not any(_is_type(value, t) for t in types):
            errors.append(f"{path}: expected {' or '.join(types)}, got {type(value).__name__}")
            return
    if "const" in node and value != node["const"]:
        errors.append(f"{path}: must be {node['const']!r}, got {value!r}")
    if "enum" in node and value not in node["enum"]:
        errors.append(f"{path}: {value!r} is not one of {node['enum']}")
    if isinstance(value, str):
        if len(value) < node.get("minLength", 0):
            errors.append(f"{path}: must not be empty")
        if "pattern" in node and not re.search(node["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {node['pattern']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in node and value < node["minimum"]:
            errors.append(f"{path}: {value} is below the minimum {node['minimum']}")
        if "maximum" in node and value > node["maximum"]:
            errors.append(f"{path}: {value} is above the maximum {node['maximum']}")
    if isinstance(value, dict):
        for key in node.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required field {key!r}")
        for key, sub in node.get("properties", {}).items():
            if key in value:
                _validate(value[key], sub, root, f"{path}.{key}", errors)
    if isinstance(value, list):
        if len(value) < node.get("minItems", 0):
            errors.append(f"{path}: needs at least {node['minItems']} item(s)")
        if "items" in node:
            for i, item in enumerate(value):
                _validate(item, node["items"], root, f"{path}[{i}]", errors)
