"""What the benchmarks share: the trained MobileNetV2 they convert, and timing a mode in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SIZE = 96
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def prepare_mobilenet(work: Path) -> None:
    """Train a Keras MobileNetV2 (96x96 RGB, 10 classes) on the digits; write model.keras and calibration.npz.

    A MobileNetV2 with random weights outputs a constant 0.1 for every class, which makes any parity
    claim empty: 3 short epochs (batch-norm momentum 0.9 so its statistics settle) give ~0.87 accuracy.
    """
    import keras
    import tensorflow as tf

    sys.path.insert(0, str(ROOT))
    from examples.digits.data import load_split

    x_train, x_test, y_train, y_test = load_split()

    def to_rgb96(x: np.ndarray) -> np.ndarray:
        images = tf.image.resize(x.transpose(0, 2, 3, 1), (SIZE, SIZE)).numpy()
        return np.repeat(images, 3, axis=3).astype(np.float32)

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), weights=None, classes=10)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(to_rgb96(x_train), y_train, epochs=3, batch_size=32, verbose=0)
    x_cal = to_rgb96(x_test)
    accuracy = float((model.predict(x_cal, verbose=0).argmax(1) == y_test).mean())
    model.save(work / "model.keras")
    np.savez(work / "calibration.npz", x=x_cal, y=y_test.astype(np.int64))
    print(json.dumps({"held_out_accuracy": accuracy}))


def load_mobilenet(work: Path) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """The saved Keras model, the held-out inputs and labels, and the model's outputs on them."""
    import keras

    model = keras.saving.load_model(str(work / "model.keras"), compile=False)
    data = np.load(work / "calibration.npz")
    x, y = data["x"], data["y"]
    reference = np.concatenate([model(x[i:i + 64], training=False).numpy() for i in range(0, len(x), 64)])
    return model, x, y, reference


def alternate(script: str, work: Path, rounds: int, note: str = "") -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Train the MobileNetV2, then run the script's ``direct`` and ``edgekit`` modes alternately
    ``rounds`` times, each in a fresh process; print the wall times. The last results and all times."""
    import statistics

    prep_seconds, prep = timed(script, "prepare", work)
    print(f"trained MobileNetV2 96x96 in {prep_seconds:.0f}s, held-out accuracy {prep['held_out_accuracy']:.3f}")
    times: dict[str, list[float]] = {"direct": [], "edgekit": []}
    results: dict[str, Any] = {}
    for _ in range(rounds):
        for mode in ("direct", "edgekit"):
            seconds, results[mode] = timed(script, mode, work)
            times[mode].append(seconds)
    direct, edge = statistics.median(times["direct"]), statistics.median(times["edgekit"])
    print(f"\nwall time (median of {rounds}, fresh process each, imports included): direct {direct:.1f}s, "
          f"edgekit {edge:.1f}s{note}, ratio {edge / direct:.2f}x  (runs: {times})")
    return results, times


def timed(script: str, mode: str, work: Path) -> tuple[float, dict[str, Any]]:
    """Run ``script mode work`` in a fresh interpreter; its wall time and the JSON its last line prints."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, script, mode, str(work)], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return seconds, result


if __name__ == "__main__":  # python benchmarks/common.py DIR: write the trained MobileNetV2 and its data to DIR
    prepare_mobilenet(Path(sys.argv[1]))
