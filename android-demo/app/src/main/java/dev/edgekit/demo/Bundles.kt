package dev.edgekit.demo

import dev.edgekit.ota.Json
import dev.edgekit.ota.list
import dev.edgekit.ota.obj
import dev.edgekit.ota.str
import java.io.File

/** One input or output of an artifact, as the bundle manifest records it. */
class Tensor(
    val name: String,
    val shape: List<Int>,
    val dtype: String,
    val scale: Float?,
    val zeroPoint: Int?,
    val sourceTranspose: List<Int>?
)

/** The artifact of an installed bundle slot the app runs, and its I/O spec. */
class InstalledModel(val slot: File, val version: String, val target: String, val format: String, val file: File,
                     val inputs: List<Tensor>, val outputs: List<Tensor>)

object Bundles {
    /** The file the device downloads from a release: tflite-int8 on LiteRT first, else an ONNX artifact. */
    fun chooseFile(names: List<String>): String =
        names.firstOrNull { it.endsWith(".tflite") && "int8" in it && "dynamic" !in it }
            ?: names.firstOrNull { it.endsWith(".tflite") }
            ?: names.firstOrNull { it.endsWith(".onnx") && "int8" in it }
            ?: names.firstOrNull { it.endsWith(".onnx") }
            ?: throw IllegalStateException("the release has no .tflite or .onnx artifact (it has: $names)")

    /** Read the slot's bundle.json and find the artifact file it holds. */
    fun open(slot: File): InstalledModel {
        val manifest = Json.parse(File(slot, "bundle.json").readBytes()).obj("bundle.json")
        val artifacts = manifest.list("artifacts").map { it.obj("artifact") }
        val art = artifacts.firstOrNull { File(slot, it.str("file")).isFile }
            ?: throw IllegalStateException("the slot $slot holds none of its bundle's artifacts")
        fun tensors(key: String, fallback: String): List<Tensor> =
            ((art[key] ?: manifest[fallback]) as List<*>).map { t ->
                val o = t.obj(key)
                val q = o["quantization"] as? Map<*, *>
                Tensor(o.str("name"), (o["shape"] as List<*>).map { (it as? Long)?.toInt() ?: 1 }, o.str("dtype"),
                    (q?.get("scale") as? Number)?.toFloat(), (q?.get("zero_point") as? Number)?.toInt(),
                    (o["source_transpose"] as? List<*>)?.map { (it as Long).toInt() })
            }
        return InstalledModel(slot, manifest.str("version"), art.str("target"), art.str("format"),
            File(slot, art.str("file")), tensors("inputs", "inputs"), tensors("outputs", "outputs"))
    }
}
