"""edgekit: convert trained models into verified on-device bundles, and run them.

``import edgekit`` loads the standard library and numpy only; converters and runtimes load their
frameworks inside the functions that need them. Public names from heavier modules are resolved
lazily through :func:`__getattr__` (PEP 562).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.bundle import Artifact, Bundle, Manifest, TensorSpec, read_bundle
from edgekit.errors import EdgekitError, UserError

# In an installed (or strict editable) edgekit, converters/ and runtimes/ are installed as
# edgekit/converters and edgekit/runtimes. When edgekit is imported straight from a source checkout
# (Python started in the repository root puts it first on sys.path), map them the same way by adding
# the checkout root to this package's search path; an installed copy has no pyproject.toml beside it.
_checkout = Path(__file__).parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "converters" / "__init__.py").is_file():
    __path__.append(str(_checkout))

__version__ = "0.1.0"

if TYPE_CHECKING:
    from edgekit.converters import ConvertOptions, convert

_LAZY = {"convert": "edgekit.converters", "ConvertOptions": "edgekit.converters"}

__all__ = [
    "Artifact",
    "Bundle",
    "ConvertOptions",
    "EdgekitError",
    "Manifest",
    "TensorSpec",
    "UserError",
    "__version__",
    "convert",
    "read_bundle",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
