"""Calibration and validation samples: read from a ``.npz`` file, or generated from the input specs."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit._files import hash_path
from edgekit.bundle import CalibrationInfo, TensorSpec
from edgekit.errors import CalibrationError
from edgekit.parity import is_single_feed, is_stacked

GENERATED_SAMPLES = 8
MIN_SAMPLES = 2  # a calibration file's least samples, where the model's batch axis lets it hold more


@dataclass(frozen=True)
class Samples:
    """One batch of inputs keyed by input name, with optional integer labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    info: CalibrationInfo | None  # None when the samples were generated
    single: bool = False  # one feed of a fully static model with no shared batch axis (is_single_feed)
    stacked: bool = False  # whole feeds along a new first axis (is_stacked)

    @property
    def count(self) -> int:
        if self.single:
            return 1
        return int(next((v.shape[0] for v in self.inputs.values() if v.ndim), 1))


def load_calibration(path: str | Path, inputs: tuple[TensorSpec, ...], *, labels_key: str = "y") -> Samples:
    """Read ``DATA.npz``: arrays named like the model's inputs (or one ``x``), and optional labels.

    Args:
        path: The ``.npz`` file; its arrays hold one batch each (first axis = samples).
        inputs: The source model's inputs.
        labels_key: The array holding integer labels, unless a model input has that name.

    Raises:
        CalibrationError: The file is missing or unreadable, or does not fit the model's inputs.
    """
    file = Path(path)
    fix = "write it with numpy.savez(path, x=inputs, y=labels)"
    if not file.is_file():
        raise CalibrationError(f"calibration file {file} does not exist; {fix}")
    try:
        loaded = np.load(file, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            raise CalibrationError(f"calibration file {file} is a .npy (one unnamed array); edgekit reads a .npz with "
                                   f"arrays named like the model's inputs: {fix}")
        with loaded as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CalibrationError(f"cannot read calibration file {file} as .npz ({exc}); {fix}") from exc
    names = [spec.name for spec in inputs]
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        if spec.name in arrays:
            feeds[spec.name] = arrays[spec.name]
        elif len(inputs) == 1 and "x" in arrays:
            feeds[spec.name] = arrays["x"]
        else:
            raise CalibrationError(
                f"calibration file {file} has no array for the model input {spec.name!r} (it has: "
                f"{', '.join(sorted(arrays)) or 'nothing'}); name each array like the model input it feeds"
                + (" or store a single input as 'x'" if len(inputs) == 1 else "")
            )
    labels = None
    if labels_key in arrays and labels_key not in names:
        labels = arrays[labels_key]
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise CalibrationError(
                f"labels {labels_key!r} in {file} must be a 1-D integer array, got {labels.dtype} {labels.shape}"
            )
    samples = check_samples(feeds, inputs, where=str(file))
    single, stacked = is_single_feed(samples, inputs), is_stacked(samples, inputs)
    count = 1 if single else next((v.shape[0] for v in samples.values() if v.ndim), 1)
    first = inputs[0].shape[0] if inputs and inputs[0].shape else None
    if count < MIN_SAMPLES and not (single or stacked) and not (isinstance(first, int) and first == count):
        raise CalibrationError(
            f"calibration file {file} holds {count} sample; int8 ranges, parity and accuracy measured on it say "
            f"nothing of other inputs; give at least {MIN_SAMPLES} (a few hundred representative samples for int8 and "
            "accuracy), stacked along the first axis")
    if labels is not None and labels.shape[0] != count:
        raise CalibrationError(f"{file} has {count} samples but {labels.shape[0]} labels; they must match")
    digest, _ = hash_path(file)
    info = CalibrationInfo(file=file.name, sha256=digest, n_samples=int(count), has_labels=labels is not None)
    return Samples(samples, labels, info, single=single, stacked=stacked)


def check_samples(feeds: dict[str, np.ndarray], inputs: tuple[TensorSpec, ...], *, where: str) -> dict[str, np.ndarray]:
    """Check rank, fixed dims and dtype of each feed; cast safely to the model's dtype.

    Raises:
        CalibrationError: A feed does not fit its input spec.
    """
    out: dict[str, np.ndarray] = {}
    counts = set()
    single, stacked = is_single_feed(feeds, inputs), is_stacked(feeds, inputs)
    for spec in inputs:
        array = np.asarray(feeds[spec.name])
        if array.ndim != len(spec.shape) and not (stacked and array.ndim == len(spec.shape) + 1):
            raise CalibrationError(
                f"{where}: input {spec.name!r} needs rank {len(spec.shape)} (shape {list(spec.shape)}), "
                f"got shape {list(array.shape)}; the first axis counts samples (or, with one axis more "
                "on every input, lists whole feeds: for models whose batch axis is not the first)"
            )
        feed_shape = array.shape[1:] if stacked and array.ndim else array.shape
        for axis, (want, got) in enumerate(zip(spec.shape, feed_shape, strict=True)):
            if (axis > 0 or stacked) and not single and isinstance(want, int) and want >= 0 and want != got:
                raise CalibrationError(
                    f"{where}: input {spec.name!r} needs size {want} on axis {axis}, got shape {list(array.shape)}"
                )
        want_dtype = np.dtype(spec.dtype)
        if array.dtype != want_dtype:
            same_family = (np.issubdtype(array.dtype, np.floating) and np.issubdtype(want_dtype, np.floating)) or (
                np.issubdtype(array.dtype, np.integer) and np.issubdtype(want_dtype, np.integer)
            )
            if not same_family:
                raise CalibrationError(f"{where}: input {spec.name!r} needs {spec.dtype}, got {array.dtype}")
            array = array.astype(want_dtype)
        if np.issubdtype(array.dtype, np.floating) and array.size:
            bad = int(np.count_nonzero(~np.isfinite(array)))
            if bad:
                raise CalibrationError(f"{where}: input {spec.name!r} holds {bad} NaN or infinite values of "
                                       f"{array.size}; int8 ranges and parity need finite samples: drop or fix them")
        if array.ndim:  # a scalar input is shared by every sample
            counts.add(array.shape[0])
        out[spec.name] = array
    if len(counts) > 1 and not single:
        raise CalibrationError(f"{where}: the inputs have different sample counts {sorted(counts)}; they must match")
    return out


def generate_samples(inputs: tuple[TensorSpec, ...], *, seed: int = 0) -> Samples:
    """Random inputs of the right shapes and dtypes, for models converted without calibration data.

    Raises:
        CalibrationError: An input has a dynamic dimension other than the first (batch) one.
    """
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        first = spec.shape[0] if spec.shape else None
        count = first if isinstance(first, int) and first > 0 else GENERATED_SAMPLES
        shape = [] if not spec.shape else [count]  # a scalar input is shared by every sample
        for axis, dim in enumerate(spec.shape[1:], start=1):
            if not isinstance(dim, int) or dim < 0:
                raise CalibrationError(
                    f"input {spec.name!r} has a dynamic dimension ({dim!r}) on axis {axis}, so edgekit cannot "
                    "make test inputs for it; pass --calibration DATA.npz with real samples"
                )
            shape.append(dim)
        dtype = np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
        elif np.issubdtype(dtype, np.integer):
            feeds[spec.name] = rng.integers(0, 10, shape).astype(dtype)
        else:
            raise CalibrationError(f"input {spec.name!r} has dtype {spec.dtype}; pass --calibration with real samples")
    checked = check_samples(feeds, inputs, where="generated inputs")
    return Samples(checked, None, None, single=is_single_feed(checked, inputs))
