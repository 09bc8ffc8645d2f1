"""Smoke test: run an opened artifact on the reference samples its bundle carries and check the outputs.

A device runs it after installing a bundle and before reporting success: the artifact must load on
this host's provider and reproduce the source model's outputs within the artifact's tolerance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.bundle import Parity, verify_file
from edgekit.errors import BundleError
from edgekit.parity import Tolerance, compare, run_batched


def smoke_test(session: Any) -> Parity:
    """Run ``session`` on its bundle's reference samples; parity against the source outputs.

    The bounds are the ones the artifact was validated with (``parity.tolerance`` in the manifest).
    ``Parity.passed`` says whether the artifact behaves here as it did at conversion.

    Raises:
        BundleError: The session was not opened from a bundle, the bundle has no reference samples,
            or the artifact was never validated (no tolerance to check against).
    """
    bundle, artifact = getattr(session, "bundle", None), getattr(session, "artifact", None)
    if bundle is None or artifact is None:
        raise BundleError("smoke_test needs a session opened from a bundle (edgekit.runtimes.open(bundle_dir))")
    reference = bundle.manifest.reference
    if reference is None:
        raise BundleError(f"bundle {bundle.path} has no reference samples (an older edgekit made it); convert it again")
    if artifact.parity is None or not artifact.parity.tolerance:
        raise BundleError(f"artifact {artifact.target} ({artifact.format}) was not validated at conversion "
                          f"({artifact.unverified or 'no tolerance recorded'}); there is nothing to check it against")
    verify_file(bundle.path / reference.file, reference.size_bytes, reference.sha256, "the reference samples")
    with np.load(bundle.path / reference.file, allow_pickle=False) as data:
        inputs = {k[3:]: data[k] for k in data.files if k.startswith("in.")}
        expected = {k[4:]: data[k] for k in data.files if k.startswith("out.")}
    actual = run_batched(session.run, inputs, session.inputs)
    tolerance = artifact.parity.tolerance
    bounds = Tolerance(float(tolerance["max_rel_error"]), tolerance.get("min_top1_agreement"))
    parity, _ = compare(expected, actual, bundle.manifest.outputs, bounds)
    return parity
