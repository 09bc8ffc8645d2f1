"""The tables of artifact kinds, passes and targets: plain data, no framework imports.

Passes are named here by module path and imported when a route runs, so the CLI can list targets,
check flags and plan routes without importing a framework. Adding a target family means adding
kinds, passes and targets to these tables (and the pass modules); the planner and the pipeline
need no edits.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.parity import Tolerance


class Kind:
    """Artifact kinds: the nodes of the conversion graph."""

    TORCH_MODULE = "torch.module"  # an nn.Module object with example inputs (Python API)
    TORCH_EXPORT = "torch.export"  # a saved torch.export ExportedProgram (.pt2)
    KERAS = "keras"  # a Keras model object or .keras file
    TF_SAVED_MODEL = "tf.savedmodel"  # a TensorFlow SavedModel directory (its serving signature)
    ONNX = "onnx"  # any ONNX model: a source file or an exported one
    ONNX_WEB = "onnx.web"  # simplified + offline-optimized fp32 ONNX, IR <= 13
    ONNX_WEB_FP16 = "onnx.web.fp16"
    ONNX_WEB_INT8 = "onnx.web.int8"
    TF = "tf.function"  # a TensorFlow graph in memory (from Keras, or from ONNX by onnx2tf), NHWC where onnx2tf said
    TFLITE = "tflite"
    TFLITE_FP16 = "tflite.fp16"
    TFLITE_DYNAMIC_INT8 = "tflite.dynamic-int8"
    TFLITE_INT8 = "tflite.int8"
    TFLITE_INT16X8 = "tflite.int16x8"
    COREML_FP32 = "coreml.fp32"  # an .mlpackage ML Program, float32 compute
    COREML_FP16 = "coreml.fp16"
    COREML_INT8 = "coreml.int8"
    COREML_PAL4 = "coreml.palettize4"
    COREML_PAL6 = "coreml.palettize6"


@dataclass(frozen=True)
class PassInfo:
    """One edge of the conversion graph."""

    name: str
    impl: str  # "module:Class"
    consumes: str
    produces: str
    modules: tuple[str, ...]  # Python modules the pass imports; checked before any work starts
    alternative: str | None = None  # an alternative route's name: used when asked for (``--via``), else as a fallback
    fallback_of: str | None = None  # the default pass this one replaces when a route through that one fails


@dataclass(frozen=True)
class TargetInfo:
    """A target id users ask for, the kind that satisfies it and how its artifact is written."""

    id: str
    kind: str
    format: str
    precision: str
    family: str
    description: str
    tolerance: Tolerance
    reference_kind: str  # the fp32 kind of the same format, the base of size_ratio
    suffix: str = ".onnx"
    variants: tuple[str, ...] = ()  # other formats of the same model, kept when they load and pay off


PASSES: tuple[PassInfo, ...] = (
    PassInfo("torch-export-onnx", "edgekit.converters.passes.torch_onnx:TorchModuleToOnnx",
             Kind.TORCH_MODULE, Kind.ONNX, ("torch", "onnxscript", "onnx")),
    PassInfo("torch-program-onnx", "edgekit.converters.passes.torch_onnx:TorchProgramToOnnx",
             Kind.TORCH_EXPORT, Kind.ONNX, ("torch", "onnxscript", "onnx")),
    PassInfo("tf2onnx", "edgekit.converters.passes.keras_onnx:KerasToOnnx",
             Kind.KERAS, Kind.ONNX, ("tensorflow", "tf2onnx", "onnx")),
    PassInfo("saved-model-onnx", "edgekit.converters.passes.keras_onnx:SavedModelToOnnx",
             Kind.TF_SAVED_MODEL, Kind.ONNX, ("tensorflow", "tf2onnx", "onnx")),
    PassInfo("onnx-web-optimize", "edgekit.converters.passes.onnx_web:OptimizeForWeb",
             Kind.ONNX, Kind.ONNX_WEB, ("onnx", "onnxslim", "onnxruntime")),
    PassInfo("onnx-fp16", "edgekit.converters.passes.onnx_fp16:Float16",
             Kind.ONNX_WEB, Kind.ONNX_WEB_FP16, ("onnx", "onnxruntime")),
    PassInfo("onnx-fp16-mixed", "edgekit.converters.passes.onnx_fp16:Float16Mixed",
             Kind.ONNX_WEB, Kind.ONNX_WEB_FP16, ("onnx", "onnxruntime"), fallback_of="onnx-fp16"),
    PassInfo("onnx-int8", "edgekit.converters.passes.onnx_int8:Int8",
             Kind.ONNX_WEB, Kind.ONNX_WEB_INT8, ("onnx", "onnxruntime")),
    # The family's next int8 recipes when the first fails parity or to load (onnx_web.RECIPE_ORDER)
    PassInfo("onnx-int8-second", "edgekit.converters.passes.onnx_int8:Int8Second",
             Kind.ONNX_WEB, Kind.ONNX_WEB_INT8, ("onnx", "onnxruntime"), fallback_of="onnx-int8"),
    PassInfo("onnx-int8-third", "edgekit.converters.passes.onnx_int8:Int8Third",
             Kind.ONNX_WEB, Kind.ONNX_WEB_INT8, ("onnx", "onnxruntime"), fallback_of="onnx-int8"),
    PassInfo("onnx-int8-fourth", "edgekit.converters.passes.onnx_int8:Int8Fourth",
             Kind.ONNX_WEB, Kind.ONNX_WEB_INT8, ("onnx", "onnxruntime"), fallback_of="onnx-int8"),
    PassInfo("onnx-int8-fifth", "edgekit.converters.passes.onnx_int8:Int8Fifth",
             Kind.ONNX_WEB, Kind.ONNX_WEB_INT8, ("onnx", "onnxruntime"), fallback_of="onnx-int8"),
    PassInfo("keras-tf", "edgekit.converters.passes.tf_graph:KerasToTf",
             Kind.KERAS, Kind.TF, ("tensorflow",)),
    PassInfo("saved-model-tf", "edgekit.converters.passes.tf_graph:SavedModelToTf",
             Kind.TF_SAVED_MODEL, Kind.TF, ("tensorflow",)),
    PassInfo("onnx2tf", "edgekit.converters.passes.tf_graph:OnnxToTf",
             Kind.ONNX, Kind.TF, ("onnx2tf", "tensorflow", "tf_keras", "onnx", "onnx_graphsurgeon")),
    # Fallbacks for onnx2tf, tried in this order when a route through it fails to convert or fails fp32 parity
    PassInfo("onnx2tf-fixed-shapes", "edgekit.converters.passes.tf_graph:OnnxToTfFixedShapes",
             Kind.ONNX, Kind.TF, ("onnx2tf", "tensorflow", "tf_keras", "onnx", "onnx_graphsurgeon"), fallback_of="onnx2tf"),
    PassInfo("onnx2tf-keep-layout", "edgekit.converters.passes.tf_graph:OnnxToTfKeepLayout",
             Kind.ONNX, Kind.TF, ("onnx2tf", "tensorflow", "tf_keras", "onnx", "onnx_graphsurgeon"), fallback_of="onnx2tf"),
    PassInfo("tflite-fp32", "edgekit.converters.passes.tflite:TfliteFp32",
             Kind.TF, Kind.TFLITE, ("tensorflow", "ai_edge_litert")),
    PassInfo("tflite-fp16", "edgekit.converters.passes.tflite:TfliteFp16",
             Kind.TF, Kind.TFLITE_FP16, ("tensorflow", "ai_edge_litert")),
    PassInfo("tflite-dynamic-int8", "edgekit.converters.passes.tflite:TfliteDynamicInt8",
             Kind.TF, Kind.TFLITE_DYNAMIC_INT8, ("tensorflow", "ai_edge_litert")),
    PassInfo("tflite-weight-int8", "edgekit.converters.passes.tflite:TfliteWeightInt8",
             Kind.TF, Kind.TFLITE_DYNAMIC_INT8, ("tensorflow", "ai_edge_litert", "ai_edge_quantizer"),
             fallback_of="tflite-dynamic-int8"),
    # int8 weights but on the ops measured to need float16 ones, from the fp32 .tflite (reached by its own route)
    PassInfo("tflite-weight-int8-mixed", "edgekit.converters.passes.tflite_quantize:TfliteWeightInt8Mixed",
             Kind.TFLITE, Kind.TFLITE_DYNAMIC_INT8, ("ai_edge_quantizer",), fallback_of="tflite-dynamic-int8"),
    PassInfo("tflite-int8", "edgekit.converters.passes.tflite:TfliteInt8",
             Kind.TF, Kind.TFLITE_INT8, ("tensorflow", "ai_edge_litert")),
    PassInfo("tflite-int16x8", "edgekit.converters.passes.tflite:TfliteInt16x8",
             Kind.TF, Kind.TFLITE_INT16X8, ("tensorflow", "ai_edge_litert")),
    # Reduced precision from a finished fp32 .tflite (routes that reach TFLite without TensorFlow: litert-torch)
    PassInfo("tflite-aeq-fp16", "edgekit.converters.passes.tflite_quantize:TfliteFloat16Weights",
             Kind.TFLITE, Kind.TFLITE_FP16, ("ai_edge_quantizer",)),
    PassInfo("tflite-aeq-fp16-mixed", "edgekit.converters.passes.tflite_quantize:TfliteFloat16Mixed",
             Kind.TFLITE, Kind.TFLITE_FP16, ("ai_edge_quantizer",), fallback_of="tflite-aeq-fp16"),
    PassInfo("tflite-aeq-dynamic-int8", "edgekit.converters.passes.tflite_quantize:TfliteDynamicInt8Weights",
             Kind.TFLITE, Kind.TFLITE_DYNAMIC_INT8, ("ai_edge_quantizer",)),
    PassInfo("tflite-aeq-weight-int8", "edgekit.converters.passes.tflite_quantize:TfliteWeightInt8",
             Kind.TFLITE, Kind.TFLITE_DYNAMIC_INT8, ("ai_edge_quantizer",), fallback_of="tflite-aeq-dynamic-int8"),
    PassInfo("tflite-aeq-weight-int8-mixed", "edgekit.converters.passes.tflite_quantize:TfliteWeightInt8MixedAfter",
             Kind.TFLITE, Kind.TFLITE_DYNAMIC_INT8, ("ai_edge_quantizer",), fallback_of="tflite-aeq-dynamic-int8"),
    PassInfo("torch-coreml-fp32", "edgekit.converters.passes.coreml:TorchModuleToCoremlFp32",
             Kind.TORCH_MODULE, Kind.COREML_FP32, ("torch", "coremltools")),
    PassInfo("torch-coreml-fp16", "edgekit.converters.passes.coreml:TorchModuleToCoremlFp16",
             Kind.TORCH_MODULE, Kind.COREML_FP16, ("torch", "coremltools")),
    PassInfo("torch-program-coreml-fp32", "edgekit.converters.passes.coreml:TorchProgramToCoremlFp32",
             Kind.TORCH_EXPORT, Kind.COREML_FP32, ("torch", "coremltools")),
    PassInfo("torch-program-coreml-fp16", "edgekit.converters.passes.coreml:TorchProgramToCoremlFp16",
             Kind.TORCH_EXPORT, Kind.COREML_FP16, ("torch", "coremltools")),
    PassInfo("tf-coreml-fp32", "edgekit.converters.passes.coreml:TfToCoremlFp32",
             Kind.TF, Kind.COREML_FP32, ("tensorflow", "coremltools")),
    PassInfo("tf-coreml-fp16", "edgekit.converters.passes.coreml:TfToCoremlFp16",
             Kind.TF, Kind.COREML_FP16, ("tensorflow", "coremltools")),
    # Mixed precision (range-sensitive ops in fp32) when an fp16 program fails parity
    PassInfo("tf-coreml-fp16-mixed", "edgekit.converters.passes.coreml:TfToCoremlFp16Mixed",
             Kind.TF, Kind.COREML_FP16, ("tensorflow", "coremltools"), fallback_of="tf-coreml-fp16"),
    # Every shape fixed from one calibration sample (batch 1) when the traced program fails with a ranged batch
    *(PassInfo(f"{name}-fixed-shapes", f"edgekit.converters.passes.coreml:{cls}Fixed", kind, produces,
               ("torch", "coremltools"), fallback_of=name)
      for name, cls, kind, produces in (
          ("torch-coreml-fp32", "TorchModuleToCoremlFp32", Kind.TORCH_MODULE, Kind.COREML_FP32),
          ("torch-coreml-fp16", "TorchModuleToCoremlFp16", Kind.TORCH_MODULE, Kind.COREML_FP16),
          ("torch-program-coreml-fp32", "TorchProgramToCoremlFp32", Kind.TORCH_EXPORT, Kind.COREML_FP32),
          ("torch-program-coreml-fp16", "TorchProgramToCoremlFp16", Kind.TORCH_EXPORT, Kind.COREML_FP16))),
    PassInfo("torch-coreml-fp16-mixed", "edgekit.converters.passes.coreml:TorchModuleToCoremlFp16Mixed",
             Kind.TORCH_MODULE, Kind.COREML_FP16, ("torch", "coremltools"), fallback_of="torch-coreml-fp16"),
    PassInfo("torch-program-coreml-fp16-mixed", "edgekit.converters.passes.coreml:TorchProgramToCoremlFp16Mixed",
             Kind.TORCH_EXPORT, Kind.COREML_FP16, ("torch", "coremltools"), fallback_of="torch-program-coreml-fp16"),
    PassInfo("coreml-int8", "edgekit.converters.passes.coreml:CoremlInt8",
             Kind.COREML_FP16, Kind.COREML_INT8, ("coremltools",)),
    # int8 weights but those measured to need float16 (kept uncompressed in the fp16 program)
    PassInfo("coreml-int8-mixed", "edgekit.converters.passes.coreml_int8_mixed:CoremlInt8Mixed",
             Kind.COREML_FP16, Kind.COREML_INT8, ("coremltools",), fallback_of="coreml-int8"),
    # int8 weights on the fp32 program, when float16 cannot hold the model (integer-valued sums past 65504)
    PassInfo("coreml-int8-fp32", "edgekit.converters.passes.coreml:CoremlInt8Fp32",
             Kind.COREML_FP32, Kind.COREML_INT8, ("coremltools",), fallback_of="coreml-int8"),
    PassInfo("coreml-palettize4", "edgekit.converters.passes.coreml:CoremlPalettize4",
             Kind.COREML_FP16, Kind.COREML_PAL4, ("coremltools",)),
    PassInfo("coreml-palettize6", "edgekit.converters.passes.coreml:CoremlPalettize6",
             Kind.COREML_FP16, Kind.COREML_PAL6, ("coremltools",)),
    # PyTorch's direct route to LiteRT (fp32 only): tried before the route through ONNX and onnx2tf when installed
    PassInfo("litert-torch", "edgekit.converters.passes.litert_torch:TorchModuleToTflite",
             Kind.TORCH_MODULE, Kind.TFLITE, ("torch", "litert_torch", "ai_edge_litert"), alternative="litert-torch"),
    PassInfo("litert-torch-program", "edgekit.converters.passes.litert_torch:TorchProgramToTflite",
             Kind.TORCH_EXPORT, Kind.TFLITE, ("torch", "litert_torch", "ai_edge_litert"), alternative="litert-torch"),
    # ONNX interpreted in PyTorch and exported: the way to TFLite and Core ML that does not go through onnx2tf
    PassInfo("onnx-torch", "edgekit.converters.passes.onnx_torch:OnnxToTorchProgram",
             Kind.ONNX, Kind.TORCH_EXPORT, ("onnx", "torch", "onnxslim"), alternative="onnx-torch"),
)

# Alternative routes users can ask for with ``--via NAME``.
ALTERNATIVES: dict[str, str] = {
    "litert-torch": "PyTorch to TFLite with litert-torch (fp32; keeps the NCHW layout; batch fixed to 1)",
    "onnx-torch": "ONNX interpreted in PyTorch by edgekit, then litert-torch (TFLite fp32) or coremltools' PyTorch "
                  "frontend (Core ML): no onnx2tf, the ONNX layout kept; shapes fixed from the calibration data, batch 1",
}

# Alternative routes that need another one to reach a target (ONNX -> PyTorch -> TFLite needs litert-torch).
ALTERNATIVE_NEEDS: dict[str, tuple[str, ...]] = {"onnx-torch": ("litert-torch",)}

TARGETS: dict[str, TargetInfo] = {
    t.id: t
    for t in (
        TargetInfo("onnx-web", Kind.ONNX_WEB, "onnx", "fp32", "onnx-web",
                   "fp32 ONNX for onnxruntime-web, simplified and offline-optimized",
                   Tolerance(max_rel_error=1e-3), Kind.ONNX_WEB, variants=("ort",)),
        TargetInfo("onnx-web-fp16", Kind.ONNX_WEB_FP16, "onnx", "fp16", "onnx-web",
                   "float16 weights and compute, float32 inputs and outputs",
                   Tolerance(max_rel_error=5e-2, min_top1_agreement=0.99, min_cosine=0.999), Kind.ONNX_WEB, variants=("ort",)),
        TargetInfo("onnx-web-int8", Kind.ONNX_WEB_INT8, "onnx", "int8", "onnx-web",
                   "int8 weights (static QDQ with calibration data, else dynamic, else weight-only, float16 where measured)",
                   Tolerance(max_rel_error=0.25, min_top1_agreement=0.95, min_cosine=0.98), Kind.ONNX_WEB, variants=("ort",)),
        TargetInfo("tflite", Kind.TFLITE, "tflite", "fp32", "tflite",
                   "fp32 TFLite for the LiteRT interpreter",
                   Tolerance(max_rel_error=1e-3), Kind.TFLITE, suffix=".tflite"),
        TargetInfo("tflite-fp16", Kind.TFLITE_FP16, "tflite", "fp16", "tflite",
                   "float16 weights, float32 compute and I/O (GPU delegates run it in fp16)",
                   Tolerance(max_rel_error=5e-2, min_top1_agreement=0.99, min_cosine=0.999), Kind.TFLITE, suffix=".tflite"),
        TargetInfo("tflite-dynamic-int8", Kind.TFLITE_DYNAMIC_INT8, "tflite", "dynamic-int8", "tflite",
                   "int8 weights, activations quantized on the fly (float where that fails parity); no calibration data",
                   Tolerance(max_rel_error=0.25, min_top1_agreement=0.95, min_cosine=0.98), Kind.TFLITE, suffix=".tflite"),
        TargetInfo("tflite-int8", Kind.TFLITE_INT8, "tflite", "int8", "tflite",
                   "full integer int8 from --calibration data; float I/O unless --int8-io",
                   Tolerance(max_rel_error=0.25, min_top1_agreement=0.95, min_cosine=0.98), Kind.TFLITE, suffix=".tflite"),
        TargetInfo("tflite-int16x8", Kind.TFLITE_INT16X8, "tflite", "int16x8", "tflite",
                   "16-bit activations, 8-bit weights, for models that lose too much under int8",
                   Tolerance(max_rel_error=0.1, min_top1_agreement=0.98, min_cosine=0.99), Kind.TFLITE, suffix=".tflite"),
        TargetInfo("coreml-fp16", Kind.COREML_FP16, "mlpackage", "fp16", "coreml",
                   "Core ML ML Program, float16 compute (the default on Apple GPUs and the Neural Engine)",
                   Tolerance(max_rel_error=5e-2, min_top1_agreement=0.99, min_cosine=0.999),
                   Kind.COREML_FP32, suffix=".mlpackage"),
        TargetInfo("coreml", Kind.COREML_FP32, "mlpackage", "fp32", "coreml",
                   "Core ML ML Program, float32 compute (runs on CPU and GPU)",
                   Tolerance(max_rel_error=1e-3),
                   Kind.COREML_FP32, suffix=".mlpackage"),
        TargetInfo("coreml-int8", Kind.COREML_INT8, "mlpackage", "int8", "coreml",
                   "fp16 program with linear int8 weights (per channel); the fp32 program's where float16 cannot hold it",
                   Tolerance(max_rel_error=0.25, min_top1_agreement=0.98, min_cosine=0.98),
                   Kind.COREML_FP32, suffix=".mlpackage"),
        TargetInfo("coreml-palettize4", Kind.COREML_PAL4, "mlpackage", "palettize4", "coreml",
                   "fp16 program with 4-bit k-means palettized weights",
                   Tolerance(max_rel_error=0.5, min_top1_agreement=0.9, min_cosine=0.95),
                   Kind.COREML_FP32, suffix=".mlpackage"),
        TargetInfo("coreml-palettize6", Kind.COREML_PAL6, "mlpackage", "palettize6", "coreml",
                   "fp16 program with 6-bit k-means palettized weights",
                   Tolerance(max_rel_error=0.25, min_top1_agreement=0.95, min_cosine=0.98),
                   Kind.COREML_FP32, suffix=".mlpackage"),
    )
}

# Other formats of a finished artifact: format -> (function "module:name", file suffix). The function
# takes (source path, destination path) and writes the variant.
VARIANTS: dict[str, tuple[str, str]] = {
    "ort": ("edgekit.converters.passes.onnx_web:write_ort_format", ".ort"),
}

# The runtime that validates each artifact format (edgekit.runtimes, the same code apps embed).

def target_modules(target: TargetInfo) -> tuple[str, ...]:
    """Modules every route to ``target`` needs from the ONNX hub on (source passes excluded)."""
    needed: list[str] = []
    kind = target.kind
    by_product = {p.produces: p for p in PASSES
                  if p.produces != Kind.ONNX
                  and p.consumes not in (Kind.KERAS, Kind.TF_SAVED_MODEL, Kind.TORCH_MODULE, Kind.TORCH_EXPORT)
                  and p.alternative is None}
    while kind in by_product:
        step = by_product[kind]
        needed.extend(m for m in step.modules if m not in needed)
        kind = step.consumes
    return tuple(needed)
