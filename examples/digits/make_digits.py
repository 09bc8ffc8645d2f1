"""Train the example digits CNN and write the files edgekit's quick start converts.

Writes, next to this script:
  digits.onnx   the trained model exported to ONNX (input "x": [batch, 1, 8, 8] float32 in 0..1)
  digits.pt2    the same model as a saved torch.export program (the PyTorch source)
  digits.npz    the held-out split: x [n, 1, 8, 8] float32 and y [n] int64 labels

The data is scikit-learn's digits (ships with the package; no download). Training is seeded, takes
a few seconds on a CPU and reaches about 98% held-out accuracy.
Run: python examples/digits/make_digits.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

try:
    from examples.digits.data import SEED, load_split
except ImportError:  # run as a script
    from data import SEED, load_split  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions and two dense layers; about 150k parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def train(x: np.ndarray, y: np.ndarray, epochs: int = 30) -> DigitsCNN:
    torch.manual_seed(SEED)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=generator).split(64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
    return model.eval()


def main() -> None:
    x_train, x_test, y_train, y_test = load_split()
    model = train(x_train, y_train)
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    print(f"held-out accuracy: {accuracy:.4f} on {len(y_test)} samples")

    example = (torch.from_numpy(x_test[:4]),)
    program = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(HERE / "digits.pt2"))
    torch.onnx.export(model, example, str(HERE / "digits.onnx"), input_names=["x"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False)
    np.savez_compressed(HERE / "digits.npz", x=x_test, y=y_test)
    print(f"wrote digits.onnx, digits.pt2 and digits.npz to {HERE}")


if __name__ == "__main__":
    main()
