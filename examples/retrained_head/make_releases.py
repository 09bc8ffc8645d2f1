"""Two releases of one model that differ by a retrained head: MobileNetV2 (Keras, seeded, no download) with
a 10-class head, trained on scikit-learn's digits.

Release N is the whole network trained for two epochs; release N+1 is release N with the feature
extractor frozen and the head trained for three more. Every other tensor stays as it was, as in
transfer learning, which is what tensor-level delta
updates are for (edgekit.ota.delta; benchmarks/bench_delta.py, tests/test_ota_delta.py).
Run: python examples/retrained_head/make_releases.py OUT_DIR   (writes release-1.keras, release-2.keras)
"""

from __future__ import annotations

import sys
from pathlib import Path

SEED = 0
SIDE = 32  # MobileNetV2's smallest input; the artifact's size does not depend on it


def build_releases(out: Path) -> tuple[Path, Path]:
    """Train and save release N and N+1 as ``release-1.keras`` and ``release-2.keras`` in ``out``."""
    import keras

    from examples.digits.data import load_split

    keras.utils.set_random_seed(SEED)
    x = keras.Input((1, 8, 8), name="x")
    h = keras.layers.Permute((2, 3, 1))(x)
    h = keras.layers.Resizing(SIDE, SIDE)(h)
    h = keras.layers.Concatenate()([h, h, h])
    base = keras.applications.MobileNetV2(input_shape=(SIDE, SIDE, 3), include_top=False, weights=None, pooling="avg")
    y = keras.layers.Dense(10, activation="softmax", name="head")(base(h))
    model = keras.Model(x, y)
    x_train, _, y_train, _ = load_split()
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "release-1.keras", out / "release-2.keras"
    for path, epochs, frozen in zip(paths, (2, 3), (False, True), strict=True):
        base.trainable = not frozen  # frozen: batch normalization keeps its statistics too
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0, shuffle=False)
        model.save(path)
    return paths


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repository's examples
    print(*build_releases(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
