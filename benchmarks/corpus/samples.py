"""Real sample inputs for the corpus models, each preprocessed the way the model's package does it.

Images are the two photographs scikit-learn ships (china.jpg, flower.jpg), a logo from the ddddocr
wheel and text rendered with Pillow's bundled font; file bytes are read from real files of the
installed packages; sentences are tokenized with the model's own tokenizer.json. Audio is the one
thing no package here ships, so it is synthesized: voiced, syllable-shaped harmonics with noise for
the voice detector, decaying piano-like notes for the pitch model. Every builder is deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray]

LINES = (
    "edgekit 0.2 converts real models", "Invoice No. 4821-B  total 312.40", "The quick brown fox jumps",
    "OCR on phones and browsers", "Parity: max error 1.2e-05", "ROUTE FALLBACK 2026-12-01",
    "Deliver bundles over the air", "int8 on AVX2 and wasm",
)
SENTENCES = (
    "A man is eating food.", "A man is riding a white horse on an enclosed ground.",
    "The new movie is awesome and I loved the soundtrack.", "Edge devices run small models offline.",
    "How do I convert a PyTorch model to TFLite?", "Two dogs are playing in the snow.",
    "Quantization shrinks weights to eight bits.", "The stock market fell sharply on Monday.",
)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _photos() -> list[Any]:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(img) for img in load_sample_images().images]


def _crops(size: tuple[int, int], count: int) -> list[Any]:
    """``count`` crops of the sample photographs at several scales, resized to ``size`` (w, h)."""
    out = []
    photos = _photos()
    for i in range(count):
        photo = photos[i % len(photos)]
        scale = 1.0 - 0.15 * (i // len(photos))
        w, h = int(photo.width * scale), int(photo.height * scale)
        left, top = (photo.width - w) * (i % 3) // 2, (photo.height - h) * ((i + 1) % 3) // 2
        out.append(photo.crop((left, top, left + w, top + h)).resize(size))
    return out


def _text_image(text: str, size: tuple[int, int], *, font_size: int, background: Any = "white") -> Any:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", size, background) if isinstance(background, str) else background.copy()
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=font_size)
    draw.text((6, (size[1] - font_size) // 2 - 2), text, fill="black", font=font)
    return image


def _nchw(images: list[Any], mean: np.ndarray | float, std: np.ndarray | float, *, scale: float = 255.0) -> np.ndarray:
    x = np.stack([np.asarray(im.convert("RGB"), np.float32) / scale for im in images])
    return ((x - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)


def ocr_page(work: Path) -> Arrays:
    """Pages of text over faded photographs, 320x320, PP-OCR's detector normalization."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=22)
    pages = []
    for i, photo in enumerate(_crops((320, 320), 8)):
        page = Image.blend(photo, Image.new("RGB", photo.size, "white"), 0.6)
        for row in range(4):
            ImageDraw.Draw(page).text((10, 40 + 60 * row), LINES[(i + row) % len(LINES)], fill="black", font=font)
        pages.append(page)
    return {"x": _nchw(pages, IMAGENET_MEAN, IMAGENET_STD)}


def ocr_line_rec(work: Path) -> Arrays:
    """Text lines 48x320 (PP-OCRv4 recognizer: scaled to [-1, 1])."""
    lines = [_text_image(t, (320, 48), font_size=28) for t in LINES]
    return {"x": _nchw(lines, 0.5, 0.5)}


def ocr_line_cls(work: Path) -> Arrays:
    """Text lines 48x192, half of them upside down (the direction classifier's two classes)."""
    lines = [_text_image(t[:18], (192, 48), font_size=26) for t in LINES]
    lines = [im.rotate(180) if i % 2 else im for i, im in enumerate(lines)]
    return {"x": _nchw(lines, 0.5, 0.5), "y": np.array([i % 2 for i in range(len(lines))], np.int64)}


def ddddocr_line(work: Path) -> Arrays:
    """Grey captcha-like text 64x160 with noise lines, scaled to [-1, 1] as ddddocr does."""
    from PIL import ImageDraw

    rng = np.random.default_rng(0)
    out = []
    for i, text in enumerate(LINES):
        word = text.split()[i % len(text.split())][:6]
        image = _text_image(word, (160, 64), font_size=40)
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            draw.line([tuple(rng.integers(0, 160, 2)), tuple(rng.integers(0, 64, 2))], fill="gray", width=1)
        out.append(np.asarray(image.convert("L"), np.float32) / 255.0)
    return {"input1": ((np.stack(out)[:, None] - 0.5) / 0.5).astype(np.float32)}


def yolox_images(work: Path) -> Arrays:
    """416x416 photographs in 0..255 (YOLOX takes unnormalized pixels), BGR as ddddocr feeds them."""
    x = _nchw(_crops((416, 416), 6), 0.0, 1.0, scale=1.0)
    return {"images": np.ascontiguousarray(x[:, ::-1])}


def yolo_images(work: Path) -> Arrays:
    """320x320 photographs scaled to 0..1 (ultralytics' preprocessing)."""
    return {"images": _nchw(_crops((320, 320), 6), 0.0, 1.0)}


def _voice(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Syllable-shaped voiced sound (harmonics of a gliding 110-220 Hz pitch, formant-weighted) in noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t) + 20 * rng.standard_normal()
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k * np.exp(-((k * f0 - 700) / 900) ** 2) for k in range(1, 25))
    syllables = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 0.6 * (t % 2.0 < 1.3)
    return (0.3 * voiced * syllables + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def vad_stream(work: Path) -> Arrays:
    """16 chunks of 512 samples (16 kHz) run in order, each with the recurrent state the model returned.

    The state's batch axis is its second, so the arrays hold one feed per sample along a new first
    axis (rank + 1): input (16, 1, 512), state (16, 2, 1, 128); sr is one scalar for all.
    """
    import onnxruntime as ort

    audio = _voice(1.0, 16000, 0)
    session = ort.InferenceSession(str(work / "model.onnx"), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(16000, np.int64)
    inputs, states = [], []
    for i in range(16):
        chunk = audio[i * 512:(i + 1) * 512][None]
        inputs.append(chunk)
        states.append(state)
        _, state = session.run(None, {"input": chunk, "state": state, "sr": sr})
    return {"input": np.stack(inputs), "state": np.stack(states), "sr": sr}


def piano_audio(work: Path) -> Arrays:
    """Four 2-second clips (43844 samples at 22050 Hz) of decaying piano-like notes and chords."""
    rate, n = 22050, 43844
    t = np.arange(n) / rate
    rng = np.random.default_rng(0)
    clips = []
    for _clip in range(4):
        audio = np.zeros(n)
        for start in np.arange(0, 2.0, 0.25):
            for midi in rng.choice(np.arange(48, 84), size=rng.integers(1, 4), replace=False):
                f = 440 * 2 ** ((midi - 69) / 12)
                tt = np.clip(t - start, 0, None)
                env = (t >= start) * np.exp(-3 * tt)
                audio += env * sum(np.sin(2 * np.pi * k * f * tt) / k ** 1.5 for k in range(1, 6))
        clips.append(audio / np.abs(audio).max() * 0.8)
    return {"x": np.stack(clips)[:, :, None].astype(np.float32)}  # the one input (ONNX and SavedModel name it differently)


def file_bytes(work: Path) -> Arrays:
    """Magika's features of real files: the first and last 1024 bytes, padded with token 256."""
    import sklearn

    root = Path(sklearn.__file__).parent
    files = [root / "__init__.py", root / "datasets/images/china.jpg", root / "datasets/data/iris.csv",
             root / "datasets/descr/digits.rst", *sorted(root.glob("**/*.so"))[:1], work / "model.onnx",
             Path(json.__file__), root / "datasets/images/README.txt"]
    rows = []
    for f in files:
        data = f.read_bytes().strip() if f.suffix in (".py", ".csv", ".rst", ".txt") else f.read_bytes()
        beg = list(data[:1024]) + [256] * max(0, 1024 - len(data))
        end = [256] * max(0, 1024 - len(data)) + list(data[-1024:])
        rows.append(beg[:1024] + end[-1024:])
    return {"bytes": np.array(rows, np.int32)}


def sentences(work: Path) -> Arrays:
    """The sentences tokenized by all-MiniLM-L6-v2's tokenizer, padded to 24 tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(work / "tokenizer.json"))
    tok.enable_padding(length=24)
    tok.enable_truncation(max_length=24)
    enc = tok.encode_batch(list(SENTENCES))
    return {"input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}


def _digits_test() -> tuple[np.ndarray, np.ndarray]:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from examples.digits.data import load_split

    _, x_test, _, y_test = load_split()
    return x_test[:64], y_test[:64]


def digits_images(work: Path) -> Arrays:
    x, y = _digits_test()
    return {"x": x, "y": y}


def digits_rows(work: Path) -> Arrays:
    x, y = _digits_test()
    return {"x": x[:, 0], "y": y}
