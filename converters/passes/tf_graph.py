"""TensorFlow graphs for the TFLite converter: from Keras, from a SavedModel, or from ONNX by onnx2tf.

Every TFLite precision (:mod:`edgekit.converters.passes.tflite`) starts from the same in-memory graph
(kind ``tf.function``), so a bundle with several TFLite targets runs onnx2tf once. onnx2tf turns NCHW
inputs into NHWC; the graph records the transpose per tensor (``source_transpose``) and the pipeline
writes it into the manifest, where the runtime reads it to accept source-layout feeds.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._console import captured_output
from edgekit.bundle import Dim, TensorSpec
from edgekit.converters.passes import Pass, PassContext, Value
from edgekit.converters.passes.keras_onnx import keras_function
from edgekit.converters.passes.onnx_rewrites import FOLDED, fixed_input_shapes, prepare_for_onnx2tf
from edgekit.converters.registry import Kind
from edgekit.errors import ConversionError, UnsupportedModelError


@dataclass(frozen=True)
class TfGraph:
    """A concrete TensorFlow function ready for TFLiteConverter, and how its tensors map to the source's."""

    function: Any  # tf ConcreteFunction with named inputs and a dict of named outputs
    trackable: Any  # the object owning its variables
    inputs: tuple[TensorSpec, ...]  # by signature name, with source_name / source_transpose / layout
    outputs: tuple[TensorSpec, ...]


def _tf_name(name: str, taken: set[str]) -> str:
    """A name TensorFlow accepts for a signature tensor, unique among ``taken``."""
    clean = re.sub(r"[^A-Za-z0-9_]", "_", name) or "t"
    if not clean[0].isalpha():
        clean = "t_" + clean
    out, i = clean, 1
    while out in taken:
        out, i = f"{clean}_{i}", i + 1
    taken.add(out)
    return out


def _fits(shape: tuple[Dim, ...], want: tuple[Dim, ...]) -> bool:
    """True when two shapes agree on rank and on every dimension both fix."""
    return len(shape) == len(want) and all(
        not (isinstance(a, int) and a >= 0 and isinstance(b, int) and b >= 0) or a == b
        for a, b in zip(shape, want, strict=True))


def _channels_last(rank: int) -> tuple[int, ...]:
    return (0, *range(2, rank), 1)


def _layout_change(artifact: tuple[Dim, ...], source: tuple[Dim, ...], prefer_channels_last: bool) -> tuple[int, ...] | None:
    """The transpose taking a source tensor to the artifact's (None: unchanged), judged from the shapes.

    onnx2tf makes every rank 3-5 input channels-last; outputs usually keep the ONNX layout.

    Raises:
        ConversionError: Neither layout matches, so edgekit cannot tell how to feed the artifact.
    """
    rank = len(source)
    perm = _channels_last(rank) if rank >= 3 else None
    cl = perm is not None and _fits(artifact, tuple(source[i] for i in perm))
    same = _fits(artifact, source)
    if cl and (prefer_channels_last or not same):
        return perm
    if same:
        return None
    raise ConversionError(
        f"onnx2tf produced a tensor of shape {list(artifact)} for the source's {list(source)}, which is neither "
        f"the same layout nor channels-last; edgekit cannot tell how to feed it")


def _dims(shape: Any) -> tuple[Dim, ...]:
    return tuple(int(d) if d is not None else None for d in shape)


class KerasToTf(Pass):
    """A Keras model as a named tf.function (layout unchanged)."""


    def _run(self, value: Value, ctx: PassContext) -> Value:
        taken: set[str] = set()
        ins = [_tf_name(s.name, taken) for s in ctx.inputs]
        outs = [_tf_name(s.name, taken) for s in ctx.outputs]
        forward = keras_function(value.obj, ctx.inputs, ins, outs)
        inputs = tuple(TensorSpec(n, s.shape, s.dtype, source_name=s.name) for n, s in zip(ins, ctx.inputs, strict=True))
        outputs = tuple(TensorSpec(n, s.shape, s.dtype, source_name=s.name) for n, s in zip(outs, ctx.outputs, strict=True))
        graph = TfGraph(forward.get_concrete_function(), _variable_holder(value.obj), inputs, outputs)
        return Value(Kind.TF, obj=graph, notes={"frontend": "keras"}, inputs=inputs, outputs=outputs)


class SavedModelToTf(Pass):
    """A SavedModel's serving signature, as it is (its names are the source's names)."""


    def _run(self, value: Value, ctx: PassContext) -> Value:
        loaded, function = value.obj
        graph = TfGraph(function, loaded, ctx.inputs, ctx.outputs)
        return Value(Kind.TF, obj=graph, notes={"frontend": "tf.savedmodel"}, inputs=ctx.inputs, outputs=ctx.outputs)


def _variable_holder(model: Any) -> Any:
    """A tf.Module tracking the model's TensorFlow variables, so TFLiteConverter freezes them into constants.

    Keras 3 variables wrap tf.Variables that a Keras model does not expose as TensorFlow trackables;
    without this the converter keeps them as resource variables the interpreter reads as empty.
    """
    import tensorflow as tf

    holder = tf.Module()
    holder.tf_variables = [getattr(v, "value", v) for v in model.variables]
    return holder


@contextlib.contextmanager
def _venv_on_path() -> Iterator[None]:
    """This interpreter's bin/ on PATH: onnx2tf runs the onnxsim command, and silently skips it when missing."""
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + old
    try:
        yield
    finally:
        os.environ["PATH"] = old


SAMPLE_IMAGES = "calibration_image_sample_data_20x128x128x3_float32.npy"


def _sample_images_for_onnx2tf(work: Path, ctx: PassContext) -> None:
    """Give onnx2tf the sample images it otherwise downloads for models whose inputs are all 3-channel images.

    onnx2tf 1.28 uses 20 images of 128x128x3 to check its own layout choices and fetches them from
    the internet when the file is not in the current directory. edgekit writes them from the
    calibration samples (resized by nearest neighbour), or seeded noise when no image input exists.
    """
    images = None
    for value in ctx.samples.values():
        if value.ndim == 4 and 3 in (value.shape[1], value.shape[3]) and value.shape[0] > 0:
            nhwc = value if value.shape[3] == 3 else value.transpose(0, 2, 3, 1)
            rows = np.linspace(0, nhwc.shape[1] - 1, 128).round().astype(int)
            cols = np.linspace(0, nhwc.shape[2] - 1, 128).round().astype(int)
            picked = nhwc[np.arange(20) % nhwc.shape[0]][:, rows][:, :, cols]
            images = picked.astype(np.float32)
            break
    if images is None:
        images = np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32)
    np.save(work / SAMPLE_IMAGES, images)


def _reset_keras() -> None:
    import tf_keras

    tf_keras.backend.clear_session()


class OnnxToTf(Pass):
    """ONNX to a TensorFlow graph with onnx2tf (NCHW inputs become NHWC; the transposes are recorded)."""

    fix_shapes = False  # fix every dynamic dimension from the samples
    keep_layout = False  # keep every input's layout (no NCHW -> NHWC)

    def _run(self, value: Value, ctx: PassContext) -> Value:
        import onnx2tf

        work = ctx.scratch("onnx2tf")
        work.mkdir()
        model_file = work / "model.onnx"
        shutil.copyfile(value.file, model_file)  # onnx2tf rewrites its input file in place
        route = f"onnx -> {self.name} -> TFLiteConverter"
        fixed = fixed_input_shapes(ctx, fix_all=self.fix_shapes)
        rewrites = prepare_for_onnx2tf(model_file, ctx.samples, fixed)
        settings: dict[str, Any] = {}
        if fixed:
            settings["overwrite_input_shape"] = [f"{name}:{','.join(map(str, dims))}" for name, dims in fixed.items()]
        if self.keep_layout:
            settings["keep_shape_absolutely_input_names"] = [s.name for s in ctx.inputs]
        if FOLDED in rewrites:  # folded already: onnx2tf's onnxsim pass breaks some graphs it gets then (LSTM states)
            settings["not_use_onnxsim"] = True
        _sample_images_for_onnx2tf(work, ctx)
        log = io.StringIO()
        try:
            # onnx2tf reads (and otherwise downloads) its own sample images from the current directory
            with _venv_on_path(), captured_output() as log, contextlib.chdir(work):
                _reset_keras()  # a failed onnx2tf run leaves tf_keras state that breaks the next route's run
                model = onnx2tf.convert(input_onnx_file_path=str(model_file), output_folder_path=str(work / "out"),
                                        non_verbose=True, verbosity="error", disable_model_save=True, **settings)
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("onnx2tf.ops."):
                raise
            op = (exc.name or "").rsplit(".", 1)[-1]
            raise UnsupportedModelError(
                f"the ONNX operator {op} is not supported by onnx2tf {onnx2tf.__version__}, on the route edgekit takes "
                f"to TFLite ({route}); replace {op} in the model (or export it at another opset), or choose a target "
                f"of another family (onnx-web)") from None
        except (Exception, SystemExit) as exc:
            tail = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", log.getvalue()).split())[-600:]
            raise ConversionError(f"onnx2tf {onnx2tf.__version__} failed on this model ({route}): "
                                  f"{type(exc).__name__}: {exc}. onnx2tf said: {tail or 'nothing'}") from exc
        if len(model.inputs) != len(ctx.inputs) or len(model.outputs) != len(ctx.outputs):
            raise ConversionError(f"onnx2tf produced {len(model.inputs)} inputs and {len(model.outputs)} outputs for a "
                                  f"model with {len(ctx.inputs)} and {len(ctx.outputs)}")
        import tensorflow as tf

        taken: set[str] = set()
        inputs, outputs = [], []
        for tensor, src in zip(model.inputs, ctx.inputs, strict=True):
            shape = _dims(tensor.shape)
            perm = _layout_change(shape, src.shape, prefer_channels_last=True)
            inputs.append(TensorSpec(_tf_name(src.name, taken), shape, src.dtype, source_name=src.name,
                                     source_transpose=perm, layout=_layout_name(perm, len(shape))))
        for tensor, src in zip(model.outputs, ctx.outputs, strict=True):
            shape = _dims(tensor.shape)
            perm = _layout_change(shape, src.shape, prefer_channels_last=False)
            outputs.append(TensorSpec(_tf_name(src.name, taken), shape, src.dtype, source_name=src.name,
                                      source_transpose=perm, layout=_layout_name(perm, len(shape))))
        signature = [tf.TensorSpec(list(s.shape), tf.dtypes.as_dtype(s.dtype), name=s.name) for s in inputs]
        out_names = [s.name for s in outputs]

        @tf.function(input_signature=signature)  # type: ignore[untyped-decorator]
        def forward(*args: tf.Tensor) -> dict[str, tf.Tensor]:
            result = model(list(args) if len(args) > 1 else args[0], training=False)
            values = list(result) if isinstance(result, (list, tuple)) else [result]
            return dict(zip(out_names, values, strict=True))

        graph = TfGraph(forward.get_concrete_function(), model, tuple(inputs), tuple(outputs))
        notes: dict[str, Any] = {"frontend": f"onnx2tf {onnx2tf.__version__}"}
        if fixed:
            notes["fixed_shapes"] = {name: dims for name, dims in fixed.items()}
        if self.keep_layout:
            notes["kept_layout"] = True
        if rewrites:
            notes["rewrites"] = rewrites
        return Value(Kind.TF, obj=graph, notes=notes, inputs=graph.inputs, outputs=graph.outputs)


class OnnxToTfFixedShapes(OnnxToTf):
    """onnx2tf with every dynamic dimension fixed from the samples (batch 1): a fallback route."""

    fix_shapes = True


class OnnxToTfKeepLayout(OnnxToTf):
    """onnx2tf with fixed shapes and every input kept in its source layout: a fallback route for models
    whose inputs are not images (onnx2tf's NHWC guess can break them)."""

    fix_shapes = True
    keep_layout = True


def _layout_name(perm: tuple[int, ...] | None, rank: int) -> str | None:
    names = {3: ("NCW", "NWC"), 4: ("NCHW", "NHWC"), 5: ("NCDHW", "NDHWC")}
    return names[rank][1] if perm is not None and rank in names else None
