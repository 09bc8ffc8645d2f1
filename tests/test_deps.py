"""A missing optional dependency is a user error that names the extra to install."""

from __future__ import annotations

import pytest

from edgekit._deps import OPTIONAL_MODULES, is_available, require
from edgekit.errors import MissingDependencyError, UserError


def test_missing_module_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(OPTIONAL_MODULES, "edgekit_absent_framework", ("absent-framework", "tensorflow"))
    with pytest.raises(MissingDependencyError) as info:
        require("edgekit_absent_framework", purpose="convert Keras models")
    err = info.value
    assert isinstance(err, ImportError) and isinstance(err, UserError) and err.exit_code == 2
    assert err.extra == "tensorflow" and "pip install 'edgekit[tensorflow]'" in str(err)
    assert "convert Keras models" in str(err)
    assert not is_available("edgekit_absent_framework") and is_available("numpy")
