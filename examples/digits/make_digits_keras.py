"""Train the Keras version of the digits CNN (the Keras source of the examples and tests).

Writes digits.keras next to this script. It takes the same input as the PyTorch model ("x":
[batch, 1, 8, 8] float32 in 0..1) and permutes it to channels-last inside, so one calibration file
(digits.npz) serves every source. Seeded; a few seconds on a CPU; about 98% held-out accuracy.
Run: python examples/digits/make_digits_keras.py
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

try:
    from examples.digits.data import SEED, load_split
except ImportError:  # run as a script
    from data import SEED, load_split  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent


def build() -> keras.Model:
    """Two 3x3 convolutions and two dense layers, as DigitsCNN in make_digits.py."""
    x = keras.Input((1, 8, 8), name="x")
    h = keras.layers.Permute((2, 3, 1))(x)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(128, activation="relu")(h)
    logits = keras.layers.Dense(10, name="logits")(h)
    return keras.Model(x, logits, name="digits_keras")


def train(x: np.ndarray, y: np.ndarray, epochs: int = 30) -> keras.Model:
    keras.utils.set_random_seed(SEED)
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    return model


def main() -> None:
    x_train, x_test, y_train, y_test = load_split()
    model = train(x_train, y_train)
    accuracy = (model.predict(x_test, verbose=0).argmax(1) == y_test).mean()
    print(f"held-out accuracy: {accuracy:.4f} on {len(y_test)} samples")
    weights_only = build()  # uncompiled: the file carries no optimizer state (a third of the size)
    weights_only.set_weights(model.get_weights())
    weights_only.save(HERE / "digits.keras")
    print(f"wrote digits.keras to {HERE}")


if __name__ == "__main__":
    main()
