package dev.edgekit.demo

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.gpu.CompatibilityList
import org.tensorflow.lite.gpu.GpuDelegate
import java.io.Closeable
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.FloatBuffer

/** Classifies an NCHW float image (values 0..1) with an installed model; says which accelerator ran. */
interface Classifier : Closeable {
    val provider: String
    fun classify(nchw: FloatArray): FloatArray

    companion object {
        fun open(model: InstalledModel): Classifier =
            if (model.format == "tflite") LiteRtClassifier(model) else OnnxClassifier(model)
    }
}

/** LiteRT: the GPU delegate when this device supports it, else XNNPACK on the CPU. */
class LiteRtClassifier(private val model: InstalledModel) : Classifier {
    private val gpu: GpuDelegate?
    private val interpreter: Interpreter
    override val provider: String

    init {
        val buffer = model.file.readBytes().let { ByteBuffer.allocateDirect(it.size).order(ByteOrder.nativeOrder()).put(it) }
        buffer.rewind()
        val compat = CompatibilityList()
        var delegate: GpuDelegate? = null
        var interp: Interpreter? = null
        var name = "XNNPACK (CPU)"
        if (compat.isDelegateSupportedOnThisDevice) {
            try {
                delegate = GpuDelegate(compat.bestOptionsForThisDevice)
                interp = Interpreter(buffer, Interpreter.Options().addDelegate(delegate))
                name = "GPU delegate"
            } catch (e: Exception) {  // some int8 graphs are refused by the GPU delegate: say so, fall back
                delegate?.close()
                delegate = null
                name = "XNNPACK (CPU; GPU delegate refused the model: ${e.message})"
            }
        }
        gpu = delegate
        interpreter = interp ?: Interpreter(buffer, Interpreter.Options().setUseXNNPACK(true).setNumThreads(2))
        provider = name
    }

    override fun classify(nchw: FloatArray): FloatArray {
        val spec = model.inputs[0]
        val data = Layouts.fromNchw(nchw, spec)
        val input = ByteBuffer.allocateDirect(data.size * (if (spec.dtype == "float32") 4 else 1)).order(ByteOrder.nativeOrder())
        for (v in data) {
            if (spec.dtype == "float32") input.putFloat(v)
            else input.put(Math.round(v / (spec.scale ?: 1f) + (spec.zeroPoint ?: 0)).coerceIn(-128, 127).toByte())
        }
        input.rewind()
        val out = model.outputs[0]
        val n = out.shape.fold(1) { a, b -> a * b }
        val output = ByteBuffer.allocateDirect(n * (if (out.dtype == "float32") 4 else 1)).order(ByteOrder.nativeOrder())
        interpreter.run(input, output)
        output.rewind()
        return FloatArray(n) {
            if (out.dtype == "float32") output.float
            else ((output.get().toInt()) - (out.zeroPoint ?: 0)) * (out.scale ?: 1f)
        }
    }

    override fun close() {
        interpreter.close()
        gpu?.close()
    }
}

/** ONNX Runtime Android: NNAPI when the device offers it, else the CPU. */
class OnnxClassifier(private val model: InstalledModel) : Classifier {
    private val env = OrtEnvironment.getEnvironment()
    private val session: OrtSession
    override val provider: String

    init {
        val bytes = model.file.readBytes()
        var name = "NNAPI"
        session = try {
            env.createSession(bytes, OrtSession.SessionOptions().apply { addNnapi() })
        } catch (e: Exception) {
            name = "CPU (NNAPI unavailable: ${e.message})"
            env.createSession(bytes, OrtSession.SessionOptions())
        }
        provider = name
    }

    override fun classify(nchw: FloatArray): FloatArray {
        val spec = model.inputs[0]
        val shape = spec.shape.map { it.toLong() }.toLongArray().also { it[0] = 1 }
        OnnxTensor.createTensor(env, FloatBuffer.wrap(Layouts.fromNchw(nchw, spec)), shape).use { tensor ->
            session.run(mapOf(spec.name to tensor)).use { result ->
                @Suppress("UNCHECKED_CAST")
                return (result[0].value as Array<FloatArray>)[0]
            }
        }
    }

    override fun close() {
        session.close()
    }
}

object Layouts {
    /** The source's NCHW image in the artifact's layout (the manifest's source_transpose, e.g. NHWC). */
    fun fromNchw(nchw: FloatArray, spec: Tensor): FloatArray {
        val perm = spec.sourceTranspose ?: return nchw
        if (perm != listOf(0, 2, 3, 1)) return nchw
        val c = spec.shape[3]
        val h = spec.shape[1]
        val w = spec.shape[2]
        return FloatArray(nchw.size) { i ->
            val ch = i % c
            val x = (i / c) % w
            val y = i / (c * w)
            nchw[ch * h * w + y * w + x]
        }
    }
}
